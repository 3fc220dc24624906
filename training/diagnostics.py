"""Gradient flow across depth (paper Sec. 3, Eqn. 5): ||dL/dx_l|| at the input x_l of every unit.

With identity shortcuts and pre-activation, dL/dx_l = dL/dx_L (1 + d/dx_l sum F): the gradient of
any deep unit reaches every shallower one directly, so its norm does not vanish with depth. The
original unit puts a ReLU after each addition, and the signal passes through it L - l times.

TensorFlow only (like the rest of `training`): Keras 3 has no backend-agnostic reverse-mode
gradient, so the model package stays free of it.

Example:
    >>> model = keras_resnet_v2.ResNet(56)
    >>> norms = unit_gradient_norms(model, images, labels)      # [("input", ...), ("stage1_unit1", ...), ...]
    >>> plot_gradient_norms({"full_preact, init": norms}, "grad_norms.png")
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

import keras_resnet_v2


def unit_inputs(model: keras.Model) -> list[tuple[str, keras.KerasTensor]]:
    """("stage{s}_unit{u}", x_l) for every residual unit of a `keras_resnet_v2` model, in order."""
    if any(isinstance(layer, keras_resnet_v2.Rematerialized) for layer in model.layers):
        raise ValueError("Gradient diagnostics need the units' inputs as tensors of the model: build it without "
                         "remat. Received: a model with Rematerialized segments")
    found: dict[str, keras.KerasTensor] = {}
    for layer in model.layers:  # topological order: a unit's first layer reads x_l
        parts = layer.name.split("_")
        if len(parts) > 2 and parts[0].startswith("stage") and parts[1].startswith("unit"):
            found.setdefault(f"{parts[0]}_{parts[1]}", layer.input)
    if not found:
        raise ValueError(f"No residual units (layers named stage<S>_unit<U>_...) in model {model.name!r}")
    return list(found.items())


def unit_gradient_norms(model: keras.Model, images, labels, training: bool = True) -> list[tuple[str, float]]:
    """||dL/dx_l|| (L2 over the batch) for the input images and every unit input x_l.

    L is the mean sparse categorical cross-entropy of the model's output (probabilities, or
    logits when the classifier has no softmax). `training=True` uses batch statistics, as in
    training; the moving statistics are left unchanged.
    """
    names, tensors = zip(*unit_inputs(model), strict=True)
    probe = keras.Model(model.inputs, [model.inputs[0], *tensors, model.outputs[0]])
    from_logits = getattr(model.layers[-1], "activation", None) is not keras.activations.softmax
    moving = [(v, v.numpy()) for v in model.non_trainable_variables]
    images = tf.convert_to_tensor(np.asarray(images, dtype="float32"))
    with tf.GradientTape() as tape:
        tape.watch(images)
        *points, outputs = probe(images, training=training)  # eager: every intermediate is on the tape
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
            tf.convert_to_tensor(labels), tf.cast(outputs, tf.float32), from_logits=from_logits))
    points[0] = images
    gradients = tape.gradient(loss, points)
    for variable, value in moving:
        variable.assign(value)
    return [(name, float(tf.norm(tf.cast(g, tf.float32)))) for name, g in
            zip(("input", *names), gradients, strict=True)]


def plot_gradient_norms(curves: dict[str, list[tuple[str, float]]], png_path: str, title: str = "") -> None:
    """Norms against unit index (log scale), one line per entry of `curves`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.callbacks import atomic_write

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, norms in curves.items():
        units = [value for name, value in norms if name != "input"]
        ax.plot(range(1, len(units) + 1), units, label=label)
    ax.set(xlabel="residual unit l (input x_l)", ylabel="||dL/dx_l||", yscale="log", title=title)
    ax.legend()
    fig.tight_layout()
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def main(argv=None) -> None:
    """python -m training.diagnostics --model resnet1001 --unit original --unit full_preact --out g.png"""
    import argparse
    import json

    from training import data as data_lib
    from training import recipes
    from training.run import parse_model

    parser = argparse.ArgumentParser(description="||dL/dx_l|| across depth on a batch of the digits data, at "
                                     "initialization and after --steps SGD steps at the warm-up lr 0.01 (Eqn. 5).")
    parser.add_argument("--model", default="resnet1001")
    parser.add_argument("--unit", action="append", help="repeatable; default original and full_preact")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=0, help="also measure after this many training steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="PNG path; the norms go to the same path with .json")
    args = parser.parse_args(argv)
    splits = data_lib.load("digits")
    train = data_lib.pipeline(splits.train, splits.info, args.batch_size, training=True, seed=args.seed)
    images, labels = next(iter(train))
    mean, variance = data_lib.normalization_statistics(splits.train, "per_pixel")
    curves = {}
    for unit in args.unit or ["original", "full_preact"]:
        keras.utils.set_random_seed(args.seed)
        inputs = keras.Input((32, 32, 3))
        x = data_lib.normalization_layer(mean, variance)(inputs)
        model = keras_resnet_v2.ResNet(parse_model(args.model), unit=unit, input_tensor=x, classes=10)
        curves[f"{unit}, initialization"] = unit_gradient_norms(model, images, labels)
        if args.steps:
            # The recipe's warm-up learning rate (FACTS.md: 0.01 for the first 400 iterations).
            model.compile(optimizer=recipes.SGD(learning_rate=0.01, momentum=0.9, nesterov=True),
                          loss=keras.losses.SparseCategoricalCrossentropy())
            model.fit(train, steps_per_epoch=args.steps, epochs=1, verbose=0)
            curves[f"{unit}, after {args.steps} steps"] = unit_gradient_norms(model, images, labels)
    plot_gradient_norms(curves, args.out, f"{args.model}: gradient norm at each unit input, digits batch")
    with open(args.out.rsplit(".", 1)[0] + ".json", "w") as handle:
        json.dump(curves, handle)
    for label, norms in curves.items():
        units = [v for name, v in norms if name != "input"]
        print(f"{label}: first unit {units[0]:.3g}, last unit {units[-1]:.3g}, min {min(units):.3g}, "
              f"max {max(units):.3g}")


if __name__ == "__main__":
    main()
