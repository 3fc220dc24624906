"""Gradient flow across depth (paper Sec. 3, Eqn. 5): ||dL/dx_l|| at the input x_l of every unit.

With identity shortcuts and pre-activation, dL/dx_l = dL/dx_L (1 + d/dx_l sum F): the gradient of
any deep unit reaches every shallower one directly, so its norm does not vanish with depth. The
original unit puts a ReLU after each addition, and the signal passes through it L - l times.

TensorFlow only (like the rest of `training`): Keras 3 has no backend-agnostic reverse-mode
gradient, so the model package stays free of it.

Example:
    >>> model = keras_resnet_v2.ResNet(56)  # doctest: +SKIP
    >>> norms = unit_gradient_norms(model, images, labels)  # doctest: +SKIP
    >>> plot_gradient_norms({"full_preact, init": norms}, "grad_norms.png")  # doctest: +SKIP
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

import keras_resnet_v2
from keras_resnet_v2.convert import network_config


def unit_inputs(model: keras.Model) -> list[tuple[str, keras.KerasTensor]]:
    """("stage{s}_unit{u}", x_l) for every residual unit of a `keras_resnet_v2` model, in order."""
    if any(isinstance(layer, (keras_resnet_v2.Rematerialized, keras_resnet_v2.UnitStack)) for layer in model.layers):
        raise ValueError("Gradient diagnostics need the units' inputs as tensors of the model: pass "
                         "keras_resnet_v2.to_plain(model, remat=False). Received: a model with Rematerialized "
                         "segments or UnitStack loops")
    try:
        units = network_config(model).units
    except ValueError:
        raise ValueError(f"No residual units in model {model.name!r}: it is not a network of keras_resnet_v2.ResNet "
                         "(or loaded from one)") from None
    found: list[tuple[str, keras.KerasTensor]] = []
    for unit in units:  # the unit's first layer, in topological order, reads x_l; its layers are `{unit.name}_...`
        first = next(layer for layer in model.layers if layer.name.startswith(f"{unit.name}_"))
        found.append((unit.name, first.input))
    return found


def unit_gradient_norms(model: keras.Model, images, labels, training: bool = True) -> list[tuple[str, float]]:
    """||dL/dx_l|| (L2 over the batch) for the input images and every unit input x_l.

    L is the mean sparse categorical cross-entropy of the model's output (probabilities, or
    logits when the classifier has no softmax). `training=True` uses batch statistics, as in
    training; the moving statistics are left unchanged. Stacked (`scan=True`) and remat models are
    measured on their per-unit copy (`keras_resnet_v2.to_plain(model, remat=False)`).
    """
    if any(isinstance(layer, (keras_resnet_v2.Rematerialized, keras_resnet_v2.UnitStack)) for layer in model.layers):
        model = keras_resnet_v2.to_plain(model, remat=False)
    names, tensors = zip(*unit_inputs(model), strict=True)
    probe = keras.Model(model.inputs, [model.inputs[0], *tensors, model.outputs[0]])
    moving = [(v, v.numpy()) for v in model.non_trainable_variables]
    images = tf.convert_to_tensor(np.asarray(images, dtype="float32"))
    with tf.GradientTape() as tape:
        tape.watch(images)
        *points, outputs = probe(images, training=training)  # eager: every intermediate is on the tape
        loss = _mean_loss(model, labels, outputs)
    points[0] = images
    gradients = tape.gradient(loss, points)
    for variable, value in moving:
        variable.assign(value)
    return [(name, float(tf.norm(tf.cast(g, tf.float32)))) for name, g in
            zip(("input", *names), gradients, strict=True)]


def unit_forward_ranges(model: keras.Model, images, training: bool = True) -> list[tuple[str, float, str]]:
    """(name, max |x|, dtype) of the residual stream at every unit input x_l, and of the output.

    Under mixed_float16 the stream is float16 (Keras casts each layer's inputs to its compute
    dtype), whose largest value is 65,504: a value above it is Inf, and the BatchNorm that reads it
    turns it into NaN. This says where that happens (`first_non_finite`) and how close the units
    come before it (issue 21). `training=True` uses batch statistics as a training step does; the
    moving statistics are left unchanged. Stacked and remat models are measured on their per-unit
    copy.

    Example:
        >>> ranges = unit_forward_ranges(keras_resnet_v2.ResNet(1001, dtype="mixed_float16"), images)  # doctest: +SKIP
        >>> first_non_finite(ranges)   # e.g. "stage3_unit57", or None  # doctest: +SKIP
    """
    if any(isinstance(layer, (keras_resnet_v2.Rematerialized, keras_resnet_v2.UnitStack)) for layer in model.layers):
        model = keras_resnet_v2.to_plain(model, remat=False)
    names, tensors = zip(*unit_inputs(model), strict=True)
    probe = keras.Model(model.inputs, [*tensors, model.outputs[0]])
    moving = [(v, v.numpy()) for v in model.non_trainable_variables]
    values = probe(tf.convert_to_tensor(np.asarray(images, dtype="float32")), training=training)
    for variable, value in moving:
        variable.assign(value)
    ranges = []
    for name, value in zip((*names, "output"), values, strict=True):
        x = tf.cast(value, tf.float32)
        # Inf for any non-finite value: how max() treats NaN differs between CPUs, is_finite does not.
        finite = bool(tf.reduce_all(tf.math.is_finite(x)))
        ranges.append((name, float(tf.reduce_max(tf.abs(x))) if finite else float("inf"), value.dtype.name))
    return ranges


def first_non_finite(ranges: list[tuple[str, float, str]]):
    """The first name in `unit_forward_ranges(...)` whose values are not all finite, or None."""
    return next((name for name, largest, _ in ranges if not np.isfinite(largest)), None)


def _mean_loss(model: keras.Model, labels, outputs) -> tf.Tensor:
    """Mean sparse categorical cross-entropy of `model`'s outputs (probabilities, or logits without softmax)."""
    from_logits = getattr(model.layers[-1], "activation", None) is not keras.activations.softmax
    return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
        tf.convert_to_tensor(labels), tf.cast(outputs, tf.float32), from_logits=from_logits))


