"""timm's pre-activation ResNets as ours: the conversion, and `weights="imagenet"`.

timm's `resnetv2_50` / `resnetv2_101` (and the basic-unit `resnetv2_18` / `resnetv2_34`) are the
paper's ImageNet networks with our `ResNet50()` layout (`stride_in="first"`, Fig. 4(e) units,
identity shortcuts, 1x1 projections reading the pre-activated input without BatchNorm, a final
BN-ReLU): only the names differ, and the padding, which is PyTorch's (`padding="symmetric"`, our
default). `copy_timm_weights` copies a checkpoint (read by timm_checkpoint.py, without Keras) into a
built network, checking that no tensor is left over or missing and every shape fits.

This module sits below `ResNet` and above the builder: `ResNet(weights="imagenet")` calls
`imagenet_model`, which builds through `builder.build` from the caller's checked `Config`.
`from_timm` (a user's checkpoint with `ResNet`'s arguments) is in timm_model.py, above `ResNet`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Union

import keras
import numpy as np

from keras_resnet_v2.builder import build
from keras_resnet_v2.config import Config
from keras_resnet_v2.depths import IMAGENET_DEPTHS_TRAINED, TIMM_MODELS  # noqa: F401 - TIMM_MODELS: public here
from keras_resnet_v2.layers import Standardize
from keras_resnet_v2.models import functional_like
from keras_resnet_v2.plumbing.files import atomic_write, atomic_write_text, file_sha256, read_json_object
from keras_resnet_v2.timm_checkpoint import (  # noqa: F401 - read_safetensors, timm_key: public here too
    TIMM_MEAN,
    TIMM_SERVING,
    TIMM_STANDARDIZE,
    TIMM_STD,
    TOP_LAYERS,
    UNIT_LAYER,
    DownloadError,
    download,
    load_state_dict,
    read_safetensors,
    timm_architecture,
    timm_key,
)
from keras_resnet_v2.weights import assign_by_unit, slot_shape, weights_by_unit

# ------------------------------------------------------------------ the converter


def timm_standardize(data_format: str = "channels_last") -> Standardize:
    """timm's normalization of 0..255 pixels (its mean and std times 255), over the channels of `data_format`."""
    shape = (3, 1, 1) if data_format == "channels_first" else (3,)
    return Standardize(mean=np.reshape([255.0 * m for m in TIMM_MEAN], shape),
                       variance=np.reshape([(255.0 * s) ** 2 for s in TIMM_STD], shape), name=TIMM_STANDARDIZE)


def timm_preprocessing(model: keras.Model) -> Union[dict, None]:
    """`TIMM_SERVING` for a model `from_timm` built with `standardize=True` (its `timm_standardize`
    layer), else None: how `resnet-v2-export` and `resnet-v2-train evaluate` size its test images.

    Example:
        >>> model = from_timm("timm_resnetv2_18_tiny.safetensors")  # doctest: +SKIP
        >>> timm_preprocessing(model)["crop_fraction"]  # doctest: +SKIP
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


def imagenet_config(cfg: Config) -> Config:
    """The network timm trained, as `cfg`'s depth describes it: what the cache holds, whatever the caller
    asked for around it (head, input size, dtype, form), since those do not change the weights."""
    return dataclasses.replace(cfg, include_top=True, pooling=None, classes=1000, classifier_activation="softmax",
                               input_shape=(224, 224, 3), dtype=keras.dtype_policies.get("float32"), name=None,
                               remat=False, scan=False, stream_dtype=None, weights=None, data_format="channels_last")


def imagenet_weights(cfg: Config) -> str:
    """The cached `.keras` file of timm's ImageNet network of `cfg.depth`, converted and verified on first use.

    The cache (`imagenet_cache_dir()`) holds `NAME.keras` (`imagenet_config(cfg)` on timm's `Standardize`:
    224x224, 1000 classes) and `NAME.json` (the source checkpoint's and the file's SHA-256). A cached file
    whose checksum no longer matches is converted again. The source is `NAME.safetensors` in the cache
    folder when a user put it there (no network needed), else downloaded through `huggingface_hub`;
    offline with neither, one line says what to download and where to put it. The source must hold the
    named network (depth, widths, 1000 classes) before anything is converted, and the conversion is
    verified before it is cached: the saved file, loaded back, answers a batch as the converted model does.
    """
    name = IMAGENET_DEPTHS_TRAINED[cfg.depth]
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
            source = download(name, what="weights")
        except DownloadError as error:
            state = (f"the copy in {folder} no longer matches its recorded checksum" if os.path.isfile(cached)
                     else f"there is no copy of it in {folder}")
            raise ValueError(f"weights='imagenet' converts timm's {name} once, and {state}; the download failed "
                             f"({error.reason}). Download https://huggingface.co/timm/{name}/resolve/main/"
                             f"model.safetensors and save it as {source}. Received: weights='imagenet'") from None
    trained = imagenet_config(cfg)
    state = load_state_dict(source)
    expected = {"depth": cfg.depth, "widths": trained.widths, "classes": 1000}
    try:
        found = timm_architecture(state)
    except ValueError as error:  # not a ResNetV2 of the paper's table at all
        found = {"architecture": str(error)}
        expected = {"architecture": f"ResNet-{cfg.depth}"}
    differ = [f"{key} {found[key]!r} (timm's {name}: {value!r})" for key, value in expected.items()
              if found[key] != value]
    if differ:
        raise ValueError(f"{source} is not timm's {name}: it has {', '.join(differ)}; nothing was converted or "
                         "cached. Replace or delete it. Received: weights='imagenet'")
    inputs = keras.Input(shape=trained.input_shape, name="input")
    network = build(trained, input_tensor=timm_standardize()(inputs))
    model = functional_like(network, inputs, network.output, network.name)
    copy_timm_weights(state, model, new_head=False)
    batch = np.random.default_rng(0).uniform(0, 255, (2, *model.input_shape[1:])).astype("float32")
    expected_answer = np.asarray(model(batch, training=False))

    def write(tmp: str) -> None:
        model.save(tmp)
        reloaded = keras.models.load_model(tmp, compile=False)
        got = np.asarray(reloaded(batch, training=False))
        if not np.array_equal(got, expected_answer):  # the same weights and kernels: the same numbers
            raise ValueError(f"the converted {name} does not load back as it was saved: not cached")

    atomic_write(cached, write)
    atomic_write_text(record, json.dumps({"source": f"timm/{name}", "source_sha256": file_sha256(source),
                                          "keras_sha256": file_sha256(cached)}, indent=2))
    return cached


def imagenet_model(cfg: Config, input_tensor: Any = None) -> keras.Model:
    """`ResNet(..., weights="imagenet")`: the network `cfg` describes (checked by `check_arguments`) on timm's
    `Standardize` (pixels 0..255 in), with the cached trained weights loaded (all but the classifier with
    include_top=False)."""
    path = imagenet_weights(cfg)
    if input_tensor is None:
        inputs = keras.Input(shape=cfg.input_shape, name="input")
    else:
        inputs = keras.utils.get_source_inputs(input_tensor)[0]
    x = timm_standardize(cfg.data_format)(inputs if input_tensor is None else input_tensor)
    network = build(dataclasses.replace(cfg, weights=path, name=None), input_tensor=x)
    return functional_like(network, inputs, network.output, cfg.name or network.name)
