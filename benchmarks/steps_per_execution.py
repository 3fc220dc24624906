"""resnet-v2-train's loop: steps per `tf.function` call and XLA (issue 21).

    python benchmarks/steps_per_execution.py [--model resnet20] [--batch-size 128] [--steps 16] [--rounds 3]

The Trainer of `resnet-v2-train` (default strategy, float32, SGD momentum 0.9) on random CIFAR-sized
data in four settings, built one after another in this process: `steps_per_execution` 1 and 8, each
with `jit_compile` off and on (`--jit-compile false|true`). Each is traced and compiled by one warm-up
epoch, then the rounds alternate between the settings so all see the same machine load; a round is one
epoch of `--steps` steps (a multiple of 8); steps/s is the median over rounds. "first" is the warm-up
epoch's time (tracing, XLA compilation). Prints one JSON line per setting, then the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    # first: before TensorFlow, so its oneDNN CPU kernels are on (keras_resnet_v2.plumbing.onednn)
    import keras_resnet_v2

    # isort: split
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_resnet_v2.training.loop import Trainer

    depth = int(args.model.removeprefix("resnet"))
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (args.batch_size, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 10, args.batch_size)
    data = tf.data.Dataset.from_tensors((images, labels)).repeat()
    settings = [(n, jit) for n in (1, 8) for jit in (False, True)]
    trainers, first = {}, {}
    for n, jit in settings:
        keras.utils.set_random_seed(0)
        model = keras_resnet_v2.ResNet(depth, classes=10)
        trainer = Trainer(model, keras.optimizers.SGD(0.01, momentum=0.9), tf.distribute.get_strategy(),
                          args.batch_size, jit_compile=jit, steps_per_execution=n)
        start = time.perf_counter()
        trainer.fit(data, epochs=1, steps_per_epoch=args.steps, verbose=0)
        first[n, jit] = time.perf_counter() - start
        trainers[n, jit] = trainer
    rates = {key: [] for key in settings}
    for _ in range(args.rounds):
        for key, trainer in trainers.items():
            start = time.perf_counter()
            trainer.fit(data, epochs=1, steps_per_epoch=args.steps, verbose=0)
            rates[key].append(args.steps / (time.perf_counter() - start))
    rate = {key: statistics.median(values) for key, values in rates.items()}
    for (n, jit), value in rate.items():
        print(json.dumps({"model": args.model, "batch": args.batch_size, "steps_per_execution": n, "jit_compile": jit,
                          "steps_per_s": round(value, 3), "images_per_s": round(value * args.batch_size, 1),
                          "first_epoch_s": round(first[n, jit], 1), "x_baseline": round(value / rate[1, False], 3),
                          "rounds": [round(r, 3) for r in rates[n, jit]]}))


if __name__ == "__main__":
    main()
