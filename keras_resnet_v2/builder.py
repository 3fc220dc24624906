"""The builder: a checked `Config` (config.py) in, the network's Keras layers out.

`build(cfg)` is what `ResNet(...)` runs once its arguments are checked: the stem, the residual
units in one of three forms (plain, rematerialized segments, stacked), the head. Each unit runs the
steps of `variants.unit_plan` as named Keras layers, `x_{l+1} = f(h(x_l) + F(x_l))` (Eqn. 1-2).
Everything that rebuilds a network from a `Config` (`to_plain`/`to_stacked`, a file's head for
fine-tuning, timm's ImageNet checkpoints) calls `build` directly; `ResNet` (resnet.py) is the public
signature above it.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any, Callable, Sequence

import keras

from keras_resnet_v2.batchnorm import fuse_batchnorm
from keras_resnet_v2.config import Config, Unit
from keras_resnet_v2.layers import Conv2D as BiasConv2D
from keras_resnet_v2.layers import EdgePadding2D, Rematerialized
from keras_resnet_v2.models import ResNetModel, model_class
from keras_resnet_v2.scaled import ScaledConv2D, rescales
from keras_resnet_v2.stack import UnitStack
from keras_resnet_v2.variants import UNIT_SPECS, ConvStep, ShortcutInputs, kernel_initializer, keyed, unit_plan
from keras_resnet_v2.weights import load_weights

# BatchNorm as in the authors' Torch code: momentum 0.1 there is 0.9 here, eps 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# Keras walks a functional graph recursively, one level per layer along a path, both
# when it builds a model and when it loads one. ResNet-1202 is deeper than Python's
# default limit of 1,000 frames, so the package raises the limit (it never lowers it).
DEEP_GRAPH_RECURSION_LIMIT = 10_000
# JAX: units of a `UnitStack` loop unrolled per iteration (benchmarks/RESULTS.md, "deep").
SCAN_UNROLL = 5


def ensure_recursion_limit(limit: int = DEEP_GRAPH_RECURSION_LIMIT) -> None:
    """Raises Python's recursion limit to at least `limit` (called at import)."""
    if sys.getrecursionlimit() < limit:
        sys.setrecursionlimit(limit)


# ---------------------------------------------------------------- one unit, as layers


class _Ops:
    """Layer factory: one dtype policy, deterministic names, the paper's conv, BN and padding."""

    def __init__(self, cfg: Config):
        self.policy_kw = {"dtype": cfg.dtype}
        # The layers on the identity path (the stream x_l): additions, gates, scaling, the BN-ReLU that
        # reads x_l. Keras casts a layer's inputs to its compute dtype, so a float32 stream needs each of
        # them in float32; the branch convolutions keep the policy (float16 under mixed_float16).
        self.stream_kw = {"dtype": cfg.stream_dtype} if cfg.stream_dtype else self.policy_kw
        # Under float16 the branches overflow too once the first steps have grown the weights
        # (scaled.py): then every layer is float32 and each convolution a float16 `ScaledConv2D`.
        self.scaled = rescales(cfg.stream_dtype, cfg.dtype.compute_dtype)
        self.kw = self.stream_kw if self.scaled else self.policy_kw
        self.symmetric = cfg.padding == "symmetric"
        self.data_format, self.channel_axis = cfg.data_format, cfg.channel_axis
        self.spatial = {"data_format": cfg.data_format}  # for the layers with a data_format

    def conv(self, x, filters: int, kernel: int, stride: int, name: str):
        padding = "same"
        if self.symmetric and stride > 1 and kernel > 1:
            # The authors' Torch convolution pads kernel // 2 on every side; Keras' "same" pads a
            # stride-2 conv of an even size (0, 1) or (2, 3). Stride 1 and 1x1 convs agree already.
            x = keras.layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad", **self.spatial, **self.kw)(x)
            padding = "valid"
        conv, inner = (ScaledConv2D, {"inner_dtype": "float16"}) if self.scaled else (keras.layers.Conv2D, {})
        return conv(
            filters, kernel, strides=stride, padding=padding, use_bias=False,
            kernel_initializer=kernel_initializer(), name=name, **inner, **self.spatial, **self.kw,
        )(x)

    def step(self, x, conv: ConvStep, unit: str):
        """One convolution of a unit's plan and the BN/ReLU after it."""
        return self.apply(self.conv(x, conv.cout, conv.kernel, conv.stride, f"{unit}_{conv.key}"), conv.after, unit)

    def gate(self, x, conv: ConvStep, bias: float, unit: str):
        """g(x) = sigmoid(W_g x + b_g), W_g a 1x1 convolution, b_g initialised to `gate_bias` (Fig. 2(c), (d))."""
        layer = BiasConv2D if self.data_format == "channels_first" else keras.layers.Conv2D  # layers.Conv2D
        return layer(
            conv.cout, 1, strides=conv.stride, padding="same", activation="sigmoid",
            kernel_initializer=kernel_initializer(), bias_initializer=keras.initializers.Constant(bias),
            name=f"{unit}_{conv.key}", **self.spatial, **self.stream_kw,
        )(x)

    def max_pool(self, x, name: str):
        """The ImageNet stem's 3x3/2 max pooling, padded as the convolutions are."""
        if not self.symmetric:
            return keras.layers.MaxPooling2D(3, strides=2, padding="same", name=name, **self.spatial, **self.kw)(x)
        x = EdgePadding2D(1, name=f"{name}_pad", **self.spatial, **self.kw)(x)
        return keras.layers.MaxPooling2D(3, strides=2, padding="valid", name=name, **self.spatial, **self.kw)(x)

    def bn(self, x, name: str, stream: bool = False):
        return keras.layers.BatchNormalization(
            axis=self.channel_axis, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name,
            **(self.stream_kw if stream else self.kw),
        )(x)

    def relu(self, x, name: str, stream: bool = False):
        return keras.layers.ReLU(name=name, **(self.stream_kw if stream else self.kw))(x)

    def apply(self, x, todo, unit: str = "", stream: bool = False):
        """Runs ("bn" | "relu", key) steps in order, each layer named `{unit}_{key}` (or `key`); `stream`:
        they are on the identity path (`stream_kw`)."""
        for op, key in todo:
            x = getattr(self, op)(x, f"{unit}_{key}" if unit else key, stream=stream)
        return x


