"""Export to each requested format, verify every export, and only then publish them."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Optional, Sequence

import keras
import numpy as np

from keras_resnet_v2.export import formats
from keras_resnet_v2.export.savedmodel import Preprocessing
from keras_resnet_v2.export.serving import float32_copy, with_input_scale
from keras_resnet_v2.export.verification import MAX_ACCURACY_DROP, verify


def check_max_accuracy_drop(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ValueError(f"`max_accuracy_drop` must be a number of percentage points from 0 to 100. "
                         f"Received: max_accuracy_drop={value!r}")
    return float(value)


def export_and_verify(model: keras.Model, savedmodel: Optional[str] = None, onnx: Optional[str] = None, *,
                      version: Optional[int] = None, overwrite: bool = False, opset: Optional[int] = None,
                      labels: Optional[Sequence[str]] = None, extra_metadata: Optional[dict] = None,
                      preprocessing: Preprocessing = "resize", input_scale: Optional[float] = None,
                      calibration: Optional[np.ndarray] = None, evaluation: Optional[tuple] = None,
                      max_accuracy_drop: float = MAX_ACCURACY_DROP, **paths: Optional[str]) -> dict:
    """Each requested format of `keras_resnet_v2.export.formats` written, verified, then published.

    `savedmodel` is a TF Serving base directory, `onnx` a file path; the other formats by name:
    `litert="m.tflite"`, `openvino="m.xml"` (+ `m.bin`), `int8_onnx="m.int8.onnx"`,
    `int8_litert="m.int8.tflite"`. Every argument is checked before anything is written. Each
    export is written to a hidden temporary, verified there against the Keras model, and only then
    renamed into place: a failed verification, an error, a kill or a full disk never leaves a version
    TF Serving would load or a file at a requested path. Returns `{name: published path, ...,
    "report": report, "report_path": path}`. The report (`BASE_DIR/<version>.verification.json`, else
    beside the first file) holds the export times (`savedmodel_s`, `onnx_s`, ...) and the parity
    errors; it is written even when verification fails, and `VerificationError` is raised then.
    `preprocessing` is how `serve_image_bytes` sizes images (`export_savedmodel`: a mode, or its
    crop fraction and interpolation too, as `keras_resnet_v2.TIMM_SERVING`); `input_scale`
    multiplies the pixels before a network with no scaling layer in front (`with_input_scale`), and
    the exports are verified against that.

    int8 formats need `calibration` (float32 pixels 0-255, [N, H, W, C]: a few hundred training
    images) and are verified on `evaluation=(images, labels)` (labels may be None; default: the
    calibration images, unlabelled): refused, nothing published, when they lose more than
    `max_accuracy_drop` points of accuracy (`verify`).

    Example:
        >>> model = keras.saving.load_model("runs/digits/model.keras")  # doctest: +SKIP
        >>> result = export_and_verify(  # doctest: +SKIP
        ...     model, "serving/digits", "digits.onnx", litert="digits.tflite")
        >>> result["report"]["passed"]  # doctest: +SKIP
        True
    """
    chosen = formats.targets({"savedmodel": savedmodel, "onnx": onnx, **paths})
    if not chosen:
        raise ValueError(f"Give at least one export target: {', '.join(formats.BY_NAME)}. "
                         f"Received: {dict(savedmodel=savedmodel, onnx=onnx, **paths)}")
    max_accuracy_drop = check_max_accuracy_drop(max_accuracy_drop)
    if calibration is not None:
        calibration = _checked_images(calibration, model, "calibration")
    if evaluation is not None:
        evaluation = (_checked_images(evaluation[0], model, "evaluation"), evaluation[1])
    options = formats.Options(version, overwrite, opset, labels, extra_metadata, preprocessing, calibration)
    checked = {entry: entry.check(model, path, options) for entry, path in chosen.items()}
    formats.check_distinct(checked)
    if calibration is not None and evaluation is None:
        evaluation = (calibration, None)
    model = with_input_scale(model, input_scale)
    # Exports and verification all use the float32 network: copy a mixed-precision model once here
    # (float32_copy returns a float32 model itself, so the steps below do not copy it again).
    model = float32_copy(model)
    timings, staged = {}, {}
    with contextlib.ExitStack() as locks:
        try:
            for entry, target in checked.items():
                locks.enter_context(entry.lock(target))
                start = time.perf_counter()
                staged[entry] = entry.stage(model, target, options)
                timings[f"{entry.name}_s"] = round(time.perf_counter() - start, 2)
            report_path = next(iter(staged.values())).final + ".verification.json"
            report = verify(model, report_path=report_path, extra=timings,
                            evaluation=evaluation if any(entry.int8 for entry in staged) else None,
                            max_accuracy_drop=max_accuracy_drop,
                            **{entry.name: item.path for entry, item in staged.items()})
        except BaseException:
            for item in staged.values():
                item.discard()
            raise
        published = {entry.name: item.publish() for entry, item in staged.items()}
    return {"savedmodel": None, "onnx": None, **published, "report": report, "report_path": os.fspath(report_path)}


def _checked_images(images, model: keras.Model, name: str) -> np.ndarray:
    images = np.asarray(images, dtype="float32")
    if images.ndim != 4 or images.shape[1:] != tuple(model.input_shape[1:]) or not len(images):
        raise ValueError(f"`{name}` must be images of shape [N, {', '.join(map(str, model.input_shape[1:]))}] "
                         f"(float32 pixels 0-255, N >= 1). Received: shape {list(images.shape)}")
    if not np.all(np.isfinite(images)):
        raise ValueError(f"`{name}` holds NaN or Inf pixel values")
    return images
