"""Where the stacked form's TensorFlow step loses to the plain one: Grappler passes, side by side (issue 21).

    python benchmarks/tf_stacked.py [--model resnet164] [--batch-size 64] [--steps 5] [--rounds 3]
        [--variants plain,stacked,plain/remapping,stacked/remapping]

Each variant is `<form>` or `<form>/<pass>[+<pass>...]`: the form (`plain`, or `stacked`, which is
`scan=True`), its train step traced and optimized with the named Grappler passes off
(`tf.config.optimizer.set_experimental_options`, e.g. `remapping`, `arithmetic_optimization`,
`layout_optimizer`, `constant_folding`, `loop_optimization`, `dependency_optimization`,
`function_optimization`; `all` disables Grappler). The options are set for each `model.fit` of the
variant (the first traces its step, and Grappler optimizes a function when it first runs) and reset
after it. All variants live in one process and the rounds alternate between them, so they
see the same machine load; a round is one `model.fit` of `--steps` steps, its s/step the mean of
steps 2.. (benchmarks/timing.py: a `fit` call's own overhead is not a step time); reported: the
best round (load only adds time) and the median. Fused BatchNorm, float32, SGD momentum 0.9,
random CIFAR-sized data. Prints one JSON line per variant, then one with the ratios against `plain`;
`--profile` then adds a table of kernel time per step by op type (TensorFlow's profiler, one more
`fit` per variant).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from profiles import print_table, tf_op_times  # noqa: E402 (benchmarks/profiles.py)
from timing import add_round_options, check_round_options, fit_step_seconds  # noqa: E402 (benchmarks/timing.py)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet164")
    parser.add_argument("--batch-size", type=int, default=64)
    add_round_options(parser, steps=5, rounds=3)
    parser.add_argument("--variants", default="plain,stacked,plain/remapping,stacked/remapping")
    parser.add_argument("--profile", action="store_true",
                        help="then profile one more fit per variant: kernel time per step by op type")
    args = parser.parse_args()
    variants = args.variants.split(",")
    check_round_options(parser, args)
    for variant in variants:
        if variant.partition("/")[0] not in ("plain", "stacked"):
            parser.error(f"--variants: each must start with plain or stacked. Received: {variant}")

    # first: before TensorFlow, so its oneDNN CPU kernels are on (keras_resnet_v2.plumbing.onednn)
    import keras_resnet_v2

    # isort: split
    import keras
    import numpy as np
    import tensorflow as tf

    depth = int(args.model.removeprefix("resnet"))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.batch_size * args.steps, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, len(x))
    defaults = tf.config.optimizer.get_experimental_options()

    def fit(model, variant: str) -> float:
        """One `model.fit` of `variant`'s model under its Grappler options; its mean step time."""
        passes = variant.partition("/")[2]
        options = {"disable_meta_optimizer": True} if passes == "all" else {p: False for p in passes.split("+") if p}
        tf.config.optimizer.set_experimental_options(options)
        try:
            return statistics.mean(fit_step_seconds(model, args.steps, x, y, args.batch_size))
        finally:  # back to the defaults (options not set before are set to their default, on)
            tf.config.optimizer.set_experimental_options(
                {**{p: True for p in options}, "disable_meta_optimizer": False, **defaults})

    models = {}
    for variant in variants:
        model = keras_resnet_v2.ResNet(depth, scan=variant.startswith("stacked"))
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy")
        keras_resnet_v2.build_optimizer(model)
        start = time.perf_counter()
        fit(model, variant)  # traces the step; Grappler optimizes it under these options
        models[variant] = (model, time.perf_counter() - start)
    times = {variant: [] for variant in models}
    for _ in range(args.rounds):
        for variant, (model, _) in models.items():
            times[variant].append(fit(model, variant))
    best = {variant: min(values) for variant, values in times.items()}
    for variant, values in times.items():
        print(json.dumps({"model": args.model, "variant": variant, "batch": args.batch_size,
                          "best_s_per_step": round(best[variant], 4),
                          "median_s_per_step": round(statistics.median(values), 4),
                          "first_fit_s": round(models[variant][1], 1), "rounds": [round(t, 4) for t in values]}))
    if "plain" in best:
        print(json.dumps({"speed_x_plain_best": {v: round(best["plain"] / t, 3) for v, t in best.items()}}))
    if args.profile:
        profiles = {}
        for variant, (model, _) in models.items():
            logdir = tempfile.mkdtemp(prefix="tf_stacked_")
            tf.profiler.experimental.start(logdir)
            try:
                fit(model, variant)
            finally:
                tf.profiler.experimental.stop()
            profiles[variant] = tf_op_times(logdir, args.steps)
        print_table(profiles)


if __name__ == "__main__":
    main()
