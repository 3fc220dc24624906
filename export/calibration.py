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


# A folder is sampled, never read whole: at most this many of its images are decoded (calibration first,
# then checking), so memory does not grow with the folder. Each file is at most MAX_FILE_BYTES and declares
# at most `image_bytes.max_pixels` pixels (serve_image_bytes' limit), checked before it is decoded.
MAX_FOLDER_IMAGES = 2 * samples.CALIBRATION_IMAGES
MAX_FILE_BYTES = 64 << 20


def folder_images(directory: str, shape: tuple, preprocessing: image_ops.Preprocessing,
                  limit: int = MAX_FOLDER_IMAGES) -> tuple[np.ndarray, int]:
    """(images, how many image files the folder holds): at most `limit` image files under `directory`
    (subfolders too; a seeded sample of them when there are more, in sorted order), each checked as
    `serve_image_bytes` checks a request (size, declared pixels, one GIF frame), then decoded and brought
    to `shape` as it brings one. One-line ValueErrors for a missing or empty folder or a file that is too
    large or does not decode."""
    import random

    import tensorflow as tf

    from keras_resnet_v2.export import image_bytes

    if not os.path.isdir(directory):
        raise ValueError(f"--calibration must be a folder of images. Received: {directory!r}")
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(directory) for name in names
                   if name.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise ValueError(f"--calibration {directory!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    total = len(files)
    if total > limit:
        files = sorted(random.Random(0).sample(files, limit))
    height, width, channels = shape
    pixels = image_bytes.max_pixels(height, width)
    images = np.empty((len(files), height, width, channels), "float32")
    for i, path in enumerate(files):
        if os.path.getsize(path) > MAX_FILE_BYTES:
            raise ValueError(f"--calibration: {path} is {os.path.getsize(path):,} bytes, more than the "
                             f"{MAX_FILE_BYTES:,} an image file may take here")
        try:
            data = tf.io.read_file(path)
            declared_height, declared_width = (int(v) for v in image_bytes.declared_size(data).numpy())
            if declared_height * declared_width > pixels:
                raise ValueError(f"--calibration: {path} declares {declared_width} x {declared_height} pixels, more "
                                 f"than the {pixels:,} an image may have here (serve_image_bytes' limit); not decoded")
            if data.numpy()[:4] == b"GIF8":  # size checked above: only serve_image_bytes' cut to the first frame
                data = image_bytes.first_gif_frame(data)
            image = tf.io.decode_image(data, channels=channels, expand_animations=False)
        except tf.errors.OpError as error:
            first = (str(getattr(error, "message", error)).strip().splitlines() or [""])[0][:200]
            raise ValueError(f"--calibration: {path} is not a readable image of at most {pixels:,} pixels "
                             f"({type(error).__name__}: {first})") from None
        images[i] = image_ops.prepare(image, height, width, preprocessing).numpy()
    return images, total


def images_for(model_path: str, shape: tuple, count: int, directory: Optional[str],
               preprocessing: image_ops.Preprocessing) -> tuple[np.ndarray, tuple, str]:
    """(calibration images, evaluation (images, labels or None), where they came from) for int8 exports.

    `directory` (--calibration) first: of its images (`folder_images`: at most MAX_FOLDER_IMAGES, sampled),
    the first `count` calibrate and the rest (all of them if there are no more) check the answers,
    unlabelled. Else a training run's deploy sample: `count` of
    its training images calibrate, its test split checks (labelled). Else a one-line ValueError.
    """
    if directory:
        images, total = folder_images(directory, shape, preprocessing)
        rest = images[count:] if len(images) > count else images
        sampled = f" (a sample of {len(images)} of its {total})" if total > len(images) else ""
        return images[:count], (rest, None), f"{len(images[:count])} images of {directory}{sampled}"
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
