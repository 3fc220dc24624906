"""ResNet builders: He et al., "Identity Mappings in Deep Residual Networks" (ECCV 2016).

One builder, `ResNet`, composes a family (CIFAR or ImageNet layout), a depth (a line
of data), a residual-unit variant (Fig. 4) and a shortcut variant (Fig. 2). The
named constructors (`ResNet1001`, `ResNet50`, ...) are thin wrappers over it.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import keras

from keras_resnet_v2.depths import (
    FAMILY_SPECS,
    Family,
    default_scan,
    resolve_depth,
)
from keras_resnet_v2.layers import EdgePadding2D, Rematerialized
from keras_resnet_v2.names import PADDINGS, POOLINGS, SHORTCUT_NAMES, STRIDE_IN, UNITS, check_choice
from keras_resnet_v2.scaled import ScaledConv2D, rescales
from keras_resnet_v2.speed import fuse_batchnorm
from keras_resnet_v2.stack import StackedModel, UnitStack, branch_layout
from keras_resnet_v2.variants import (
    SHORTCUTS,
    UNIT_SPECS,
    ShortcutInputs,
    UnitSpec,
    kernel_initializer,
    resolve_shortcut_options,
)
from keras_resnet_v2.weights import check_weights_path, load_weights

# BatchNorm as in the authors' Torch code: momentum 0.1 there is 0.9 here, eps 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# Keras walks a functional graph recursively, one level per layer along a path, both
# when it builds a model and when it loads one. ResNet-1202 is deeper than Python's
# default limit of 1,000 frames, so the package raises the limit (it never lowers it).
DEEP_GRAPH_RECURSION_LIMIT = 10_000
# Above this many residual units, mixed_float16 training with a float16 residual stream overflows
# (ResNet-1001, 333 units: benchmarks/RESULTS.md, "Mixed precision at depth"): ResNet keeps the stream
# in float32 there by default (`stream_dtype=None`), with range-safe float16 convolutions (scaled.py),
# and warns if it is asked for float16 (`"compute"`).
FLOAT16_UNIT_LIMIT = 100
STREAM_DTYPES = (None, "float32", "compute")


def default_stream_dtype(dtype_policy, units: int) -> Optional[str]:
    """`ResNet(stream_dtype=None)`: "float32" under mixed_float16 beyond FLOAT16_UNIT_LIMIT units, where an
    all-float16 stream leaves float16's range; otherwise None (every layer in the policy's compute dtype:
    float32, bfloat16's float32 range, or a shallow net whose stream stays small).

    Example:
        >>> default_stream_dtype(keras.dtype_policies.get("mixed_float16"), units=333)
        'float32'
        >>> default_stream_dtype(keras.dtype_policies.get("mixed_float16"), units=54) is None
        True
    """
    return "float32" if dtype_policy.name == "mixed_float16" and units > FLOAT16_UNIT_LIMIT else None


def ensure_recursion_limit(limit: int = DEEP_GRAPH_RECURSION_LIMIT) -> None:
    """Raises Python's recursion limit to at least `limit` (called at import)."""
    if sys.getrecursionlimit() < limit:
        sys.setrecursionlimit(limit)


# -------------------------------------------------------------------- validation


@dataclass(frozen=True)
class Config:
    """A checked, complete description of one network."""

    depth: int
    family: str
    block: str
    units_per_stage: tuple[int, ...]
    unit: str
    shortcut: str
    shortcut_options: dict
    stride_in: str
    input_shape: tuple
    classes: int
    dtype: Any
    remat: bool = False
    scan: bool = False
    padding: str = "symmetric"
    widths: tuple[int, ...] = ()  # per stage: a basic unit's width, a bottleneck's inner width
    stream_dtype: Optional[str] = None  # "float32": the identity path in float32


def _resolve_widths(widths, family: Family) -> tuple[int, ...]:
    if widths is None:
        return family.widths
    if not (isinstance(widths, (tuple, list)) and len(widths) == len(family.widths) and all(
            isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths)):
        raise ValueError(f"`widths` must be {len(family.widths)} positive integers, one per stage (default "
                         f"{family.widths}). Received: widths={widths!r}")
    return tuple(widths)


