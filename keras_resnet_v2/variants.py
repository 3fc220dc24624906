"""Every residual-unit and shortcut variant the paper compares, as small named pieces.

A residual unit is `y = h(x) + F(x)` followed by `x_next = f(y)` (paper Eqn. 1-2).
- The *unit* variants (paper Sec. 4, Fig. 4, Table 2) move BN and ReLU around the
  two or three convolutions of `F` and around the addition: each is one `UnitSpec`.
- The *shortcut* variants (paper Sec. 3, Fig. 2, Table 1) change `h` and how it is
  added to `F`: each is one `Shortcut` whose `combine` builds `h(x) + F(x)`.

The builder in `resnet.py` composes one of each; nothing here knows about depths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import keras

from keras_resnet_v2.layers import ConstantScale, GatedSum
from keras_resnet_v2.names import short_repr

# --------------------------------------------------------------------------- units


def kernel_initializer() -> keras.initializers.Initializer:
    """The authors' conv init: N(0, sqrt(2 / (k * k * out_channels))) (FACTS.md "Init").

    He initialisation over fan-out, not truncated. A new instance per layer, so no
    two layers share one initializer object.
    """
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )


@dataclass(frozen=True)
class UnitSpec:
    """Where BN and ReLU sit in one residual unit (operations are "bn" or "relu").

    Between two convolutions of `F` there is always BN-ReLU. The rest is variant:
    `preact` runs on the unit input before the first conv (a projection or gate on
    the shortcut reads this activated input, paper Appendix), `post` after the
    last conv, `after_add` after the addition (the `f` of Eqn. 2). `stem` follows
    the stem conv and `head` the last unit, so the first and last units see what
    the others see.
    """

    figure: str
    preact: tuple[str, ...]
    post: tuple[str, ...]
    after_add: tuple[str, ...]
    stem: tuple[str, ...]
    head: tuple[str, ...]

    @property
    def projection_bn(self) -> bool:
        """A projection shortcut is normalised like the branch it is added to."""
        return "bn" in self.post


UNIT_SPECS: dict[str, UnitSpec] = {
    # Fig. 4(a): x_{l+1} = ReLU(x_l + BN(conv(ReLU(BN(conv(x_l))))))   (He et al. 2015)
    "original": UnitSpec("4(a)", (), ("bn",), ("relu",), ("bn", "relu"), ()),
    # Fig. 4(b): BN moved after the addition, so it alters the shortcut signal too.
    "bn_after_addition": UnitSpec("4(b)", (), (), ("bn", "relu"), ("bn", "relu"), ()),
    # Fig. 4(c): ReLU moved before the addition, so F can only add non-negative values.
    "relu_before_addition": UnitSpec("4(c)", (), ("bn", "relu"), (), ("bn", "relu"), ()),
    # Fig. 4(d): ReLU-only pre-activation; BN still ends the branch.
    "relu_only_preact": UnitSpec("4(d)", ("relu",), ("bn",), (), ("bn",), ("relu",)),
    # Fig. 4(e): full pre-activation (this paper): x_{l+1} = x_l + F(x_l), Eqn. 3.
    # The stem conv is followed by nothing (the first unit pre-activates it) and an
    # extra BN-ReLU follows the last addition (Appendix).
    "full_preact": UnitSpec("4(e)", ("bn", "relu"), (), (), (), ("bn", "relu")),
}

# ----------------------------------------------------------------------- shortcuts


@dataclass(frozen=True)
class ShortcutInputs:
    """What a shortcut variant may read when it combines `h(x)` and `F(x)`."""

    shortcut: Any  # h(x) before any scaling/gating: x, its projection, or its subsample
    residual: Any  # F(x)
    activated: Any  # the unit input after the unit's pre-activation (a gate reads this)
    filters: int
    stride: int
    name: str


@dataclass(frozen=True)
class Shortcut:
    """One shortcut variant: its figure, its options with defaults, and `combine`."""

    figure: str
    combine: Callable[..., Any]  # (ShortcutInputs, options, layer_kwargs) -> y_l
    options: dict[str, Any] = field(default_factory=dict)
    always_project: bool = False


def _identity(s: ShortcutInputs, opts, kw):
    # Fig. 2(a): y = x + F(x)
    return keras.layers.Add(name=f"{s.name}_add", **kw)([s.shortcut, s.residual])


def _constant_scaling(s: ShortcutInputs, opts, kw):
    # Fig. 2(b): y = lambda * x + (1 - lambda) * F(x), or lambda * x + F(x).
    scale = opts["shortcut_scale"]
    h = ConstantScale(scale, name=f"{s.name}_shortcut_scale", **kw)(s.shortcut)
    f = s.residual
    if opts["scale_residual"]:
        f = ConstantScale(1.0 - scale, name=f"{s.name}_residual_scale", **kw)(f)
    return keras.layers.Add(name=f"{s.name}_add", **kw)([h, f])


def _gate(s: ShortcutInputs, opts, kw):
    # g(x) = sigmoid(W_g x + b_g), W_g a 1x1 convolution, b_g initialised to gate_bias.
    return keras.layers.Conv2D(
        s.filters, 1, strides=s.stride, padding="same", activation="sigmoid",
        kernel_initializer=kernel_initializer(),
        bias_initializer=keras.initializers.Constant(opts["gate_bias"]),
        name=f"{s.name}_gate_conv", **kw,
    )(s.activated)


def _exclusive_gating(s: ShortcutInputs, opts, kw):
    # Fig. 2(c): y = (1 - g(x)) * x + g(x) * F(x)
    g = _gate(s, opts, kw)
    return GatedSum(exclusive=True, name=f"{s.name}_gated_sum", **kw)([s.shortcut, s.residual, g])


def _shortcut_only_gating(s: ShortcutInputs, opts, kw):
    # Fig. 2(d): y = (1 - g(x)) * x + F(x)
    g = _gate(s, opts, kw)
    return GatedSum(exclusive=False, name=f"{s.name}_gated_sum", **kw)([s.shortcut, s.residual, g])


def _dropout(s: ShortcutInputs, opts, kw):
    # Fig. 2(f): dropout on the shortcut, active in training only.
    h = keras.layers.Dropout(opts["dropout_rate"], name=f"{s.name}_shortcut_dropout", **kw)(s.shortcut)
    return keras.layers.Add(name=f"{s.name}_add", **kw)([h, s.residual])


SHORTCUTS: dict[str, Shortcut] = {
    "identity": Shortcut("2(a)", _identity),
    "constant_scaling": Shortcut(
        "2(b)", _constant_scaling, {"shortcut_scale": 0.5, "scale_residual": True}
    ),
    "exclusive_gating": Shortcut("2(c)", _exclusive_gating, {"gate_bias": -6.0}),
    "shortcut_only_gating": Shortcut("2(d)", _shortcut_only_gating, {"gate_bias": -6.0}),
    # Fig. 2(e): a 1x1 conv shortcut on every unit, not only where the shape changes.
    "conv1x1": Shortcut("2(e)", _identity, always_project=True),
    "dropout": Shortcut("2(f)", _dropout, {"dropout_rate": 0.5}),
}

# ---------------------------------------------------------------- option checking


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_OPTION_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "shortcut_scale": (lambda v: _is_number(v) and 0.0 <= v <= 1.0, "a number in [0, 1]"),
    "scale_residual": (lambda v: isinstance(v, bool), "True or False"),
    "gate_bias": (_is_number, "a finite number"),
    "dropout_rate": (lambda v: _is_number(v) and 0.0 <= v < 1.0, "a number in [0, 1)"),
}


def resolve_shortcut_options(shortcut: str, given: dict[str, Any]) -> dict[str, Any]:
    """The options of `shortcut` with `given` applied; raises ValueError on any misfit."""
    allowed = SHORTCUTS[shortcut].options
    for key, value in given.items():
        if key not in allowed:
            fits = ", ".join(sorted(allowed)) or "none"
            raise ValueError(
                f"Unknown option `{key}` for shortcut={shortcut!r}. Options of that "
                f"shortcut: {fits}. Received: {key}={short_repr(value)}"
            )
        check, allowed_text = _OPTION_CHECKS[key]
        if not check(value):
            raise ValueError(f"`{key}` must be {allowed_text}. Received: {key}={short_repr(value)}")
    return {**allowed, **given}
