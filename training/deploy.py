"""A finished run handed to serving: its deploy sample (`write_sample`) and `--export-dir` (`export_run`)."""

from __future__ import annotations

import os

import keras
import numpy as np

from keras_resnet_v2.plumbing import samples
from keras_resnet_v2.training import data as data_lib

CALIBRATION_IMAGES = 256  # of the sample's, for --export-dir's int8 formats (resnet-v2-export --calibration-images)


def check_formats(text: str) -> tuple:
    """The names of `--export-formats`, each installed; one-line ValueErrors before any training."""
    try:
        from keras_resnet_v2.export import formats
    except ImportError:
        raise ValueError('--export-dir needs the export extra: pip install "keras_resnet_v2[export]"') from None
    names = formats.parse_names(text)
    for name in names:
        formats.BY_NAME[name].check_runtime()
    return names


def _images(dataset, info, image_size: int, limit: int, sizing=None) -> tuple[np.ndarray, np.ndarray]:
    """Up to `limit` (image, label) of `dataset` prepared as the run's test images are (`sizing`: a
    `plumbing.images.Preprocessing`; default the data's own)."""
    sized = {} if sizing is None else {"resize_side": sizing.side(image_size), "interpolation": sizing.interpolation}
    batches = data_lib.pipeline(dataset.take(limit), info, 256, training=False, image_size=image_size, cache=False,
                                **sized)
    pairs = [(np.asarray(x), np.asarray(y)) for x, y in batches]
    if not pairs:
        return np.zeros((0, image_size, image_size, 3), "float32"), np.zeros((0,), "int64")
    return np.concatenate([x for x, _ in pairs]), np.concatenate([y for _, y in pairs])


def write_sample(run_dir: str, splits: data_lib.Splits, image_size: int, sizing=None) -> dict:
    """`RUN/deploy_sample.npz` (keras_resnet_v2.plumbing.samples): shuffled training images for int8
    calibration and the test split (bounded), as the model sees them at test time; returns them."""
    info = splits.info
    shape = info.image_shape or (image_size, image_size, 3)
    calibration_limit, test_limit = samples.sample_limits(shape)
    train = splits.train.shuffle(min(info.train_examples, 10_000), seed=0, reshuffle_each_iteration=False)
    calibration, _ = _images(train, info, image_size, calibration_limit, sizing)
    test_images, test_labels = _images(splits.test, info, image_size, test_limit, sizing)
    return samples.write_sample(run_dir, calibration, test_images, test_labels)


def export_run(model: keras.Model, export_dir: str, labels, effective: dict, names: str = "savedmodel,onnx",
               sample: dict | None = None) -> dict:
    """Each format of `names` under export_dir (the SavedModel as the next version of export_dir/savedmodel,
    the others by their `run_file` names), verified; int8 ones calibrated and checked on `sample`."""
    from keras_resnet_v2 import export
    from keras_resnet_v2.export import formats

    chosen = [formats.BY_NAME[name] for name in formats.parse_names(names)]
    int8 = any(entry.int8 for entry in chosen) and sample is not None
    result = export.export_and_verify(
        model, labels=labels, extra_metadata=export.training_metadata(effective),
        preprocessing=export.run_preprocessing(effective),
        calibration=sample["calibration"][:CALIBRATION_IMAGES] if int8 else None,
        evaluation=(sample["test_images"], sample["test_labels"]) if int8 else None,
        **{entry.name: os.path.join(export_dir, entry.run_file) for entry in chosen})
    report = result["report"]
    checks = ", ".join(
        f"{entry.title} top-1 agreement {100 * report[entry.name]['top1_agreement']:.1f}%" if entry.int8
        else f"{entry.title} {report[entry.name]['max_rel_error']:.1e}" for entry in chosen)
    print(f"exported {', '.join(result[entry.name] for entry in chosen)}; verification passed ({checks}); "
          f"report {result['report_path']}", flush=True)
    return {**{entry.name: result[entry.name] for entry in chosen}, "report": result["report_path"]}