def _resolve_input_shape(input_shape, input_tensor, family: Family) -> tuple:
    if input_tensor is not None:
        if not keras.backend.is_keras_tensor(input_tensor):
            raise ValueError(
                "`input_tensor` must be a Keras tensor such as `keras.Input(shape=(32, 32, 3))`. "
                f"Received: input_tensor={input_tensor!r}"
            )
        tensor_shape = tuple(input_tensor.shape[1:])
        if input_shape is not None and tuple(input_shape) != tensor_shape:
            raise ValueError(
                f"`input_shape` {tuple(input_shape)} does not match the shape of `input_tensor` "
                f"{tensor_shape}. Pass one of them. Received: input_shape={input_shape!r}"
            )
        input_shape = tensor_shape
    if input_shape is None:
        return family.input_shape
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if shape is None or len(shape) != 3 or not all(
        d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 1) for d in shape
    ):
        raise ValueError(
            "`input_shape` must be (height, width, channels) with positive integers "
            f"(height and width may be None). Received: input_shape={input_shape!r}"
        )
    if shape[2] is None:
        raise ValueError(f"The channel count in `input_shape` must be known. Received: input_shape={input_shape!r}")
    small = [d for d in shape[:2] if d is not None and d < family.total_stride]
    if small:
        raise ValueError(
            f"`input_shape` is too small: this family downsamples by {family.total_stride}, so height "
            f"and width must be at least {family.total_stride}. Received: input_shape={input_shape!r}"
        )
    return shape


def _resolve_dtype(dtype):
    if dtype is None:
        return keras.config.dtype_policy()
    try:
        return keras.dtype_policies.get(dtype)
    except (ValueError, TypeError) as error:
        raise ValueError(
            "`dtype` must be None, a dtype name such as 'float32' or a dtype policy such as "
            f"'mixed_float16'. Received: dtype={dtype!r}"
        ) from error


def resolve_config(
    depth, *, unit, shortcut, family, block, stride_in, input_shape, input_tensor,
    include_top, pooling, classes, classifier_activation, weights, dtype, name, variant_options,
    remat: bool = False, scan: Optional[bool] = None, fused_batchnorm: bool = True, padding: str = "symmetric",
    widths=None, stream_dtype: Optional[str] = None,
) -> Config:
    """Checks every argument of `ResNet` before any layer is built."""
    family, block, units = resolve_depth(depth, family, block)
    check_choice("unit", unit, UNITS)
    check_choice("shortcut", shortcut, SHORTCUT_NAMES)
    options = resolve_shortcut_options(shortcut, variant_options)
    check_choice("stride_in", stride_in, STRIDE_IN)
    check_choice("padding", padding, PADDINGS)
    widths = _resolve_widths(widths, FAMILY_SPECS[family])
    if not isinstance(include_top, bool):
        raise ValueError(f"`include_top` must be True or False. Received: include_top={include_top!r}")
    check_choice("pooling", pooling, POOLINGS)
    if include_top and pooling is not None:
        raise ValueError(
            "`pooling` applies only when include_top=False (the classifier head always "
            f"average-pools). Received: pooling={pooling!r} with include_top=True"
        )
    if classes is None:
        classes = FAMILY_SPECS[family].classes
    if include_top:
        if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
            raise ValueError(f"`classes` must be an integer >= 1. Received: classes={classes!r}")
        try:
            keras.activations.get(classifier_activation)
        except (ValueError, TypeError) as error:
            raise ValueError(
                "`classifier_activation` must be None, a Keras activation name or a callable. "
                f"Received: classifier_activation={classifier_activation!r}"
            ) from error
    if keras.config.image_data_format() != "channels_last":
        raise ValueError(
            "keras_resnet_v2 builds channels_last models. Received: "
            f"keras.config.image_data_format()={keras.config.image_data_format()!r}"
        )
    check_weights_path(weights)
    if scan is None:
        scan = default_scan(units)
    for arg, value in (("remat", remat), ("scan", scan), ("fused_batchnorm", fused_batchnorm)):
        if not isinstance(value, bool):
            raise ValueError(f"`{arg}` must be True or False. Received: {arg}={value!r}")
    if not any(stream_dtype is allowed or stream_dtype == allowed for allowed in STREAM_DTYPES):
        raise ValueError("`stream_dtype` must be None (float32 under mixed_float16 beyond "
                         f"{FLOAT16_UNIT_LIMIT} units), 'float32' or 'compute' (the policy's compute dtype). "
                         f"Received: stream_dtype={stream_dtype!r}")
    dtype = _resolve_dtype(dtype)
    if stream_dtype is None:
        stream_dtype = default_stream_dtype(dtype, sum(units))
    elif stream_dtype == "compute" or dtype.compute_dtype == "float32":
        stream_dtype = None  # nothing to keep apart: every layer computes in the policy's dtype
    if remat and shortcut == "dropout":
        raise ValueError("`remat=True` recomputes each unit in the backward pass, which would draw new "
                         "dropout masks: it cannot be combined with shortcut='dropout'. "
                         f"Received: remat={remat!r}, shortcut={shortcut!r}")
    if name is not None and not (isinstance(name, str) and name):
        raise ValueError(f"`name` must be a non-empty string or None. Received: name={name!r}")
    return Config(
        depth=depth, family=family, block=block, units_per_stage=units, unit=unit,
        shortcut=shortcut, shortcut_options=options, stride_in=stride_in,
        input_shape=_resolve_input_shape(input_shape, input_tensor, FAMILY_SPECS[family]),
        classes=classes, dtype=dtype, remat=remat, scan=scan, padding=padding, widths=widths,
        stream_dtype=stream_dtype,
    )