def residual_unit(ops: _Ops, x, unit: Unit, cfg: Config):
    """One unit: x_{l+1} = f(h(x_l) + F(x_l)) (Eqn. 1-2), the steps of its plan as named layers."""
    plan = unit_plan(cfg.unit, cfg.shortcut, cfg.block, unit.width, in_width=x.shape[ops.channel_axis],
                     stride=unit.stride, stride_conv=cfg.stride_conv)
    name = unit.name
    activated = ops.apply(x, plan.preact, name, stream=True)
    residual = activated
    for conv in plan.convs:
        residual = ops.step(residual, conv, name)
    h = x
    if plan.projection:
        h = ops.step(activated, plan.projection, name)
    elif plan.subsample > 1:  # stride_in="last": same width, half the size: subsample.
        h = keras.layers.MaxPooling2D(1, strides=plan.subsample, name=f"{name}_shortcut_pool", **ops.spatial,
                                      **ops.stream_kw)(x)
    gate = ops.gate(activated, plan.gate, cfg.shortcut_options["gate_bias"], name) if plan.gate else None
    y = plan.shortcut.layers(ShortcutInputs(h, residual, gate, name), cfg.shortcut_options, ops.stream_kw)
    return ops.apply(y, plan.after_add, name, stream=True)


# ---------------------------------------------------------------- the units' three forms


def _plain(ops: _Ops, x, cfg: Config):
    """One set of layers per unit."""
    for unit in cfg.units:
        x = residual_unit(ops, x, unit, cfg)
    return x


def remat_segment_units(total_units: int) -> int:
    """Units per rematerialized segment: about sqrt(total), so that the segment inputs kept for the
    backward pass and one segment's recomputed activations cost about the same memory."""
    return max(1, round(math.sqrt(total_units)))


def _rematerialized(ops: _Ops, x, cfg: Config):
    """Runs of about sqrt(units) consecutive units (across stage boundaries) as sub-models whose
    activations are recomputed in the backward pass."""
    units = cfg.units
    size = remat_segment_units(len(units))
    for start in range(0, len(units), size):
        segment = units[start:start + size]
        first, last = segment[0].name, segment[-1].name
        name = first if first == last else f"{first}_to_{last}"
        inputs = y = keras.Input(shape=x.shape[1:], dtype=x.dtype, name=f"{name}_input")
        for unit in segment:
            y = residual_unit(ops, y, unit, cfg)
        # The stream's dtype: Keras would cast the segment's input to the wrapper's compute dtype.
        x = Rematerialized(keras.Model(inputs, y, name=f"{name}_block"), name=name, **ops.stream_kw)(x)
    return x


