"""timm's pre-activation ResNet checkpoints, read without Keras: their files, names and architecture.

What `from_timm` (keras_resnet_v2/timm_model.py) and `resnet-v2-train --init` need before any
network is built: `.safetensors` files read here (the header alone with `safetensors_shapes`), `.pth`
with PyTorch, timm names downloaded through `huggingface_hub`; `timm_architecture` infers the
`ResNet(...)` arguments from the tensor names and shapes. NumPy only, so the command lines check a
checkpoint before TensorFlow starts.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from types import SimpleNamespace
from typing import Any, Mapping, Union

import numpy as np

from keras_resnet_v2.depths import IMAGENET_DEPTHS, TIMM_MODELS
from keras_resnet_v2.names import short_repr

# Other timm names a user may try, and why they are not this network.
_REFUSED: tuple[tuple[str, str], ...] = (
    (r"_bit|x\d", "BiT (GroupNorm and weight-standardized convolutions)"),
    (r"d_(gn|evos|frn)$", "a ResNet-D with GroupNorm, EvoNorm or FilterResponseNorm"),
    (r"^resnetv2_\d+[dt]$", "a ResNet-D (deep 3x3 stem, average-pool downsampling)"),
    (r"^resnet\d", "the original post-activation ResNet (v1, He et al. 2015)"),
)
# timm's preprocessing of these checkpoints (its pretrained config): pixels / 255, then these.
TIMM_MEAN = (0.485, 0.456, 0.406)
TIMM_STD = (0.229, 0.224, 0.225)
#: timm's test-time sizing (timm's crop_pct 0.95, bicubic) for `serve_image_bytes` and evaluation
#: (keras_resnet_v2.plumbing.images): the shorter side to floor(224 / 0.95) = 235, then the centre 224 crop.
TIMM_SERVING = {"mode": "shorter_side_crop", "crop_fraction": 0.95, "interpolation": "bicubic"}
# The name of the Standardize layer from_timm puts in front; exports and evaluation of a model that
# has it default to TIMM_SERVING (`timm_preprocessing`), so a converted `.keras` file needs no flags.
TIMM_STANDARDIZE = "timm_standardize"
# Our per-unit layer suffix -> timm's module inside `stages.{s}.blocks.{u}` (PreActBottleneck/Basic).
_UNIT_PARTS = {"preact_bn": "norm1", "1_conv": "conv1", "1_bn": "norm2", "2_conv": "conv2", "2_bn": "norm3",
               "3_conv": "conv3", "shortcut_conv": "downsample.conv"}
TOP_LAYERS = {"stem_conv": "stem.conv", "post_bn": "norm", "predictions": "head.fc"}
_FIELDS = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
           "moving_mean": "running_mean", "moving_variance": "running_var"}
UNIT_LAYER = re.compile(r"^stage(\d+)_unit(\d+)_(.+)$")
_BLOCK = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.")


def timm_key(layer: str, field: str) -> str:
    """timm's name of one of our weights: ("stage2_unit1_shortcut_conv", "kernel") ->
    "stages.1.blocks.0.downsample.conv.weight"."""
    match = UNIT_LAYER.match(layer)
    module = (f"stages.{int(match.group(1)) - 1}.blocks.{int(match.group(2)) - 1}.{_UNIT_PARTS[match.group(3)]}"
              if match else TOP_LAYERS[layer])
    return f"{module}.{_FIELDS[field]}"


def check_timm_name(name: str, what: str = "source") -> str:
    """The timm architecture a timm model name (`resnetv2_50.a1h_in1k`) names, or a one-line ValueError."""
    architecture = name.split(".")[0]
    if architecture in TIMM_MODELS:
        return architecture
    for pattern, kind in _REFUSED:
        if re.search(pattern, architecture):
            raise ValueError(f"`{what}` {name!r} is {kind}, not the paper's pre-activation network: keras_resnet_v2 "
                             f"converts {', '.join(TIMM_MODELS)}. Received: {what}={name!r}")
    raise ValueError(f"`{what}` must be a timm model name ({', '.join(TIMM_MODELS)}, optionally with a tag such "
                     f"as 'resnetv2_50.a1h_in1k'), a .safetensors or .pth file, or a state dict. "
                     f"Received: {what}={short_repr(name)}")


# ------------------------------------------------------------------ reading checkpoints

_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
                       "I8": "i1", "U8": "u1", "BOOL": "?"}


# The safetensors format caps its JSON header at 100 MB; timm's ResNetV2 headers are 10-50 KB.
MAX_HEADER_BYTES = 100 << 20


def _is_count(value, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _safetensors_header(handle, size: int) -> tuple[dict, int]:
    """(header, offset of the data) of an open `.safetensors` file of `size` bytes (the format: an
    8-byte little-endian header length, a JSON header of dtype, shape and byte offsets, then the data).

    Every declared shape is checked before anything is believed: axes positive integers, the byte count
    computed in Python integers (no overflow), and the data exactly that long, inside the file."""
    (length,) = struct.unpack("<Q", handle.read(8))
    if not 2 <= length <= min(size - 8, MAX_HEADER_BYTES):
        raise ValueError(f"header length {length} outside the file")
    header = json.loads(handle.read(length))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    header.pop("__metadata__", None)
    body = size - 8 - length
    for key, entry in header.items():
        if not isinstance(entry, dict):
            raise ValueError(f"tensor {key!r} has no dtype, shape and offsets")
        dtype, shape, offsets = _dtype(entry["dtype"]), entry["shape"], entry["data_offsets"]
        if not isinstance(shape, list) or not all(_is_count(axis, 1) for axis in shape):
            raise ValueError(f"tensor {key!r} declares shape {short_repr(shape)}: axes must be positive integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
            raise ValueError(f"tensor {key!r} declares data offsets {short_repr(offsets)}")
        start, end = offsets
        if not 0 <= start <= end <= body or end - start != dtype.itemsize * math.prod(shape):
            raise ValueError(f"tensor {key!r} lies outside the file, or its data is not {short_repr(shape)} "
                             f"{entry['dtype']} values")
    return header, 8 + length


def _dtype(name: str) -> np.dtype:
    if name == "BF16":
        import ml_dtypes  # a Keras dependency

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_SAFETENSORS_DTYPES[name])


def _read_safetensors(path: str, what: str, data: bool) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            header, offset = _safetensors_header(handle, os.fstat(handle.fileno()).st_size)
            if not data:
                return {key: SimpleNamespace(shape=tuple(entry["shape"])) for key, entry in header.items()}
            handle.seek(offset)
            body = handle.read()
        return {key: np.frombuffer(body[entry["data_offsets"][0]:entry["data_offsets"][1]],
                                   _dtype(entry["dtype"])).reshape(entry["shape"]) for key, entry in header.items()}
    except RecursionError:  # a header nested deeper than Python's JSON reader goes
        raise ValueError(f"`{what}` is not a readable .safetensors file (its header nests too deeply). Received: "
                         f"{what}={path!r}") from None
    except (struct.error, ValueError, KeyError, TypeError, OSError) as error:
        raise ValueError(f"`{what}` is not a readable .safetensors file ({str(error)[:200]}). Received: "
                         f"{what}={path!r}") from None


def read_safetensors(path: str, what: str = "source") -> dict[str, np.ndarray]:
    """A `.safetensors` file's tensors as NumPy arrays (BF16 via ml_dtypes); a one-line ValueError naming
    the argument `what` when the file is not one."""
    return _read_safetensors(path, what, data=True)


def safetensors_shapes(path: str, what: str = "source") -> dict[str, SimpleNamespace]:
    """Each tensor of a `.safetensors` file as an object with its `shape` only: the header is read, the
    data is not (what `timm_architecture` needs, in milliseconds for a 100 MB checkpoint).

    Example:
        >>> timm_architecture(safetensors_shapes("model.safetensors"))["depth"]  # doctest: +SKIP
        50
    """
    return _read_safetensors(path, what, data=False)


def read_torch(path: str, what: str = "source") -> dict[str, Any]:
    """A PyTorch state dict file (`torch.save` of a dict of tensors, or of {"state_dict": ...}), loaded with
    `weights_only=True` (no code runs); a one-line ValueError naming `what` when it is not one."""
    try:
        import torch
    except ImportError:
        raise ValueError(f"`{what}` is a PyTorch file: reading it needs PyTorch (pip install torch), or convert it "
                         f"to .safetensors. Received: {what}={path!r}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - truncated, not a zip/pickle, a refused global: one line each
        raise ValueError(f"`{what}` is not a readable PyTorch state dict ({type(error).__name__}: "
                         f"{short_repr(str(error).splitlines()[0] if str(error) else '', 160)}). Received: "
                         f"{what}={path!r}") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(key, str) for key in state):
        raise ValueError(f"`{what}` holds a {type(state).__name__}, not a state dict (names -> tensors). Received: "
                         f"{what}={path!r}")
    return state


class DownloadError(ValueError):
    """A timm checkpoint could not be downloaded; `reason` says why in a few words."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def download(name: str, what: str = "source") -> str:
    """The local path of timm's `model.safetensors` of a model name, downloaded through huggingface_hub."""
    architecture = name.split(".")[0]
    full = name if "." in name else f"{name}.{TIMM_MODELS[architecture]}"
    if full.endswith("."):
        raise ValueError(f"timm publishes no trained weights for {architecture!r}: pass a checkpoint file. "
                         f"Received: {what}={name!r}")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise DownloadError(f"Downloading {full!r} needs huggingface_hub (pip install huggingface_hub); or download "
                            f"https://huggingface.co/timm/{full}/resolve/main/model.safetensors and pass that file. "
                            f"Received: {what}={name!r}", "huggingface_hub is not installed") from None
    try:
        return hf_hub_download(f"timm/{full}", "model.safetensors")
    except Exception as error:  # noqa: BLE001 - offline, unknown tag, HTTP errors: one line each
        first = (str(error).strip().splitlines() or [""])[0]
        reason = f"{type(error).__name__}: {short_repr(first, 160)}"
        raise DownloadError(f"Could not download timm/{full} ({reason}); with no network, download "
                            f"https://huggingface.co/timm/{full}/resolve/main/model.safetensors elsewhere and pass "
                            f"that file. Received: {what}={name!r}", reason) from None


