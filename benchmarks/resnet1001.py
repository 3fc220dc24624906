"""ResNet-1001 on this machine: build, first call, first training step, steady step, peak memory,
with and without rematerialization (`remat=True`).

    python benchmarks/resnet1001.py [--batch-size 64] [--steps 3]

Each mode runs in a fresh subprocess (peak memory is per process: `ru_maxrss`), plain first,
then remat. A training step is `model.fit` of SGD momentum on random CIFAR-sized data; the
first step includes tracing. Peak memory is reported whole (TensorFlow runtime and weights
included) and as the rise over the memory held after the first inference call, which is what
the training step adds. Exports are timed by benchmarks/export_time.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, os, resource, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# first: before TensorFlow, so its oneDNN CPU kernels are on (keras_resnet_v2.plumbing.onednn)
import keras_resnet_v2 as krv2
import keras, numpy as np

remat, batch, steps = sys.argv[1] == "1", int(sys.argv[2]), int(sys.argv[3])
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (ru_maxrss is KiB)
def current():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
start = time.perf_counter()
model = krv2.ResNet1001(remat=remat)
build_s = time.perf_counter() - start
x = np.random.default_rng(0).uniform(0, 255, (batch, 32, 32, 3)).astype("float32")
y = np.random.default_rng(1).integers(0, 10, batch)
start = time.perf_counter()
model(x[:2], training=False)
first_call_s = time.perf_counter() - start
before = current()
model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=keras.losses.SparseCategoricalCrossentropy())
times = []
class Timer(keras.callbacks.Callback):
    def on_train_batch_begin(self, b, logs=None): self.t = time.perf_counter()
    def on_train_batch_end(self, b, logs=None): float(logs["loss"]); times.append(time.perf_counter() - self.t)
model.fit(x, y, batch_size=batch, epochs=steps, verbose=0, callbacks=[Timer()])
print(json.dumps({"remat": remat, "build_s": build_s, "first_call_s": first_call_s, "first_step_s": times[0],
                  "step_s": float(np.median(times[1:])), "peak_gib": rss(), "before_gib": before}))
"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="training steps (the first includes tracing)")
    args = parser.parse_args(argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    rows = []
    for remat in (0, 1):
        done = subprocess.run([sys.executable, "-c", CHILD, str(remat), str(args.batch_size), str(args.steps)],
                              env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"remat={bool(remat)} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"ResNet-1001, batch {args.batch_size}, fp32, {args.steps} steps a mode\n")
    print("| remat | build s | first call s | first step s | step s | peak GiB | rise in training GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['remat']} | {r['build_s']:.1f} | {r['first_call_s']:.1f} | {r['first_step_s']:.1f} | "
              f"{r['step_s']:.2f} | {r['peak_gib']:.2f} | {r['peak_gib'] - r['before_gib']:.2f} |")
    plain, remat = rows
    print(f"\nremat / plain: peak {remat['peak_gib'] / plain['peak_gib']:.2f}x, rise in training "
          f"{(remat['peak_gib'] - remat['before_gib']) / (plain['peak_gib'] - plain['before_gib']):.2f}x, "
          f"step time {remat['step_s'] / plain['step_s']:.2f}x")


if __name__ == "__main__":
    main()
