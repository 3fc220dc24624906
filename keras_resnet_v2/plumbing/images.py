"""Image preprocessing shared by training, evaluation and serving, so they cannot drift apart.

TensorFlow ops (training and export are TensorFlow programs; the builders never import this).
Two ways to bring an image of any size to the network's `height` x `width`:

- `"resize"` (CIFAR-style data, image folders resized to the input size): the whole image,
  stretched to `height` x `width` with antialiasing and rounded to uint8, as the training data
  was stored.
- `"shorter_side_crop"` (ImageNet-style data; the paper's 320 test, Sec. 5): the shorter side resized to `side`
  (`height` x 256 / 224 by default: 256 for 224; or floor(`height` / `crop_fraction`), timm's
  rule: 235 for 224 at timm's 0.95), then the centre `height` x `width` crop. `interpolation`
  "bilinear" (ours) or "bicubic" (timm's checkpoints; clipped and rounded to 0..255 as PIL's
  uint8 images are), both antialiased.

`Preprocessing` holds the three choices. `resnet-v2-train` writes the mode of a run into its
config, and the exported `serve_image_bytes` signature applies the same function to each decoded
image (its metadata.json names all three).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Union

import tensorflow as tf

MODES = ("resize", "shorter_side_crop")
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How an image of any size becomes the network's input (see the module docstring).

    Example:
        >>> Preprocessing("shorter_side_crop", crop_fraction=0.95, interpolation="bicubic").side(224)
        235
    """

    mode: str = "resize"
    crop_fraction: Optional[float] = None
    interpolation: str = "bilinear"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"`preprocessing` must be one of {MODES}. Received: preprocessing={self.mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"`interpolation` must be one of {INTERPOLATIONS}. "
                             f"Received: interpolation={self.interpolation!r}")
        fraction = self.crop_fraction
        if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                     or not 0 < fraction <= 1):
            raise ValueError(f"`crop_fraction` must be a number in (0, 1] (the centre crop's share of the resized "
                             f"shorter side) or None. Received: crop_fraction={fraction!r}")
        if self.mode != "shorter_side_crop" and (fraction is not None or self.interpolation != "bilinear"):
            raise ValueError(f"`crop_fraction` and `interpolation` apply to preprocessing='shorter_side_crop' only. "
                             f"Received: preprocessing={self.mode!r}, crop_fraction={fraction!r}, "
                             f"interpolation={self.interpolation!r}")

    def side(self, crop: int) -> int:
        """The shorter side a `crop` x `crop` centre crop is taken from."""
        return default_side(crop) if self.crop_fraction is None else math.floor(crop / self.crop_fraction)

    def overridden(self, mode: Optional[str] = None, crop_fraction: Optional[float] = None,
                   interpolation: Optional[str] = None) -> Preprocessing:
        """This sizing with the given fields replaced (None: kept); another `mode` starts from its defaults.

        Example:
            >>> Preprocessing("shorter_side_crop", 0.95, "bicubic").overridden(interpolation="bilinear").crop_fraction
            0.95
        """
        fields = dataclasses.asdict(self) if mode in (None, self.mode) else {"mode": mode}
        given = {"crop_fraction": crop_fraction, "interpolation": interpolation}
        return Preprocessing(**{**fields, **{key: value for key, value in given.items() if value is not None}})

    def as_metadata(self) -> dict:
        return {"image_bytes_preprocessing": self.mode, "image_bytes_crop_fraction": self.crop_fraction,
                "image_bytes_interpolation": self.interpolation}

    @classmethod
    def from_metadata(cls, metadata: dict) -> Preprocessing:
        """The sizing a SavedModel's metadata.json records (`as_metadata`'s keys)."""
        return cls(metadata["image_bytes_preprocessing"], metadata["image_bytes_crop_fraction"],
                   metadata["image_bytes_interpolation"])


def as_preprocessing(value: Union[str, dict, Preprocessing, Any]) -> Preprocessing:
    """`value` as a `Preprocessing`: a mode name, a dict of its fields, or one already."""
    if isinstance(value, Preprocessing):
        return value
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"mode", "crop_fraction", "interpolation"})
        if unknown:
            raise ValueError(f"`preprocessing` as a dict takes mode, crop_fraction and interpolation. "
                             f"Received: {unknown[0]}={value[unknown[0]]!r}")
        return Preprocessing(**value)
    return Preprocessing(value)


def default_side(crop: int) -> int:
    """The shorter side an ImageNet-style test image is resized to before its centre crop."""
    return round(crop * 256 / 224)


def resize_shorter(image: tf.Tensor, side, interpolation: str = "bilinear") -> tf.Tensor:
    """`image` (H, W, C) scaled so that its shorter side is `side`, antialiased (float32)."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.cast(side, tf.float32) / tf.reduce_min(shape)
    size = tf.cast(tf.round(shape * scale), tf.int32)
    resized = tf.image.resize(image, size, method=interpolation, antialias=True)
    if interpolation == "bicubic":  # cubic kernels overshoot; PIL's uint8 result is clipped and rounded
        resized = tf.round(tf.clip_by_value(resized, 0.0, 255.0))
    return resized


def centre_crop(image: tf.Tensor, crop: int, side: int, interpolation: str = "bilinear") -> tf.Tensor:
    """The shorter side resized to `side`, then the centre `crop` x `crop` (float32)."""
    return tf.image.resize_with_crop_or_pad(resize_shorter(image, side, interpolation), crop, crop)


def fit_uint8(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """`image` stretched to `height` x `width` with antialiasing, rounded back to uint8."""
    image = tf.image.resize(image, (height, width), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def prepare(image: tf.Tensor, height: int, width: int, mode: Union[str, dict, Preprocessing],
            side: int | None = None) -> tf.Tensor:
    """A decoded uint8 image of any size as the network's float32 input (pixels 0..255).

    `mode` is a `Preprocessing` (or its mode name); `side` overrides its shorter side.

    Example:
        >>> prepare(tf.zeros((480, 640, 3), tf.uint8), 224, 224, "shorter_side_crop").shape
        TensorShape([224, 224, 3])
    """
    spec = as_preprocessing(mode)
    if spec.mode == "resize":
        return tf.cast(fit_uint8(image, height, width), tf.float32)
    if height != width:
        raise ValueError(f"`shorter_side_crop` takes square crops. Received: {height}x{width}")
    return tf.cast(centre_crop(image, height, side or spec.side(height), spec.interpolation), tf.float32)
