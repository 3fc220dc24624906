"""Every residual-unit and shortcut variant the paper compares, as small named pieces.

A residual unit is `y = h(x) + F(x)` followed by `x_next = f(y)` (paper Eqn. 1-2).
- The *unit* variants (paper Sec. 4, Fig. 4, Table 2) move BN and ReLU around the
  two or three convolutions of `F` and around the addition: each is one `UnitSpec`.
- The *shortcut* variants (paper Sec. 3, Fig. 2, Table 1) change `h` and how it is
  added to `F`: each is one `Shortcut` whose `combine` builds `h(x) + F(x)`.

`unit_plan` composes one of each into the steps of one unit, which both forms of a network run:
the functional builder (`builder.py`, a Keras layer per step) and `UnitStack` (`stack.py`, a loop
over stacked weights). Adding a shortcut is one `Shortcut` entry here (and its name in `names.py`
for the command lines). Nothing here knows about depths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import keras
from keras import ops

from keras_resnet_v2.layers import ConstantScale, GatedSum, gated_sum
from keras_resnet_v2.names import short_repr

# --------------------------------------------------------------------------- units


def he_stddev(kernel: int, filters: int) -> float:
    """The authors' conv init, N(0, sqrt(2 / (k * k * out_channels))) (resnet-pre-act.lua, fb.resnet.torch):
    He initialisation over fan-out, not truncated. `UnitStack` draws its stacked kernels with it."""
    return math.sqrt(2.0 / (kernel * kernel * filters))


def kernel_initializer() -> keras.initializers.Initializer:
    """`he_stddev` as a Keras initializer for one Conv2D: VarianceScaling(2, fan_out, untruncated normal).

    A new instance per layer, so no two layers share one initializer object.
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


#: The five residual units of Fig. 4, by `unit=` name: where BN and ReLU sit before, after and around the addition.
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
    """What a shortcut's Keras layers read when they combine `h(x)` and `F(x)` (the functional form)."""

    shortcut: Any  # h(x) before any scaling/gating: x, its projection, or its subsample
    residual: Any  # F(x)
    gate: Any  # g(x) = sigmoid(W_g x + b_g) for a gating shortcut, else None
    name: str


@dataclass(frozen=True)
class Shortcut:
    """One shortcut variant of Fig. 2: what it needs and its arithmetic, in both forms of a network.

    - `combine(h, f, g, noise, options)`: y = h(x) (+) F(x) on tensors (`keras.ops`), as `UnitStack`
      computes it; `g` is the gate (or None), `noise` a uniform draw shaped like `h` in training for a
      shortcut that needs one (else None: inference).
    - `layers(ShortcutInputs, options, layer_kwargs)`: the same y with named Keras layers, as the
      functional builder writes it (what a saved file holds).
    - `options`: its options and their defaults; `always_project`: a 1x1 conv on every unit, not only
      where the shape changes; `gate`: it reads g(x) (a 1x1 conv with bias, initialised to `gate_bias`);
      `noise`: it draws random numbers in training (and so cannot be recomputed by `remat`).

    tests/test_variants.py runs every entry through both forms and compares them.
    """

    figure: str
    combine: Callable[..., Any]
    layers: Callable[..., Any]
    options: dict[str, Any] = field(default_factory=dict)
    always_project: bool = False
    gate: bool = False
    noise: bool = False


def _add(s: ShortcutInputs, h, kw):
    return keras.layers.Add(name=f"{s.name}_add", **kw)([h, s.residual])


# Fig. 2(a) and (e): y = h(x) + F(x)

def _sum(h, f, g, noise, opts):
    return h + f


def _sum_layers(s: ShortcutInputs, opts, kw):
    return _add(s, s.shortcut, kw)


# Fig. 2(b): y = lambda * x + (1 - lambda) * F(x), or lambda * x + F(x)

def _scaled(h, f, g, noise, opts):
    scale = opts["shortcut_scale"]
    return h * ops.cast(scale, h.dtype) + (f * ops.cast(1.0 - scale, f.dtype) if opts["scale_residual"] else f)


def _scaled_layers(s: ShortcutInputs, opts, kw):
    scale = opts["shortcut_scale"]
    h = ConstantScale(scale, name=f"{s.name}_shortcut_scale", **kw)(s.shortcut)
    f = s.residual
    if opts["scale_residual"]:
        f = ConstantScale(1.0 - scale, name=f"{s.name}_residual_scale", **kw)(f)
    return keras.layers.Add(name=f"{s.name}_add", **kw)([h, f])


# Fig. 2(c): y = (1 - g(x)) * x + g(x) * F(x);  Fig. 2(d): y = (1 - g(x)) * x + F(x)

def _gated(exclusive: bool):
    def combine(h, f, g, noise, opts):
        return gated_sum(h, f, g, exclusive)

    def layers(s: ShortcutInputs, opts, kw):
        return GatedSum(exclusive=exclusive, name=f"{s.name}_gated_sum", **kw)([s.shortcut, s.residual, s.gate])

    return combine, layers


# Fig. 2(f): dropout on the shortcut, in training only: y = mask * x / (1 - rate) + F(x)

def _dropped(h, f, g, noise, opts):
    if noise is None:  # inference
        return h + f
    rate = opts["dropout_rate"]
    return ops.where(noise >= rate, h / ops.cast(1.0 - rate, h.dtype), ops.zeros_like(h)) + f