# ---------------------------------------------------------------- the network


class _Ops:
    """Layer factory: one dtype policy, deterministic names, the paper's conv, BN and padding."""

    def __init__(self, dtype, padding: str = "symmetric", stream_dtype: Optional[str] = None):
        self.policy_kw = {"dtype": dtype}
        # The layers on the identity path (the stream x_l): additions, gates, scaling, the BN-ReLU that
        # reads x_l. Keras casts a layer's inputs to its compute dtype, so a float32 stream needs each of
        # them in float32; the branch convolutions keep the policy (float16 under mixed_float16).
        self.stream_kw = {"dtype": stream_dtype} if stream_dtype else self.policy_kw
        # Under float16 the branches overflow too once the first steps have grown the weights
        # (scaled.py): then every layer is float32 and each convolution a float16 `ScaledConv2D`.
        self.scaled = rescales(stream_dtype, keras.dtype_policies.get(dtype).compute_dtype)
        self.kw = self.stream_kw if self.scaled else self.policy_kw
        self.symmetric = padding == "symmetric"

    def conv(self, x, filters: int, kernel: int, stride: int, name: str):
        padding = "same"
        if self.symmetric and stride > 1 and kernel > 1:
            # The authors' Torch convolution pads kernel // 2 on every side; Keras' "same" pads a
            # stride-2 conv of an even size (0, 1) or (2, 3). Stride 1 and 1x1 convs agree already.
            x = keras.layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad", **self.kw)(x)
            padding = "valid"
        conv, inner = (ScaledConv2D, {"inner_dtype": "float16"}) if self.scaled else (keras.layers.Conv2D, {})
        return conv(
            filters, kernel, strides=stride, padding=padding, use_bias=False,
            kernel_initializer=kernel_initializer(), name=name, **inner, **self.kw,
        )(x)

    def max_pool(self, x, name: str):
        """The ImageNet stem's 3x3/2 max pooling, padded as the convolutions are."""
        if not self.symmetric:
            return keras.layers.MaxPooling2D(3, strides=2, padding="same", name=name, **self.kw)(x)
        x = EdgePadding2D(1, name=f"{name}_pad", **self.kw)(x)
        return keras.layers.MaxPooling2D(3, strides=2, padding="valid", name=name, **self.kw)(x)

    def bn(self, x, name: str, stream: bool = False):
        return keras.layers.BatchNormalization(
            momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name, **(self.stream_kw if stream else self.kw)
        )(x)

    def relu(self, x, name: str, stream: bool = False):
        return keras.layers.ReLU(name=name, **(self.stream_kw if stream else self.kw))(x)

    def apply(self, x, ops: Sequence[str], name: str, stream: bool = False):
        """Runs a sequence of "bn"/"relu" operations, naming each `{name}_{op}`; `stream`: they are on
        the identity path (`stream_kw`)."""
        for op in ops:
            x = getattr(self, op)(x, f"{name}_{op}", stream=stream)
        return x


