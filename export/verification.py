"""The same batch through the Keras model, the reloaded SavedModel and ONNX Runtime."""

from __future__ import annotations

import json
import os
from typing import Optional

import keras
import numpy as np

from keras_resnet_v2.plumbing.files import atomic_write_text, read_json_object

MAX_RELATIVE_ERROR = 1e-4  # float32
# A very deep net amplifies float32 rounding: two correct float32 implementations (TensorFlow's
# and ONNX Runtime's kernels) cannot agree better than the Keras model agrees with itself on an
# input changed by rounding. The allowed error is the larger of the bound above and this many
# times that noise floor (measured: ResNet-164 4e-5, ResNet-1001 2.7e-3; benchmarks/RESULTS.md).
NOISE_FLOOR_FACTOR = 5.0


class VerificationError(AssertionError):
    """An export disagrees with its Keras model beyond the float32 bound."""


def _errors(reference: np.ndarray, other: np.ndarray, what: str = "the export") -> dict:
    if other.shape != reference.shape:  # another model's export: say so, not a NumPy broadcast error
        return {"error": f"{what} answers probabilities of shape {list(other.shape)}, the Keras model "
                         f"{list(reference.shape)}: it is not this model's export"}
    absolute = float(np.max(np.abs(reference - other)))
    scale = float(np.max(np.abs(reference)))
    return {"max_abs_error": absolute, "max_rel_error": absolute / scale if scale > 0 else absolute}


def verify(model: keras.Model, savedmodel_dir: Optional[str] = None, onnx_path: Optional[str] = None,
           batch: Optional[np.ndarray] = None, report_path: Optional[str] = None,
           max_relative_error: float = MAX_RELATIVE_ERROR, extra: Optional[dict] = None) -> dict:
    """Compares probabilities (and top-1 classes) of each export with the Keras model's.

    Relative error is the max absolute error over the largest output magnitude. Raises
    `VerificationError` above the allowed error, or if the Keras outputs are not finite
    (an untrained deep net in inference mode overflows: train it first). Writes the report
    as JSON to `report_path` when given, passed or failed, with `extra` (e.g. timings) merged in.

    The allowed error is `max(max_relative_error, NOISE_FLOOR_FACTOR * noise floor)`, where the
    noise floor is the relative change of the Keras outputs when the batch is perturbed by a
    relative 1e-7 (float32 rounding). Shallow nets keep the 1e-4 bound; measured floors with
    batch-calibrated BatchNorm: ResNet-164 4.4e-5, ResNet-1001 2.7e-3 (it amplifies rounding
    ~3e4 times), so these get a wider bound, recorded in the report. A wrong weight, layer or
    preprocessing moves outputs by far more (tests/test_export.py checks one BatchNorm).
    """
    if savedmodel_dir is None and onnx_path is None:
        raise ValueError("verify needs `savedmodel_dir`, `onnx_path` or both. Received: neither")
    if batch is None:
        batch = np.random.default_rng(0).uniform(0, 255, (4, *model.input_shape[1:])).astype("float32")
    from keras_resnet_v2.export.savedmodel import _check_classifier, _classifier, float32_copy

    _check_classifier(model)
    # Exports are float32 (a mixed-precision model is exported as its float32 copy). The reference
    # is the model's own output (softmax applied here, in NumPy, to a logits classifier), not the
    # serving code's transformation of it.
    reference_model = float32_copy(model)
    logits = _classifier(model)[1] == "linear"

    def keras_fn(images):
        out = np.asarray(reference_model(images, training=False), dtype="float64")
        if logits:
            out = np.exp(out - out.max(-1, keepdims=True))
            out /= out.sum(-1, keepdims=True)
        return out.astype("float32")

    reference = keras_fn(batch)
    report = {"batch_shape": list(batch.shape), "max_relative_error_bound": max_relative_error, **(extra or {})}
    if np.all(np.isfinite(reference)):
        noisy = batch * (1 + 1e-7 * np.random.default_rng(1).standard_normal(batch.shape))
        floor = _errors(reference, np.asarray(keras_fn(noisy.astype("float32")), dtype="float32"))["max_rel_error"]
        report["float32_noise_floor"] = floor
        report["max_relative_error_allowed"] = max(max_relative_error, NOISE_FLOOR_FACTOR * floor)
    else:
        _fail(report, report_path, "The Keras model's outputs on the verification batch are not finite")
    if savedmodel_dir is not None:
        import tensorflow as tf

        serve = _readable(report, report_path, f"The SavedModel {savedmodel_dir}", _savedmodel, savedmodel_dir)
        out = serve(images=tf.constant(batch))
        report["savedmodel"] = _errors(reference, out["probabilities"].numpy(), f"The SavedModel {savedmodel_dir}")
        report["savedmodel"]["classes_match"] = bool(np.array_equal(out["classes"].numpy(), reference.argmax(-1)))
    if onnx_path is not None:
        import onnxruntime as ort

        session = _readable(report, report_path, f"The ONNX file {onnx_path}", ort.InferenceSession, onnx_path,
                            providers=["CPUExecutionProvider"])
        probabilities, classes = session.run(["probabilities", "classes"], {"images": batch})
        report["onnx"] = _errors(reference, probabilities, f"The ONNX file {onnx_path}")
        report["onnx"]["classes_match"] = bool(np.array_equal(classes, reference.argmax(-1)))
    allowed = report["max_relative_error_allowed"]
    failed = [k for k in ("savedmodel", "onnx") if k in report and report[k].get("max_rel_error", np.inf) > allowed]
    report["passed"] = not failed
    _write(report, report_path)
    mismatched = [report[k]["error"] for k in failed if "error" in report[k]]
    if mismatched:
        raise VerificationError("; ".join(mismatched) + _where(report_path))
    if failed:
        raise VerificationError(f"Export parity failed for {', '.join(failed)}: {json.dumps(report)}"
                                + _where(report_path))
    return report


def _savedmodel(version_dir: str):
    """The `serving_default` signature of a SavedModel version, its metadata.json read first (a damaged one
    names itself: `read_json_object`)."""
    import tensorflow as tf

    metadata = os.path.join(version_dir, "assets", "metadata.json")
    if os.path.exists(metadata):
        read_json_object(metadata)
    return tf.saved_model.load(version_dir).signatures["serving_default"]


def _readable(report: dict, report_path: Optional[str], what: str, load, *args, **kwargs):
    """`load(*args, **kwargs)`; a file that does not load (truncated, damaged, of another format) fails the
    verification in one line naming it, recorded in the report, instead of a loader's traceback."""
    try:
        return load(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - a damaged file fails in many ways (protobuf, checkpoint, JSON)
        first = (str(error).strip().splitlines() or [""])[0][:300]
        _fail(report, report_path, f"{what} does not load ({type(error).__name__}: {first})")


def _fail(report: dict, report_path: Optional[str], message: str):
    """Records `message` as the report's failure, writes the report and raises it as one line."""
    report["passed"], report["error"] = False, message
    _write(report, report_path)
    raise VerificationError(message + _where(report_path)) from None


def _where(report_path: Optional[str]) -> str:
    return f" (report: {report_path})" if report_path else ""


def _write(report: dict, report_path: Optional[str]) -> None:
    if report_path is not None:
        # Never a half-written report, and never through a link planted at a temporary's name.
        atomic_write_text(report_path, json.dumps(report, indent=2))
