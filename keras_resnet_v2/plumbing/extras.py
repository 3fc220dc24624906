"""What each optional part of the package needs installed, checked before it is imported.

The builders need only Keras and one backend (`pip install keras_resnet_v2`). Training and
export are TensorFlow programs shipped as extras:

    pip install "keras_resnet_v2[train]"    # keras_resnet_v2.training, resnet-v2-train
    pip install "keras_resnet_v2[export]"   # keras_resnet_v2.export, resnet-v2-export

`require` runs in those subpackages' `__init__`, so a missing extra is one line naming the
install command, not a traceback from deep inside TensorFlow's absence.
"""

from __future__ import annotations

import importlib.util
import os
import sys

# extra -> (modules it must make importable, console script that needs it)
EXTRAS = {
    "train": (("tensorflow", "tensorflow_datasets", "sklearn", "matplotlib", "yaml", "tensorboard"),
              "resnet-v2-train"),
    "export": (("tensorflow", "tf2onnx", "onnxruntime", "tensorflow_serving"), "resnet-v2-export"),
}


class MissingExtraError(ImportError):
    """An optional part of keras_resnet_v2 was imported without its extra installed."""


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here (none: the extra is installed)."""
    modules, _ = EXTRAS[extra]
    return [name for name in modules if importlib.util.find_spec(name) is None]


def require(extra: str, package: str) -> None:
    """Raises `MissingExtraError` (one line) if `extra` is not installed.

    Run from one of the package's own console scripts, it prints that line and exits with
    status 1 instead: a command-line user gets the remedy, not a traceback.
    """
    missing = missing_modules(extra)
    if not missing:
        return
    message = (f"{package} needs the '{extra}' extra ({', '.join(missing)} not installed): "
               f"pip install \"keras_resnet_v2[{extra}]\"")
    if os.path.basename(sys.argv[0] if sys.argv else "") == EXTRAS[extra][1]:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(1)
    # name=package: `python -m keras_resnet_v2.training` then prints this line alone, not a traceback.
    raise MissingExtraError(message, name=package)


def check_import_name(name: str, expected: str) -> None:
    """Refuses to import a subpackage under its repository folder's bare name.

    `training/` and `export/` sit at the repository's top level but install as
    `keras_resnet_v2.training` / `keras_resnet_v2.export`; importing them as `training` or
    `export` (from a checkout's root) would load every module twice and register the Keras
    classes twice.
    """
    if name != expected:
        raise ImportError(f"This folder is the package {expected!r}; import it under that name "
                          f"(pip install -e . in the repository), not as {name!r}")
