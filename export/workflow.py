"""Export to each requested format, time it, and verify all of them against the Keras model."""

from __future__ import annotations

import os
import time
from typing import Optional, Sequence

import keras

from keras_resnet_v2.export.onnx import export_onnx
from keras_resnet_v2.export.savedmodel import export_savedmodel
from keras_resnet_v2.export.verify import verify


def export_and_verify(model: keras.Model, savedmodel: Optional[str] = None, onnx: Optional[str] = None, *,
                      version: Optional[int] = None, overwrite: bool = False, opset: Optional[int] = None,
                      labels: Optional[Sequence[str]] = None, extra_metadata: Optional[dict] = None) -> dict:
    """SavedModel under `savedmodel` (a TF Serving base directory) and/or ONNX at `onnx`, verified.

    Returns `{"savedmodel": version_dir, "onnx": path, "report": report, "report_path": path}`.
    The report (`BASE_DIR/<version>.verification.json`, else `FILE.verification.json`) holds the
    export times (`savedmodel_s`, `onnx_s`) and the parity errors; it is written even when
    verification fails, and `export.VerificationError` is raised then.

    Example:
        >>> model = keras.saving.load_model("runs/digits/model.keras")
        >>> result = export_and_verify(model, "/tmp/serving/digits", "/tmp/digits.onnx")
        >>> result["report"]["passed"]
        True
    """
    if not savedmodel and not onnx:
        raise ValueError("Give `savedmodel` (a base directory), `onnx` (a file path) or both. "
                         f"Received: savedmodel={savedmodel!r}, onnx={onnx!r}")
    timings, version_dir, onnx_path = {}, None, None
    if savedmodel:
        start = time.perf_counter()
        version_dir = export_savedmodel(model, savedmodel, version, overwrite, labels=labels,
                                        extra_metadata=extra_metadata)
        timings["savedmodel_s"] = round(time.perf_counter() - start, 2)
    if onnx:
        start = time.perf_counter()
        onnx_path = export_onnx(model, onnx, opset)
        timings["onnx_s"] = round(time.perf_counter() - start, 2)
    report_path = f"{version_dir.rstrip(os.sep)}.verification.json" if version_dir else f"{onnx_path}.verification.json"
    report = verify(model, savedmodel_dir=version_dir, onnx_path=onnx_path, report_path=report_path, extra=timings)
    return {"savedmodel": version_dir, "onnx": onnx_path, "report": report, "report_path": report_path}
