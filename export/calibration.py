"""Images for an int8 export: a training run's deploy sample, or a folder of image files."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from keras_resnet_v2.plumbing import images as image_ops
from keras_resnet_v2.plumbing import samples

DEFAULT_IMAGES = 256  # --calibration-images
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def check_count(count) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= samples.CALIBRATION_IMAGES:
        raise ValueError(f"--calibration-images must be an integer from 1 to {samples.CALIBRATION_IMAGES}. "
                         f"Received: {count!r}")
    return count


def folder_images(directory: str, shape: tuple, preprocessing: image_ops.Preprocessing) -> np.ndarray:
    """Every image file under `directory` (sorted, subfolders too), decoded and brought to `shape` as
    `serve_image_bytes` brings a request's image; one-line ValueErrors for a missing or empty folder
    or a file that does not decode."""
    import tensorflow as tf

    if not os.path.isdir(directory):
        raise ValueError(f"--calibration must be a folder of images. Received: {directory!r}")
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(directory) for name in names
                   if name.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise ValueError(f"--calibration {directory!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    height, width, channels = shape
    images = []
    for path in files:
        try:
            image = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
        except (tf.errors.OpError, ValueError) as error:
            raise ValueError(f"--calibration: {path} is not a readable image ({type(error).__name__})") from None
        images.append(image_ops.prepare(image, height, width, preprocessing).numpy())
    return np.stack(images).astype("float32")


def images_for(model_path: str, shape: tuple, count: int, directory: Optional[str],
               preprocessing: image_ops.Preprocessing) -> tuple[np.ndarray, tuple, str]:
    """(calibration images, evaluation (images, labels or None), where they came from) for int8 exports.

    `directory` (--calibration) first: its first `count` images calibrate and the rest (all of them if
    there are no more) check the answers, unlabelled. Else a training run's deploy sample: `count` of
    its training images calibrate, its test split checks (labelled). Else a one-line ValueError.
    """
    if directory:
        images = folder_images(directory, shape, preprocessing)
        rest = images[count:] if len(images) > count else images
        return images[:count], (rest, None), f"{len(images[:count])} images of {directory}"
    run_dir = model_path if os.path.isdir(model_path) else None
    if run_dir is None:
        raise ValueError(f"int8 exports need calibration images: MODEL {model_path!r} is a .keras file, not a "
                         "training run directory (whose deploy sample would serve); give --calibration DIR")
    sample = samples.read_sample(run_dir)
    if tuple(sample["calibration"].shape[1:]) != tuple(shape):
        raise ValueError(f"{os.path.join(run_dir, samples.SAMPLE_FILE)} holds images of shape "
                         f"{list(sample['calibration'].shape[1:])}, the model takes {list(shape)}")
    return (sample["calibration"][:count], (sample["test_images"], sample["test_labels"]),
            f"{min(count, len(sample['calibration']))} training images of {run_dir}")
