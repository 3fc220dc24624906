"""Fine-tuning: a training run that starts from a trained network (`resnet-v2-train --init SOURCE`).

SOURCE is a training run directory or a `.keras` file of this package, a timm checkpoint of the
paper's network (`.safetensors`, `.pth`/`.bin` state dict of `resnetv2_50` and friends) or a timm
model name (downloaded as `from_timm` downloads it). What SOURCE decides, and a run may not change:

- the architecture (depth, unit, shortcut, block, padding, widths): read from its `config.json`,
  its `.keras` config or the checkpoint's tensor shapes, before TensorFlow starts (`describe`);
- the preprocessing: the layer in front of the network (timm's ImageNet mean and std, or the run's
  own `Standardize` statistics, copied, never recomputed on the new data), the input size a per-pixel
  mean image fixes, and how test and served images are sized (timm's bicubic 0.95 centre crop, or the
  run's own);
- every weight but the classifier, which is new, sized to the new dataset's classes and starts at
  zero (`initialize`; as BiT fine-tunes, Kolesnikov et al. 2020, Sec. 3.3): before the first step
  every class is equally likely, rather than a random head's arbitrary mapping of SOURCE's features.

The run's config.json records SOURCE as given (`init`, part of the run's identity) and `init_source`:
the file read, its SHA-256, the architecture and preprocessing. A resumed run builds from that record
and its backup, and never reads SOURCE again (it may be gone). `--freeze` names the parts that keep
SOURCE's weights (`freeze`): their weights are not trained and their BatchNorm layers run in
inference mode, so their moving statistics stay SOURCE's, bit for bit.

Everything but `initialize` and `freeze` runs without Keras or TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from typing import Any, Iterable, Optional

from keras_resnet_v2.depths import resolve_depth
from keras_resnet_v2.names import short_repr
from keras_resnet_v2.plumbing.files import model_file, read_json_object
from keras_resnet_v2.timm_checkpoint import (
    TIMM_SERVING,
    TIMM_STANDARDIZE,
    check_timm_name,
    download,
    read_torch,
    safetensors_shapes,
    timm_architecture,
)
from keras_resnet_v2.training.config import TrainConfig, parse_model
from keras_resnet_v2.training.resume import recorded_run

TIMM_FILES = (".safetensors", ".pth", ".pt", ".bin")
# The settings SOURCE decides (TrainConfig fields): its network, then how its images are prepared.
ARCHITECTURE = ("model", "unit", "shortcut", "block", "padding", "variant_options", "widths")
FREEZE_WORDS = ("none", "backbone")


@dataclasses.dataclass(frozen=True)
class Source:
    """What a fine-tuning run takes from SOURCE; config.json's `init_source` records it.

    `kind`: "run", "keras" or "timm". `file`: the file the weights come from. `architecture`: the
    TrainConfig fields of `ARCHITECTURE`. `front`: the layer before the network: "timm" (timm's
    standardization), "standardize" (a `Standardize` named `front_name` of `front_shape`, its statistics
    copied) or "none".
    `normalization`: "timm", "per_pixel", "per_channel" or "none". `image_size`: SOURCE's input size;
    `fixed_size`: whether the run must keep it (a per-pixel mean image). `preprocessing`: how test and
    served images are sized (`keras_resnet_v2.plumbing.images.Preprocessing` fields).
    """

    spec: str
    kind: str
    file: str
    architecture: dict
    front: str
    front_name: Optional[str]
    front_shape: Optional[list]
    normalization: str
    image_size: int
    fixed_size: bool
    preprocessing: dict
    sha256: Optional[str] = None

    @property
    def stages(self) -> int:
        return len(resolve_depth(parse_model(self.architecture["model"]), None, self.architecture["block"])[2])


def _timm(spec: str, path: str, shapes: dict) -> Source:
    found = timm_architecture(shapes, "init")
    architecture = {"model": f"resnet{found['depth']}", "unit": "full_preact", "shortcut": "identity", "block": None,
                    "padding": "symmetric", "variant_options": {}, "widths": list(found["widths"])}
    return Source(spec, "timm", os.path.abspath(path), architecture, "timm", TIMM_STANDARDIZE, None, "timm", 224,
                  False, dict(TIMM_SERVING))


def _saved_model_config(path: str) -> dict:
    try:
        with zipfile.ZipFile(path) as archive:
            saved = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, RecursionError) as error:
        reason = "its config.json nests too deeply" if isinstance(error, RecursionError) else error
        raise ValueError(f"`init` {path!r} is not a readable .keras file ({reason}). Received: init={path!r}") from None
    config = saved.get("config") if isinstance(saved, dict) else None
    network = config.get("resnet_config") if isinstance(config, dict) else None
    if not isinstance(network, dict):
        raise ValueError(f"`init` {path!r} holds no network of keras_resnet_v2 (a ResNetModel keeps its arguments in "
                         "its config; files saved before version 0.2 do not): load it with keras_resnet_v2 and save "
                         f"it again, or pass its run directory. Received: init={path!r}")
    return saved


def _keras(spec: str, path: str, run: Optional[dict]) -> Source:
    """A `.keras` file of ours; `run`: the config.json of the run it belongs to, if any. A description
    that lacks a key or holds a value of another type (an edited or damaged file) is one line."""
    saved = _saved_model_config(path)
    try:
        return _keras_source(spec, path, run, saved)
    except (KeyError, TypeError, AttributeError, IndexError) as error:
        raise ValueError(f"`init` {path!r} holds a damaged description of its network ({type(error).__name__}: "
                         f"{str(error)[:120]} in its config.json): save it again with keras_resnet_v2, or "
                         f"pass another SOURCE. Received: init={spec!r}") from None


def _keras_source(spec: str, path: str, run: Optional[dict], saved: dict) -> Source:
    network, layers = saved["config"]["resnet_config"], saved["config"].get("layers", [])
    depth, family = network["depth"], network["family"]
    if resolve_depth(depth)[0] != family or network.get("stride_in", "first") != "first":
        raise ValueError(f"`init` {path!r} is a {family} ResNet-{depth} with stride_in={network.get('stride_in')!r}; "
                         "resnet-v2-train trains the paper's layouts (the family of the depth, stride_in='first'). "
                         f"Received: init={spec!r}")
    architecture = {"model": f"resnet{depth}", "unit": network["unit"], "shortcut": network["shortcut"],
                    "block": network["block"] if family == "cifar" else None, "padding": network["padding"],
                    "variant_options": dict(network.get("shortcut_options") or {}), "widths": list(network["widths"])}
    inputs = next((layer for layer in layers if layer.get("class_name") == "InputLayer"), {})
    height = ((inputs.get("config") or {}).get("batch_shape") or [None, None])[1]
    standardize = next((layer for layer in layers if layer.get("class_name") == "Standardize"), None)
    name = standardize["config"]["name"] if standardize else None
    if standardize is None:
        front, shape, normalization = "none", None, "none"
    elif name == TIMM_STANDARDIZE:
        front, shape, normalization = "timm", None, "timm"
    else:
        shape = list(standardize["config"]["shape"])
        front, normalization = "standardize", "per_pixel" if len(shape) == 3 else "per_channel"
    if run is not None:
        preprocessing = run.get("preprocessing") or "resize"
        preprocessing = preprocessing if isinstance(preprocessing, dict) else {"mode": preprocessing}
    else:
        preprocessing = dict(TIMM_SERVING) if front == "timm" else {"mode": "resize"}
    return Source(spec, "run" if run is not None else "keras", os.path.abspath(path), architecture, front, name,
                  shape, normalization, int(height or 224), normalization == "per_pixel", preprocessing)


def _enclosing_run(path: str) -> Optional[dict]:
    """The config.json of the run a `.keras` file belongs to (RUN/model.keras, RUN/checkpoints/*.keras)."""
    folder = os.path.dirname(os.path.abspath(path))
    for candidate in (folder, os.path.dirname(folder) if os.path.basename(folder) == "checkpoints" else None):
        if candidate and os.path.isfile(os.path.join(candidate, "config.json")):
            try:
                return read_json_object(os.path.join(candidate, "config.json"))
            except ValueError:
                return None
    return None


def describe(spec: str) -> Source:
    """What SOURCE `spec` is (a run directory, a `.keras` file, a timm checkpoint file or name), read
    without Keras: one-line ValueErrors when it is missing, unreadable or not the paper's network.

    Example:
        >>> describe("runs/digits").architecture["model"]  # doctest: +SKIP
        'resnet20'
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"`init` must be a run directory, a .keras file, a timm checkpoint or a timm model name. "
                         f"Received: init={spec!r}")
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        config = os.path.join(path, "config.json")
        if not os.path.isfile(config):
            raise ValueError(f"`init` {spec!r} is a directory but not a training run (no config.json). "
                             f"Received: init={spec!r}")
        if not os.path.isfile(os.path.join(path, "model.keras")):
            last = os.path.join(spec, "checkpoints", "last.keras")
            raise ValueError(f"`init` run {spec!r} has no model.keras: it has not finished. Finish it, or pass {last} "
                             f"(or best.keras). Received: init={spec!r}")
        return _keras(spec, model_file(os.path.join(path, "model.keras"), "`init`"), read_json_object(config))
    if path.endswith(".keras"):
        return _keras(spec, model_file(path, "`init`"), _enclosing_run(path))
    if path.endswith(TIMM_FILES):
        if not os.path.isfile(path):
            raise ValueError(f"`init` file does not exist. Received: init={spec!r}")
        shapes = safetensors_shapes(path, "init") if path.endswith(".safetensors") else read_torch(path, "init")
        return _timm(spec, path, shapes)
    if os.sep in spec or os.path.exists(path):
        raise ValueError(f"`init` must be a run directory, a .keras file or a timm checkpoint ({', '.join(TIMM_FILES)})"
                         f"{'' if os.path.exists(path) else ', and this path does not exist'}. Received: init={spec!r}")
    check_timm_name(spec, "init")
    path = download(spec, "init")
    return _timm(spec, path, safetensors_shapes(path, "init"))


def frozen_parts(text: str, source: Source) -> tuple[str, ...]:
    """The parts `--freeze` names: "none", "backbone" (every part: only the new classifier trains) or a
    comma-separated list of stem, stage1..stageN (N: SOURCE's stages) and post (the final BN-ReLU).

    Example:
        >>> frozen_parts("stem,stage1", describe("runs/digits"))  # doctest: +SKIP
        ('stem', 'stage1')
    """
    parts = ("stem", *(f"stage{k}" for k in range(1, source.stages + 1)), "post")
    names = [name.strip() for name in str(text).split(",")]
    if names == ["none"]:
        return ()
    if names == ["backbone"]:
        return parts
    for name in names:
        if name in FREEZE_WORDS:
            raise ValueError(f"`freeze` is {' or '.join(FREEZE_WORDS)} alone, or a list of parts ({', '.join(parts)}). "
                             f"Received: freeze={text!r}")
        if name not in parts:
            raise ValueError(f"`freeze` part {name!r} does not exist in {source.architecture['model']} (its parts: "
                             f"{', '.join(parts)}; or none, backbone). Received: freeze={text!r}")
    return tuple(dict.fromkeys(names))


# --------------------------------------------------------------------------- the run's settings


def _same(a: Any, b: Any) -> bool:
    listed = lambda v: list(v) if isinstance(v, (tuple, list)) else v  # noqa: E731 - JSON has lists, flags tuples
    return listed(a) == listed(b)


def prepare(config: TrainConfig, given: Optional[Iterable[str]] = None) -> Optional[Source]:
    """Puts SOURCE's architecture and preprocessing into `config` (a run with `init`); returns the `Source`,
    or None for a run from random weights. Needs no Keras.

    `given`: the settings the user set (the command line's flags and --config keys); a given one that
    disagrees with SOURCE is refused in one line. None: those that differ from TrainConfig's defaults.
    Without its own --recipe, a fine-tuning run takes the `finetune` recipe. A run directory being
    resumed gives the SOURCE its config.json recorded, and SOURCE is not read again.
    """
    defaults = TrainConfig()
    given = set(given) if given is not None else {f.name for f in dataclasses.fields(TrainConfig)
                                                  if getattr(config, f.name) != getattr(defaults, f.name)}
    previous = recorded_run(config.run_dir) if isinstance(config.run_dir, str) and config.run_dir else None
    if isinstance(config.freeze, str):  # " none", "stem, stage1": the words, without the spaces around them
        config.freeze = ",".join(word.strip() for word in config.freeze.split(","))
    if config.init is None:
        if previous is not None and previous.get("init") is not None:
            raise ValueError(f"Run directory {config.run_dir!r} holds a run fine-tuned from init={previous['init']!r}: "
                             "give the same --init to resume it, or use another --run-dir. Received: init=None")
        if config.freeze != "none":
            raise ValueError(f"`freeze` keeps parts of a trained network: it needs --init. Received: "
                             f"freeze={config.freeze!r}")
        return None
    if previous is not None:
        if previous.get("init") is None:
            raise ValueError(f"Run directory {config.run_dir!r} holds a run that started from random weights, not from "
                             f"--init; fine-tune into another --run-dir. Received: init={config.init!r}")
        if previous["init"] != config.init or not isinstance(previous.get("init_source"), dict):
            raise ValueError(f"Run directory {config.run_dir!r} holds a run fine-tuned from init={previous['init']!r}; "
                             f"use another --run-dir. Received: init={config.init!r}")
        source = recorded_source(config.run_dir, previous["init_source"])  # resuming: SOURCE is not read again
    else:
        source = describe(config.init)
    for name, value in source.architecture.items():
        if name in given and not _same(getattr(config, name), value):
            raise ValueError(f"`{name}` comes from --init, whose network has {name}={value!r}; leave it out or give "
                             f"{value!r}. Received: {name}={getattr(config, name)!r}")
        setattr(config, name, value)
    if source.fixed_size and config.image_size not in (None, source.image_size):
        raise ValueError(f"--init subtracts a per-pixel mean image of {source.image_size}x{source.image_size}, so the "
                         f"run keeps that input size. Received: image_size={config.image_size}")
    config.image_size = config.image_size or source.image_size
    crops = source.preprocessing.get("mode") == "shorter_side_crop"  # ImageNet-style: native sizes, random crops
    if "scale_augmentation" in given and config.recipe_overrides.get("scale_augmentation") != crops:
        raise ValueError(f"--init's images are {'cropped' if crops else 'resized'} (preprocessing follows it). "
                         f"Received: scale_augmentation={config.recipe_overrides.get('scale_augmentation')!r}")
    config.recipe_overrides = {**config.recipe_overrides, "scale_augmentation": crops}
    if "recipe" not in given:
        config.recipe = "finetune"
    frozen_parts(config.freeze, source)
    return source


def record(source: Source) -> dict:
    """config.json's `init_source`."""
    return dataclasses.asdict(source)


def recorded_source(run_dir: str, recorded: dict) -> Source:
    """The `Source` a run's config.json recorded, checked field by field (an edited record is one line)."""
    fields = {f.name: f for f in dataclasses.fields(Source)}
    required = {name for name, f in fields.items() if f.default is dataclasses.MISSING}
    kinds = {"spec": str, "kind": str, "file": str, "architecture": dict, "front": str, "normalization": str,
             "image_size": int, "fixed_size": bool, "preprocessing": dict}
    wrong = sorted(set(recorded) - set(fields)) + sorted(required - set(recorded)) + sorted(
        name for name, kind in kinds.items() if name in recorded and not isinstance(recorded[name], kind))
    if not wrong and not set(recorded["architecture"]) <= set(ARCHITECTURE):
        wrong = ["architecture"]
    if wrong:
        where = os.path.join(run_dir, "config.json")
        raise ValueError(f"{where} is damaged: its init_source has {wrong[0]!r} missing, unknown or of the wrong type "
                         f"(it was edited?): restore it, or fine-tune into another --run-dir. Received: init_source="
                         f"{short_repr(recorded, 120)}")
    return Source(**recorded)


# --------------------------------------------------------------------------- the network (Keras)


def front_layer(source: Source):
    """The layer in front of the network: timm's standardization, a `Standardize` whose statistics
    `initialize` copies from SOURCE, or None."""
    import numpy as np

    from keras_resnet_v2.layers import Standardize
    from keras_resnet_v2.pretrained import timm_standardize

    if source.front == "timm":
        return timm_standardize("channels_last")
    if source.front == "standardize":
        shape = tuple(source.front_shape)
        return Standardize(mean=np.zeros(shape, "float32"), variance=np.ones(shape, "float32"), name=source.front_name)
    return None


def initialize(model, source: Source) -> str:
    """Copies SOURCE's weights into `model` (built on `front_layer(source)` with a new classifier): every
    weight but the classifier, the front's statistics included; the classifier is set to zero. Returns the
    SHA-256 of the file read."""
    import keras

    from keras_resnet_v2 import pretrained, weights
    from keras_resnet_v2.plumbing.files import file_sha256

    digest = file_sha256(source.file)
    if source.kind == "timm":
        state = pretrained.load_state_dict(source.file, "init")
        pretrained.copy_timm_weights(state, model, new_head=True, what="init")
    else:
        trained = weights.read_keras_file(source.file, "init")
        weights.copy_all_but_head(trained, model, source.file, what="init")
    for variable in model.get_layer(weights.CLASSIFIER).weights:
        variable.assign(keras.ops.zeros(variable.shape, variable.dtype))
    return digest


def freeze(model, parts: Iterable[str]) -> int:
    """Freezes the layers of `parts` (`frozen_parts`): not trained, BatchNorm in inference mode. Returns
    how many layers it froze. Call before the optimizer is built."""
    from keras_resnet_v2.weights import leaf_layers

    prefixes = tuple(f"{part}_" for part in parts)
    frozen = [layer for layer in leaf_layers(model).values() if prefixes and layer.name.startswith(prefixes)]
    for layer in frozen:
        layer.trainable = False
    return len(frozen)
