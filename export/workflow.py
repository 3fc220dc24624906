"""Export to each requested format, verify every export, and only then publish them."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Optional, Sequence

import keras

from keras_resnet_v2.export.onnx import check_onnx_arguments, onnx_lock, stage_onnx
from keras_resnet_v2.export.savedmodel import (
    Preprocessing,
    check_savedmodel_arguments,
    float32_copy,
    stage_savedmodel,
    with_input_scale,
)
from keras_resnet_v2.export.verification import verify
from keras_resnet_v2.plumbing.files import DirectoryLock


def export_and_verify(model: keras.Model, savedmodel: Optional[str] = None, onnx: Optional[str] = None, *,
                      version: Optional[int] = None, overwrite: bool = False, opset: Optional[int] = None,
                      labels: Optional[Sequence[str]] = None, extra_metadata: Optional[dict] = None,
                      preprocessing: Preprocessing = "resize", input_scale: Optional[float] = None) -> dict:
    """SavedModel under `savedmodel` (a TF Serving base directory) and/or ONNX at `onnx`, verified.

    Every argument is checked before anything is written. Both exports are written to hidden
    temporaries, verified there against the Keras model, and only then renamed into place: a
    failed verification, an error, a kill or a full disk never leaves a version TF Serving would
    load or an ONNX file at `onnx`. Returns `{"savedmodel": version_dir, "onnx": path, "report":
    report, "report_path": path}`. The report (`BASE_DIR/<version>.verification.json`, else
    `FILE.verification.json`) holds the export times (`savedmodel_s`, `onnx_s`) and the parity
    errors; it is written even when verification fails, and `VerificationError` is raised then.
    `preprocessing` is how `serve_image_bytes` sizes images (`export_savedmodel`: a mode, or its
    crop fraction and interpolation too, as `keras_resnet_v2.TIMM_SERVING`); `input_scale`
    multiplies the pixels before a network with no scaling layer in front (`with_input_scale`), and
    the exports are verified against that.

    Example:
        >>> model = keras.saving.load_model("runs/digits/model.keras")
        >>> result = export_and_verify(model, "/tmp/serving/digits", "/tmp/digits.onnx")
        >>> result["report"]["passed"]
        True
    """
    if not savedmodel and not onnx:
        raise ValueError("Give `savedmodel` (a base directory), `onnx` (a file path) or both. "
                         f"Received: savedmodel={savedmodel!r}, onnx={onnx!r}")
    base_dir = check_savedmodel_arguments(model, savedmodel, version, labels, preprocessing) if savedmodel else None
    onnx_path, opset = check_onnx_arguments(model, onnx, opset) if onnx else (None, None)
    model = with_input_scale(model, input_scale)
    # Exports and verification all use the float32 network: copy a mixed-precision model once here
    # (float32_copy returns a float32 model itself, so the steps below do not copy it again).
    model = float32_copy(model)
    timings, staged = {}, []
    with contextlib.ExitStack() as locks:
        try:
            if base_dir:
                locks.enter_context(DirectoryLock(base_dir, "an export"))
                start = time.perf_counter()
                staged.append(stage_savedmodel(model, base_dir, version, overwrite, labels=labels,
                                               extra_metadata=extra_metadata, preprocessing=preprocessing))
                timings["savedmodel_s"] = round(time.perf_counter() - start, 2)
            if onnx_path:
                locks.enter_context(onnx_lock(onnx_path))
                start = time.perf_counter()
                staged.append(stage_onnx(model, onnx_path, opset, labels, extra_metadata))
                timings["onnx_s"] = round(time.perf_counter() - start, 2)
            saved = staged[0] if base_dir else None
            converted = staged[-1] if onnx_path else None
            report_path = (f"{saved.final}.verification.json" if saved else f"{onnx_path}.verification.json")
            report = verify(model, savedmodel_dir=saved.path if saved else None,
                            onnx_path=converted.path if converted else None, report_path=report_path, extra=timings)
        except BaseException:
            for item in staged:
                item.discard()
            raise
        version_dir = saved.publish() if saved else None
        published_onnx = converted.publish() if converted else None
    return {"savedmodel": version_dir, "onnx": published_onnx, "report": report,
            "report_path": os.fspath(report_path)}
