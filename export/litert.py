"""LiteRT (the TensorFlow Lite format, run by `ai-edge-litert`): float32, and int8 calibrated on images.

Converted from the same serving function as the SavedModel (`serving.write_serving_savedmodel`):
signature `serving_default`, input `images` float32 pixels 0-255 [batch, H, W, C] (batch -1: call
`resize_tensor_input` or use the signature runner), outputs `probabilities` and `classes`. What the
SavedModel's metadata.json says (class names, input, training) is inside the file, as the flatbuffer
metadata entry `keras_resnet_v2` (JSON; `read_metadata`).
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

import keras
import numpy as np

from keras_resnet_v2.export.serving import (
    NON_FINITE_UNCHECKED,
    converted_through_savedmodel,
    file_metadata,
    float32_copy,
)
from keras_resnet_v2.export.staging import Staged, stage_file

METADATA_NAME = "keras_resnet_v2"
# int8: the converter's full-integer quantization (weights int8 per output channel, activations int8
# per tensor from the calibration images' ranges, every operator in its int8 kernel); the input and
# output stay float32 (a quantize op first, a dequantize op before the softmax), so a client feeds
# this file what it feeds the float32 one.
INT8_LITERT_SCHEME = {"weights": "int8, per output channel, symmetric",
                      "activations": "int8, per tensor, min/max of the calibration images",
                      "float32": "the input pixels and probabilities (quantize/dequantize in the file)",
                      "tool": "tf.lite.TFLiteConverter, Optimize.DEFAULT, TFLITE_BUILTINS_INT8"}


def _convert(savedmodel_dir: str, calibration: Optional[np.ndarray]) -> bytes:
    import warnings

    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(savedmodel_dir)
    if calibration is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.representative_dataset = lambda: (
            {"images": np.asarray(calibration[i:i + 1], "float32")} for i in range(len(calibration)))
    with warnings.catch_warnings():
        # The converter's calibration runs TensorFlow's own interpreter, which warns that it is deprecated in
        # favour of ai_edge_litert (what `answer` and clients use): not the user's concern.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated", category=UserWarning)
        return converter.convert()


def with_metadata(flatbuffer: bytes, values: dict) -> bytes:
    """The LiteRT file `flatbuffer` with `values` as its `keras_resnet_v2` metadata entry (JSON)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(values).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != METADATA_NAME.encode()] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_metadata(path: str) -> dict:
    """The `keras_resnet_v2` metadata of a LiteRT file written here; a ValueError if it has none."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(path)
    for entry in model.metadata or []:
        if entry.name == METADATA_NAME.encode():
            return json.loads(bytes(model.buffers[entry.buffer].data).decode())
    raise ValueError(f"{path} has no {METADATA_NAME!r} metadata: it was not written by resnet-v2-export")


def _write(model: keras.Model, tmp: str, labels: Optional[Sequence[str]], extra: Optional[dict],
           calibration: Optional[np.ndarray]) -> None:
    flatbuffer = converted_through_savedmodel(model, tmp, lambda directory: _convert(directory, calibration))
    if calibration is not None:
        extra = {**(extra or {}), "precision": "int8",
                 "quantization": {**INT8_LITERT_SCHEME, "calibration_images": len(calibration)}}
    values = file_metadata(model, NON_FINITE_UNCHECKED, labels, extra)
    with open(tmp, "wb") as handle:
        handle.write(with_metadata(flatbuffer, values))


def stage_litert(model: keras.Model, path: str, labels: Optional[Sequence[str]] = None,
                 extra_metadata: Optional[dict] = None, calibration: Optional[np.ndarray] = None) -> Staged:
    """The LiteRT file (int8 when `calibration` images are given) in a hidden temporary sibling of `path`
    (whose lock the caller holds)."""
    serving_model = float32_copy(model)
    return stage_file(path, lambda tmp: _write(serving_model, tmp, labels, extra_metadata, calibration), ".tflite")


def answer(path: str, threads: Optional[int] = None):
    """`images -> (probabilities, classes)` through `ai_edge_litert`'s interpreter (signature runner:
    it sizes the batch axis to each call)."""
    from ai_edge_litert.interpreter import Interpreter

    read_metadata(path)
    runner = Interpreter(model_path=path, num_threads=threads).get_signature_runner("serving_default")

    def run(images):
        out = runner(images=np.asarray(images, "float32"))
        return out["probabilities"], out["classes"]

    return run


# ---------------------------------------------------------------- its entries' protocol (formats.py)


def stage(entry, model: keras.Model, path: str, options) -> Staged:
    """The float32 file, or the int8 one (`entry.int8`) calibrated on `options.calibration`."""
    return stage_litert(model, path, options.labels, options.extra_metadata,
                        options.calibration if entry.int8 else None)
