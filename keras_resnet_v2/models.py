"""The model classes `ResNet(...)` returns: functional models that keep the `Config` they were built from.

`ResNetModel` is a `keras.Model` built with the functional API, in every respect but one: it carries
its `Config` (`model.resnet_config`) and saves it in its config, as keras-hub's backbones keep their
arguments, so converting, fine-tuning and training read the network's arguments instead of working
them out from layer names. `StackedModel` (`scan=True`) also says where a unit's layers went.

Example:
    >>> model = keras_resnet_v2.ResNet20()
    >>> model.resnet_config.depth, model.resnet_config.block
    (20, 'basic')
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import keras

from keras_resnet_v2.config import Config
from keras_resnet_v2.layers import PACKAGE
from keras_resnet_v2.names import UNIT_NAME
from keras_resnet_v2.stack import UnitStack

CONFIG_KEY = "resnet_config"  # where a saved model's config holds its `Config.to_dict()`


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResNetModel(keras.Model):
    """A functional ResNet that keeps its `Config` (`resnet_config`; None when rewired by other code)."""

    resnet_config: Optional[Config] = None

    def get_config(self):
        config = super().get_config()
        if self.resnet_config is not None:
            config[CONFIG_KEY] = self.resnet_config.to_dict()
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        stored = config.pop(CONFIG_KEY, None)
        model = super().from_config(config, custom_objects=custom_objects)
        if stored is not None:
            model.resnet_config = Config.from_dict(stored)
        return model


@keras.saving.register_keras_serializable(package=PACKAGE)
class StackedModel(ResNetModel):
    """A `ResNetModel` with `UnitStack`s (`ResNet(scan=True)`): a unit's layers are rows of a stack.

    The same `keras.Model` in every other respect. `get_layer` of a per-unit layer that lives inside a
    stack (`stage1_unit5_1_conv`) says which stack holds it, its row, and how to get per-unit layers,
    where Keras would list every layer name.

    Example:
        >>> model = keras_resnet_v2.ResNet(20, scan=True)
        >>> model.get_layer("stage1_unit2_to_unit3").units
        2
        >>> model.get_layer("stage1_unit3_1_conv")
        Traceback (most recent call last):
        ValueError: No layer 'stage1_unit3_1_conv': its unit is row 1 of the UnitStack 'stage1_unit2_to_unit3', ...
    """

    def get_layer(self, name: Optional[str] = None, index: Optional[int] = None) -> keras.layers.Layer:
        try:
            return super().get_layer(name=name, index=index)
        except ValueError:
            held = _stack_row(self, name) if index is None and isinstance(name, str) else None
            if held is None:
                raise
        stack, row = held
        raise ValueError(
            f"No layer {name!r}: its unit is row {row} of the UnitStack {stack.name!r}, whose weights hold "
            f"one row per unit (model.get_layer({stack.name!r}).get_weight('1_conv_kernel')[{row}]). "
            "keras_resnet_v2.to_plain(model) gives the same network with one layer per unit, "
            "as does building it with scan=False."
        ) from None


def model_class(stacked: bool) -> type[ResNetModel]:
    return StackedModel if stacked else ResNetModel


def functional_like(model: keras.Model, inputs, outputs, name: Optional[str]) -> keras.Model:
    """A functional model `inputs` -> `outputs` of `model`'s kind (a `StackedModel` stays one), dtype
    policy (which `compile` reads to add loss scaling) and `Config`, for a network rewired to new inputs."""
    if isinstance(model, ResNetModel):
        view = type(model)(inputs, outputs, name=name)
        cfg = model.resnet_config
        view.resnet_config = None if cfg is None else dataclasses.replace(cfg, name=view.name)
    else:
        view = keras.Model(inputs, outputs, name=name)
    view.dtype_policy = model.dtype_policy
    return view


def _stack_row(model: keras.Model, name: str) -> Optional[tuple[UnitStack, int]]:
    """The `UnitStack` of `model` holding the unit a per-unit layer name (`stage1_unit5_add`) names, and its row."""
    unit = UNIT_NAME.match(name)
    for layer in model.layers if unit and not unit.group(3) else ():
        held = UNIT_NAME.match(layer.name) if isinstance(layer, UnitStack) else None
        if held and held.group(1) == unit.group(1) and int(held.group(2)) <= int(unit.group(2)) <= int(held.group(3)):
            return layer, int(unit.group(2)) - int(held.group(2))
    return None
