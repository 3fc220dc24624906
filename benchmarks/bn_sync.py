"""BatchNorm statistics under MirroredStrategy: what keeping the replicas' copies equal costs (issue 21).

    python benchmarks/bn_sync.py [--model resnet164] [--batch-size 64] [--steps 5] [--rounds 3] [--scan]
        [--keras-batchnorm]

Two logical CPU devices stand in for two GPUs. Two copies of the same network are built under one
MirroredStrategy and trained with plain `model.fit`: "synced" (the builder's default since issue 21:
every BatchNorm layer's and UnitStack's moving-statistics update is gathered during the model's
training call and the batch statistics averaged over the replicas in ONE packed all-reduce at its end,
`_kernels.collect_updates`) and "unsynced" (the same model with neither the gathering nor the
averaging when its step is traced: each layer assigns its own replica's statistics at once, as before
issue 21). Rounds alternate between the two, so both see the same machine
load; a round is one `model.fit` of `--steps` steps, its s/step the mean of steps 2.. (benchmarks/
timing.py: a `fit` call's own overhead is not a step time); s/step is the median over the rounds
after one warm-up round each, and the cost is also given from the best round of each and from the
median of all timed steps. (The per-step averaging is the package's one sync path: `resnet-v2-train`'s
Trainer uses it too, `batchnorm.sync_batchnorm_statistics`; the epoch-end sync it had before is gone.)
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from timing import add_round_options, check_round_options, fit_step_seconds  # noqa: E402 (benchmarks/timing.py)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet164")
    parser.add_argument("--batch-size", type=int, default=64)
    add_round_options(parser, steps=5, rounds=3)
    parser.add_argument("--scan", action="store_true")
    parser.add_argument("--keras-batchnorm", action="store_true", help="fused_batchnorm=False")
    args = parser.parse_args()
    check_round_options(parser, args)

    # first: before TensorFlow, so its oneDNN CPU kernels are on (keras_resnet_v2.plumbing.onednn)
    import keras_resnet_v2

    # isort: split
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np

    from keras_resnet_v2 import _kernels

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    depth = int(args.model.removeprefix("resnet"))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.batch_size * args.steps, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, len(x))
    averaging = _kernels.replica_mean
    models = {}
    for mode in ("synced", "unsynced"):
        with strategy.scope():
            model = keras_resnet_v2.ResNet(depth, scan=args.scan, fused_batchnorm=not args.keras_batchnorm)
            model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy")
        keras_resnet_v2.build_optimizer(model)
        if mode == "unsynced":  # Keras' own model call, and no averaging
            vars(model).pop("call")
            _kernels.replica_mean = lambda tensors: list(tensors)
        try:  # the first round traces the step, with or without the averaging
            model.fit(x, y, batch_size=args.batch_size, epochs=1, steps_per_epoch=args.steps, verbose=0)
        finally:
            _kernels.replica_mean = averaging
        models[mode] = model
    times, steps = {mode: [] for mode in models}, {mode: [] for mode in models}
    for _ in range(args.rounds):
        for mode, model in models.items():
            seconds = fit_step_seconds(model, args.steps, x, y, args.batch_size)
            steps[mode] += seconds
            times[mode].append(statistics.mean(seconds))
    step = {mode: statistics.median(values) for mode, values in times.items()}
    print(json.dumps({
        "model": args.model, "scan": args.scan, "fused_batchnorm": not args.keras_batchnorm,
        "batch": args.batch_size, "replicas": strategy.num_replicas_in_sync, "rounds": args.rounds,
        "synced_s_per_step": round(step["synced"], 4), "unsynced_s_per_step": round(step["unsynced"], 4),
        "sync_cost_percent": round(100 * (step["synced"] / step["unsynced"] - 1), 2),
        # The best round: this machine's CPU quota only adds time, so the minimum is the steadier figure.
        "best_cost_percent": round(100 * (min(times["synced"]) / min(times["unsynced"]) - 1), 2),
        # Every timed step of every round: the median step is the figure least moved by a slow round.
        "step_median_cost_percent": round(100 * (statistics.median(steps["synced"])
                                                 / statistics.median(steps["unsynced"]) - 1), 2),
        "all_rounds": {k: [round(t, 4) for t in v] for k, v in times.items()},
    }))


if __name__ == "__main__":
    main()