def stacked_runs(units: Sequence[Unit]) -> list[list[Unit]]:
    """A stage's units grouped for the stacked form: each run of 2+ units that keep width and stride
    (units 2..n; 2..n-1 with stride_in="last") is one group, every other unit a group of its own."""
    runs: list[list[Unit]] = []
    for unit in units:
        stackable = unit.stride == 1 and unit.index > 1
        if stackable and runs and runs[-1][-1].stride == 1 and runs[-1][-1].index > 1:
            runs[-1].append(unit)
        else:
            runs.append([unit])
    return runs


def _stacked(ops: _Ops, x, cfg: Config):
    """Each run of identical units of a stage as one `UnitStack` (`stage2_unit2_to_unit18`)."""
    for stage in cfg.stages:
        for run in stacked_runs(stage.units):
            if len(run) == 1:
                x = residual_unit(ops, x, run[0], cfg)
                continue
            x = UnitStack(len(run), stage.width, block=cfg.block, unit=cfg.unit, shortcut=cfg.shortcut,
                          shortcut_options=cfg.shortcut_options, unroll=SCAN_UNROLL, remat=cfg.remat,
                          momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{run[0].name}_to_unit{run[-1].index}",
                          stream_dtype=cfg.stream_dtype, data_format=cfg.data_format, **ops.policy_kw)(x)
    return x


FORMS: dict[str, Callable] = {"plain": _plain, "rematerialized": _rematerialized, "stacked": _stacked}


# ---------------------------------------------------------------- the network


def build_features(ops: _Ops, x, cfg: Config):
    """Stem, the residual units in the network's form, and the head's BN-ReLU (no pooling)."""
    family, spec = cfg.family_spec, UNIT_SPECS[cfg.unit]
    x = ops.conv(x, cfg.widths[0], family.stem_kernel, family.stem_stride, "stem_conv")
    x = ops.apply(x, keyed(spec.stem, "stem"), stream=True)
    if family.stem_pool:
        x = ops.max_pool(x, "stem_pool")
    x = FORMS[cfg.form](ops, x, cfg)
    return ops.apply(x, keyed(spec.head, "post"), stream=True)


def _top(ops: _Ops, x, cfg: Config):
    if cfg.include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool", **ops.spatial, **ops.kw)(x)
        # Logits and softmax in the policy's variable dtype: float32 under mixed precision.
        return keras.layers.Dense(cfg.classes, activation=cfg.classifier_activation, name="predictions",
                                  dtype=cfg.dtype.variable_dtype)(x)
    if cfg.pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="avg_pool", **ops.spatial, **ops.kw)(x)
    if cfg.pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="max_pool", **ops.spatial, **ops.kw)(x)
    return x


def _default_name(depth: int, unit: str) -> str:
    base = f"resnet{depth}_{unit}"
    uid = keras.backend.get_uid(base)
    return base if uid == 1 else f"{base}_{uid - 1}"


def build(cfg: Config, input_tensor: Any = None) -> ResNetModel:
    """The network `cfg` (checked by `check_arguments`) describes, on `input_tensor` or a new input;
    `cfg.weights` loaded, BatchNorm fused under TensorFlow. The model keeps `cfg` (`resnet_config`)."""
    # About ten layers a unit; a few frames of Keras' graph walk per layer.
    ensure_recursion_limit(max(DEEP_GRAPH_RECURSION_LIMIT, 40 * sum(cfg.units_per_stage)))
    ops = _Ops(cfg)
    if input_tensor is None:
        inputs = x = keras.Input(shape=cfg.input_shape, name="input")
    else:
        inputs = keras.utils.get_source_inputs(input_tensor)
        inputs = inputs[0] if len(inputs) == 1 else inputs  # one input: a tensor, not a 1-list
        x = input_tensor
    outputs = _top(ops, build_features(ops, x, cfg), cfg)
    model = model_class(cfg.scan)(inputs, outputs, name=cfg.name or _default_name(cfg.depth, cfg.unit))
    model.dtype_policy = cfg.dtype  # compile() reads it: under mixed_float16 it adds dynamic loss scaling
    model.resnet_config = dataclasses.replace(cfg, name=model.name, weights=None)
    if cfg.weights is not None:
        def with_head(file_classes: int) -> keras.Model:  # the file's network, for fine-tuning a new head
            return build(dataclasses.replace(cfg, include_top=True, pooling=None, classes=file_classes,
                                             weights=None, fused_batchnorm=False, name=None))

        load_weights(model, cfg.weights, with_head)
    fuse_batchnorm(model, enable=cfg.fused_batchnorm)  # TensorFlow: the kernel, and one set of statistics
    return model