def load_state_dict(source: Union[str, os.PathLike, Mapping[str, Any]], what: str = "source") -> dict[str, np.ndarray]:
    """timm's parameters and buffers as float32 NumPy arrays, from any `source` `from_timm` takes (`what`: the
    argument one-line errors name)."""
    if isinstance(source, Mapping):
        state = source
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if path.endswith(".safetensors") or path.endswith((".pth", ".pt", ".bin")):
            if not os.path.isfile(path):
                raise ValueError(f"`{what}` file does not exist. Received: {what}={path!r}")
            state = read_safetensors(path, what) if path.endswith(".safetensors") else read_torch(path, what)
        else:
            check_timm_name(path, what)
            state = read_safetensors(download(path, what), what)
    else:
        raise ValueError(f"`{what}` must be a timm model name, a .safetensors or .pth path, or a state dict. "
                         f"Received: {what}={short_repr(source)}")
    arrays = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):  # a training counter, not a weight
            continue
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().float().numpy()
        arrays[str(key)] = np.asarray(value, dtype="float32")
    return arrays


# ------------------------------------------------------------------ the architecture


def _refuse(holds: str, what: str) -> ValueError:
    return ValueError(f"`{what}` holds {holds}, not the paper's pre-activation network: keras_resnet_v2 converts "
                      f"timm's {', '.join(TIMM_MODELS)}.")


