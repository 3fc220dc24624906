"""ONNX export through tf2onnx: float32, named input and outputs, dynamic batch axis."""

from __future__ import annotations

import os
import re
import tempfile
from typing import Optional

import keras
import tensorflow as tf

from keras_resnet_v2.export.savedmodel import _alive, _check_classifier, float32_copy, serving_outputs

DEFAULT_OPSET = 17
ONNX_LEFTOVER = re.compile(r"\.tmp-(.+\.onnx)-(\d+)-\w+\.onnx")


def export_onnx(model: keras.Model, path: str, opset: Optional[int] = None) -> str:
    """Writes `model` as ONNX to `path` (atomically) and returns the path.

    Input `images` [batch, H, W, C] float32 pixels 0-255; outputs `probabilities`
    [batch, classes] float32 and `classes` [batch] int64.
    """
    import tf2onnx

    _check_classifier(model)
    opset = DEFAULT_OPSET if opset is None else opset
    if not isinstance(opset, int) or isinstance(opset, bool) or not 13 <= opset <= 18:
        raise ValueError(f"`opset` must be an integer from 13 to 18. Received: opset={opset!r}")
    path = os.path.abspath(os.fspath(path))
    if not path.endswith(".onnx"):
        raise ValueError(f"The ONNX file name must end in .onnx. Received: path={path!r}")
    serving_model = float32_copy(model)
    spec = (tf.TensorSpec([None, *serving_model.input_shape[1:]], tf.float32, name="images"),)
    serve = tf.function(serving_outputs(serving_model), input_signature=spec)

    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):  # what a killed export of this file left behind
        match = ONNX_LEFTOVER.fullmatch(name)
        if match and match.group(1) == os.path.basename(path) and not _alive(int(match.group(2))):
            os.remove(os.path.join(folder, name))
    handle, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(path)}-{os.getpid()}-", suffix=".onnx",
                                   dir=folder)
    os.close(handle)
    try:
        tf2onnx.convert.from_function(serve, input_signature=spec, opset=opset, output_path=tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
