"""TensorFlow's oneDNN CPU kernels: on by default on every x86 CPU, not only on those TensorFlow picks.

TensorFlow's x86 wheels carry two sets of CPU kernels for convolutions and BatchNorm: its own
(Eigen's) and oneDNN's. TensorFlow turns oneDNN's on by default only on CPUs with AVX-512 VNNI,
BF16 or AMX, and reads `TF_ENABLE_ONEDNN_OPTS` once, while `import tensorflow` runs. On an AVX2
CPU (most laptops, many cloud machines) its own kernels trained ResNet-164 at 0.54-0.62x PyTorch's speed
and oneDNN's at 1.02-1.06x; ResNet-20 at 0.49-0.53x and 1.01-1.04x (batch 64 and 128; benchmarks/RESULTS.md,
"Training speed on AVX2 and AVX-512").

So `import keras_resnet_v2` sets `TF_ENABLE_ONEDNN_OPTS=1` when the variable is unset, TensorFlow
is not imported yet and the machine is x86-64 (`prefer_onednn`): the decision is made at run time,
on every CPU alike, and a user's own value (`0` or `1`) is always kept. The two kernel sets compute
the same functions within float32 rounding; no config or saved file changes.

Imported after TensorFlow, the package can no longer choose: the first model built then warns once,
in one line, when oneDNN is off on an x86 CPU without a GPU and nobody set the variable
(`warn_if_off`).

Example:
    >>> import keras_resnet_v2          # before keras / tensorflow
    >>> import os; os.environ["TF_ENABLE_ONEDNN_OPTS"]
    '1'
"""

from __future__ import annotations

import os
import platform
import sys
import warnings

VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
X86 = ("x86_64", "amd64", "i386", "i686", "x86")
_warned: list[bool] = []


def _x86() -> bool:
    return platform.machine().lower() in X86


def prefer_onednn() -> bool:
    """Sets TF_ENABLE_ONEDNN_OPTS=1 if it is unset, TensorFlow is not imported and the CPU is x86. Returns
    whether it did."""
    if VARIABLE in os.environ or "tensorflow" in sys.modules or not _x86():
        return False
    os.environ[VARIABLE] = "1"
    return True


def onednn_enabled() -> bool | None:
    """Whether the imported TensorFlow runs oneDNN's CPU kernels (None: not known, or not imported)."""
    if "tensorflow" not in sys.modules:
        return None
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # a TensorFlow without the probe: nothing to say
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def warn_if_off() -> bool:
    """Once per process: a one-line warning when TensorFlow runs its own CPU kernels on an x86 machine
    without a GPU although nobody chose so (TensorFlow was imported before this package). Returns
    whether it warned."""
    if _warned or VARIABLE in os.environ or not _x86() or onednn_enabled() is not False:
        return False
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        return False
    _warned.append(True)
    warnings.warn(f"TensorFlow was imported before keras_resnet_v2 and runs its own CPU kernels, not oneDNN's, "
                  f"which trained ResNet-164 and ResNet-20 1.5-1.9x slower on an AVX2 CPU. Import keras_resnet_v2 "
                  f"before keras and tensorflow, or set {VARIABLE}=1 (=0 keeps these kernels and silences this).",
                  stacklevel=2)
    return True
