"""Shared fixtures and the two tiers. Tests run on the TensorFlow backend on CPU unless a test says otherwise.

Tiers (`--tier`, one switch): `pytest -q` runs the fast tier, every part of the package in a few
minutes (the README's command); `pytest -q --tier slow` runs only the tests marked `slow`
(ResNet-1001 exports and parity, fault injection at scale, fresh virtualenvs, the backend sweeps);
`--tier all` runs both. Tests named one by one (`pytest FILE::TEST`) run whatever their tier.
CI (`.ci/run`) runs the fast tier, then the slow one.
"""

import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# First, as a user's notebook should: before TensorFlow, so its oneDNN CPU kernels are on (plumbing/onednn.py).
import keras_resnet_v2  # noqa: E402, F401

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

TIERS = ("fast", "slow", "all")


def pytest_addoption(parser):
    parser.addoption("--tier", choices=TIERS, default="fast",
                     help="fast (default): every part in minutes; slow: only the tests marked slow; all: both")


def pytest_collection_modifyitems(config, items):
    tier = config.getoption("--tier")
    if tier == "all" or (config.args and all("::" in arg for arg in config.args)):
        return  # both tiers, or tests the user named one by one
    wanted = {item: (item.get_closest_marker("slow") is not None) == (tier == "slow") for item in items}
    dropped = [item for item in items if not wanted[item]]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if wanted[item]]


def bfloat16_kernels() -> bool:
    """Whether TensorFlow trains bfloat16 convolutions on this machine: CPUs with AVX-512 (with or without
    AVX512_BF16) and GPUs. On AVX2 alone the package refuses bfloat16 policies at build (tests/test_precision.py)."""
    from keras_resnet_v2._kernels import bfloat16_convolutions_run

    return bfloat16_convolutions_run()


# Tests that train or build in bfloat16 under TensorFlow: skipped where it has no bfloat16 convolution (AVX2
# CPUs), where tests/test_precision.py checks the one-line refusal instead.
needs_bfloat16 = pytest.mark.skipif(not bfloat16_kernels(), reason="no bfloat16 convolution in TensorFlow on "
                                    "this CPU (AVX2): mixed_bfloat16 is refused here, tests/test_precision.py")


def tiered(values, slow) -> list:
    """Parameters for `pytest.mark.parametrize`: `values`, the ones in `slow` in the slow tier."""
    missing = set(slow) - set(values)
    assert not missing, f"not among the parameters: {sorted(missing)}"
    return [pytest.param(value, marks=pytest.mark.slow) if value in slow else value for value in values]


# The line a command prints before it starts TensorFlow (keras_resnet_v2.plumbing.startup.announce).
ANNOUNCEMENT = re.compile(r"^(resnet-v2-train|resnet-v2-export|keras-resnet-v2)( \w+)?: .*; starting \w+$")


def message_lines(stderr: str) -> list[str]:
    """A command's stderr without blank lines and without its own start line: the messages."""
    return [line for line in stderr.splitlines() if line.strip() and not ANNOUNCEMENT.match(line)]


def kill_after_first_epoch(process, run_dir, timeout: float = 240) -> None:
    """SIGKILLs a training `process` (a Popen with stderr piped) once `run_dir` holds a backup and a history
    row: a kill between epochs, as a preempted machine's; fails if the process ended before that."""
    import signal
    import time

    from keras_resnet_v2.training.callbacks import read_history

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if (run_dir / "backup" / "checkpoint").exists() and read_history(str(run_dir / "history.csv")):
            break
        time.sleep(0.2)
    assert process.poll() is None, f"training ended before it could be killed: {process.stderr.read()[-2000:]}"
    process.send_signal(signal.SIGKILL)
    process.wait()


KINDS = {"Conv2D": "conv", "BatchNormalization": "bn", "ReLU": "relu", "Add": "add"}


def producer(tensor):
    """The layer that produced a Keras tensor in a functional graph."""
    return tensor._keras_history.operation


def branch_order(model: keras.Model, unit: str) -> list[str]:
    """Layer kinds of one unit's residual branch, in forward order, read off the graph.

    Walks back from the unit's last layer; at the addition it follows the residual
    input (the second one), and stops at the first layer of another unit or the stem.
    """
    last = [layer for layer in model.layers if layer.name.startswith(unit + "_")][-1]
    order, layer = [], last
    while layer.name.startswith(unit + "_"):
        order.append(KINDS.get(type(layer).__name__, type(layer).__name__))
        inputs = layer.input if isinstance(layer.input, list) else [layer.input]
        layer = producer(inputs[1] if len(inputs) > 1 else inputs[0])
    return order[::-1]


def trainable_count(model: keras.Model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.fixture(autouse=True, scope="session")
def _outside_the_checkout(tmp_path_factory):
    """Tests, and the Python processes they start, run in an empty directory.

    The package is tested as installed: a child Python started in the checkout's root would
    import its `keras_resnet_v2/` folder, which lacks `keras_resnet_v2.training` and `.export`
    (they live in the top-level `training/` and `export/` folders until installed).
    """
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)


@pytest.fixture
def images():
    def make(shape=(2, 32, 32, 3), seed=0):
        return np.random.default_rng(seed).uniform(0, 255, shape).astype("float32") / 255.0

    return make
