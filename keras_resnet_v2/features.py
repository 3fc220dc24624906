"""Multi-scale features of a built network, keyed as keras-hub's `pyramid_outputs`.

`pyramid_outputs(model)["P{k}"]` is the feature of the stage whose output is 2**k times smaller
than the input: P2..P5 for the ImageNet networks, P0..P2 for the CIFAR ones.

Which tensor is a stage's feature. In a pre-activation network (Fig. 4(e)) a stage ends in an
addition whose output is not normalized: its scale grows with the units added to it (Sec. 3, Eqn. 4),
so a detection or segmentation head reading it sees statistics that depend on the depth. The network
itself never convolves that tensor directly: the next stage's first unit reads it through its
pre-activation BN-ReLU, and the last stage through the final BN-ReLU (Appendix). So by default a
stage's feature is that BN-ReLU's output: normalized, trained with the network, and free (no new
layer). For units without a pre-activation (Fig. 4(a)-(c)) it is the stage's output, which those
units already end with their ReLU. `normalized=False` gives the raw stage outputs (the additions),
as timm's `features_only` does for these networks.
"""

from __future__ import annotations

import math

import keras

from keras_resnet_v2.convert import network_config
from keras_resnet_v2.layers import Rematerialized
from keras_resnet_v2.variants import UNIT_SPECS
from keras_resnet_v2.weights import leaf_layers


def _stage_outputs(layers: dict, counts: tuple[int, ...]) -> list:
    """The raw output tensor of each stage: its last unit's last layer (`layers` is in the graph's order,
    whatever the unit and shortcut variant), or the stack holding that unit."""
    found = []
    for k, n in enumerate(counts, start=1):
        last, stack = f"stage{k}_unit{n}_", f"stage{k}_unit2_to_unit{n}"
        found.append(layers[[name for name in layers if name.startswith(last) or name == stack][-1]].output)
    return found


def pyramid_outputs(model: keras.Model, normalized: bool = True) -> dict[str, keras.KerasTensor]:
    """The stage features of a network built by `ResNet` (plain or `scan=True`, loaded from a file,
    converted by `from_timm`, with or without its top), by log2 of their stride.

    Args:
        model: the network.
        normalized: True (default): each stage's output after the BN-ReLU the network applies to it
            next (the module docstring says why); False: the raw stage outputs.

    Returns:
        A dict of symbolic tensors of `model`'s graph by level: `P2` to `P5` (ImageNet) or `P0` to
        `P2` (CIFAR).

    Example:
        >>> model = keras_resnet_v2.ResNet50(include_top=False, input_shape=(224, 224, 3))
        >>> features = keras.Model(model.inputs, keras_resnet_v2.pyramid_outputs(model))
        >>> tuple(keras_resnet_v2.pyramid_outputs(model)["P5"].shape[1:])
        (7, 7, 2048)
    """
    if not isinstance(normalized, bool):
        raise ValueError(f"`normalized` must be True or False. Received: normalized={normalized!r}")
    config = network_config(model)  # refuses a model that is not ours, in one line
    if any(isinstance(layer, Rematerialized) for layer in model.layers):
        raise ValueError("`model` was built with remat=True, whose blocks span stage boundaries: take the features "
                         "of `keras_resnet_v2.to_plain(model, remat=False)` (the same weights). "
                         f"Received: model={model.name!r}")
    layers = leaf_layers(model)
    counts = config.units_per_stage
    stages = len(counts)
    raw = _stage_outputs(layers, counts)
    spec = UNIT_SPECS[config.unit]
    family = config.family_spec
    stem = family.stem_stride * (2 if family.stem_pool else 1)
    found = {}
    for k in range(1, stages + 1):
        halvings = k - 1 if config.stride_in == "first" else min(k, stages - 1)
        feature = raw[k - 1]
        if normalized:
            reader = (f"stage{k + 1}_unit1_preact_{spec.preact[-1]}" if k < stages and spec.preact
                      else f"post_{spec.head[-1]}" if k == stages and spec.head else None)
            feature = layers[reader].output if reader else feature
        found[f"P{int(math.log2(stem)) + halvings}"] = feature
    return found
