"""Between the two forms of one network: per-unit layers (`scan=False`) and `UnitStack`s (`scan=True`).

`to_stacked(model)` and `to_plain(model)` take the `Config` a model built by `ResNet` keeps
(`network_config`), build the other form from it, and copy every weight: a plain unit's
`stage1_unit5_1_conv/kernel` is row 3 of `stage1_unit2_to_unit18`'s `1_conv_kernel`. Layers in front
of the network (a `Standardize` layer, as `resnet-v2-train` puts there) are cloned with their weights.

A model without a kept `Config` (a `.keras` file saved by keras_resnet_v2 0.1, or a network rewired
by other code) has its arguments read back from its layer names and configs instead
(`_arguments_from_layers`): the fallback, not the way.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import keras

from keras_resnet_v2.builder import build
from keras_resnet_v2.config import Config
from keras_resnet_v2.depths import CIFAR_LAYERS_PER_UNIT, IMAGENET_DEPTHS
from keras_resnet_v2.layers import ConstantScale, GatedSum, Rematerialized
from keras_resnet_v2.models import functional_like
from keras_resnet_v2.names import UNIT_NAME as _UNIT_NAME
from keras_resnet_v2.resnet import resolve_config
from keras_resnet_v2.scaled import ScaledConv2D
from keras_resnet_v2.stack import UnitStack
from keras_resnet_v2.variants import UNIT_SPECS
from keras_resnet_v2.weights import assign_by_unit, leaf_layers, unit_value, weights_by_unit


def _check_resnet(model, layers: dict) -> None:
    if not isinstance(model, keras.Model) or "stem_conv" not in layers or not any(
            _UNIT_NAME.match(name) for name in layers):
        raise ValueError("`model` must be a network built by keras_resnet_v2.ResNet (or loaded from one). "
                         f"Received: model={getattr(model, 'name', model)!r}")


def unit_counts(layers: dict) -> tuple[int, ...]:
    """Units per stage, from the layer names (per-unit layers and stacks alike)."""
    last: dict[int, int] = {}
    for name in layers:
        match = _UNIT_NAME.match(name)
        if match:
            stage = int(match.group(1)[5:])
            last[stage] = max(last.get(stage, 0), int(match.group(3) or match.group(2)))
    return tuple(last[s] for s in sorted(last))


def _shortcut(layers: dict, stacks: list) -> tuple[str, dict[str, Any]]:
    if stacks:
        return stacks[0].shortcut, dict(stacks[0].shortcut_options)
    by_type = {type(layer): layer for name, layer in layers.items() if name.startswith("stage1_unit1_")}
    if GatedSum in by_type:
        gate = layers["stage1_unit1_gate_conv"].get_config()["bias_initializer"]
        kind = "exclusive_gating" if by_type[GatedSum].exclusive else "shortcut_only_gating"
        return kind, {"gate_bias": float(gate["config"]["value"])}
    if ConstantScale in by_type:
        return "constant_scaling", {"shortcut_scale": layers["stage1_unit1_shortcut_scale"].scale,
                                    "scale_residual": "stage1_unit1_residual_scale" in layers}
    if "stage1_unit1_shortcut_dropout" in layers:
        return "dropout", {"dropout_rate": float(layers["stage1_unit1_shortcut_dropout"].rate)}
    plain_units = {m.group(0).rstrip("_") for m in map(_UNIT_NAME.match, layers) if m and not m.group(3)}
    if all(f"{unit}_shortcut_conv" in layers for unit in plain_units):
        return "conv1x1", {}
    return "identity", {}


def _unit_variant(layers: dict, convs: int) -> str:
    seen = {key for key in ("preact_bn", "preact_relu", f"{convs}_bn", f"{convs}_relu", "out_bn", "out_relu")
            if f"stage1_unit1_{key}" in layers}
    for name, spec in UNIT_SPECS.items():
        wanted = ({f"preact_{op}" for op in spec.preact} | {f"{convs}_{op}" for op in spec.post}
                  | {f"out_{op}" for op in spec.after_add})
        if wanted == seen:
            return name
    raise ValueError(f"`model` has residual units of no known variant (layers {sorted(seen)}).")


def network_config(model: keras.Model) -> Config:
    """The `Config` `model` was built from: the one it keeps, else read back from its layers.

    Example:
        >>> network_config(keras_resnet_v2.ResNet164()).units_per_stage
        (18, 18, 18)
    """
    config = getattr(model, "resnet_config", None)
    if config is not None:
        return config
    arguments = _arguments_from_layers(model)
    return resolve_config(**arguments, input_shape=model.input_shape[1:])


def resnet_arguments(model: keras.Model) -> dict[str, Any]:
    """The `ResNet(...)` arguments `model` was built with (not `input_tensor` or `weights`)."""
    return network_config(model).arguments()


def _arguments_from_layers(model: keras.Model) -> dict[str, Any]:
    """`ResNet`'s arguments worked out from layer names and configs: models that keep no `Config`."""
    layers = leaf_layers(model)
    _check_resnet(model, layers)
    stacks = [layer for layer in layers.values() if isinstance(layer, UnitStack)]
    convs = sum(f"stage1_unit1_{i}_conv" in layers for i in (1, 2, 3))
    block = {1: "single", 2: "basic", 3: "bottleneck"}[convs]
    units = unit_counts(layers)
    family = "imagenet" if layers["stem_conv"].kernel_size == (7, 7) else "cifar"
    if family == "cifar":
        depth = 3 * CIFAR_LAYERS_PER_UNIT[block] * units[0] + 2
    else:
        depth = next(d for d, (b, u) in IMAGENET_DEPTHS.items() if (b, u) == (block, units))
    first_stage_end = f"stage1_unit{units[0]}"
    strided = any(getattr(layers.get(f"{first_stage_end}_{i}_conv"), "strides", (1, 1)) != (1, 1)
                  for i in (1, 2, 3))
    shortcut, options = _shortcut(layers, stacks)
    top = layers.get("predictions")
    stem_filters = layers["stem_conv"].filters
    widths = (stem_filters,) + tuple(layers[f"stage{k}_unit1_1_conv"].filters for k in range(2, len(units) + 1))
    arguments = dict(
        depth=depth, unit=_unit_variant(layers, convs), shortcut=shortcut, family=family, block=block,
        stride_in="last" if strided and len(units) > 1 else "first", include_top=top is not None,
        pooling=None if top else ("avg" if "avg_pool" in layers else "max" if "max_pool" in layers else None),
        classes=top.units if top else None, widths=widths, stream_dtype=_stream_dtype(layers),
        padding="symmetric" if "stem_conv_pad" in layers or "stem_pool_pad" in layers
        or any(name.endswith("_conv_pad") for name in layers) else "same",
        classifier_activation=top.get_config()["activation"] if top else "softmax",
        dtype=_policy(layers["stem_conv"]), name=model.name,
        remat=any(isinstance(layer, Rematerialized) for layer in model._flatten_layers(include_self=False))
        or any(stack.remat for stack in stacks), scan=bool(stacks), data_format=layers["stem_conv"].data_format,
        **options,
    )
    return arguments


