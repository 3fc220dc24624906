"""Command-line start-up: our first line, then the backend started with its start-up lines hidden.

The command lines (`resnet-v2-train`, `resnet-v2-export`, `python -m keras_resnet_v2`) parse and
check their arguments before importing Keras (the packages are light, keras_resnet_v2.plumbing.lazy),
print what they are about to do, then call `start_backend`.

TensorFlow writes its start-up lines from C++ straight to file descriptor 2: absl's
"All log messages before absl::InitializeLog()" notice, CUDA probing, CPU features, and on a
machine without a GPU "failed call to cuInit" (when the devices are first listed). Some come
before it reads TF_CPP_MIN_LOG_LEVEL, so setting the level does not hide them; pointing
descriptor 2 at a temporary file while the backend starts does. What was captured is replayed
if starting fails, so a real error is never hidden. Level 2 then keeps TensorFlow's later INFO
and WARNING lines quiet; its errors still show.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator

QUIET_LEVEL = "2"  # TF_CPP_MIN_LOG_LEVEL: errors only
VERBOSE_HELP = "show the backend's start-up log lines (hidden unless this is given or TF_CPP_MIN_LOG_LEVEL is set)"


@contextlib.contextmanager
def _stderr_captured() -> Iterator[None]:
    """File descriptor 2 goes to a temporary file in the block; replayed if the block raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            capture.seek(0)
            os.write(2, capture.read())
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def start_backend(verbose: bool = False) -> None:
    """Imports Keras and its backend and lists the devices, hiding the backend's start-up lines.

    `verbose=True`, or TF_CPP_MIN_LOG_LEVEL already set in the environment (the user's own
    choice), shows everything.

    Example:
        >>> start_backend()          # what the command lines call after parsing their arguments
    """
    if verbose or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        _start()
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = QUIET_LEVEL
    with _stderr_captured():
        _start()


def _start() -> None:
    import keras

    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.list_physical_devices()  # initializes the platforms (the cuInit line)
    elif backend == "jax":
        import jax

        jax.devices()


def announce(command: str, message: str) -> None:
    """The command's first line (on stderr, so stdout keeps only results)."""
    print(f"{command}: {message}", file=sys.stderr, flush=True)
