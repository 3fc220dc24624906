"""The builder's vocabulary as plain data: every name `ResNet(...)` accepts, and its check.

Nothing here imports Keras, so the command lines offer these names as choices (and refuse a
wrong one) before any backend starts. `variants.py` keys its Fig. 4 and Fig. 2 tables by the same
names (tests/test_architecture.py checks they agree).

Example:
    >>> from keras_resnet_v2.names import UNITS, check_choice
    >>> check_choice("unit", "preact", UNITS)
    Traceback (most recent call last):
    ValueError: `unit` must be one of 'original', ... Received: unit='preact'
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

#: Fig. 4 (a)-(e): where BN and ReLU sit in a residual unit (the `unit=` choices).
UNITS: tuple[str, ...] = ("original", "bn_after_addition", "relu_before_addition", "relu_only_preact", "full_preact")
#: Fig. 2 (a)-(f): what the shortcut does (the `shortcut=` choices).
SHORTCUT_NAMES: tuple[str, ...] = ("identity", "constant_scaling", "exclusive_gating", "shortcut_only_gating",
                                   "conv1x1", "dropout")
#: The `family=` choices: CIFAR networks (16/32/64 filters, 32x32 inputs) or ImageNet ones (a 7x7 stem).
FAMILIES: tuple[str, ...] = ("cifar", "imagenet")
#: The `block=` choices: two 3x3 convolutions, the 1x1-3x3-1x1 bottleneck, or one 3x3 (the paper's Table 3 note).
BLOCKS: tuple[str, ...] = ("basic", "bottleneck", "single")
#: The `stride_in=` choices: which convolution of a downsampling unit has stride 2.
STRIDE_IN: tuple[str, ...] = ("first", "last")
#: The `pooling=` choices with `include_top=False`, as in keras.applications.
POOLINGS: tuple[Optional[str], ...] = (None, "avg", "max")
#: The `padding=` choices. How a stride-2 convolution or pooling pads: as the authors' Torch code
#: (k // 2 on every side) or as Keras' padding="same" (the extra row and column on the bottom and right for even sizes).
PADDINGS: tuple[str, ...] = ("symmetric", "same")
# Where a batch keeps its channels (Keras' `image_data_format`): the same weights either way.
DATA_FORMATS: tuple[str, ...] = ("channels_last", "channels_first")
# A layer's residual unit: `stage1_unit5_1_conv` is (stage1, 5, None); a `UnitStack` named
# `stage1_unit2_to_unit18` is (stage1, 2, 18).
UNIT_NAME = re.compile(r"^(stage\d+)_unit(\d+)(?:_to_unit(\d+))?(?:_|$)")


def choices(values: Sequence) -> str:
    """`'a', 'b', 'c'`: allowed values as an error message lists them."""
    return ", ".join(repr(v) for v in values)


def short_repr(value, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters: an error message stays one readable line whatever it quotes.

    Example:
        >>> short_repr("x" * 1000)[-5:]
        'xx...'
    """
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_choice(arg: str, value, allowed: Sequence) -> None:
    """A one-line ValueError naming `arg`, the allowed values and the received one."""
    if value not in allowed:
        raise ValueError(f"`{arg}` must be one of {choices(allowed)}. Received: {arg}={short_repr(value)}")