def _residual_branch(ops: _Ops, x, filters: int, stride: int, block: str,
                     stride_conv: int, spec: UnitSpec, name: str):
    """F(x): the convolutions of one unit with BN-ReLU between them (Fig. 4); conv `stride_conv` strides."""
    layout = branch_layout(block, filters)  # the same table UnitStack reads
    for i, (width, kernel) in enumerate(layout, start=1):
        x = ops.conv(x, width, kernel, stride if i - 1 == stride_conv else 1, f"{name}_{i}_conv")
        x = ops.apply(x, ("bn", "relu") if i < len(layout) else spec.post, f"{name}_{i}")
    return x


def residual_unit(ops: _Ops, x, filters: int, stride: int, cfg: Config, name: str):
    """One unit: x_{l+1} = f(h(x_l) + F(x_l)) with the variant's f, h and F."""
    spec, shortcut = UNIT_SPECS[cfg.unit], SHORTCUTS[cfg.shortcut]
    family = FAMILY_SPECS[cfg.family]
    out_filters = filters * (4 if cfg.block == "bottleneck" else 1)

    activated = ops.apply(x, spec.preact, f"{name}_preact", stream=True)
    # A basic unit strides its first 3x3 (fb.resnet.torch, timm); a bottleneck the family's conv.
    stride_conv = family.bottleneck_stride_conv if cfg.block == "bottleneck" else 0
    residual = _residual_branch(ops, activated, filters, stride, cfg.block, stride_conv, spec, name)

    h = x
    if shortcut.always_project or x.shape[-1] != out_filters:
        # Projection (paper Sec. 3.1 / Appendix): 1x1 conv with the stride, reading the
        # pre-activated input in pre-activation units.
        h = ops.conv(activated, out_filters, 1, stride, f"{name}_shortcut_conv")
        if spec.projection_bn:
            h = ops.bn(h, f"{name}_shortcut_bn")
    elif stride > 1:  # stride_in="last": same width, half the size: subsample.
        h = keras.layers.MaxPooling2D(1, strides=stride, name=f"{name}_shortcut_pool", **ops.stream_kw)(x)

    y = shortcut.combine(
        ShortcutInputs(h, residual, activated, out_filters, stride, name),
        cfg.shortcut_options, ops.stream_kw,
    )
    return ops.apply(y, spec.after_add, f"{name}_out", stream=True)


def _unit_stride(stage: int, unit: int, units: int, cfg: Config) -> int:
    """Stride 2 in the first unit of stages 2.. (paper), or the last unit of stages ..S-1."""
    stages = len(cfg.units_per_stage)
    if cfg.stride_in == "first":
        return 2 if stage > 1 and unit == 1 else 1
    return 2 if stage < stages and unit == units else 1


def remat_segment_units(total_units: int) -> int:
    """Units per rematerialized segment: about sqrt(total), so that the segment inputs kept for the
    backward pass and one segment's recomputed activations cost about the same memory."""
    return max(1, round(math.sqrt(total_units)))


def _units(cfg: Config) -> list[tuple[int, int, str]]:
    """(width, stride, name) of every residual unit, in order."""
    return [(width, _unit_stride(stage, unit, units, cfg), f"stage{stage}_unit{unit}")
            for stage, (width, units) in enumerate(zip(cfg.widths, cfg.units_per_stage, strict=True), start=1)
            for unit in range(1, units + 1)]


def _rematerialized_segment(ops: _Ops, x, segment, cfg: Config):
    """Consecutive units as one sub-model whose activations are recomputed in the backward pass."""
    first, last = segment[0][2], segment[-1][2]
    name = first if first == last else f"{first}_to_{last}"
    inputs = y = keras.Input(shape=x.shape[1:], dtype=x.dtype, name=f"{name}_input")
    for width, stride, unit_name in segment:
        y = residual_unit(ops, y, width, stride, cfg, unit_name)
    # The stream's dtype: Keras would cast the segment's input to the wrapper's compute dtype.
    return Rematerialized(keras.Model(inputs, y, name=f"{name}_block"), name=name, **ops.stream_kw)(x)


