"""ResNet builders: He et al., "Identity Mappings in Deep Residual Networks" (ECCV 2016).

One public builder, `ResNet`: its signature is the one spelling of the network's arguments. It
checks them into a `Config` (config.py: a family, a depth as a line of data, a residual-unit
variant of Fig. 4 and a shortcut variant of Fig. 2) and hands that to `builder.build`, or, for
`weights="imagenet"`, to `pretrained.imagenet_model` (timm's trained network, converted once and
cached). The named constructors (`ResNet1001`, `ResNet50`, ...) are thin wrappers over it, with
its signature.
"""

from __future__ import annotations

import inspect
import os
import warnings
from typing import Any, Callable, Optional, Sequence, Union

import keras

from keras_resnet_v2.builder import build
from keras_resnet_v2.builder import ensure_recursion_limit as ensure_recursion_limit  # public here too
from keras_resnet_v2.config import Config, check_arguments, default_stream_dtype
from keras_resnet_v2.pretrained import imagenet_model

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
    cfg = check_arguments(dict(
        depth=depth, unit=unit, shortcut=shortcut, family=family, block=block, stride_in=stride_in,
        include_top=include_top, input_shape=input_shape, input_tensor=input_tensor, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation, weights=weights, dtype=dtype, name=name, remat=remat, scan=scan,
        fused_batchnorm=fused_batchnorm, padding=padding, widths=widths, stream_dtype=stream_dtype,
        data_format=data_format, variant_options=variant_options))
    if default_stream_dtype(cfg.dtype, sum(cfg.units_per_stage)) and not cfg.stream_dtype:  # asked for "compute"
        warnings.warn(
            f"ResNet-{cfg.depth} under mixed_float16 with stream_dtype='compute': with a float16 residual stream, "
            "networks this deep leave float16's range early in training (measured: a NaN loss within 20 steps "
            "at lr 0.1, also after 15 warm-up steps at lr 0.01; the BatchNorm moving statistics become NaN too). "
            "Leave stream_dtype=None (a float32 stream, the default at this depth), or use mixed_bfloat16 "
            "(benchmarks/RESULTS.md, 'Mixed precision at depth').", UserWarning, stacklevel=2)
    if cfg.weights == "imagenet":  # timm's trained network, converted once and cached (pretrained.py)
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
