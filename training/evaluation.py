"""Testing a model: `evaluate` (a saved model on a dataset's test split, `resnet-v2-train evaluate`) and
the paper's test at another crop size through a copy of the network (`eval_at`, Sec. 5 and Table 5)."""

from __future__ import annotations

import os

import keras
import tensorflow as tf

import keras_resnet_v2
from keras_resnet_v2.plumbing.files import read_json_object
from keras_resnet_v2.training import data as data_lib
from keras_resnet_v2.training.loop import Trainer


def with_input_size(model: keras.Model, size: int) -> keras.Model:
    """A copy of `model` that takes `size` x `size` images, sharing nothing, with the same weights.

    The networks are fully convolutional up to global pooling, so a model trained on 224 crops
    can be tested on 320 crops (the paper's Table 5). A per-pixel mean image fixes the size.
    """
    if model.input_shape[1:3] == (size, size):
        return model
    for layer in model.layers:
        if isinstance(layer, keras_resnet_v2.Standardize) and len(layer.shape) == 3:
            raise ValueError(f"The model subtracts a per-pixel mean image of shape {layer.shape}, so it only takes "
                             f"{layer.shape[0]}x{layer.shape[1]} images; train with normalization='per_channel' to "
                             f"test at another size. Received: eval_size={size}")
    inputs = keras.Input((size, size, model.input_shape[-1]), name=model.inputs[0].name)
    copy = keras.models.clone_model(model, input_tensors=inputs)
    copy.set_weights(model.get_weights())
    return copy


def eval_at(model: keras.Model, splits: data_lib.Splits, size: int, batch_size: int, strategy=None,
             side: int | None = None, interpolation: str = "bilinear") -> dict:
    """Top-1/top-5 on the test split at a `size` centre crop of images whose shorter side is resized to
    `side` (default `size`: the paper's 320 test, Sec. 5 and Table 5)."""
    with (strategy or tf.distribute.get_strategy()).scope():
        resized = with_input_size(model, size)
    test = data_lib.pipeline(splits.test, splits.info, batch_size, training=False, image_size=size,
                             resize_side=side or size, interpolation=interpolation)
    return Trainer(resized, keras.optimizers.SGD(), strategy or tf.distribute.get_strategy(), batch_size).evaluate(test)


def error_text(accuracy: float) -> str:
    """Printed results are errors in percent, two decimals, as the paper reports them."""
    return f"{100 * (1 - accuracy):.2f}%"


def evaluate(model_path: str, dataset: str, data_dir: str | None = None, batch_size: int = 256,
             eval_size: int | None = None, crop_fraction: float | None = None,
             interpolation: str | None = None) -> dict:
    """Top-1 and top-5 error (percent: `top1_error_percent`, `top5_error_percent`) of a saved model on the
    dataset's test split.

    Variable-size (ImageNet-style) images are resized on their shorter side and centre-cropped to
    the model's input size: side = crop x 256 / 224 with bilinear resizing, or, for a model
    `from_timm` converted, timm's floor(crop / 0.95) with bicubic resizing
    (`keras_resnet_v2.TIMM_SERVING`); `crop_fraction` and `interpolation` override these.
    `eval_size` tests at that centre crop of images whose shorter side is resized to it (the
    paper's 320 test; side = eval_size / crop_fraction with a `crop_fraction`).

    Example:
        >>> result = evaluate("resnet50_timm.keras", "imagenet2012", data_dir="~/tensorflow_datasets")  # doctest: +SKIP
        >>> result["top1_error_percent"]  # doctest: +SKIP
    """
    from keras_resnet_v2 import export, pretrained
    from keras_resnet_v2.plumbing import images as image_ops

    if eval_size is not None and (not isinstance(eval_size, int) or isinstance(eval_size, bool) or eval_size < 1):
        raise ValueError(f"`eval_size` must be a positive integer. Received: eval_size={eval_size!r}")
    image_ops.Preprocessing("shorter_side_crop", crop_fraction, interpolation or "bilinear")  # checks both
    model = export.load_model(model_path)
    sizing = image_ops.as_preprocessing(pretrained.timm_preprocessing(model) or "shorter_side_crop").overridden(
        crop_fraction=crop_fraction, interpolation=interpolation)
    height = model.input_shape[1] or 224
    # Image folders are kept at their own sizes (and centre-cropped) for a run trained that way,
    # as in its own test; otherwise resized to the model's input.
    run_config = os.path.join(model_path, "config.json")
    native = eval_size is not None or (os.path.isfile(run_config) and bool(
        (read_json_object(run_config).get("recipe_values") or {}).get("scale_augmentation", False)))
    splits = data_lib.load(dataset, data_dir=data_dir, image_size=None if native else height)
    if splits.info.num_classes != model.output_shape[-1]:
        raise ValueError(f"The model has {model.output_shape[-1]} classes, dataset {dataset!r} has "
                         f"{splits.info.num_classes}.")
    for name, value in (("eval_size", eval_size), ("crop_fraction", crop_fraction), ("interpolation", interpolation)):
        if value is not None and splits.info.image_shape is not None:
            raise ValueError(f"`{name}` sets the test crop of variable-size (ImageNet-style) images; {dataset!r} "
                             f"images are all {splits.info.image_shape[0]}x{splits.info.image_shape[1]}. Received: "
                             f"{name}={value!r}")
    if eval_size is not None:
        metrics = eval_at(model, splits, eval_size, batch_size, side=sizing.side(eval_size) if crop_fraction else None,
                           interpolation=sizing.interpolation)
    else:
        test = data_lib.pipeline(splits.test, splits.info, batch_size, training=False, image_size=height,
                                 resize_side=sizing.side(height), interpolation=sizing.interpolation)
        metrics = Trainer(model, keras.optimizers.SGD(), tf.distribute.get_strategy(), batch_size).evaluate(test)
    return {"model": model_path, "dataset": dataset, "examples": splits.info.test_examples,
            "image_size": eval_size or height,
            "top1_error_percent": 100 * (1 - metrics["accuracy"]),
            "top5_error_percent": 100 * (1 - metrics["top5_accuracy"]), "loss": metrics["loss"]}
