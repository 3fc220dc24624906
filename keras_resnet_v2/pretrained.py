"""Starting from a trained network: timm's pre-activation ResNets, converted to ours.

timm's `resnetv2_50` / `resnetv2_101` (and the basic-unit `resnetv2_18` / `resnetv2_34`) are the
paper's ImageNet networks with our `ResNet50()` layout (`stride_in="first"`, Fig. 4(e) units,
identity shortcuts, 1x1 projections reading the pre-activated input without BatchNorm, a final
BN-ReLU): only the names differ, and the padding, which is PyTorch's (`padding="symmetric"`, our
default). `from_timm` infers the network from the checkpoint, builds it, copies every weight and
checks that none is left over or missing. Reads `.safetensors` itself (no PyTorch needed), `.pth`
with PyTorch, and downloads by timm name through `huggingface_hub` when that is installed.
"""

from __future__ import annotations

import json
import os
import re
import struct
from typing import Any, Mapping, Union

import keras
import numpy as np

from keras_resnet_v2.depths import IMAGENET_DEPTHS, IMAGENET_DEPTHS_TRAINED, TIMM_MODELS
from keras_resnet_v2.layers import Standardize
from keras_resnet_v2.models import functional_like
from keras_resnet_v2.names import short_repr
from keras_resnet_v2.resnet import ResNet
from keras_resnet_v2.weights import assign_by_unit, slot_shape, weights_by_unit

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
# Their test-time sizing (timm's crop_pct 0.95, bicubic) for `serve_image_bytes` and evaluation
# (keras_resnet_v2.plumbing.images): the shorter side to floor(224 / 0.95) = 235, then the centre 224 crop.
TIMM_SERVING = {"mode": "shorter_side_crop", "crop_fraction": 0.95, "interpolation": "bicubic"}
# The name of the Standardize layer from_timm puts in front; exports and evaluation of a model that
# has it default to TIMM_SERVING (`timm_preprocessing`), so a converted `.keras` file needs no flags.
TIMM_STANDARDIZE = "timm_standardize"
# Builder arguments that keep the checkpoint's architecture (anything else would not fit it).
_BUILDER_ARGUMENTS = ("include_top", "input_shape", "pooling", "classes", "classifier_activation", "dtype",
                      "name", "remat", "scan", "fused_batchnorm", "data_format")

# Our per-unit layer suffix -> timm's module inside `stages.{s}.blocks.{u}` (PreActBottleneck/Basic).
_UNIT_PARTS = {"preact_bn": "norm1", "1_conv": "conv1", "1_bn": "norm2", "2_conv": "conv2", "2_bn": "norm3",
               "3_conv": "conv3", "shortcut_conv": "downsample.conv"}
_TOP_LAYERS = {"stem_conv": "stem.conv", "post_bn": "norm", "predictions": "head.fc"}
_FIELDS = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
           "moving_mean": "running_mean", "moving_variance": "running_var"}
_UNIT = re.compile(r"^stage(\d+)_unit(\d+)_(.+)$")
_BLOCK = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.")


def timm_key(layer: str, field: str) -> str:
    """timm's name of one of our weights: ("stage2_unit1_shortcut_conv", "kernel") ->
    "stages.1.blocks.0.downsample.conv.weight"."""
    match = _UNIT.match(layer)
    module = (f"stages.{int(match.group(1)) - 1}.blocks.{int(match.group(2)) - 1}.{_UNIT_PARTS[match.group(3)]}"
              if match else _TOP_LAYERS[layer])
    return f"{module}.{_FIELDS[field]}"


def _check_name(name: str) -> str:
    architecture = name.split(".")[0]
    if architecture in TIMM_MODELS:
        return architecture
    for pattern, what in _REFUSED:
        if re.search(pattern, architecture):
            raise ValueError(f"`source` {name!r} is {what}, not the paper's pre-activation network: from_timm "
                             f"converts {', '.join(TIMM_MODELS)}. Received: source={name!r}")
    raise ValueError(f"`source` must be a timm model name ({', '.join(TIMM_MODELS)}, optionally with a tag such "
                     f"as 'resnetv2_50.a1h_in1k'), a .safetensors or .pth file, or a state dict. "
                     f"Received: source={short_repr(name)}")