# JAX: units of a `UnitStack` loop unrolled per iteration (benchmarks/RESULTS.md, "deep").
SCAN_UNROLL = 5


def stack_runs(cfg: Config) -> list[list[tuple[int, int, str]]]:
    """The units grouped for `scan=True`: each run of 2+ units that keep width and stride (units 2..n
    of a stage; 2..n-1 with stride_in="last") is one group, every other unit a group of its own."""
    runs: list[tuple[bool, list[tuple[int, int, str]]]] = []
    for width, stride, name in _units(cfg):
        stage = name.split("_")[0]
        stackable = stride == 1 and not name.endswith("_unit1")
        if stackable and runs and runs[-1][0] and runs[-1][1][-1][2].startswith(f"{stage}_"):
            runs[-1][1].append((width, stride, name))
        else:
            runs.append((stackable, [(width, stride, name)]))
    return [units for _, units in runs]


def stack_name(first: str, last: str) -> str:
    """`stage2_unit2_to_unit18`: the name of the `UnitStack` holding those units."""
    return f"{first}_to_{last.split('_')[1]}"


def _stage_features(ops: _Ops, x, cfg: Config):
    for group in stack_runs(cfg):
        if len(group) == 1:
            x = residual_unit(ops, x, group[0][0], group[0][1], cfg, group[0][2])
        else:
            x = UnitStack(len(group), group[0][0], block=cfg.block, unit=cfg.unit, shortcut=cfg.shortcut,
                          shortcut_options=cfg.shortcut_options, unroll=SCAN_UNROLL, remat=cfg.remat,
                          momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=stack_name(group[0][2], group[-1][2]),
                          stream_dtype=cfg.stream_dtype, **ops.policy_kw)(x)
    return x


def build_features(ops: _Ops, x, cfg: Config):
    """Stem, stages of residual units, and the head's BN-ReLU (no pooling)."""
    family, spec = FAMILY_SPECS[cfg.family], UNIT_SPECS[cfg.unit]
    x = ops.conv(x, cfg.widths[0], family.stem_kernel, family.stem_stride, "stem_conv")
    x = ops.apply(x, spec.stem, "stem", stream=True)
    if family.stem_pool:
        x = ops.max_pool(x, "stem_pool")
    units = _units(cfg)
    if cfg.scan:
        x = _stage_features(ops, x, cfg)
    elif cfg.remat:
        size = remat_segment_units(len(units))
        for start in range(0, len(units), size):
            x = _rematerialized_segment(ops, x, units[start:start + size], cfg)
    else:
        for width, stride, name in units:
            x = residual_unit(ops, x, width, stride, cfg, name)
    return ops.apply(x, spec.head, "post", stream=True)


# ---------------------------------------------------------------- public API


def _default_name(depth: int, unit: str) -> str:
    base = f"resnet{depth}_{unit}"
    uid = keras.backend.get_uid(base)
    return base if uid == 1 else f"{base}_{uid - 1}"


