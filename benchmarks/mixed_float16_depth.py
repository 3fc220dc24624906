"""ResNet-1001 under mixed_float16: a float16 against a float32 residual stream (issue 21).

    python benchmarks/mixed_float16_depth.py [--steps 200] [--warmup-steps 50] [--batch-size 8]
        [--size 16] [--runs compute:0.1,float32:0.1,compute:warmup,float32:warmup] [--scan | --no-scan]

Each run builds `ResNet(1001, dtype="mixed_float16", stream_dtype=...)` with seed 0 ("compute": every
layer in float16, the former default; "float32": the default since issue 21, the stream x_l in float32
and every convolution in float16 on power-of-two rescaled operands, keras_resnet_v2/scaled.py)
and trains it with plain `model.fit` (Keras wraps SGD in its dynamic LossScaleOptimizer) on the same
fixed random images and labels: SGD with Nesterov momentum 0.9 and weight decay 1e-4 (the paper's
appendix), at lr 0.1 from the first step ("0.1") or at 0.01 for `--warmup-steps` steps, then 0.1
("warmup": the paper's warm-up, shortened from 400 iterations so that the switch lies inside the run).
A run stops at its first non-finite loss. Per run: the step of the first NaN (or none), the last loss,
the loss scale, whether every weight and moving statistic is finite, and the median s/step (first step
excluded). Runs alternate in the order given; prints one JSON line per run.

On a CPU without AVX-512-FP16, TensorFlow computes float16 convolutions on a slow fallback path, so the
s/step ratio here is not a GPU's; the finiteness is the point (the same overflow was seen on an H100).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _run(stream: str, schedule: str, args) -> dict:
    # first: before TensorFlow, so its oneDNN CPU kernels are on (keras_resnet_v2.plumbing.onednn)
    import keras_resnet_v2 as krv2

    # isort: split
    import keras
    import numpy as np

    keras.config.set_dtype_policy("mixed_float16")
    keras.utils.set_random_seed(0)
    model = krv2.ResNet(1001, input_shape=(args.size, args.size, 3), stream_dtype=stream, scan=args.scan)
    keras.config.set_dtype_policy("float32")
    first_lr = 0.1 if schedule == "0.1" else 0.01
    model.compile(optimizer=keras.optimizers.SGD(first_lr, momentum=0.9, nesterov=True, weight_decay=1e-4),
                  loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 1, (8 * args.batch_size, args.size, args.size, 3)).astype("float32")
    labels = rng.integers(0, 10, len(images))
    record = {"losses": [], "times": [], "nan_step": None}

    class Watch(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if schedule == "warmup" and batch == args.warmup_steps:
                self.model.optimizer.learning_rate.assign(0.1)
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            loss = float(logs["loss"])
            record["times"].append(time.perf_counter() - self.start)
            record["losses"].append(loss)
            if not np.isfinite(loss) and record["nan_step"] is None:
                record["nan_step"] = batch + 1
                self.model.stop_training = True

    repeats = -(-args.steps // 8)
    model.fit(np.concatenate([images] * repeats)[: args.steps * args.batch_size],
              np.concatenate([labels] * repeats)[: args.steps * args.batch_size],
              batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0, callbacks=[Watch()])
    weights_finite = all(bool(np.isfinite(keras.ops.convert_to_numpy(v)).all()) for v in model.weights)
    scale = getattr(model.optimizer, "dynamic_scale", None)
    return {"stream_dtype": stream, "schedule": schedule, "steps_run": len(record["losses"]),
            "nan_step": record["nan_step"], "last_loss": record["losses"][-1],
            "loss_scale": float(scale.numpy()) if scale is not None else None,
            "weights_finite": weights_finite,
            "s_per_step": statistics.median(record["times"][1:]) if len(record["times"]) > 1 else None,
            "first_step_s": record["times"][0]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=16, help="image side (CIFAR: 32)")
    parser.add_argument("--runs", default="compute:0.1,float32:0.1,compute:warmup,float32:warmup",
                        help="comma-separated stream_dtype:schedule, schedule 0.1 or warmup")
    parser.add_argument("--scan", action=argparse.BooleanOptionalAction, default=True,
                        help="the stacked form (ResNet(1001)'s default)")
    args = parser.parse_args(argv)
    runs = [tuple(run.split(":")) for run in args.runs.split(",")]
    for stream, schedule in runs:
        if stream not in ("compute", "float32") or schedule not in ("0.1", "warmup"):
            parser.error(f"--runs: each run is compute|float32 : 0.1|warmup. Received: {stream}:{schedule}")
    for stream, schedule in runs:
        print(json.dumps({**_run(stream, schedule, args), "steps": args.steps, "batch_size": args.batch_size,
                          "size": args.size, "scan": args.scan, "warmup_steps": args.warmup_steps}), flush=True)


if __name__ == "__main__":
    main()
