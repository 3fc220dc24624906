"""ONNX export through tf2onnx: float32, named input and outputs, dynamic batch axis; and its int8 form."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Optional, Sequence

import keras
import numpy as np

from keras_resnet_v2.export.serving import (
    NON_FINITE_ONNX,
    check_classifier,
    file_metadata,
    float32_copy,
    serving_function,
    with_input_scale,
)
from keras_resnet_v2.export.staging import Staged, check_file_target, file_lock, stage_file

DEFAULT_OPSET = 17


def check_opset(opset: Optional[int]) -> int:
    opset = DEFAULT_OPSET if opset is None else opset
    if not isinstance(opset, int) or isinstance(opset, bool) or not 13 <= opset <= 18:
        raise ValueError(f"`opset` must be an integer from 13 to 18. Received: opset={opset!r}")
    return opset


def check_onnx_arguments(model: keras.Model, path: str, opset: Optional[int] = None) -> tuple[str, int]:
    """Every check that needs no writing; returns the absolute path and the opset."""
    check_classifier(model)
    opset = check_opset(opset)
    return check_file_target(path, ".onnx", "ONNX"), opset


def onnx_lock(path: str):
    """The lock of one ONNX file (`.NAME.onnx.lock` beside it): one writer per file."""
    return file_lock(path, "ONNX")


def describe(path: str, serving_model: keras.Model, labels: Optional[Sequence[str]], extra: Optional[dict]) -> None:
    """`probabilities` first, the batch axis named `batch`, and what the SavedModel's metadata.json
    says as ONNX `metadata_props` (class names, input size and range, normalization, versions)."""
    import onnx

    proto = onnx.load(path)
    outputs = sorted(proto.graph.output, key=lambda value: value.name != "probabilities")
    del proto.graph.output[:]
    proto.graph.output.extend(outputs)
    for value in list(proto.graph.input) + list(proto.graph.output):
        batch_axis = value.type.tensor_type.shape.dim[0]
        batch_axis.ClearField("dim_value")
        batch_axis.dim_param = "batch"
    props = file_metadata(serving_model, NON_FINITE_ONNX, labels, extra)
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(proto, path)


def write_onnx(model: keras.Model, tmp: str, opset: int, labels: Optional[Sequence[str]] = None,
               extra_metadata: Optional[dict] = None) -> None:
    """The float32 serving function of `model` (a float32 model) as ONNX at `tmp`, described."""
    import tf2onnx

    serve = serving_function(model)
    tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=opset, output_path=tmp)
    describe(tmp, model, labels, extra_metadata)


def stage_onnx(model: keras.Model, path: str, opset: int, labels: Optional[Sequence[str]] = None,
               extra_metadata: Optional[dict] = None) -> Staged:
    """Writes the ONNX file to a hidden temporary sibling of `path` (whose `onnx_lock` the caller holds)."""
    serving_model = float32_copy(model)
    return stage_file(path, lambda tmp: write_onnx(serving_model, tmp, opset, labels, extra_metadata), ".onnx")


# int8: ONNX Runtime's static quantization in QDQ form (QuantizeLinear/DequantizeLinear pairs around
# float operators, which ONNX Runtime fuses into integer kernels): weights int8 per output channel
# (a ResNet's BatchNorm-scaled filters differ in range by orders of magnitude between channels: one
# scale per tensor would round the small ones to zero), activations uint8 with a zero point, their
# ranges the min/max seen on the calibration images, every operator of the residual units quantized
# (BatchNorm's Mul/Add, ReLU, the shortcut's Add too: float islands between int8 convolutions cost a
# dequantize/quantize each). uint8 activations x int8 weights (U8S8) is what ONNX Runtime's x86
# kernels run fastest: measured on ResNet-50 at 224, 2.8-3.4x the float32 throughput, where int8
# activations (S8S8) ran 1.0-1.4x and convolutions alone 1.4-2.7x (benchmarks/RESULTS.md). Without
# VNNI (AVX2-only CPUs) ONNX Runtime's U8S8 products can saturate in 16 bits: the accuracy check of
# `verify` (resnet-v2-export verify --int8-onnx) on the serving machine says whether it costs there.
# The input pixels and the softmax stay float32, so the file keeps the float32 interface.
INT8_OPERATORS = ("Conv", "MatMul", "Gemm", "Add", "Mul", "Relu", "MaxPool", "AveragePool",
                  "GlobalAveragePool", "Pad")
INT8_ONNX_SCHEME = {"format": "QDQ", "weights": "int8, per output channel, symmetric",
                    "activations": "uint8 with a zero point, per tensor, min/max of the calibration images",
                    "float32": "input pixels, softmax and probabilities", "tool": "onnxruntime.quantization"}


def write_int8_onnx(model: keras.Model, tmp: str, opset: int, calibration: np.ndarray,
                    labels: Optional[Sequence[str]] = None, extra_metadata: Optional[dict] = None) -> None:
    """`model`'s ONNX file quantized to int8 with `calibration` images (float32 pixels 0-255), at `tmp`."""
    import onnxruntime
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(range(0, len(calibration), 32))

        def get_next(self):
            start = next(self.batches, None)
            return None if start is None else {"images": np.asarray(calibration[start:start + 32], "float32")}

    work = tempfile.mkdtemp(prefix=f"{os.path.basename(tmp)}-work-", dir=os.path.dirname(tmp))  # a leftover too
    try:
        float_path, prepared = os.path.join(work, "float.onnx"), os.path.join(work, "prepared.onnx")
        write_onnx(model, float_path, opset)
        quant_pre_process(float_path, prepared, skip_symbolic_shape=True)
        quantize_static(prepared, tmp, Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=list(INT8_OPERATORS),
                        extra_options={"CalibTensorRangeSymmetric": False})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    scheme = {**INT8_ONNX_SCHEME, "calibration_images": int(len(calibration)), "onnxruntime": onnxruntime.__version__}
    describe(tmp, model, labels, {**(extra_metadata or {}), "precision": "int8", "quantization": scheme})


