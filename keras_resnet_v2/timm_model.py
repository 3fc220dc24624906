"""`from_timm`: a timm pre-activation ResNet checkpoint as our network, built with `ResNet`'s arguments.

The architecture comes from the checkpoint (timm_checkpoint.py reads it without Keras); the caller
chooses what does not change the weights (`BUILDER_ARGUMENTS`: the head, input size, dtype, form).
The weights are copied and checked by `pretrained.copy_timm_weights`. This module sits above `ResNet`,
which it calls; `ResNet(weights="imagenet")` converts through pretrained.py, below it.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Mapping, Union

import keras

from keras_resnet_v2.config import ARCHITECTURE
from keras_resnet_v2.models import functional_like
from keras_resnet_v2.names import short_repr
from keras_resnet_v2.pretrained import copy_timm_weights, timm_standardize
from keras_resnet_v2.resnet import ResNet
from keras_resnet_v2.timm_checkpoint import load_state_dict, timm_architecture

# The arguments of `ResNet` a caller may choose for a checkpoint: all but those that decide its weights
# (`config.ARCHITECTURE`, the shortcut's options), the tensor it is built on and the weights themselves.
BUILDER_ARGUMENTS = tuple(
    name for name, parameter in inspect.signature(ResNet).parameters.items()
    if name not in (*ARCHITECTURE, "input_tensor", "weights") and parameter.kind is parameter.KEYWORD_ONLY)


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
            logits: pass None), `dtype`, `name`, `remat`, `scan`, `fused_batchnorm`, `stream_dtype`,
            `data_format`, as for `ResNet` (`BUILDER_ARGUMENTS`: every argument but the architecture's).

    Returns:
        A `keras.Model` built by `ResNet` with padding="symmetric", whose inference outputs equal timm's
        `model.eval()(x)` on the same images (tests/test_pretrained.py).

    Example:
        >>> # needs huggingface_hub and a network:
        >>> model = keras_resnet_v2.from_timm("resnetv2_50.a1h_in1k")  # doctest: +SKIP
        >>> model = keras_resnet_v2.from_timm("model.safetensors", include_top=False, pooling="avg")  # doctest: +SKIP
    """
    if not isinstance(standardize, bool):
        raise ValueError(f"`standardize` must be True or False. Received: standardize={standardize!r}")
    for key, value in builder_arguments.items():
        if key not in BUILDER_ARGUMENTS:
            raise ValueError(f"from_timm takes the checkpoint's architecture; of ResNet's arguments it accepts "
                             f"{', '.join(BUILDER_ARGUMENTS)}. Received: {key}={short_repr(value)}")
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
