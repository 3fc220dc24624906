"""Input-pipeline benchmark: `keras_resnet_v2.training.data.pipeline` (CIFAR augmentation) against a naive pipeline.

    python benchmarks/pipeline.py [--batches 400] [--repeats 3]

Both read 50,000 random 32x32 uint8 images (CIFAR-10's training split size) from memory and
produce float32 batches of 128 with 4-pixel pad, random 32x32 crop and horizontal flip. Ours:
cache -> shuffle -> repeat -> batch -> augment the batch (two gathers) -> prefetch. The naive
peer: shuffle -> per-example `map` (pad, `tf.image.random_crop`, `random_flip_left_right`) ->
batch, no parallelism, the way a first tutorial writes it. Images/s after 20 warm-up batches,
the two alternated, median of `--repeats`; the ratio is ours / naive.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_resnet_v2.training import data  # noqa: E402

BATCH = 128


def naive(source: tf.data.Dataset) -> tf.data.Dataset:
    def augment(image, label):
        image = tf.pad(tf.cast(image, tf.float32), [[4, 4], [4, 4], [0, 0]])
        image = tf.image.random_crop(image, [32, 32, 3])
        return tf.image.random_flip_left_right(image), label

    return source.shuffle(50_000).repeat().map(augment).batch(BATCH)


def rate(dataset: tf.data.Dataset, batches: int) -> float:
    iterator = iter(dataset)
    for _ in range(20):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * BATCH / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 50_000)
    source = tf.data.Dataset.from_tensor_slices((images, labels))
    info = data.DatasetInfo("random", 10, 50_000, 10_000, (32, 32, 3))
    peers = {"ours": lambda: data.pipeline(source, info, BATCH, training=True),
             "naive per-example map": lambda: naive(source)}
    rates: dict[str, list[float]] = {name: [] for name in peers}
    for _ in range(args.repeats):
        for name, make in peers.items():
            rates[name].append(rate(make(), args.batches))
    print(f"| pipeline | images/s (median of {args.repeats}) | runs |")
    print("|---|---|---|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):,.0f} | {', '.join(f'{v:,.0f}' for v in values)} |")
    ratio = statistics.median(rates["ours"]) / statistics.median(rates["naive per-example map"])
    print(f"\nours / naive: {ratio:.1f}x")


if __name__ == "__main__":
    main()