def timm_architecture(state: Mapping[str, Any], what: str = "source") -> dict[str, Any]:
    """The `ResNet(...)` arguments of a timm ResNetV2 state dict (depth, widths, classes), or a
    one-line ValueError naming what the checkpoint holds instead."""
    if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        raise _refuse("the original post-activation ResNet (v1: conv1, layer1..layer4)", what)
    if "stem.conv1.weight" in state:
        raise _refuse("a deep 3x3 stem (ResNet-D: stem.conv1..conv3)", what)
    if "stem.conv.weight" not in state or "norm.weight" not in state:
        raise _refuse("no timm ResNetV2 stem and final norm (stem.conv.weight, norm.weight)", what)
    if "norm.running_mean" not in state:
        raise _refuse("normalization layers without running statistics (BiT's GroupNorm)", what)
    if tuple(state["stem.conv.weight"].shape[2:]) != (7, 7):
        raise _refuse(f"a {state['stem.conv.weight'].shape[2]}x{state['stem.conv.weight'].shape[3]} stem", what)
    blocks: dict[int, int] = {}
    for key in state:
        match = _BLOCK.match(key)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
    units = tuple(blocks[s] for s in sorted(blocks))
    bottleneck = "stages.0.blocks.0.conv3.weight" in state
    depth = next((d for d, (b, u) in IMAGENET_DEPTHS.items()
                  if u == units and b == ("bottleneck" if bottleneck else "basic")), None)
    if depth is None:
        raise _refuse(f"{'bottleneck' if bottleneck else 'basic'} units {units} per stage, which is no depth of "
                      f"the paper's ImageNet table ({sorted(IMAGENET_DEPTHS)})", what)
    widths = tuple(int(state[f"stages.{s}.blocks.0.conv1.weight"].shape[0]) for s in range(len(units)))
    if bottleneck and any(state[f"stages.{s}.blocks.0.conv3.weight"].shape[0] != 4 * w for s, w in enumerate(widths)):
        raise _refuse("bottleneck units whose output is not 4x their inner width", what)
    stem = int(state["stem.conv.weight"].shape[0])
    if stem != widths[0]:
        raise _refuse(f"a stem of {stem} filters before a first stage of width {widths[0]} (ours are equal)", what)
    head = state.get("head.fc.weight")
    classes = None if head is None else int(head.shape[0])
    expected = expected_shapes("bottleneck" if bottleneck else "basic", units, widths, classes)
    for key, value in state.items():  # every tensor: in-channels as the layer before gives them, and so on
        shape = tuple(value.shape)
        if key.endswith("num_batches_tracked"):
            continue
        allowed = expected.get(key)
        if allowed is None:
            continue  # a tensor with no place: copy_timm_weights names it
        if shape not in allowed:
            raise ValueError(f"`{what}` holds {key!r} of shape {shape}; a {'bottleneck' if bottleneck else 'basic'} "
                             f"ResNet-{depth} of widths {widths} has {allowed[0]} there: the checkpoint is damaged or "
                             "not one network.")
    return {"depth": depth, "widths": widths, "classes": classes}