def _policy(stem: keras.layers.Layer):
    """The network's dtype policy: the stem's, or mixed_float16 where the convolutions are `ScaledConv2D`."""
    if isinstance(stem, ScaledConv2D):
        return keras.dtype_policies.get(f"mixed_{stem.inner_dtype}")
    return stem.dtype_policy


def _stream_dtype(layers: dict):
    """ResNet's `stream_dtype` of a built model: under a mixed policy "float32" when its additions compute
    in float32, "compute" when in the policy's compute dtype; None (either) under a float32 policy."""
    if isinstance(layers["stem_conv"], ScaledConv2D):
        return "float32"
    if layers["stem_conv"].dtype_policy.compute_dtype == "float32":
        return None
    add = next((layer for name, layer in layers.items() if name.endswith(("_add", "_gated_sum"))), None)
    return "float32" if add is not None and add.dtype_policy.compute_dtype == "float32" else "compute"


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Copies every weight of `source` into `target`, the same network in either form."""
    have, want = weights_by_unit(source), weights_by_unit(target)
    if set(have) != set(want):
        missing = sorted(set(want) ^ set(have))[:3]
        raise ValueError(f"`source` and `target` are not the same network: {missing} is in one only.")
    assign_by_unit(want, {key: unit_value(*have[key]) for key in want})


def _convert(model: keras.Model, scan: bool, remat: Optional[bool]) -> keras.Model:
    config = network_config(model)
    config = dataclasses.replace(config, scan=scan, remat=config.remat if remat is None else remat)
    layers = leaf_layers(model)
    stem_input = layers.get("stem_conv_pad", layers["stem_conv"]).input  # the network's first layer
    if stem_input is model.inputs[0]:
        converted = build(dataclasses.replace(config, input_shape=model.input_shape[1:]))
    else:  # layers in front of the network (e.g. Standardize): cloned, weights copied below
        inputs = keras.Input(shape=model.input_shape[1:], dtype=model.inputs[0].dtype, name=model.inputs[0].name)
        original = keras.Model(model.inputs[0], stem_input)
        front = keras.models.clone_model(original, input_tensors=inputs)
        front.set_weights(original.get_weights())
        converted = build(dataclasses.replace(config, name=None), input_tensor=front.output)
        converted = functional_like(converted, inputs, converted.output, config.name)
    copy_weights(model, converted)
    return converted


def to_stacked(model: keras.Model, remat: Optional[bool] = None) -> keras.Model:
    """The same network with units 2..n of each stage as one `UnitStack` (`scan=True`), same weights.

    `remat`: None keeps the model's rematerialization setting.

    Example:
        >>> plain = keras_resnet_v2.ResNet110()
        >>> stacked = to_stacked(plain)
        >>> [layer.name for layer in stacked.layers if isinstance(layer, keras_resnet_v2.UnitStack)]
        ['stage1_unit2_to_unit18', 'stage2_unit2_to_unit18', 'stage3_unit2_to_unit18']
    """
    return _convert(model, scan=True, remat=remat)


def to_plain(model: keras.Model, remat: Optional[bool] = None) -> keras.Model:
    """The same network with one set of layers per residual unit (`scan=False`), same weights.

    For tools that read per-unit tensors (`training.diagnostics`); exports take either form.
    `remat`: None keeps the model's rematerialization setting.

    Example:
        >>> stacked = keras_resnet_v2.ResNet110(scan=True)
        >>> len(to_plain(stacked).layers) > len(stacked.layers)
        True
    """
    return _convert(model, scan=False, remat=remat)
