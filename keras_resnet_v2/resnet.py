"""ResNet builders: He et al., "Identity Mappings in Deep Residual Networks" (ECCV 2016).

One builder, `ResNet`, checks its arguments into a `Config` (config.py: a family, a depth as a line
of data, a residual-unit variant of Fig. 4 and a shortcut variant of Fig. 2) and builds from it:
each residual unit runs the steps of `variants.unit_plan` as named Keras layers, and the units
take one of three forms (plain, rematerialized segments, stacked). The named constructors
(`ResNet1001`, `ResNet50`, ...) are thin wrappers over it, with its signature.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import sys
import warnings
from typing import Any, Callable, Optional, Sequence, Union

import keras

from keras_resnet_v2.batchnorm import fuse_batchnorm
from keras_resnet_v2.config import Config, Unit, check_arguments, default_stream_dtype
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


# ---------------------------------------------------------------- public API


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
    data_format: Optional[str] = None,
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
            (224, 224, 3) for ImageNet, and (None, None, 3) with include_top=False (any
            size from the family's total stride up, as keras.applications). Height and
            width may be None.
        input_tensor: a Keras tensor to build on instead of a new `keras.Input`.
        pooling: with include_top=False: None (4D features), "avg" or "max".
        classes: classifier width; default 10 (CIFAR) or 1000 (ImageNet).
        classifier_activation: activation of the classifier, or None for logits.
            The classifier computes in float32 under mixed precision.
        weights: None, or a `.keras` / `.weights.h5` file saved from this architecture. With
            include_top=False, or another `classes`, every weight but the classifier is loaded
            (fine-tuning: a new head on a trained network). "imagenet" (ResNet-18/34/50/101):
            timm's trained checkpoint (`from_timm`), downloaded and converted on first use and
            cached in KERAS_HOME/models/keras_resnet_v2; the model takes pixels 0..255 (timm's
            normalization is its first layer) and, with the top, has 1000 classes.
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
        data_format: "channels_last" (batches [N, H, W, C]) or "channels_first" ([N, C, H, W]);
            None (default) follows `keras.config.image_data_format()`, as keras.applications.
            The weights are the same either way (a file saved from one loads into the other),
            and so are the outputs, on the transposed input. TensorFlow runs channels_first
            convolutions on CPUs through oneDNN (its default on x86 Linux); where it runs none
            (no GPU, TF_ENABLE_ONEDNN_OPTS=0) the build is refused in one line. The exports serve
            channels_last images.
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
    cfg = check_arguments(dict(locals()))  # every argument by name: the signature above is their one spelling
    if default_stream_dtype(cfg.dtype, sum(cfg.units_per_stage)) and not cfg.stream_dtype:  # asked for "compute"
        warnings.warn(
            f"ResNet-{cfg.depth} under mixed_float16 with stream_dtype='compute': with a float16 residual stream, "
            "networks this deep leave float16's range early in training (measured: a NaN loss within 20 steps "
            "at lr 0.1, also after 15 warm-up steps at lr 0.01; the BatchNorm moving statistics become NaN too). "
            "Leave stream_dtype=None (a float32 stream, the default at this depth), or use mixed_bfloat16 "
            "(benchmarks/RESULTS.md, 'Mixed precision at depth').", UserWarning, stacklevel=2)
    if cfg.weights == "imagenet":  # timm's trained network, converted once and cached (pretrained.py)
        from keras_resnet_v2.pretrained import imagenet_model

        return imagenet_model(cfg, input_tensor)
    return build(cfg, input_tensor)


def resolve_config(depth: int, **arguments: Any) -> Config:
    """The checked `Config` of `ResNet(depth, **arguments)`, `ResNet`'s defaults for what is not given,
    without building anything (training checks its settings with it before reading data).

    Example:
        >>> resolve_config(1001).scan, resolve_config(110, block="single").units_per_stage
        (True, (36, 36, 36))
    """
    try:
        bound = inspect.signature(ResNet).bind(depth, **arguments)
    except TypeError as error:
        raise ValueError(f"{error}. Received: {sorted(arguments)}") from None
    bound.apply_defaults()
    return check_arguments(dict(bound.arguments))


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
    keywords = ", ".join(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)
    constructor.__doc__ = (
        f"{'CIFAR' if family == 'cifar' else 'ImageNet'} ResNet-{depth} ({paper}).\n\n"
        f"Takes the keyword arguments of `ResNet` ({keywords} and the shortcut options: see\n"
        "`help(keras_resnet_v2.ResNet)`) and returns an uncompiled `keras.Model`. Inputs are standardized\n"
        "images: see `help(keras_resnet_v2)` for `Standardize`, which takes raw 0..255 pixels.\n\n"
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
