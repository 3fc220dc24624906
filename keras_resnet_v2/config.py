"""`Config`: one network, described completely and checked; its stages and units as named values.

`ResNet(...)` checks its arguments into a `Config` before any layer is built, builds from it, and
the model keeps it (`model.resnet_config`, saved in its `.keras` file as keras-hub's backbones keep
their arguments). Everything that rebuilds a network (`to_plain`/`to_stacked`, a new head for
fine-tuning, training's checks) reads that and changes a field with `dataclasses.replace`.

Example:
    >>> cfg = keras_resnet_v2.resnet.resolve_config(164)
    >>> cfg.block, cfg.units_per_stage, [stage.name for stage in cfg.stages]
    ('bottleneck', (18, 18, 18), ['stage1', 'stage2', 'stage3'])
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Optional

import keras

from keras_resnet_v2.depths import FAMILY_SPECS, IMAGENET_DEPTHS_TRAINED, Family, default_scan, resolve_depth
from keras_resnet_v2.names import DATA_FORMATS, PADDINGS, POOLINGS, STRIDE_IN, UNITS, check_choice, short_repr
from keras_resnet_v2.plumbing.files import check_keras_archive
from keras_resnet_v2.variants import SHORTCUTS, resolve_shortcut_options

# Above this many residual units, mixed_float16 training with a float16 residual stream overflows
# (ResNet-1001, 333 units: benchmarks/RESULTS.md, "Mixed precision at depth"): ResNet keeps the stream
# in float32 there by default (`stream_dtype=None`), with range-safe float16 convolutions (scaled.py),
# and warns if it is asked for float16 (`"compute"`).
FLOAT16_UNIT_LIMIT = 100
STREAM_DTYPES = (None, "float32", "compute")


@dataclass(frozen=True)
class Unit:
    """One residual unit: its stage, its place in the stage (from 1), its width and its stride."""

    stage: int
    index: int
    width: int  # a basic unit's width, a bottleneck's inner width
    stride: int

    @property
    def name(self) -> str:
        """`stage2_unit5`: every layer of the unit is named `{name}_{key}`."""
        return f"stage{self.stage}_unit{self.index}"


@dataclass(frozen=True)
class Stage:
    """One stage: units of one width at one resolution, the first or last of them strided."""

    index: int
    width: int
    units: tuple[Unit, ...]

    @property
    def name(self) -> str:
        return f"stage{self.index}"

    @property
    def stride(self) -> int:
        """How much the stage downsamples: 2 where one of its units strides, else 1."""
        return max(unit.stride for unit in self.units)


_NOT_SAVED = ("weights", "fused_batchnorm")
# The arguments of `ResNet` that decide a network's weights, their shapes and places (with the shortcut's
# options); the others say what it is built on, how it runs and which head it ends in.
ARCHITECTURE = ("depth", "family", "block", "unit", "shortcut", "stride_in", "padding", "widths")
# Fields that are no argument of `ResNet`: worked out from `depth`, the options spread as keywords, a file loaded.
_NOT_ARGUMENTS = ("units_per_stage", "shortcut_options", "weights")


@dataclass(frozen=True)
class Config:
    """Every argument of `ResNet`, checked and resolved (defaults filled in), but `input_tensor`."""

    depth: int
    family: str
    block: str
    units_per_stage: tuple[int, ...]
    unit: str
    shortcut: str
    shortcut_options: dict
    stride_in: str
    include_top: bool
    input_shape: tuple
    pooling: Optional[str]
    classes: int
    classifier_activation: Any
    dtype: Any  # a keras.DTypePolicy
    name: Optional[str] = None
    remat: bool = False
    scan: bool = False
    fused_batchnorm: bool = True
    padding: str = "symmetric"
    widths: tuple[int, ...] = ()  # per stage: a basic unit's width, a bottleneck's inner width
    stream_dtype: Optional[str] = None  # "float32": the identity path in float32; None: the policy's
    weights: Any = None  # a file to load after building (not kept by a built model)
    data_format: str = "channels_last"  # or "channels_first": where the channels are (the weights are the same)

    @property
    def channel_axis(self) -> int:
        """The axis of the channels in a batch: -1 (channels_last) or 1 (channels_first)."""
        return 1 if self.data_format == "channels_first" else -1

    @property
    def family_spec(self) -> Family:
        return FAMILY_SPECS[self.family]

    @property
    def stride_conv(self) -> int:
        """Which convolution of F carries a unit's stride: a basic unit's first 3x3 (fb.resnet.torch,
        timm); a bottleneck's first 1x1 in the authors' CIFAR code, its 3x3 on ImageNet (fb.resnet.torch)."""
        return self.family_spec.bottleneck_stride_conv if self.block == "bottleneck" else 0

    @property
    def form(self) -> str:
        """How the units are built: "stacked" (`scan`), "rematerialized" (`remat` alone) or "plain"."""
        return "stacked" if self.scan else "rematerialized" if self.remat else "plain"

    @property
    def stages(self) -> list[Stage]:
        """The stages in order. Stride 2 sits in the first unit of stages 2.. (the paper), or with
        stride_in="last" in the last unit of stages ..S-1 (keras.applications, TF-slim)."""
        count = len(self.units_per_stage)
        stages = []
        for k, (width, n) in enumerate(zip(self.widths, self.units_per_stage, strict=True), start=1):
            strided = (1 if k > 1 else None) if self.stride_in == "first" else (n if k < count else None)
            stages.append(Stage(k, width, tuple(Unit(k, u, width, 2 if u == strided else 1) for u in range(1, n + 1))))
        return stages

    @property
    def units(self) -> list[Unit]:
        """Every residual unit, in order."""
        return [unit for stage in self.stages for unit in stage.units]

    def arguments(self) -> dict[str, Any]:
        """The `ResNet(...)` keyword arguments that build this network again (less `weights`).

        Example:
            >>> model = keras_resnet_v2.ResNet20()
            >>> again = keras_resnet_v2.ResNet(**model.resnet_config.arguments())  # the same network, new weights
            >>> again.count_params() == model.count_params()
            True
        """
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _NOT_ARGUMENTS}
        values.update(classes=self.classes if self.include_top else None, stream_dtype=self.stream_argument)
        return {**values, **self.shortcut_options}

    @property
    def stream_argument(self) -> Optional[str]:
        """`stream_dtype` as `ResNet` takes it: "float32", "compute" (a mixed policy's own dtype on the
        stream) or None (a float32 policy: nothing to choose)."""
        if self.stream_dtype:
            return self.stream_dtype
        return None if self.dtype.compute_dtype == "float32" else "compute"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what a saved model keeps (`ResNetModel.get_config`). Not `weights` (a file the
        build loaded) nor `fused_batchnorm` (a TensorFlow kernel choice: the same numbers, and a file saved
        from either loads fused), so that neither changes a saved file."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _NOT_SAVED}
        values["dtype"] = self.dtype.name
        activation = self.classifier_activation
        values["classifier_activation"] = (activation if activation is None or isinstance(activation, str)
                                           else keras.saving.serialize_keras_object(activation))
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """The inverse of `to_dict` (lists back to tuples, the policy and activation revived)."""
        values = dict(values)
        for key in ("units_per_stage", "input_shape", "widths"):
            values[key] = tuple(values[key])
        values["dtype"] = keras.dtype_policies.get(values["dtype"])
        activation = values["classifier_activation"]
        if isinstance(activation, dict):
            values["classifier_activation"] = keras.saving.deserialize_keras_object(activation)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


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


# ---------------------------------------------------------------- checks


def check_weights_path(weights) -> None:
    """One-line ValueError unless `weights` is None, "imagenet" or an existing `.keras` / `.weights.h5` path."""
    if weights is None:
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            "`weights` must be None, 'imagenet' or the path of a `.keras` or `.weights.h5` file. "
            f"Received: weights={weights!r}"
        )
    path = os.fspath(weights)
    if path == "imagenet":  # keras.applications' spelling: timm's trained network (`_check_imagenet_weights`)
        return
    if not (path.endswith(".keras") or path.endswith(".weights.h5")):
        raise ValueError(
            "`weights` must be None, 'imagenet' or the path of a `.keras` or `.weights.h5` file. "
            f"Received: weights={weights!r}"
        )
    if not os.path.isfile(path):
        raise ValueError(f"`weights` file does not exist. Received: weights={weights!r}")
    if path.endswith(".keras"):  # a zip archive: refused before anything inflates (a decompression bomb)
        check_keras_archive(path, "`weights`")


# weights="imagenet" is timm's trained network: these arguments must keep its architecture.
_IMAGENET_ARCHITECTURE = {"unit": "full_preact", "shortcut": "identity", "stride_in": "first", "padding": "symmetric",
                          "widths": None, "variant_options": {}}


def _check_imagenet_weights(a: dict, family: str, block: str, classes: int) -> None:
    """weights="imagenet": a depth timm trained, its architecture, and with the top its 1000 classes."""
    trained = ", ".join(f"ResNet{depth}" for depth in IMAGENET_DEPTHS_TRAINED)
    if family != "imagenet" or a["depth"] not in IMAGENET_DEPTHS_TRAINED:
        raise ValueError(f"weights='imagenet' exists for {trained} (timm's trained checkpoints). Received: "
                         f"depth={a['depth']!r}, family={family!r}")
    changed = [f"{key}={a[key]!r}" for key, default in _IMAGENET_ARCHITECTURE.items() if (a[key] or None) != (
        default or None)]
    if block != resolve_depth(a["depth"], "imagenet")[1]:
        changed.append(f"block={a['block']!r}")
    if changed:
        raise ValueError("weights='imagenet' loads timm's trained network, which has full_preact units, identity "
                         "shortcuts, stride_in='first', padding='symmetric' and the default widths and block. "
                         f"Received: {', '.join(changed)}")
    if a["include_top"] and classes != 1000:
        raise ValueError("With weights='imagenet' and include_top=True, `classes` must be 1000 (ImageNet's): for "
                         "another count, build include_top=False and add a head, or fine-tune from a file "
                         f"(weights='model.keras', classes=N). Received: classes={classes!r}")


def _check_bool(arg: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"`{arg}` must be True or False. Received: {arg}={short_repr(value)}")


def _widths(widths, family: Family) -> tuple[int, ...]:
    if widths is None:
        return family.widths
    if not (isinstance(widths, (tuple, list)) and len(widths) == len(family.widths) and all(
            isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths)):
        raise ValueError(f"`widths` must be {len(family.widths)} positive integers, one per stage (default "
                         f"{family.widths}). Received: widths={widths!r}")
    return tuple(widths)


def _input_shape(input_shape, input_tensor, family: Family, include_top: bool, data_format: str) -> tuple:
    """(height, width, channels), or (channels, height, width) for channels_first."""
    first = data_format == "channels_first"
    order = "(channels, height, width)" if first else "(height, width, channels)"
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
    if input_shape is None:  # as keras.applications: a backbone takes any size, a classifier its family's
        height, width, channels = family.input_shape if include_top else (None, None, family.input_shape[2])
        return (channels, height, width) if first else (height, width, channels)
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if shape is None or len(shape) != 3 or not all(
        d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 1) for d in shape
    ):
        raise ValueError(
            f"`input_shape` must be {order} with positive integers "
            f"(height and width may be None). Received: input_shape={input_shape!r}"
        )
    channels, spatial = (shape[0], shape[1:]) if first else (shape[2], shape[:2])
    if channels is None:
        raise ValueError(f"The channel count in `input_shape` must be known ({data_format}: {order}). "
                         f"Received: input_shape={input_shape!r}")
    small = [d for d in spatial if d is not None and d < family.total_stride]
    if small:
        raise ValueError(
            f"`input_shape` is too small: this family downsamples by {family.total_stride}, so height "
            f"and width must be at least {family.total_stride}. Received: input_shape={input_shape!r}"
        )
    return shape


def _dtype(dtype):
    if dtype is None:
        return keras.config.dtype_policy()
    try:
        return keras.dtype_policies.get(dtype)
    except (ValueError, TypeError) as error:
        raise ValueError(
            "`dtype` must be None, a dtype name such as 'float32' or a dtype policy such as "
            f"'mixed_float16'. Received: dtype={dtype!r}"
        ) from error


def _check_bfloat16_kernels(policy) -> None:
    """A bfloat16 policy under TensorFlow where its CPU kernels have no bfloat16 convolution (x86 without
    AVX-512, e.g. AVX2 laptops; oneDNN aborts at the first step) is refused here, before a layer is built."""
    if policy.compute_dtype != "bfloat16" or keras.backend.backend() != "tensorflow":
        return
    from keras_resnet_v2._kernels import bfloat16_convolutions_run

    if not bfloat16_convolutions_run():
        raise ValueError(
            f"TensorFlow has no bfloat16 convolution on this CPU (its oneDNN kernels need AVX-512 for bfloat16; "
            f"this CPU, or ONEDNN_MAX_CPU_ISA, gives them AVX2 only): train in float32 here (the default: "
            f"keras.mixed_precision.set_global_policy('float32'), or resnet-v2-train --precision float32), or in "
            f"mixed_bfloat16 on a GPU or a CPU with AVX-512. Received: dtype policy {policy.name!r}")


def _head(a: dict, family: Family) -> int:
    """The checked head arguments; returns `classes` (the family's default when None)."""
    _check_bool("include_top", a["include_top"])
    check_choice("pooling", a["pooling"], POOLINGS)
    if a["include_top"] and a["pooling"] is not None:
        raise ValueError(
            "`pooling` applies only when include_top=False (the classifier head always "
            f"average-pools). Received: pooling={a['pooling']!r} with include_top=True"
        )
    classes = family.classes if a["classes"] is None else a["classes"]
    if a["include_top"]:
        if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
            raise ValueError(f"`classes` must be an integer >= 1. Received: classes={classes!r}")
        try:
            keras.activations.get(a["classifier_activation"])
        except (ValueError, TypeError) as error:
            raise ValueError(
                "`classifier_activation` must be None, a Keras activation name or a callable. "
                f"Received: classifier_activation={a['classifier_activation']!r}"
            ) from error
    return classes


def _check_stream_dtype(stream_dtype) -> None:
    if not any(stream_dtype is allowed or stream_dtype == allowed for allowed in STREAM_DTYPES):
        raise ValueError("`stream_dtype` must be None (float32 under mixed_float16 beyond "
                         f"{FLOAT16_UNIT_LIMIT} units), 'float32' or 'compute' (the policy's compute dtype). "
                         f"Received: stream_dtype={stream_dtype!r}")


def _stream_dtype(stream_dtype, dtype, units: int) -> Optional[str]:
    """The resolved stream dtype: "float32" where the identity path stays float32, else None."""
    if stream_dtype is None:
        return default_stream_dtype(dtype, units)
    if stream_dtype == "compute" or dtype.compute_dtype == "float32":
        return None  # nothing to keep apart: every layer computes in the policy's dtype
    return stream_dtype


def check_arguments(a: dict[str, Any]) -> Config:
    """The `Config` of `ResNet`'s arguments `a` (every parameter by name, `variant_options` a dict):
    each one checked, in the signature's order, before any layer is built."""
    family, block, units = resolve_depth(a["depth"], a["family"], a["block"])
    spec = FAMILY_SPECS[family]
    check_choice("unit", a["unit"], UNITS)
    check_choice("shortcut", a["shortcut"], tuple(SHORTCUTS))
    options = resolve_shortcut_options(a["shortcut"], a["variant_options"])
    check_choice("stride_in", a["stride_in"], STRIDE_IN)
    check_choice("padding", a["padding"], PADDINGS)
    widths = _widths(a["widths"], spec)
    classes = _head(a, family=spec)
    data_format = keras.config.image_data_format() if a["data_format"] is None else a["data_format"]
    check_choice("data_format", data_format, DATA_FORMATS)
    if data_format == "channels_first" and keras.backend.backend() == "tensorflow":
        from keras_resnet_v2._kernels import nchw_convolutions_run

        if not nchw_convolutions_run():
            raise ValueError("TensorFlow runs no channels_first convolution on this machine (no GPU, and its CPU "
                             "kernels take NHWC only with oneDNN off: TF_ENABLE_ONEDNN_OPTS=0): build with "
                             "data_format='channels_last' (the same weights), or use JAX or PyTorch. "
                             "Received: data_format='channels_first'")
    check_weights_path(a["weights"])
    if isinstance(a["weights"], str) and a["weights"] == "imagenet":
        _check_imagenet_weights(a, family, block, classes)
    scan = default_scan(units) if a["scan"] is None else a["scan"]
    for arg, value in (("remat", a["remat"]), ("scan", scan), ("fused_batchnorm", a["fused_batchnorm"])):
        _check_bool(arg, value)
    _check_stream_dtype(a["stream_dtype"])
    dtype = _dtype(a["dtype"])
    _check_bfloat16_kernels(dtype)
    stream_dtype = _stream_dtype(a["stream_dtype"], dtype, sum(units))
    if a["remat"] and SHORTCUTS[a["shortcut"]].noise:
        raise ValueError(f"`remat=True` recomputes each unit in the backward pass, which would draw new "
                         f"dropout masks (random numbers): it cannot be combined with shortcut={a['shortcut']!r}. "
                         f"Received: remat={a['remat']!r}, shortcut={a['shortcut']!r}")
    name = a["name"]
    if name is not None and not (isinstance(name, str) and name):
        raise ValueError(f"`name` must be a non-empty string or None. Received: name={name!r}")
    resolved = dict(
        family=family, block=block, units_per_stage=units, shortcut_options=options,
        input_shape=_input_shape(a["input_shape"], a["input_tensor"], spec, a["include_top"], data_format),
        classes=classes, dtype=dtype, scan=scan, widths=widths, stream_dtype=stream_dtype, data_format=data_format)
    # Every other field is the argument of the same name, as given.
    return Config(**{f.name: a[f.name] for f in dataclasses.fields(Config) if f.name not in resolved}, **resolved)