def train_steps(model: keras.Model, dataset: tf.data.Dataset, steps: int, learning_rate: float = 0.01) -> list[float]:
    """Trains `steps` SGD steps on `dataset` and returns every step's training loss (the paper's Fig. 1).

    The optimizer is the CIFAR recipe's (Nesterov momentum 0.9, weight decay 1e-4 on kernels) at its
    warm-up learning rate 0.01, the rate of the paper's first 400 iterations. Each entry is the loss
    on that step's batch before its update, unsmoothed.

    Example:
        >>> losses = train_steps(model, data_lib.pipeline(...), steps=300)  # doctest: +SKIP
    """
    from keras_resnet_v2.training import optimizers

    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be a positive integer. Received: steps={steps!r}")
    optimizer = optimizers.SGD(learning_rate=learning_rate, momentum=0.9, nesterov=True)
    optimizer.build(model.trainable_variables)

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            loss = _mean_loss(model, labels, model(images, training=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    return [float(step(images, labels)) for images, labels in dataset.repeat().take(steps)]


def plot_training_loss(curves: dict[str, list[float]], png_path: str, title: str = "") -> None:
    """Training loss against iterations, one line per entry of `curves` (raw, and a 20-step moving mean)."""
    from keras_resnet_v2.training.callbacks import save_figure, subplots

    fig, ax = subplots(figsize=(8, 4.5))
    for label, losses in curves.items():
        line, = ax.plot(range(1, len(losses) + 1), losses, alpha=0.3)
        window = min(20, len(losses))
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(range(window, len(losses) + 1), smooth, color=line.get_color(), label=label)
    ax.set(xlabel="iterations", ylabel="training loss", title=title)
    ax.legend()
    save_figure(fig, png_path)


def plot_gradient_norms(curves: dict[str, list[tuple[str, float]]], png_path: str, title: str = "") -> None:
    """Norms against unit index (log scale), one line per entry of `curves`."""
    from keras_resnet_v2.training.callbacks import save_figure, subplots

    fig, ax = subplots(figsize=(8, 4.5))
    for label, norms in curves.items():
        units = [value for name, value in norms if name != "input"]
        ax.plot(range(1, len(units) + 1), units, label=label)
    ax.set(xlabel="residual unit l (input x_l)", ylabel="||dL/dx_l||", yscale="log", title=title)
    ax.legend()
    save_figure(fig, png_path)


def main(argv=None) -> None:
    """`python -m keras_resnet_v2.training.diagnostics --model resnet1001 --steps 100 --out g.png`.

    Also writes g_loss.png and g.json.
    """
    import argparse
    import json
    import os

    from keras_resnet_v2.plumbing.files import atomic_write_text
    from keras_resnet_v2.training import data as data_lib
    from keras_resnet_v2.training import runtime
    from keras_resnet_v2.training.config import parse_model

    parser = argparse.ArgumentParser(description="||dL/dx_l|| across depth on a batch of the digits data at "
                                     "initialization and after --steps SGD steps at the warm-up lr 0.01 (Eqn. 5), "
                                     "and the training loss of every step (Fig. 1).")
    parser.add_argument("--model", default="resnet1001")
    parser.add_argument("--unit", action="append", help="repeatable; default original and full_preact")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=0, help="also train this many steps, then measure again")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="PNG path; the loss curves go to <stem>_loss.png and "
                        "every figure to <stem>.json")
    args = parser.parse_args(argv)
    if args.steps < 0:
        parser.error(f"--steps must be >= 0. Received: {args.steps}")
    depth = parse_model(args.model)
    splits = data_lib.load("digits")
    train = data_lib.pipeline(splits.train, splits.info, args.batch_size, training=True, seed=args.seed)
    images, labels = next(iter(train))
    mean, variance = data_lib.normalization_statistics(splits.train, "per_pixel")
    stem = args.out.rsplit(".", 1)[0]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    norms, losses = {}, {}
    for unit in args.unit or ["original", "full_preact"]:
        keras.utils.set_random_seed(args.seed)  # same initial weights and batches for every unit
        inputs = keras.Input((32, 32, 3))
        x = data_lib.normalization_layer(mean, variance)(inputs)
        model = keras_resnet_v2.ResNet(depth, unit=unit, input_tensor=x, classes=10)
        runtime.fuse_batchnorm(model)  # same numbers as Keras BN, faster (tests/test_fused_batchnorm.py)
        norms[f"{unit}, initialization"] = unit_gradient_norms(model, images, labels)
        if args.steps:
            losses[unit] = train_steps(model, train, args.steps)
            norms[f"{unit}, after {args.steps} steps"] = unit_gradient_norms(model, images, labels)
    title = f"{args.model} on digits, batch {args.batch_size}"
    plot_gradient_norms(norms, args.out, f"{title}: gradient norm at each unit input")
    if losses:
        plot_training_loss(losses, f"{stem}_loss.png", f"{title}, lr 0.01: training loss")
    report = {"model": args.model, "batch_size": args.batch_size, "seed": args.seed, "steps": args.steps,
              "gradient_norms": norms, "training_loss": losses}
    atomic_write_text(f"{stem}.json", json.dumps(report))
    for label, curve in norms.items():
        units = [v for name, v in curve if name != "input"]
        print(f"{label}: ||dL/dx_l|| first unit {units[0]:.3g}, last unit {units[-1]:.3g}, min {min(units):.3g}, "
              f"max {max(units):.3g}")
    for unit, curve in losses.items():
        tail = curve[-20:]
        print(f"{unit}: training loss first step {curve[0]:.3f}, mean of last {len(tail)} steps "
              f"{sum(tail) / len(tail):.3f}")


if __name__ == "__main__":
    main()
