"""The same batch through the Keras model, the reloaded SavedModel and ONNX Runtime."""

from __future__ import annotations

import json
from typing import Optional

import keras
import numpy as np

from keras_resnet_v2.plumbing.files import atomic_write_text

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


MAX_ACCURACY_DROP = 1.0  # int8: percentage points of accuracy an int8 export may lose


def verify(model: keras.Model, savedmodel_dir: Optional[str] = None, onnx_path: Optional[str] = None,
           batch: Optional[np.ndarray] = None, report_path: Optional[str] = None,
           max_relative_error: float = MAX_RELATIVE_ERROR, extra: Optional[dict] = None, *,
           evaluation: Optional[tuple] = None, max_accuracy_drop: float = MAX_ACCURACY_DROP, **paths) -> dict:
    """Compares probabilities (and top-1 classes) of each export with the Keras model's.

    The exports are `savedmodel_dir` (a version), `onnx_path` and any format of
    `keras_resnet_v2.export.formats` by name, as `export_and_verify` names them (`savedmodel=VERSION_DIR`,
    `onnx=PATH`, `litert=PATH`, `openvino=XML`, `int8_onnx=PATH`, `int8_litert=PATH`). Float32 exports:
    relative error is the max absolute error over the largest output magnitude. Raises
    `VerificationError` above the allowed error, or if the Keras outputs are not finite (an untrained
    deep net in inference mode overflows: train it first). Writes the report as JSON to `report_path`
    when given, passed or failed, with `extra` (e.g. timings) merged in.

    The allowed error is `max(max_relative_error, NOISE_FLOOR_FACTOR * noise floor)`, where the
    noise floor is the relative change of the Keras outputs when the batch is perturbed by a
    relative 1e-7 (float32 rounding). Shallow nets keep the 1e-4 bound; measured floors with
    batch-calibrated BatchNorm: ResNet-164 4.4e-5, ResNet-1001 2.7e-3 (it amplifies rounding
    ~3e4 times), so these get a wider bound, recorded in the report. A wrong weight, layer or
    preprocessing moves outputs by far more (tests/test_export.py checks one BatchNorm).

    The SavedModel is run as TF Serving runs it (`keras_resnet_v2.export.stand_in`: a TF1 session, each
    signature by its tensor names, gRPC protos): `serving_default` on the batch, then every warmup record
    replayed and each signature held to the same bound (the classify signature to the best classes of
    `serve_image_bytes`), and REST bodies answered as their gRPC requests; the report adds
    `warmup_records`, `signatures_max_rel_error` and `rest_matches_grpc`.

    int8 exports cannot be held to a tolerance: `evaluation=(images, labels)` (float32 pixels 0-255;
    labels may be None) is run through the Keras model and each int8 file; the report gives their top-1
    agreement and, with labels, both accuracies. An int8 export fails when it loses more than
    `max_accuracy_drop` points of accuracy or, without labels, disagrees with the Keras model on more
    than that share of the images (a disagreement costs at most one right answer, so this bounds the
    loss). Float32 exports also report their top-1 agreement on `evaluation` when given.

    Example:
        >>> report = verify(model, savedmodel_dir="serving/1", onnx_path="m.onnx", litert="m.tflite")  # doctest: +SKIP
        >>> report["litert"]["max_rel_error"] < report["max_relative_error_allowed"]  # doctest: +SKIP
        True
    """
    from keras_resnet_v2.export import formats
    from keras_resnet_v2.export.serving import check_classifier, classifier, float32_copy

    chosen = formats.targets({"savedmodel": savedmodel_dir, "onnx": onnx_path, **paths})
    if not chosen:
        raise ValueError(f"verify needs at least one export: {', '.join(formats.BY_NAME)}. Received: none")
    if any(entry.int8 for entry in chosen) and evaluation is None:
        raise ValueError("verify needs `evaluation=(images, labels)` for an int8 export: its answers are checked "
                         "by agreement and accuracy, not by a tolerance. Received: evaluation=None")
    if batch is None:
        batch = np.random.default_rng(0).uniform(0, 255, (4, *model.input_shape[1:])).astype("float32")
    check_classifier(model)
    # Exports are float32 (a mixed-precision model is exported as its float32 copy). The reference
    # is the model's own output (softmax applied here, in NumPy, to a logits classifier), not the
    # serving code's transformation of it.
    reference_model = float32_copy(model)
    logits = classifier(model)[1] == "linear"

    def keras_fn(images):
        out = np.concatenate([np.asarray(reference_model(images[i:i + 64], training=False), dtype="float64")
                              for i in range(0, len(images), 64)])
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
    if evaluation is not None:
        images, labels = evaluation
        images = np.asarray(images, "float32")
        keras_classes = keras_fn(images).argmax(-1)
        report["evaluation_images"] = len(images)
        if labels is not None:
            report["keras_accuracy"] = float(np.mean(keras_classes == np.asarray(labels)))
    allowed, failed = report["max_relative_error_allowed"], []
    for entry, path in chosen.items():
        what = entry.describe(path)
        run = _readable(report, report_path, what, entry.answer, path)
        if entry.int8:
            report[entry.name] = _int8_check(run, images, labels, keras_classes, max_accuracy_drop)
            if not report[entry.name]["passed"]:
                failed.append(entry.name)
            continue
        probabilities, classes = run(batch)
        report[entry.name] = _errors(reference, np.asarray(probabilities), what)
        report[entry.name]["classes_match"] = bool(np.array_equal(np.asarray(classes), reference.argmax(-1)))
        if hasattr(run, "check") and "error" not in report[entry.name]:
            report[entry.name].update(run.check(keras_fn, allowed))
        if report[entry.name].get("max_rel_error", np.inf) > allowed or "error" in report[entry.name]:
            failed.append(entry.name)
        if evaluation is not None:
            report[entry.name]["evaluation_top1_agreement"] = float(np.mean(_classes(run, images) == keras_classes))
    report["passed"] = not failed
    _write(report, report_path)
    mismatched = [report[k]["error"] for k in failed if "error" in report[k]]
    if mismatched:
        raise VerificationError("; ".join(mismatched) + _where(report_path))
    if failed:
        raise VerificationError(f"Export parity failed for {', '.join(failed)}: {json.dumps(report)}"
                                + _where(report_path))
    return report


