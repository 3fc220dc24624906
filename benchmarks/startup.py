"""Command-line start-up: `--help` and argument errors, beside importing TensorFlow and Keras.

Before issue 15 every command imported TensorFlow before parsing its arguments, so `--help`
cost at least `import tensorflow`. Each command here runs in a fresh process, the commands
alternated round by round (this machine is noisy), and the median wall time is reported with
its ratio to `python -c "import tensorflow"` run in the same rounds.

    python benchmarks/startup.py --rounds 7
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

BIN = os.path.dirname(sys.executable)


def _script(name: str) -> str:
    path = shutil.which(name, path=BIN)
    if path is None:
        raise SystemExit(f"error: console script {name} is not installed beside {sys.executable}")
    return path


def commands() -> dict[str, list[str]]:
    python = sys.executable
    return {
        "resnet-v2-train --help": [_script("resnet-v2-train"), "--help"],
        "resnet-v2-train (argument error: --unit preact)": [_script("resnet-v2-train"), "--dataset", "digits",
                                                            "--model", "resnet20", "--run-dir", "r", "--unit",
                                                            "preact"],
        "resnet-v2-train (no arguments)": [_script("resnet-v2-train")],
        "resnet-v2-export --help": [_script("resnet-v2-export"), "--help"],
        "keras-resnet-v2 --help": [_script("keras-resnet-v2"), "--help"],
        "python -c 'import keras_resnet_v2'": [python, "-c", "import keras_resnet_v2"],
        "peer: python -c 'import tensorflow'": [python, "-c", "import tensorflow"],
        "peer: python -c 'import keras'": [python, "-c", "import keras"],
        "floor: python -c pass": [python, "-c", "pass"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    runs = commands()
    times: dict[str, list[float]] = {name: [] for name in runs}
    codes: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, argv in runs.items():
            start = time.perf_counter()
            done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  cwd=os.path.expanduser("~"))
            times[name].append(time.perf_counter() - start)
            codes[name] = done.returncode
    tensorflow = statistics.median(times["peer: python -c 'import tensorflow'"])
    print(f"{'command':52} {'median s':>9} {'min s':>7} {'vs import tensorflow':>21} exit")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:52} {median:9.2f} {min(values):7.2f} {median / tensorflow:20.2f}x {codes[name]:>4}")


if __name__ == "__main__":
    main()