def stage_int8_onnx(model: keras.Model, path: str, opset: int, calibration: np.ndarray,
                    labels: Optional[Sequence[str]] = None, extra_metadata: Optional[dict] = None) -> Staged:
    """Writes the int8 ONNX file to a hidden temporary sibling of `path` (whose lock the caller holds)."""
    serving_model = float32_copy(model)
    return stage_file(path, lambda tmp: write_int8_onnx(serving_model, tmp, opset, calibration, labels,
                                                        extra_metadata), ".onnx")


def answer(path: str):
    """`images -> (probabilities, classes)` through an ONNX Runtime CPU session of the file."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda images: tuple(session.run(["probabilities", "classes"], {"images": images}))


def export_onnx(model: keras.Model, path: str, opset: Optional[int] = None,
                labels: Optional[Sequence[str]] = None, extra_metadata: Optional[dict] = None,
                input_scale: Optional[float] = None) -> str:
    """Writes `model` as ONNX to `path` (atomically) and returns the path, unverified.

    Input `images` [batch, H, W, C] float32 pixels 0-255; outputs `probabilities`
    [batch, classes] float32 (first) and `classes` [batch] int64. The file's `metadata_props`
    hold the class names (`labels`), input shape and range, `extra_metadata` (how the model was
    trained, its normalization) and the versions, each value a string (JSON for non-strings).
    `export_and_verify` publishes the file only once it has been verified. `input_scale`: as in
    `export_savedmodel`.

    Example:
        >>> export_onnx(keras_resnet_v2.ResNet20(), "/tmp/resnet20.onnx")
        '/tmp/resnet20.onnx'
    """
    path, opset = check_onnx_arguments(model, path, opset)
    model = with_input_scale(model, input_scale)
    with onnx_lock(path):
        return stage_onnx(model, path, opset, labels, extra_metadata).publish()


# ---------------------------------------------------------------- its entries' protocol (formats.py)


def check_options(options) -> None:
    check_opset(options.opset)


def stage(entry, model: keras.Model, path: str, options) -> Staged:
    """The float32 file, or the int8 one (`entry.int8`) calibrated on `options.calibration`."""
    opset = check_opset(options.opset)
    if entry.int8:
        return stage_int8_onnx(model, path, opset, options.calibration, options.labels, options.extra_metadata)
    return stage_onnx(model, path, opset, options.labels, options.extra_metadata)
