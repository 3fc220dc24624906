"""Build-time benchmark: how long the builders take, side by side with a peer.

    python benchmarks/build.py [--repeats 3]

Prints a Markdown table: per model, the median over `--repeats` of the build time
(Python -> functional `keras.Model`), and for the deep CIFAR nets the first call
(training mode, batch 2) and a `.keras` save + safe-mode load. ResNet-50 is built
alternately with `keras.applications.ResNet50V2(weights=None)` in the same process, and
the ratio of medians is reported (these machines are noisy: compare only side by side).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_resnet_v2 as krv2  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def deep_model_row(constructor, repeats: int) -> str:
    builds, calls, roundtrips = [], [], []
    x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    for _ in range(repeats):
        keras.backend.clear_session()
        model, build_s = timed(constructor)
        _, call_s = timed(lambda m=model: m(x, training=True))
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "m.keras")
            start = time.perf_counter()
            model.save(path)
            keras.models.load_model(path, safe_mode=True)
            rt_s = time.perf_counter() - start
        builds.append(build_s)
        calls.append(call_s)
        roundtrips.append(rt_s)
    return (f"| {model.name} | {len(model.layers):,} | {statistics.median(builds):.1f} | "
            f"{statistics.median(calls):.1f} | {statistics.median(roundtrips):.1f} |")


def peer_row(repeats: int) -> str:
    ours, peer = [], []
    for _ in range(repeats):  # alternate, so drift in machine load hits both
        keras.backend.clear_session()
        ours.append(timed(krv2.ResNet50)[1])
        keras.backend.clear_session()
        peer.append(timed(lambda: keras.applications.ResNet50V2(weights=None))[1])
    a, b = statistics.median(ours), statistics.median(peer)
    return (f"| ResNet-50 build | keras_resnet_v2 {a:.2f} s | keras.applications.ResNet50V2 {b:.2f} s "
            f"| ratio {a / b:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, repeats {args.repeats}\n")
    print("| model | layers | build s | first call s (train mode, batch 2) | .keras save + safe load s |")
    print("|---|---|---|---|---|")
    for constructor in (krv2.ResNet164, krv2.ResNet1001):
        print(deep_model_row(constructor, args.repeats), flush=True)
    print("\n| what | ours | peer | ours / peer |\n|---|---|---|---|")
    print(peer_row(max(args.repeats, 5)))


if __name__ == "__main__":
    main()