def _classes(run, images: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([np.asarray(run(images[i:i + batch])[1]) for i in range(0, len(images), batch)])


def _cpu() -> str:
    """The CPU's int8 instruction sets (an int8 kernel's rounding and saturation can depend on them)."""
    import platform

    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        flags = []
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return f"{platform.machine()} {' '.join(f for f in wanted if f in flags) or platform.processor()}".strip()


def _int8_check(run, images: np.ndarray, labels, keras_classes: np.ndarray, max_drop: float) -> dict:
    """Top-1 agreement with the Keras model and, with labels, the accuracy lost, in percentage points."""
    classes = _classes(run, images)
    agreement = float(np.mean(classes == keras_classes))
    result = {"images": len(images), "top1_agreement": agreement, "max_accuracy_drop_points": max_drop,
              "checked_on": _cpu()}
    if labels is not None:
        labels = np.asarray(labels)
        result["accuracy"] = float(np.mean(classes == labels))
        result["float32_accuracy"] = float(np.mean(keras_classes == labels))
        result["accuracy_drop_points"] = round(100 * (result["float32_accuracy"] - result["accuracy"]), 4)
        lost = result["accuracy_drop_points"]
    else:
        result["accuracy"] = None
        result["bound"] = "no labels: the disagreement (an upper bound of the accuracy lost) is held to the drop"
        lost = round(100 * (1 - agreement), 4)
    result["passed"] = lost <= max_drop
    if not result["passed"]:
        result["error"] = (f"int8 loses {lost} points of accuracy (top-1 agreement {100 * agreement:.1f}% on "
                           f"{len(images)} images), more than the allowed {max_drop} (--max-accuracy-drop)")
    return result


def _readable(report: dict, report_path: Optional[str], what: str, load, *args, **kwargs):
    """`load(*args, **kwargs)`; a file that does not load (truncated, damaged, of another format) fails the
    verification in one line naming it, recorded in the report, instead of a loader's traceback."""
    try:
        return load(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - a damaged file fails in many ways (protobuf, checkpoint, JSON)
        from keras_resnet_v2.export.serving import load_failure

        _fail(report, report_path, load_failure(what, error))


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