def expected_shapes(block: str, units: tuple, widths: tuple, classes: Union[int, None]) -> dict[str, tuple]:
    """timm's key -> the shapes allowed there, for a pre-activation network of `block` units, `units` per
    stage and `widths` (a bottleneck's inner width; its output is 4x), with `classes` outputs."""
    shapes: dict[str, tuple] = {}

    def norm(prefix: str, channels: int) -> None:
        for field in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{field}"] = ((channels,),)

    def conv(key: str, out: int, inputs: int, kernel: int) -> None:
        shapes[key] = ((out, inputs, kernel, kernel),)

    conv("stem.conv.weight", widths[0], 3, 7)
    channels = widths[0]
    for stage, (width, count) in enumerate(zip(widths, units, strict=True)):
        out = 4 * width if block == "bottleneck" else width
        for index in range(count):
            prefix = f"stages.{stage}.blocks.{index}"
            norm(f"{prefix}.norm1", channels)
            if block == "bottleneck":
                conv(f"{prefix}.conv1.weight", width, channels, 1)
                norm(f"{prefix}.norm2", width)
                conv(f"{prefix}.conv2.weight", width, width, 3)
                norm(f"{prefix}.norm3", width)
                conv(f"{prefix}.conv3.weight", out, width, 1)
            else:
                conv(f"{prefix}.conv1.weight", width, channels, 3)
                norm(f"{prefix}.norm2", width)
                conv(f"{prefix}.conv2.weight", width, width, 3)
            if index == 0:
                conv(f"{prefix}.downsample.conv.weight", out, channels, 1)
            channels = out
    norm("norm", channels)
    if classes is not None:
        shapes["head.fc.weight"] = ((classes, channels, 1, 1), (classes, channels))
        shapes["head.fc.bias"] = ((classes,),)
    return shapes
