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
from typing import Any, Mapping, Union

import keras
import numpy as np

from keras_resnet_v2.depths import IMAGENET_DEPTHS_TRAINED, TIMM_MODELS  # noqa: F401 - TIMM_MODELS: public here
from keras_resnet_v2.layers import Standardize
from keras_resnet_v2.models import functional_like
from keras_resnet_v2.names import short_repr
from keras_resnet_v2.plumbing.files import file_sha256
from keras_resnet_v2.resnet import ResNet
from keras_resnet_v2.timm_checkpoint import (  # noqa: F401 - read_safetensors, timm_key: public here too
    TIMM_MEAN,
    TIMM_SERVING,
    TIMM_STANDARDIZE,
    TIMM_STD,
    TOP_LAYERS,
    UNIT_LAYER,
    download,
    load_state_dict,
    read_safetensors,
    timm_architecture,
    timm_key,
)
from keras_resnet_v2.weights import assign_by_unit, slot_shape, weights_by_unit

# Builder arguments that keep the checkpoint's architecture (anything else would not fit it).
_BUILDER_ARGUMENTS = ("include_top", "input_shape", "pooling", "classes", "classifier_activation", "dtype",
                      "name", "remat", "scan", "fused_batchnorm", "data_format")


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
    copy_timm_weights(state, model, new_head=arguments["classes"] != architecture["classes"])
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


def _as_ours(key: str, value: np.ndarray) -> np.ndarray:
    if value.ndim == 4 and key.startswith("head.fc"):  # a 1x1 conv classifier: a dense kernel
        return value.reshape(value.shape[:2]).T
    if value.ndim == 4:  # (out, in, kh, kw) -> (kh, kw, in, out)
        return value.transpose(2, 3, 1, 0)
    return value.T if value.ndim == 2 else value


def copy_timm_weights(state: Mapping[str, np.ndarray], model: keras.Model, new_head: bool,
                      what: str = "source") -> None:
    """Copies timm's `state` (`load_state_dict`) into `model`, our network of its architecture, by unit
    address; `new_head`: the model's classifier is new (timm's is left out). Every tensor must find its
    place and every weight its tensor: one-line ValueErrors naming the argument `what` otherwise."""
    want = {address: slot for address, slot in weights_by_unit(model).items()
            if address[0] in TOP_LAYERS or UNIT_LAYER.match(address[0])}
    has_head = any(address[0] == "predictions" for address in want)
    if new_head:
        want = {address: slot for address, slot in want.items() if address[0] != "predictions"}
    keys = {address: timm_key(*address) for address in want}
    # timm's classifier is used, or deliberately dropped (a new head, or none).
    used = set(keys.values()) | ({"head.fc.weight", "head.fc.bias"} if new_head or not has_head else set())
    missing = sorted(set(keys.values()) - set(state))
    if missing:
        raise ValueError(f"`{what}` has no {missing[0]!r}, which this network needs ({len(missing)} missing).")
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"`{what}` holds {unused[0]!r}, which this network has no place for ({len(unused)} left "
                         "over): it is not the paper's pre-activation layout.")
    values = {}
    for address, slot in want.items():
        value = _as_ours(keys[address], state[keys[address]])
        shape = slot_shape(slot)
        if value.shape != shape:
            raise ValueError(f"`{what}` {keys[address]!r} has shape {value.shape} as ours, this network needs "
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
            if read_json_object(record).get("keras_sha256") == file_sha256(cached):
                return cached
        except ValueError:  # a damaged record: convert again
            pass
    source = os.path.join(folder, f"{name}.safetensors")
    if not os.path.isfile(source):
        try:
            source = download(name)
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
    atomic_write_text(record, json.dumps({"source": f"timm/{name}", "source_sha256": file_sha256(source),
                                          "keras_sha256": file_sha256(cached)}, indent=2))
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
