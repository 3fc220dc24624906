"""A training run's settings (`TrainConfig`), checked without importing Keras or TensorFlow.

The command line builds a `TrainConfig` from its flags and `--config` file and checks every key,
type and name here, so a mistyped setting is one line in well under a second; `run.check_config`
then adds the builder's own checks (depth, unit, shortcut, variant options).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from keras_resnet_v2.depths import resolve_depth
from keras_resnet_v2.names import short_repr
from keras_resnet_v2.plumbing.files import check_writable_directory
from keras_resnet_v2.training import recipes

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")
JIT_COMPILE = ("auto", "true", "false")
MODEL_PATTERN = re.compile(r"resnet(\d+)")
# Fields that must match to resume a run directory (the rest, e.g. epochs, may change).
IDENTITY_FIELDS = ("dataset", "model", "block", "unit", "shortcut", "variant_options", "scan", "padding",
                   "batch_size", "precision", "seed", "recipe", "image_size", "normalization", "widths", "init",
                   "freeze")


@dataclass
class TrainConfig:
    """The settings of one training run: each field is the `resnet-v2-train` flag of the same name
    (`--batch-size` is `batch_size`), with the same default and meaning (`resnet-v2-train --help`).

    `run(TrainConfig(...))` does what the command line does; `check_settings` checks every field that
    needs no data or devices. `variant_options` holds the shortcut options (`{"gate_bias": -6.0}`),
    `recipe_overrides` the recipe fields set by flags (`{"lr": 0.05}`).

    Example:
        >>> config = TrainConfig(dataset="digits", model="resnet20", epochs=15, run_dir="runs/digits")
        >>> config.precision, config.recipe
        ('float32', 'paper_cifar')
    """

    dataset: str = "digits"
    model: str = "resnet20"
    unit: str = "full_preact"
    shortcut: str = "identity"
    block: str | None = None  # CIFAR units: None (the paper's for the depth), basic, bottleneck or single
    variant_options: dict = field(default_factory=dict)
    epochs: int | None = None
    steps: int | None = None
    batch_size: int | None = None  # global; default: the recipe's
    run_dir: str = "runs/default"
    recipe: str = "paper_cifar"
    precision: str = "float32"
    strategy: str = "auto"
    data_dir: str | None = None
    export_dir: str | None = None
    export_formats: str = "savedmodel,onnx"  # what --export-dir holds (keras_resnet_v2.export.formats)
    seed: int = 0
    image_size: int | None = None  # default: the dataset's size, or 224 for ImageNet-style data
    eval_size: int | None = None  # also test at this crop (ImageNet-style data; the paper's 320)
    remat: bool = False  # recompute each unit's activations in the backward pass (less memory)
    scan: bool | None = None  # units 2..n of each stage as one UnitStack loop; None: ResNet's default (stacked
    # from 100 units a stage: ResNet-1001/1202), resolved to true/false before config.json is written
    padding: str = "symmetric"  # stride-2 convs: "symmetric" (Torch, the paper) or "same" (runs before issue 23)
    fused_batchnorm: bool = True  # train BatchNorm through TensorFlow's fused kernel (runtime.fuse_batchnorm)
    jit_compile: str = "auto"  # XLA for each replica's step: auto = on with one replica on a GPU (runtime)
    steps_per_execution: int = 1  # train steps per tf.function call (one host sync each)
    skip_bad_images: bool = False  # image folders: leave out files that do not decode (default: refuse)
    widths: tuple | None = None  # per stage (ResNet's `widths`); None: the paper's. A fine-tuning run: --init's
    init: str | None = None  # fine-tune from a run directory, .keras file, timm checkpoint or timm name (finetune.py)
    freeze: str = "none"  # with init: none, backbone, or parts (stem,stage1,...,post) that keep init's weights
    verbose: int = 1
    recipe_overrides: dict = field(default_factory=dict)  # any `recipes.Recipe` field

    @classmethod
    def from_dict(cls, values: dict, source: str = "the settings") -> TrainConfig:
        """Checks every key and value type (one-line errors naming `source`, e.g. a config file)."""
        known = {f.name for f in dataclasses.fields(cls)}
        bad_keys = [k for k in values if not isinstance(k, str)]
        if bad_keys:
            raise ValueError(f"Keys in {source} must be setting names (strings). Received: key {bad_keys[0]!r}")
        overrides = {k: values[k] for k in values if k in recipes.RECIPE_FIELDS and k not in known}
        unknown = set(values) - known - set(overrides)
        if unknown:
            allowed = sorted(known | set(recipes.RECIPE_FIELDS))
            raise ValueError(f"Unknown keys {sorted(unknown)} in {source}; allowed: {allowed}")
        for owner in (cls, recipes.Recipe):
            for f in dataclasses.fields(owner):
                if f.name in values and (owner is cls or f.name in overrides):
                    _check_type(f.name, values[f.name], f.type, source)
        config = cls(**{k: v for k, v in values.items() if k in known})
        config.recipe_overrides = {**config.recipe_overrides, **overrides}
        return config


# Annotation names (this module and recipes use postponed annotations: strings) -> accepted types.
_TYPES = {"str": (str,), "int": (int,), "float": (float, int), "bool": (bool,), "dict": (dict,),
          "tuple": (tuple, list), "None": (type(None),)}


def _check_type(key: str, value, annotation: str, source: str) -> None:
    names = [name.strip() for name in str(annotation).split("|")]
    if any(name not in _TYPES for name in names):
        return  # a type this check does not know is left to the code that uses it
    accepted = tuple(t for name in names for t in _TYPES[name])
    if isinstance(value, bool) and bool not in accepted:  # True is an int to Python, not a count here
        accepted = ()
    if not isinstance(value, accepted):
        expected = " or ".join({"str": "a string", "int": "an integer", "float": "a number", "bool": "true/false",
                                "dict": "a mapping", "tuple": "a list", "None": "null"}[name] for name in names)
        raise ValueError(f"`{key}` in {source} must be {expected}. Received: {key}={short_repr(value)} "
                         f"({type(value).__name__})")


def changed_settings(before: dict, after: dict, keys) -> str:
    """`key: old -> new` for each of `keys` whose value differs, comma-separated ("" when none): how a
    refusal names what a rerun changed (a run directory's identity, a sweep row's settings).

    Example:
        >>> changed_settings({"model": "resnet8", "steps": 4}, {"model": "resnet14", "steps": 4}, ["model", "steps"])
        "model: 'resnet8' -> 'resnet14'"
    """
    return ", ".join(f"{k}: {short_repr(before.get(k))} -> {short_repr(after.get(k))}" for k in keys
                     if before.get(k) != after.get(k))


def parse_model(name: str) -> int:
    match = MODEL_PATTERN.fullmatch(str(name).lower())
    if not match:
        raise ValueError(f"`model` must be 'resnet' followed by a depth, e.g. resnet20, resnet164, resnet50. "
                         f"Received: model={name!r}")
    return int(match.group(1))


def check_settings(config: TrainConfig) -> recipes.Recipe:
    """Every check that needs no Keras, data or devices; returns the effective recipe.

    Model name and depth (`depths.resolve_depth`; unit, shortcut and options are the builder's to
    check), lengths, sizes, run directory, precision, strategy, recipe and its overrides.

    Example:
        >>> check_settings(TrainConfig(model="resnet20", epochs=0))
        Traceback (most recent call last):
        ValueError: `epochs` must be a positive integer. Received: epochs=0
    """
    resolve_depth(parse_model(config.model), None, config.block)
    if config.epochs is not None and config.steps is not None:
        raise ValueError(f"Give `epochs` or `steps`, not both. Received: epochs={config.epochs}, steps={config.steps}")
    for name in ("epochs", "steps", "batch_size", "image_size", "eval_size", "steps_per_execution"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    for name, allowed in (("precision", PRECISIONS), ("strategy", STRATEGIES), ("jit_compile", JIT_COMPILE)):
        if getattr(config, name) not in allowed:
            raise ValueError(f"`{name}` must be one of {allowed}. Received: {name}={getattr(config, name)!r}")
    if not config.run_dir or not isinstance(config.run_dir, str):
        raise ValueError(f"`run_dir` must be a directory path. Received: run_dir={config.run_dir!r}")
    check_writable_directory(config.run_dir, "`run_dir`")
    # `batch_size` is this run's global batch; the recipe's own batch stays the reference of the
    # linear lr scaling (lr x global batch / recipe batch, the paper's Appendix: 0.1 at batch 128 for CIFAR).
    return recipes.get_recipe(config.recipe, **config.recipe_overrides)