def ResNet(
    depth: int,
    *,
    unit: str = "full_preact",
    shortcut: str = "identity",
    family: Optional[str] = None,
    block: Optional[str] = None,
    stride_in: str = "first",
    include_top: bool = True,
    input_shape: Optional[Sequence[Optional[int]]] = None,
    input_tensor: Any = None,
    pooling: Optional[str] = None,
    classes: Optional[int] = None,
    classifier_activation: Union[str, Callable, None] = "softmax",
    weights: Union[str, os.PathLike, None] = None,
    dtype: Any = None,
    name: Optional[str] = None,
    remat: bool = False,
    scan: Optional[bool] = None,
    fused_batchnorm: bool = True,
    padding: str = "symmetric",
    widths: Optional[Sequence[int]] = None,
    stream_dtype: Optional[str] = None,
    **variant_options: Any,
) -> keras.Model:
    """Builds a residual network of He et al. (2016) as an uncompiled functional model.

    Args:
        depth: weighted layers. CIFAR: 6n+2 (basic units) or 9n+2 (bottleneck units),
            e.g. 20, 56, 110, 164, 1001, 1202, or 3n+2 with block="single". ImageNet: 18,
            34, 50, 101, 152, 200.
        unit: residual-unit variant of Fig. 4, one of `UNITS`: "original",
            "bn_after_addition", "relu_before_addition", "relu_only_preact",
            "full_preact" (default).
        shortcut: shortcut variant of Fig. 2, one of `SHORTCUT_NAMES`: "identity"
            (default), "constant_scaling", "exclusive_gating",
            "shortcut_only_gating", "conv1x1", "dropout".
        family: "cifar" or "imagenet"; None means "imagenet" for the ImageNet depths
            above and "cifar" otherwise.
        block: CIFAR only: "basic" or "bottleneck" where a depth fits both forms
            (default: the paper's choice, bottleneck for 164 and 1001, else basic), or
            "single": units of one 3x3 conv, depth 3n+2 (Table 3's "ResNet-110 (1-layer
            skip)": `ResNet(110, block="single")`, 1.7M parameters).
        stride_in: "first" (paper, fb.resnet.torch): the first unit of stages 2.. has
            stride 2 and the projection; "last" (keras.applications, TF-slim): the
            last unit of stages ..S-1 has stride 2 and subsamples its shortcut.
        include_top: end in global average pooling and a dense classifier.
        input_shape: (height, width, channels); default (32, 32, 3) for CIFAR,
            (224, 224, 3) for ImageNet. Height and width may be None.
        input_tensor: a Keras tensor to build on instead of a new `keras.Input`.
        pooling: with include_top=False: None (4D features), "avg" or "max".
        classes: classifier width; default 10 (CIFAR) or 1000 (ImageNet).
        classifier_activation: activation of the classifier, or None for logits.
            The classifier computes in float32 under mixed precision.
        weights: None, or a `.keras` / `.weights.h5` file saved from this architecture. With
            include_top=False, or another `classes`, every weight but the classifier is loaded
            (fine-tuning: a new head on a trained network).
        dtype: dtype or dtype policy for every layer; None follows the global policy.
        name: model name; default `resnet{depth}_{unit}`, made unique in the session.
        remat: rematerialization (gradient checkpointing): runs of about sqrt(units)
            consecutive residual units become `Rematerialized` sub-models that keep only
            their input for the backward pass and recompute the rest, for deep nets whose
            activations do not fit in memory (benchmarks/RESULTS.md: peak memory and step
            time of ResNet-1001). Same weights, outputs and gradients; not with
            shortcut="dropout". With scan=True, each unit of a `UnitStack` is recomputed.
        scan: build units 2..n of each stage as one `UnitStack` layer that holds their weights
            stacked on a leading axis and runs them as one loop, traced and compiled once
            (`jax.lax.scan`, `tf.while_loop`): a 1000-layer net builds in under a second and
            starts training several times sooner (benchmarks/RESULTS.md, "Deep networks"). The
            same network: `to_plain` / `to_stacked` convert with the same weights and outputs.
            None (default): stacked when a stage has 100 units or more (ResNet-1001, ResNet-1202;
            `keras_resnet_v2.depths.default_scan`), per-unit layers otherwise; False: per-unit
            layers always.
        fused_batchnorm: under the TensorFlow backend, train BatchNorm through TensorFlow's fused
            kernel (`keras_resnet_v2.fuse_batchnorm`): the same numbers, faster; config and
            saved files unchanged. No effect on other backends.
        padding: how a stride-2 convolution and the ImageNet stem's max pooling pad: "symmetric"
            (default: the authors' Torch code, torchvision, timm and keras.applications' explicit
            `ZeroPadding2D`: kernel // 2 rows and columns on every side, so converted PyTorch
            weights give PyTorch's outputs) or "same" (Keras' `padding="same"`: the extra row and
            column on the bottom and right of even sizes; networks trained before this default).
            Output shapes are the same; only stride-2 3x3 and 7x7 convs and the stem pool differ.
        widths: per stage, a basic unit's width or a bottleneck's inner width (its output is 4x);
            the stem has `widths[0]` filters. Default (16, 32, 64) for CIFAR, (64, 128, 256, 512)
            for ImageNet (the paper's).
        stream_dtype: "float32": the identity path (each addition, gate and scaling layer, the
            BN-ReLU that reads the stream x_l: pre-activations, the stem's and the final one, and a
            `UnitStack`'s loop carry) in float32, so under mixed_float16 the stream can exceed
            float16's 65,504 (as PyTorch's autocast adds in float32; Megatron-LM's
            `fp32_residual_connection`). Under mixed_float16 that alone still overflowed at 1000
            layers, in the branches, so there the other layers are float32 too and every
            convolution computes in float16 on operands rescaled by powers of two, which cannot
            overflow (`ScaledConv2D`, keras_resnet_v2/scaled.py). Under mixed_bfloat16 the branch
            convolutions and their BatchNorms keep the policy. "compute": every layer in the
            policy's compute dtype. None (default): "float32" under
            mixed_float16 beyond 100 residual units (ResNet-1001, ResNet-1202:
            `default_stream_dtype`), where a float16 stream goes NaN (benchmarks/RESULTS.md, "Mixed
            precision at depth"), "compute" otherwise. Same weights, saved variables and serving
            signatures either way; no effect under a float32 policy.
        **variant_options: options of the chosen shortcut: `shortcut_scale` (0.5) and
            `scale_residual` (True) for "constant_scaling"; `gate_bias` (-6.0) for the
            gating shortcuts; `dropout_rate` (0.5) for "dropout".

    Returns:
        An uncompiled `keras.Model`.

    Raises:
        ValueError: an argument is invalid; raised before any layer is built, naming
            the argument, the received value and what is allowed.

    Example:
        >>> model = ResNet(110, unit="original", shortcut="exclusive_gating", gate_bias=-6.0)
        >>> model.output_shape
        (None, 10)
    """
    cfg = resolve_config(
        depth, unit=unit, shortcut=shortcut, family=family, block=block,
        stride_in=stride_in, input_shape=input_shape, input_tensor=input_tensor,
        include_top=include_top, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation, weights=weights, dtype=dtype,
        name=name, variant_options=variant_options, remat=remat, scan=scan, fused_batchnorm=fused_batchnorm,
        padding=padding, widths=widths, stream_dtype=stream_dtype,
    )

    if default_stream_dtype(cfg.dtype, sum(cfg.units_per_stage)) and not cfg.stream_dtype:  # asked for "compute"
        warnings.warn(
            f"ResNet-{cfg.depth} under mixed_float16 with stream_dtype='compute': with a float16 residual stream, "
            "networks this deep leave float16's range early in training (measured: a NaN loss within 20 steps "
            "at lr 0.1, also after 15 warm-up steps at lr 0.01; the BatchNorm moving statistics become NaN too). "
            "Leave stream_dtype=None (a float32 stream, the default at this depth), or use mixed_bfloat16 "
            "(benchmarks/RESULTS.md, 'Mixed precision at depth').", UserWarning, stacklevel=2)
    # About ten layers a unit; a few frames of Keras' graph walk per layer.
    ensure_recursion_limit(max(DEEP_GRAPH_RECURSION_LIMIT, 40 * sum(cfg.units_per_stage)))
    ops = _Ops(cfg.dtype, cfg.padding, cfg.stream_dtype)
    if input_tensor is None:
        inputs = keras.Input(shape=cfg.input_shape, name="input")
        x = inputs
    else:
        inputs = keras.utils.get_source_inputs(input_tensor)
        inputs = inputs[0] if len(inputs) == 1 else inputs  # one input: a tensor, not a 1-list
        x = input_tensor
    x = build_features(ops, x, cfg)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool", **ops.kw)(x)
        # Logits and softmax in the policy's variable dtype: float32 under mixed precision.
        x = keras.layers.Dense(
            cfg.classes, activation=classifier_activation, name="predictions",
            dtype=cfg.dtype.variable_dtype,
        )(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool", **ops.kw)(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool", **ops.kw)(x)

    # Stacked: a keras.Model whose get_layer says where a unit inside a UnitStack went.
    model = (StackedModel if cfg.scan else keras.Model)(inputs, x, name=name or _default_name(cfg.depth, cfg.unit))
    model.dtype_policy = cfg.dtype  # compile() reads it: under mixed_float16 it adds dynamic loss scaling
    if weights is not None:
        def with_head(file_classes: int) -> keras.Model:  # the file's network, for fine-tuning a new head
            return ResNet(depth, unit=unit, shortcut=shortcut, family=cfg.family, block=cfg.block,
                          stride_in=stride_in, input_shape=cfg.input_shape, classes=file_classes, dtype=dtype,
                          remat=remat, scan=cfg.scan, fused_batchnorm=False, padding=padding, widths=widths,
                          stream_dtype=stream_dtype, **variant_options)

        load_weights(model, weights, with_head)
    fuse_batchnorm(model, enable=fused_batchnorm)  # TensorFlow: the kernel, and one set of statistics
    return model


