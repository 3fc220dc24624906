"""A training run's deploy sample: the images an int8 export is calibrated and checked on.

`resnet-v2-train` writes `RUN/deploy_sample.npz` at the end of a run: `calibration` (training images,
shuffled, prepared as at test time: the pixels the exports are fed) and `test_images` /
`test_labels` (the test split, the first `MAX_TEST_IMAGES` of it at most, fewer for large images:
see `sample_limits`). `resnet-v2-export RUN --int8-onnx F` reads it, so an int8 export of a run
needs neither the dataset nor the training code. Pixels are stored as uint8 (rounded: the test
split's own pixels are integers, except after an ImageNet-style resize).
"""

from __future__ import annotations

import os

import numpy as np

from keras_resnet_v2.plumbing.files import atomic_write

SAMPLE_FILE = "deploy_sample.npz"
CALIBRATION_IMAGES = 512  # stored; an export uses its --calibration-images of them (default 256)
MAX_TEST_IMAGES = 10_000
MAX_BYTES = 256 * 2**20  # the test images' share is bounded by this: ~1,700 ImageNet crops at 224


def sample_limits(image_shape: tuple) -> tuple[int, int]:
    """(calibration images, test images) stored for images of `image_shape` (H, W, C)."""
    size = int(np.prod(image_shape))
    return CALIBRATION_IMAGES, max(0, min(MAX_TEST_IMAGES, (MAX_BYTES - CALIBRATION_IMAGES * size) // size))


def _pixels(images) -> np.ndarray:
    return np.clip(np.round(np.asarray(images, dtype="float32")), 0, 255).astype("uint8")


def _as_read(stored: dict) -> dict:
    """The stored arrays as `read_sample` gives them: float32 pixels, int64 labels."""
    return {"calibration": stored["calibration"].astype("float32"),
            "test_images": stored["test_images"].astype("float32"), "test_labels": stored["test_labels"]}


def write_sample(run_dir: str, calibration, test_images, test_labels) -> dict:
    """Writes `RUN/deploy_sample.npz` atomically; returns what `read_sample` would read back from it."""
    arrays = {"calibration": _pixels(calibration), "test_images": _pixels(test_images),
              "test_labels": np.asarray(test_labels, dtype="int64")}
    atomic_write(os.path.join(run_dir, SAMPLE_FILE), lambda tmp: np.savez(tmp, **arrays))
    return _as_read(arrays)


def read_sample(run_dir: str) -> dict:
    """`{"calibration", "test_images", "test_labels"}` as float32 pixels / int64 labels; a one-line
    ValueError if the run has none (a run of an older version) or the file is damaged."""
    path = os.path.join(run_dir, SAMPLE_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{run_dir} has no {SAMPLE_FILE} (a run writes it at its end; this one was made by an "
                         "older keras_resnet_v2): give --calibration DIR of images for the int8 exports")
    try:
        with np.load(path, allow_pickle=False) as archive:
            sample = {key: archive[key] for key in ("calibration", "test_images", "test_labels")}
    except Exception as error:  # noqa: BLE001 - a truncated or foreign file fails in many ways
        raise ValueError(f"{path} is damaged ({type(error).__name__}: {error}); delete it and give --calibration "
                         "DIR of images") from None
    if sample["calibration"].ndim != 4 or len(sample["test_images"]) != len(sample["test_labels"]):
        raise ValueError(f"{path} is damaged: shapes {sample['calibration'].shape}, {sample['test_images'].shape}, "
                         f"{sample['test_labels'].shape}")
    return _as_read(sample)
