"""ONNX export through tf2onnx: float32, named input and outputs, dynamic batch axis."""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Optional, Sequence

import keras
import tensorflow as tf

from keras_resnet_v2.export.savedmodel import (
    NON_FINITE_ONNX,
    Staged,
    _check_classifier,
    float32_copy,
    metadata,
    serving_outputs,
    with_input_scale,
)
from keras_resnet_v2.plumbing.files import DirectoryLock, check_writable_directory

DEFAULT_OPSET = 17
# `.tmp-NAME.onnx-<random>.onnx`: an ONNX file being written (or left by a killed export).
ONNX_LEFTOVER = re.compile(r"\.tmp-(.+\.onnx)-\w+\.onnx")


def check_onnx_arguments(model: keras.Model, path: str, opset: Optional[int] = None) -> tuple[str, int]:
    """Every check that needs no writing; returns the absolute path and the opset."""
    _check_classifier(model)
    opset = DEFAULT_OPSET if opset is None else opset
    if not isinstance(opset, int) or isinstance(opset, bool) or not 13 <= opset <= 18:
        raise ValueError(f"`opset` must be an integer from 13 to 18. Received: opset={opset!r}")
    path = os.path.abspath(os.fspath(path))
    if not path.endswith(".onnx"):
        raise ValueError(f"The ONNX file name must end in .onnx. Received: path={path!r}")
    if os.path.isdir(path):
        raise ValueError(f"The ONNX file path is a directory. Received: path={path!r}")
    check_writable_directory(os.path.dirname(path), "The ONNX file's folder")
    return path, opset


def onnx_lock(path: str) -> DirectoryLock:
    """The lock of one ONNX file (`.NAME.onnx.lock` beside it): one writer per file."""
    folder, name = os.path.split(path)
    return DirectoryLock(folder, "an ONNX export", lock_name=f".{name}.lock", target=path)


def _describe(path: str, serving_model: keras.Model, labels: Optional[Sequence[str]], extra: Optional[dict]) -> None:
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
    props = {**metadata(serving_model), "non_finite_input": NON_FINITE_ONNX, **(extra or {})}
    if labels is not None:
        props["class_names"] = list(labels)
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(proto, path)


def stage_onnx(model: keras.Model, path: str, opset: int, labels: Optional[Sequence[str]] = None,
               extra_metadata: Optional[dict] = None) -> Staged:
    """Writes the ONNX file to a hidden temporary sibling of `path` (whose `onnx_lock` the caller holds)."""
    import tf2onnx

    folder = os.path.dirname(path)
    for name in os.listdir(folder):  # what a killed export of this file left behind
        match = ONNX_LEFTOVER.fullmatch(name)
        if match and match.group(1) == os.path.basename(path):
            os.remove(os.path.join(folder, name))
    serving_model = float32_copy(model)
    spec = (tf.TensorSpec([None, *serving_model.input_shape[1:]], tf.float32, name="images"),)
    serve = tf.function(serving_outputs(serving_model), input_signature=spec)
    handle, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(path)}-", suffix=".onnx", dir=folder)
    os.close(handle)
    staged = Staged(tmp, path)
    try:
        tf2onnx.convert.from_function(serve, input_signature=spec, opset=opset, output_path=tmp)
        _describe(tmp, serving_model, labels, extra_metadata)
    except BaseException:
        staged.discard()
        raise
    return staged


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