def _named(depth: int, family: str, paper: str) -> Callable[..., keras.Model]:
    def constructor(**kwargs: Any) -> keras.Model:
        if "depth" in kwargs:
            raise ValueError(
                f"ResNet{depth} fixes depth={depth}; call `ResNet(depth, ...)` for another "
                f"depth. Received: depth={kwargs['depth']!r}"
            )
        kwargs.setdefault("family", family)
        return ResNet(depth, **kwargs)

    constructor.__name__ = constructor.__qualname__ = f"ResNet{depth}"
    # Notebooks (Shift-Tab, `inspect.signature`, `help`) show ResNet's keywords, this depth's family.
    parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, default=family if p.name == "family" else p.default)
                  if p.kind is not inspect.Parameter.VAR_KEYWORD else p
                  for p in inspect.signature(ResNet).parameters.values() if p.name != "depth"]
    constructor.__signature__ = inspect.Signature(parameters, return_annotation=keras.Model)
    constructor.__doc__ = (
        f"{'CIFAR' if family == 'cifar' else 'ImageNet'} ResNet-{depth} ({paper}).\n\n"
        "Takes the keyword arguments of `ResNet` (unit, shortcut, family, block, stride_in,\n"
        "include_top, input_shape, input_tensor, pooling, classes, classifier_activation,\n"
        "weights, dtype, name, remat, scan, fused_batchnorm, padding, widths, stream_dtype and the\n"
        "shortcut "
        "options: see "
        "`help(keras_resnet_v2.ResNet)`)\n"
        "and returns an uncompiled `keras.Model`. Inputs are standardized images: see\n"
        "`help(keras_resnet_v2)` for `Standardize`, which takes raw 0..255 pixels.\n\n"
        f"Example:\n    >>> model = ResNet{depth}()\n"
    )
    return constructor