# ------------------------------------------------------------------ reading checkpoints

_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
                       "I8": "i1", "U8": "u1", "BOOL": "?"}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """A `.safetensors` file's tensors as NumPy arrays (the format: an 8-byte little-endian header
    length, a JSON header of dtype, shape and byte offsets, then the data). BF16 via ml_dtypes."""
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        (length,) = struct.unpack("<Q", data[:8])
        if not 2 <= length <= len(data) - 8:
            raise ValueError(f"header length {length} outside the file")
        header = json.loads(data[8:8 + length])
        body = memoryview(data)[8 + length:]
        tensors = {}
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            if entry["dtype"] == "BF16":
                import ml_dtypes  # a Keras dependency

                dtype = np.dtype(ml_dtypes.bfloat16)
            else:
                dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]])
            start, end = entry["data_offsets"]
            shape = tuple(entry["shape"])
            if not 0 <= start <= end <= len(body) or end - start != dtype.itemsize * int(np.prod(shape)):
                raise ValueError(f"tensor {key!r} lies outside the file")
            tensors[key] = np.frombuffer(body[start:end], dtype).reshape(shape)
        return tensors
    except (struct.error, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"`source` is not a readable .safetensors file ({error}). Received: source={path!r}") \
            from error


def _read_torch(path: str) -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        raise ValueError("`source` is a PyTorch file: reading it needs PyTorch (pip install torch), or convert it "
                         f"to .safetensors. Received: source={path!r}") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _download(name: str) -> str:
    architecture = name.split(".")[0]
    full = name if "." in name else f"{name}.{TIMM_MODELS[architecture]}"
    if full.endswith("."):
        raise ValueError(f"timm publishes no trained weights for {architecture!r}: pass a checkpoint file. "
                         f"Received: source={name!r}")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ValueError(f"Downloading {full!r} needs huggingface_hub (pip install huggingface_hub); or download "
                         f"https://huggingface.co/timm/{full}/resolve/main/model.safetensors and pass that file. "
                         f"Received: source={name!r}") from None
    try:
        return hf_hub_download(f"timm/{full}", "model.safetensors")
    except Exception as error:  # noqa: BLE001 - offline, unknown tag, HTTP errors: one line each
        raise ValueError(f"Could not download timm/{full} ({type(error).__name__}: {short_repr(str(error), 160)}); "
                         f"with no network, download https://huggingface.co/timm/{full}/resolve/main/"
                         f"model.safetensors elsewhere and pass that file. Received: source={name!r}") from None


