"""Image preprocessing shared by training, evaluation and serving, so they cannot drift apart.

TensorFlow ops (training and export are TensorFlow programs; the builders never import this).
Two ways to bring an image of any size to the network's `height` x `width`:

- `"resize"` (CIFAR-style data, image folders resized to the input size): the whole image,
  stretched to `height` x `width` with antialiasing and rounded to uint8, as the training data
  was stored.
- `"shorter_side_crop"` (ImageNet-style data, FACTS.md): the shorter side resized to `side`
  (`height` x 256 / 224 by default: 256 for 224), then the centre `height` x `width` crop.

`resnet-v2-train` writes the mode of a run into its config, and the exported `serve_image_bytes`
signature applies the same function to each decoded image.
"""

from __future__ import annotations

import tensorflow as tf

MODES = ("resize", "shorter_side_crop")


def default_side(crop: int) -> int:
    """The shorter side an ImageNet-style test image is resized to before its centre crop."""
    return round(crop * 256 / 224)


def resize_shorter(image: tf.Tensor, side) -> tf.Tensor:
    """`image` (H, W, C) scaled so that its shorter side is `side`, antialiased (float32)."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.cast(side, tf.float32) / tf.reduce_min(shape)
    size = tf.cast(tf.round(shape * scale), tf.int32)
    return tf.image.resize(image, size, antialias=True)


def centre_crop(image: tf.Tensor, crop: int, side: int) -> tf.Tensor:
    """The shorter side resized to `side`, then the centre `crop` x `crop` (float32)."""
    return tf.image.resize_with_crop_or_pad(resize_shorter(image, side), crop, crop)


def fit_uint8(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """`image` stretched to `height` x `width` with antialiasing, rounded back to uint8."""
    image = tf.image.resize(image, (height, width), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def prepare(image: tf.Tensor, height: int, width: int, mode: str, side: int | None = None) -> tf.Tensor:
    """A decoded uint8 image of any size as the network's float32 input (pixels 0..255).

    Example:
        >>> prepare(tf.zeros((480, 640, 3), tf.uint8), 224, 224, "shorter_side_crop").shape
        TensorShape([224, 224, 3])
    """
    if mode == "resize":
        return tf.cast(fit_uint8(image, height, width), tf.float32)
    if mode == "shorter_side_crop":
        if height != width:
            raise ValueError(f"`shorter_side_crop` takes square crops. Received: {height}x{width}")
        return tf.cast(centre_crop(image, height, side or default_side(height)), tf.float32)
    raise ValueError(f"`preprocessing` must be one of {MODES}. Received: preprocessing={mode!r}")
