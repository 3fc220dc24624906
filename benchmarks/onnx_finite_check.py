"""What refusing non-finite pixels inside the ONNX graph would cost (issue 37); the export does not.

    python benchmarks/onnx_finite_check.py [--rounds 5] [--calls 30]

For ResNet-20 at 32x32 and ResNet-50 at 224x224, two ONNX files of the same network are converted the
way `export_onnx` converts (tf2onnx, opset 17): as exported, and with `refuse_non_finite` in front
(ONNX has no assert op: a Gather whose indices go out of range when the batch holds a NaN or Inf makes
ONNX Runtime fail, naming the node). Rounds alternate
between the two sessions, in A B B A order (ONNX Runtime, CPU, its default threads); a round times `--calls` calls at
batch 1 (median latency) and at batch 32 (images per second). Prints one JSON line per network with
each figure's median over the rounds and the checked/plain ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def refuse_non_finite(images):
    """`images` when every value is finite, else a Gather that ONNX Runtime refuses (out-of-range indices)."""
    import tensorflow as tf

    # x * 0 is 0 for a finite x and NaN for NaN or Inf: one multiply and one sum, then a scalar test.
    finite = tf.cast(tf.math.is_finite(tf.reduce_sum(images * 0.0)), tf.int32)
    batch = tf.shape(images)[0]
    return tf.gather(images, tf.range(batch) + (1 - finite) * batch, name="images_must_be_finite")


def _time(session, images, calls: int) -> list[float]:
    session.run(["probabilities"], {"images": images})  # warm
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        session.run(["probabilities"], {"images": images})
        seconds.append(time.perf_counter() - start)
    return seconds


def measure(depth: int, size: int, rounds: int, calls: int, folder: str) -> dict:
    import numpy as np
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    import keras_resnet_v2
    from keras_resnet_v2.export.serving import float32_copy, serving_outputs

    network = serving_outputs(float32_copy(keras_resnet_v2.ResNet(depth, input_shape=(size, size, 3))))
    spec = (tf.TensorSpec([None, size, size, 3], tf.float32, name="images"),)
    sessions = {}
    for name, fn in (("plain", network), ("checked", lambda images: network(refuse_non_finite(images)))):
        path = os.path.join(folder, f"resnet{depth}_{name}.onnx")
        tf2onnx.convert.from_function(tf.function(fn, input_signature=spec), input_signature=spec, opset=17,
                                      output_path=path)
        sessions[name] = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    one, many = (rng.uniform(0, 255, (n, size, size, 3)).astype("float32") for n in (1, 32))
    latency, throughput = {k: [] for k in sessions}, {k: [] for k in sessions}
    for round_ in range(rounds):  # ABBA: the order flips every round (the first of a pair ran slower here)
        for name, session in (list(sessions.items()) if round_ % 2 == 0 else reversed(sessions.items())):
            latency[name].append(statistics.median(_time(session, one, calls)))
            throughput[name].append(32 / statistics.median(_time(session, many, max(3, calls // 10))))
    result = {"model": f"resnet{depth}", "input": size, "rounds": rounds}
    for name in sessions:
        result[f"{name}_batch1_ms"] = round(1000 * statistics.median(latency[name]), 3)
        result[f"{name}_batch32_img_s"] = round(statistics.median(throughput[name]), 1)
    result["latency_ratio"] = round(result["checked_batch1_ms"] / result["plain_batch1_ms"], 3)
    result["throughput_ratio"] = round(result["checked_batch32_img_s"] / result["plain_batch32_img_s"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    if args.rounds < 1 or args.calls < 1:
        parser.error(f"--rounds and --calls must be at least 1. Received: {args.rounds}, {args.calls}")
    with tempfile.TemporaryDirectory() as folder:
        for depth, size in ((20, 32), (50, 224)):
            print(json.dumps(measure(depth, size, args.rounds, args.calls, folder)), flush=True)


if __name__ == "__main__":
    main()