def load_state_dict(source: Union[str, os.PathLike, Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """timm's parameters and buffers as float32 NumPy arrays, from any `source` `from_timm` takes."""
    if isinstance(source, Mapping):
        state = source
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if path.endswith(".safetensors") or path.endswith((".pth", ".pt", ".bin")):
            if not os.path.isfile(path):
                raise ValueError(f"`source` file does not exist. Received: source={path!r}")
            state = read_safetensors(path) if path.endswith(".safetensors") else _read_torch(path)
        else:
            _check_name(path)
            state = read_safetensors(_download(path))
    else:
        raise ValueError("`source` must be a timm model name, a .safetensors or .pth path, or a state dict. "
                         f"Received: source={short_repr(source)}")
    arrays = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):  # a training counter, not a weight
            continue
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().float().numpy()
        arrays[str(key)] = np.asarray(value, dtype="float32")
    return arrays


# ------------------------------------------------------------------ the architecture


def _refuse(what: str) -> ValueError:
    return ValueError(f"`source` holds {what}, not the paper's pre-activation network: from_timm converts timm's "
                      f"{', '.join(TIMM_MODELS)}.")


def timm_architecture(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The `ResNet(...)` arguments of a timm ResNetV2 state dict (depth, widths, classes), or a
    one-line ValueError naming what the checkpoint holds instead."""
    if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        raise _refuse("the original post-activation ResNet (v1: conv1, layer1..layer4)")
    if "stem.conv1.weight" in state:
        raise _refuse("a deep 3x3 stem (ResNet-D: stem.conv1..conv3)")
    if "stem.conv.weight" not in state or "norm.weight" not in state:
        raise _refuse("no timm ResNetV2 stem and final norm (stem.conv.weight, norm.weight)")
    if "norm.running_mean" not in state:
        raise _refuse("normalization layers without running statistics (BiT's GroupNorm)")
    if tuple(state["stem.conv.weight"].shape[2:]) != (7, 7):
        raise _refuse(f"a {state['stem.conv.weight'].shape[2]}x{state['stem.conv.weight'].shape[3]} stem")
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
                      f"the paper's ImageNet table ({sorted(IMAGENET_DEPTHS)})")
    widths = tuple(int(state[f"stages.{s}.blocks.0.conv1.weight"].shape[0]) for s in range(len(units)))
    if bottleneck and any(state[f"stages.{s}.blocks.0.conv3.weight"].shape[0] != 4 * w for s, w in enumerate(widths)):
        raise _refuse("bottleneck units whose output is not 4x their inner width")
    stem = int(state["stem.conv.weight"].shape[0])
    if stem != widths[0]:
        raise _refuse(f"a stem of {stem} filters before a first stage of width {widths[0]} (ours are equal)")
    head = state.get("head.fc.weight")
    return {"depth": depth, "widths": widths, "classes": None if head is None else int(head.shape[0])}


def _as_ours(key: str, value: np.ndarray) -> np.ndarray:
    if value.ndim == 4 and key.startswith("head.fc"):  # a 1x1 conv classifier: a dense kernel
        return value.reshape(value.shape[:2]).T
    if value.ndim == 4:  # (out, in, kh, kw) -> (kh, kw, in, out)
        return value.transpose(2, 3, 1, 0)
    return value.T if value.ndim == 2 else value


# ------------------------------------------------------------------ the converter


def from_timm(source: Union[str, os.PathLike, Mapping[str, Any]], *, standardize: bool = True,
              **builder_arguments: Any) -> keras.Model:
    """Our network with the weights of timm's pre-activation ResNet (`resnetv2_50`, `resnetv2_101`, ...).

    Args:
        source: a timm model name (`"resnetv2_50.a1h_in1k"`, or `"resnetv2_50"` for its default tag;
            downloaded with `huggingface_hub`), a `.safetensors` or `.pth` checkpoint, or a state dict
            (name -> array or torch tensor).
        standardize: put `Standardize` with timm's mean and std (times 255) in front, so the model takes
            RGB pixels 0..255 as the package's trained models do; False: inputs already normalized as timm
            expects (pixels / 255, minus mean, over std).
        **builder_arguments: `include_top`, `input_shape` (default 224x224x3), `pooling`, `classes` (another
            count gets a new, untrained head), `classifier_activation` (default softmax; timm's model gives
            logits: pass None), `dtype`, `name`, `remat`, `scan`, `fused_batchnorm`, `data_format`, as for
            `ResNet`.

    Returns:
        A `keras.Model` built by `ResNet` with padding="symmetric", whose inference outputs equal timm's
        `model.eval()(x)` on the same images (tests/test_pretrained.py).

    Example:
        >>> model = keras_resnet_v2.from_timm("resnetv2_50.a1h_in1k")  # needs huggingface_hub and a network
        >>> model = keras_resnet_v2.from_timm("model.safetensors", include_top=False, pooling="avg")
    """
    if not isinstance(standardize, bool):
        raise ValueError(f"`standardize` must be True or False. Received: standardize={standardize!r}")
    for key, value in builder_arguments.items():
        if key not in _BUILDER_ARGUMENTS:
            raise ValueError(f"from_timm takes the checkpoint's architecture; of ResNet's arguments it accepts "
                             f"{', '.join(_BUILDER_ARGUMENTS)}. Received: {key}={short_repr(value)}")
    state = load_state_dict(source)
    architecture = timm_architecture(state)
    arguments = {"family": "imagenet", "padding": "symmetric", "widths": architecture["widths"],
                 "classes": architecture["classes"], **builder_arguments}
    if arguments.get("include_top", True) and arguments["classes"] is None:
        raise ValueError("`source` has no classifier (head.fc): pass include_top=False, or classes=N for a new "
                         "head. Received: classes=None")
    if standardize:
        data_format = arguments.get("data_format") or keras.config.image_data_format()
        default_shape = (3, 224, 224) if data_format == "channels_first" else (224, 224, 3)
        inputs = keras.Input(shape=arguments.pop("input_shape", None) or default_shape, name="input")
        x = timm_standardize(data_format)(inputs)
        name = arguments.pop("name", None)
        network = ResNet(architecture["depth"], input_tensor=x, **arguments)
        model = functional_like(network, inputs, network.output, name or network.name)
    else:
        model = ResNet(architecture["depth"], **arguments)
    _copy_timm_weights(state, model, new_head=arguments["classes"] != architecture["classes"])
    return model


def timm_standardize(data_format: str = "channels_last") -> Standardize:
    """timm's normalization of 0..255 pixels (its mean and std times 255), over the channels of `data_format`."""
    shape = (3, 1, 1) if data_format == "channels_first" else (3,)
    return Standardize(mean=np.reshape([255.0 * m for m in TIMM_MEAN], shape),
                       variance=np.reshape([(255.0 * s) ** 2 for s in TIMM_STD], shape), name=TIMM_STANDARDIZE)


def timm_preprocessing(model: keras.Model) -> Union[dict, None]:
    """`TIMM_SERVING` for a model `from_timm` built with `standardize=True` (its `timm_standardize`
    layer), else None: how `resnet-v2-export` and `resnet-v2-train evaluate` size its test images.

    Example:
        >>> timm_preprocessing(from_timm("tests/data/timm_resnetv2_18_tiny.safetensors"))["crop_fraction"]
        0.95
    """
    names = {layer.name for layer in model.layers[:3]}
    return dict(TIMM_SERVING) if TIMM_STANDARDIZE in names else None


def _copy_timm_weights(state: Mapping[str, np.ndarray], model: keras.Model, new_head: bool) -> None:
    want = {address: slot for address, slot in weights_by_unit(model).items()
            if address[0] in _TOP_LAYERS or _UNIT.match(address[0])}
    has_head = any(address[0] == "predictions" for address in want)
    if new_head:
        want = {address: slot for address, slot in want.items() if address[0] != "predictions"}
    keys = {address: timm_key(*address) for address in want}
    # timm's classifier is used, or deliberately dropped (a new head, or none).
    used = set(keys.values()) | ({"head.fc.weight", "head.fc.bias"} if new_head or not has_head else set())
    missing = sorted(set(keys.values()) - set(state))
    if missing:
        raise ValueError(f"`source` has no {missing[0]!r}, which this network needs ({len(missing)} missing).")
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"`source` holds {unused[0]!r}, which this network has no place for ({len(unused)} left "
                         "over): it is not the paper's pre-activation layout.")
    values = {}
    for address, slot in want.items():
        value = _as_ours(keys[address], state[keys[address]])
        shape = slot_shape(slot)
        if value.shape != shape:
            raise ValueError(f"`source` {keys[address]!r} has shape {value.shape} as ours, this network needs "
                             f"{shape}.")
        values[address] = value
    assign_by_unit(want, values)


# ------------------------------------------------------------------ weights="imagenet"
# keras.applications' `weights="imagenet"`: timm's trained checkpoint of the depth (IMAGENET_DEPTHS_TRAINED),
# converted once and kept as a `.keras` file in Keras' cache folder.


def imagenet_cache_dir() -> str:
    """`KERAS_HOME/models/keras_resnet_v2` (Keras' cache folder; KERAS_HOME defaults to ~/.keras)."""
    home = os.path.expanduser(os.environ.get("KERAS_HOME", os.path.join("~", ".keras")))
    return os.path.join(home, "models", "keras_resnet_v2")


def _sha256(path: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def imagenet_weights(depth: int) -> str:
    """The cached `.keras` file of timm's ImageNet network of `depth`, converted and verified on first use.

    The cache (`imagenet_cache_dir()`) holds `NAME.keras` (the network `from_timm` builds: timm's
    `Standardize` in front, 224x224, 1000 classes) and `NAME.json` (the source checkpoint's and the
    file's SHA-256). A cached file whose checksum no longer matches is converted again. The source is
    `NAME.safetensors` in the cache folder when a user put it there (no network needed), else downloaded
    through `huggingface_hub`; offline with neither, one line says what to download and where to put it.
    The conversion is verified before it is cached: the saved file, loaded back, answers a batch as the
    converted model does.
    """
    from keras_resnet_v2.plumbing.files import atomic_write, atomic_write_text, read_json_object

    name = IMAGENET_DEPTHS_TRAINED[depth]
    folder = imagenet_cache_dir()
    cached, record = os.path.join(folder, f"{name}.keras"), os.path.join(folder, f"{name}.json")
    if os.path.isfile(cached) and os.path.isfile(record):
        try:
            if read_json_object(record).get("keras_sha256") == _sha256(cached):
                return cached
        except ValueError:  # a damaged record: convert again
            pass
    source = os.path.join(folder, f"{name}.safetensors")
    if not os.path.isfile(source):
        try:
            source = _download(name)
        except ValueError as error:
            raise ValueError(f"weights='imagenet' converts timm's {name} once, and there is no copy of it in "
                             f"{folder} ({error}). Download https://huggingface.co/timm/{name}/resolve/main/"
                             f"model.safetensors and save it as {source}. Received: weights='imagenet'") from None
    model = from_timm(source)
    batch = np.random.default_rng(0).uniform(0, 255, (2, *model.input_shape[1:])).astype("float32")
    expected = np.asarray(model(batch, training=False))

    def write(tmp: str) -> None:
        model.save(tmp)
        reloaded = keras.models.load_model(tmp, compile=False)
        got = np.asarray(reloaded(batch, training=False))
        if not np.array_equal(got, expected):  # the same weights and kernels: the same numbers
            raise ValueError(f"the converted {name} does not load back as it was saved: not cached")

    atomic_write(cached, write)
    atomic_write_text(record, json.dumps({"source": f"timm/{name}", "source_sha256": _sha256(source),
                                          "keras_sha256": _sha256(cached)}, indent=2))
    return cached



def imagenet_model(cfg, input_tensor: Any = None) -> keras.Model:
    """`ResNet(..., weights="imagenet")`: the network `cfg` describes (checked by `check_arguments`) on timm's
    `Standardize`, as `from_timm` builds it (pixels 0..255 in), with the cached trained weights loaded (all
    but the classifier with include_top=False)."""
    import dataclasses

    from keras_resnet_v2.resnet import build

    path = imagenet_weights(cfg.depth)
    if input_tensor is None:
        inputs = keras.Input(shape=cfg.input_shape, name="input")
    else:
        inputs = keras.utils.get_source_inputs(input_tensor)[0]
    x = timm_standardize(cfg.data_format)(inputs if input_tensor is None else input_tensor)
    network = build(dataclasses.replace(cfg, weights=path, name=None), input_tensor=x)
    return functional_like(network, inputs, network.output, cfg.name or network.name)