# CIFAR basic (6n+2), CIFAR bottleneck (9n+2), ImageNet.
ResNet20 = _named(20, "cifar", "basic, n=3")
ResNet32 = _named(32, "cifar", "basic, n=5")
ResNet44 = _named(44, "cifar", "basic, n=7")
ResNet56 = _named(56, "cifar", "basic, n=9")
ResNet110 = _named(110, "cifar", "basic, n=18; Tables 1-3")
ResNet1202 = _named(1202, "cifar", "basic, n=200; 19.4M parameters")
ResNet164 = _named(164, "cifar", "bottleneck, n=18; Tables 2-3")
ResNet1001 = _named(1001, "cifar", "bottleneck, n=111; Table 3, 10.2M parameters")
ResNet18 = _named(18, "imagenet", "basic [2, 2, 2, 2]")
ResNet34 = _named(34, "imagenet", "basic [3, 4, 6, 3]")
ResNet50 = _named(50, "imagenet", "bottleneck [3, 4, 6, 3]")
ResNet101 = _named(101, "imagenet", "bottleneck [3, 4, 23, 3]")
ResNet152 = _named(152, "imagenet", "bottleneck [3, 8, 36, 3]")
ResNet200 = _named(200, "imagenet", "bottleneck [3, 24, 36, 3]")
