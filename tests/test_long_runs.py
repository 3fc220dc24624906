"""Resident memory of long training runs and sweeps stays bounded (issue 37, item 4).

tests/scripts/watch_memory.py runs the command and reads its resident memory as each epoch (a line of
history.csv) or each sweep row (a sweep_result.json) is finished.
"""

import json
import os
import subprocess
import sys

import pytest

WATCH = os.path.join(os.path.dirname(__file__), "scripts", "watch_memory.py")
TRAIN = [sys.executable, "-m", "keras_resnet_v2.training"]


def _watch(pattern: str, *command: str) -> dict:
    done = subprocess.run([sys.executable, WATCH, pattern, "--", *command], capture_output=True, text=True,
                          timeout=900, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["returncode"] == 0, report["stderr_tail"]
    return report


@pytest.mark.slow
def test_forty_epochs_grow_resident_memory_by_a_bounded_amount(tmp_path):
    # Measured (ResNet-8, digits, batch 64): 978 MiB after epoch 5, at most 1,031 MiB up to epoch 40; a
    # 100-epoch run peaked at 1,033 MiB, swinging between 1,000 and 1,033 from epoch 25 on (no trend).
    run_dir = tmp_path / "run"
    report = _watch(str(run_dir / "history.csv"), *TRAIN, "--dataset", "digits", "--model", "resnet8",
                    "--epochs", "40", "--batch-size", "64", "--run-dir", str(run_dir), "--quiet")
    memory = dict(report["marks"])
    assert max(memory) == 40 and 5 in memory, report["marks"]
    after_five = memory[5]
    assert max(v for epoch, v in memory.items() if epoch >= 5) - after_five < 96, report["marks"]


@pytest.mark.slow
def test_a_sweep_grows_resident_memory_by_a_bounded_amount_a_row(tmp_path):
    # Each row is a new model and new traced functions in the same process. TensorFlow and Keras keep a few
    # MiB of each (a plain `keras.Model.fit` loop of new models grows 3.2 MiB an iteration, with
    # `keras.backend.clear_session()` too; keras-team/keras#17458): measured 10-24 MiB a row (13 over 15 runs
    # of 2 epochs; 20 over 5 rows of 6 epochs; 24.2 over these 5 rows in one CI run).
    run_dir = tmp_path / "sweep"
    report = _watch(str(run_dir / "*" / "sweep_result.json"), *TRAIN, "sweep", "--table", "2", "--dataset",
                    "digits", "--model", "resnet8", "--epochs", "2", "--batch-size", "64", "--run-dir",
                    str(run_dir), "--quiet")
    memory = dict(report["marks"])
    assert max(memory) == 5, report["marks"]
    first, last = memory[1], max(memory.values())
    assert (last - first) / 4 < 40, report["marks"]