def _dropped_layers(s: ShortcutInputs, opts, kw):
    return _add(s, keras.layers.Dropout(opts["dropout_rate"], name=f"{s.name}_shortcut_dropout", **kw)(s.shortcut), kw)


#: The shortcuts of Fig. 2, by `shortcut=` name: the sum each computes and its options' defaults.
SHORTCUTS: dict[str, Shortcut] = {
    "identity": Shortcut("2(a)", _sum, _sum_layers),
    "constant_scaling": Shortcut("2(b)", _scaled, _scaled_layers, {"shortcut_scale": 0.5, "scale_residual": True}),
    "exclusive_gating": Shortcut("2(c)", *_gated(exclusive=True), {"gate_bias": -6.0}, gate=True),
    "shortcut_only_gating": Shortcut("2(d)", *_gated(exclusive=False), {"gate_bias": -6.0}, gate=True),
    "conv1x1": Shortcut("2(e)", _sum, _sum_layers, always_project=True),
    "dropout": Shortcut("2(f)", _dropped, _dropped_layers, {"dropout_rate": 0.5}, noise=True),
}

# ------------------------------------------------------------------ one unit's plan


def branch_layout(block: str, filters: int) -> list[tuple[int, int]]:
    """(width, kernel) of each convolution of F: one 3x3, two 3x3, or 1x1-3x3-1x1 (x4 out)."""
    if block == "single":  # Table 3's 1-layer skip
        return [(filters, 3)]
    if block == "basic":
        return [(filters, 3), (filters, 3)]
    return [(filters, 1), (filters, 3), (4 * filters, 1)]


Ops = tuple[tuple[str, str], ...]  # ("bn" or "relu", key): `{unit}_{key}` is the layer's name


def keyed(operations: tuple[str, ...], prefix: str) -> Ops:
    """("bn", "relu") under `prefix` "preact": (("bn", "preact_bn"), ("relu", "preact_relu"))."""
    return tuple((op, f"{prefix}_{op}") for op in operations)


@dataclass(frozen=True)
class ConvStep:
    """One convolution of a unit and the BN/ReLU after it; `key` names it (`{unit}_{key}`)."""

    key: str
    kernel: int
    cin: int
    cout: int
    stride: int
    after: Ops = ()


@dataclass(frozen=True)
class UnitPlan:
    """One residual unit, x_{l+1} = f(h(x_l) + F(x_l)) (Eqn. 1-2), as the steps both forms run in order.

    `preact` on x_l; `convs` are F, reading the pre-activated input; `projection` (a 1x1 conv with the
    stride, reading the pre-activated input: paper Sec. 3.1 and Appendix) or a 1x1 max pool with
    stride `subsample` (stride_in="last") make h(x_l), else h is x_l; `gate` is g(x) for a gating
    shortcut; `shortcut.combine` adds; `after_add` is f.
    """

    shortcut: Shortcut
    preact: Ops
    convs: tuple[ConvStep, ...]
    projection: Optional[ConvStep]
    subsample: int
    gate: Optional[ConvStep]
    after_add: Ops

    @property
    def out_width(self) -> int:
        return self.convs[-1].cout

    def kernels(self) -> list[ConvStep]:
        """Every convolution of the unit, in order."""
        return [*self.convs, *(c for c in (self.projection, self.gate) if c)]

    def batchnorms(self) -> list[tuple[str, int]]:
        """(key, width) of every BatchNorm of the unit, in order."""
        width = self.convs[0].cin
        keys = [(key, width) for op, key in self.preact if op == "bn"]
        for conv in self.kernels():
            keys += [(key, conv.cout) for op, key in conv.after if op == "bn"]
        return keys + [(key, self.out_width) for op, key in self.after_add if op == "bn"]


def unit_plan(unit: str, shortcut: str, block: str, filters: int, *, in_width: Optional[int] = None,
              stride: int = 1, stride_conv: int = 0) -> UnitPlan:
    """The plan of one unit of `block` units of `filters` (a bottleneck's inner width) reading `in_width`
    channels (default: its own output width) with `stride` on convolution `stride_conv` of F.

    Example:
        >>> plan = unit_plan("full_preact", "identity", "basic", 16)
        >>> [conv.key for conv in plan.kernels()], plan.after_add
        (['1_conv', '2_conv'], ())
    """
    spec, short = UNIT_SPECS[unit], SHORTCUTS[shortcut]
    layout = branch_layout(block, filters)
    out = layout[-1][0]
    width = out if in_width is None else in_width
    convs = []
    for i, (cout, kernel) in enumerate(layout):
        after = ("bn", "relu") if i + 1 < len(layout) else spec.post
        convs.append(ConvStep(f"{i + 1}_conv", kernel, width, cout, stride if i == stride_conv else 1,
                              keyed(after, str(i + 1))))
        width = cout
    cin = convs[0].cin
    project = short.always_project or cin != out
    bn = ("bn",) if spec.projection_bn else ()  # a projection is normalised like the branch it joins
    return UnitPlan(
        shortcut=short,
        preact=keyed(spec.preact, "preact"),
        convs=tuple(convs),
        projection=ConvStep("shortcut_conv", 1, cin, out, stride, keyed(bn, "shortcut")) if project else None,
        subsample=stride if not project and stride > 1 else 1,
        gate=ConvStep("gate_conv", 1, cin, out, stride) if short.gate else None,
        after_add=keyed(spec.after_add, "out"),
    )


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
