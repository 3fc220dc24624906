"""Datasets and input pipelines.

Three sources, one result type (`Splits`: unbatched train/test `tf.data.Dataset`s of
`(uint8 image [H, W, 3], int64 label)` plus a `DatasetInfo`):

- `digits`: the 1,797 real 8x8 handwritten digits shipped inside scikit-learn, scaled to
  0..255, resized to 32x32 and repeated to RGB; a fixed stratified 80/20 split (seed 0).
  Offline, so it is the quick start's and the tests' dataset.
- a folder of images with one subfolder per class (split folders `train/` and `test/`, `val/` or
  `validation/` if present, else a fixed split by file-name hash);
- any TFDS image-classification dataset by name (`cifar10`, `cifar100`, `imagenet2012`, ...).

Pipelines follow the paper's Appendix (the training of He et al. 2015 and fb.resnet.torch):
CIFAR-style (fixed-size images): load -> cache -> shuffle -> batch -> augment on the whole batch
(4-pixel zero pad, random crop, horizontal flip) -> prefetch. ImageNet-style: scale augmentation
(shorter side uniform in [256, 480], random 224 crop, flip) per image before batching, because
the images differ in size; evaluation resizes the shorter side to 256 and takes a 224 centre crop, or
(the paper's 320 test) resizes it to 320 and takes a 320 centre crop.

Normalization is not in the pipeline: `normalization_layer` builds a `keras_resnet_v2.Standardize`
layer from training-split statistics that goes in front of the network, so saved and exported
models take raw 0..255 pixels.
"""

from __future__ import annotations

import hashlib
import os
import socket
import urllib.parse
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

import keras_resnet_v2
from keras_resnet_v2.plumbing import images as image_ops

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# Leading bytes of the formats tf.io.decode_image reads.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
NETWORK_PROBE_TIMEOUT_S = 10.0


class DatasetError(ValueError):
    """A dataset that cannot be used: unknown, missing, empty or unreadable."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    train_examples: int
    test_examples: int
    image_shape: tuple | None  # (H, W, 3) when every image has it, else None (ImageNet-style)
    class_names: tuple = field(default=())
    flip: bool = True  # horizontal flips preserve the class (not for digits)


@dataclass
class Splits:
    train: tf.data.Dataset
    test: tf.data.Dataset
    info: DatasetInfo


def load(name: str, data_dir: str | None = None, image_size: int | None = 32,
         skip_bad_images: bool = False) -> Splits:
    """Loads a dataset by name: "digits", a folder path, or a TFDS name.

    `image_size` resizes digits (default 32) and folder images; `None` keeps a folder's images
    at their own sizes (ImageNet-style data). TFDS images keep the dataset's sizes.
    `skip_bad_images` leaves out a folder's images that do not decode (default: refuse, naming them).

    Example:
        >>> splits = load("digits")
        >>> splits.info.num_classes, splits.info.image_shape
        (10, (32, 32, 3))
    """
    if not isinstance(name, str) or not name:
        raise DatasetError(f"`dataset` must be a non-empty string. Received: dataset={name!r}")
    if name == "digits":
        return load_digits(image_size=image_size or 32)
    if os.path.sep in name or os.path.isdir(name):
        return load_folder(name, image_size=image_size, skip_bad_images=skip_bad_images)
    return load_tfds(name, data_dir=data_dir)


def load_digits(image_size: int = 32, test_fraction: float = 0.2) -> Splits:
    """scikit-learn's 1,797 handwritten digits as `image_size`^2 RGB uint8, fixed split."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = digits.images.astype("float32") * (255.0 / 16.0)  # 0..16 -> 0..255
    images = tf.image.resize(images[..., None], (image_size, image_size), method="bilinear")
    images = np.repeat(np.clip(np.round(images.numpy()), 0, 255).astype("uint8"), 3, axis=-1)
    labels = digits.target.astype("int64")
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, random_state=0, stratify=labels)
    info = DatasetInfo("digits", 10, len(y_train), len(y_test), (image_size, image_size, 3),
                       tuple(str(i) for i in range(10)), flip=False)
    return Splits(tf.data.Dataset.from_tensor_slices((x_train, y_train)),
                  tf.data.Dataset.from_tensor_slices((x_test, y_test)), info)


def _image_files(directory: str) -> list[str]:
    files = []
    for root, _, names in sorted(os.walk(directory)):
        files += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
    return files


def _check_image_file(path: str) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise DatasetError(f"Cannot read image file {path!r}: {e}") from e
    if not head.startswith(_MAGIC):
        raise DatasetError(f"{path!r} is not a JPEG, PNG, GIF or BMP image (its first bytes are {head!r}).")


def _scan_class_folders(directory: str, classes: list[str] | None = None):
    if not os.path.isdir(directory) or not os.access(directory, os.R_OK | os.X_OK):
        raise DatasetError(f"Image folder {directory!r} does not exist or cannot be read.")
    found = sorted(d for d in os.listdir(directory) if os.path.isdir(os.path.join(directory, d)))
    classes = classes or found
    if not classes:
        raise DatasetError(
            f"Image folder {directory!r} has no class subfolders; expected {directory}/<class>/<image>.")
    if len(classes) == 1:
        raise DatasetError(f"Image folder {directory!r} has 1 class ({classes[0]}); a classifier needs at least "
                           "2 class subfolders.")
    paths, labels = [], []
    for index, cls in enumerate(classes):
        files = _image_files(os.path.join(directory, cls))
        for path in files:
            _check_image_file(path)
        paths += files
        labels += [index] * len(files)
    if not paths:
        raise DatasetError(f"Image folder {directory!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    return classes, paths, labels


# Split folders of an image folder: the first that exists of each kind is used.
FOLDER_TRAIN_SPLITS = ("train",)
FOLDER_TEST_SPLITS = ("test", "validation", "val")


def _undecodable(paths: list[str]) -> dict[str, str]:
    """The files among `paths` that do not decode whole, each with TensorFlow's reason.

    One parallel pass over every image (a truncated JPEG with a valid header passes the magic-bytes
    check but fails here), so a bad file is named before training, not an epoch into it.
    """
    def decodes(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return path, tf.shape(image)

    checked = tf.data.Dataset.from_tensor_slices(paths).map(decodes, num_parallel_calls=AUTOTUNE)
    good = {path.decode() for path, _ in checked.ignore_errors().as_numpy_iterator()}
    bad = {}
    for path in (p for p in paths if p not in good):
        try:
            tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
            bad[path] = "decoding failed"
        except tf.errors.OpError as error:
            bad[path] = error.message.strip().splitlines()[0]
    return bad


def _folder_splits(directory: str, test_fraction: float):
    """(classes, train paths, train labels, test paths, test labels) of an image folder."""
    subfolders = {d for d in os.listdir(directory) if os.path.isdir(os.path.join(directory, d))}
    train_name = next((d for d in FOLDER_TRAIN_SPLITS if d in subfolders), None)
    test_name = next((d for d in FOLDER_TEST_SPLITS if d in subfolders), None)
    split_names = subfolders & set(FOLDER_TRAIN_SPLITS + FOLDER_TEST_SPLITS)
    if split_names and (train_name is None or subfolders - set(FOLDER_TRAIN_SPLITS + FOLDER_TEST_SPLITS)):
        raise DatasetError(
            f"Image folder {directory!r} mixes split folders ({', '.join(sorted(split_names))}) with other "
            f"subfolders ({', '.join(sorted(subfolders - split_names)) or 'none'}): use {directory}/<class>/<image>, "
            f"or {directory}/train/<class>/<image> with test/ (or val/, validation/) beside it.")
    if train_name and test_name:
        classes, train_paths, train_labels = _scan_class_folders(os.path.join(directory, train_name))
        _, test_paths, test_labels = _scan_class_folders(os.path.join(directory, test_name), classes)
        _check_every_class_trains(os.path.join(directory, train_name), classes, train_labels,
                                  "its training folder is empty")
        return classes, train_paths, train_labels, test_paths, test_labels
    root = os.path.join(directory, train_name) if train_name else directory
    classes, paths, labels = _scan_class_folders(root)
    train_paths, train_labels, test_paths, test_labels = [], [], [], []
    for path, label in zip(paths, labels, strict=True):
        digest = hashlib.sha1(os.path.relpath(path, root).encode()).digest()
        is_test = int.from_bytes(digest[:4], "big") < test_fraction * 2**32
        (test_paths if is_test else train_paths).append(path)
        (test_labels if is_test else train_labels).append(label)
    if not train_paths or not test_paths:
        raise DatasetError(f"Image folder {directory!r} has too few images for a train and a test split.")
    _check_every_class_trains(directory, classes, train_labels, f"every one of its images fell into the "
                              f"{test_fraction:.0%} test split; or give train/ and test/ folders")
    return classes, train_paths, train_labels, test_paths, test_labels


def _check_every_class_trains(directory: str, classes, train_labels, why: str) -> None:
    """A class with no training image would be trained on nothing, silently."""
    untrained = sorted(set(range(len(classes))) - set(train_labels))
    if untrained:
        names = ", ".join(repr(classes[i]) for i in untrained[:5]) + (" ..." if len(untrained) > 5 else "")
        raise DatasetError(f"Image folder {directory!r}: class {names} has no training image ({why}); add images")


def load_folder(directory: str, image_size: int | None = 32, test_fraction: float = 0.1,
                skip_bad_images: bool = False) -> Splits:
    """Images in `directory/<class>/...`, or `directory/train/<class>/...` beside `test/`, `val/` or
    `validation/` (the first of these that exists is the test split).

    Every file is checked up front: its first bytes must be an image's (JPEG/PNG/GIF/BMP) and it
    must decode whole, so a bad file is named before training starts; `skip_bad_images=True`
    leaves the undecodable ones out instead, saying how many. Images are decoded to RGB and resized
    to `image_size` squared, or kept at their own sizes with `image_size=None` (the ImageNet-style
    pipeline then crops them). Without a test split, a file goes to test when the hash of its path
    relative to the class folders' parent falls in the first `test_fraction` of the range (stable
    across runs). Fewer than 2 classes is refused.
    """
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory) or not os.access(directory, os.R_OK | os.X_OK):
        raise DatasetError(f"Image folder {directory!r} does not exist or cannot be read.")
    classes, train_paths, train_labels, test_paths, test_labels = _folder_splits(directory, test_fraction)
    bad = _undecodable(train_paths + test_paths)
    if bad and not skip_bad_images:
        listed = "; ".join(f"{path}: {reason}" for path, reason in list(bad.items())[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise DatasetError(f"{len(bad)} image(s) in {directory!r} do not decode ({listed}{more}); fix or remove "
                           "them, or pass --skip-bad-images (skip_bad_images=True) to leave them out.")
    if bad:
        print(f"warning: leaving out {len(bad)} image(s) of {directory!r} that do not decode", flush=True)
        keep = [(p, y) for p, y in zip(train_paths, train_labels, strict=True) if p not in bad]
        train_paths, train_labels = [p for p, _ in keep], [y for _, y in keep]
        keep = [(p, y) for p, y in zip(test_paths, test_labels, strict=True) if p not in bad]
        test_paths, test_labels = [p for p, _ in keep], [y for _, y in keep]

    def decode(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        if image_size is None:
            return image, label
        return image_ops.fit_uint8(image, image_size, image_size), label  # as serve_image_bytes does

    def dataset(paths, labels):
        ds = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, "int64")))
        return ds.map(decode, num_parallel_calls=AUTOTUNE, deterministic=True)

    info = DatasetInfo(os.path.basename(directory), len(classes), len(train_paths), len(test_paths),
                       (image_size, image_size, 3) if image_size else None, tuple(classes))
    return Splits(dataset(train_paths, train_labels), dataset(test_paths, test_labels), info)


def _network_reachable(url: str) -> bool:
    host = urllib.parse.urlparse(url).hostname
    if not host:
        return True
    try:
        socket.create_connection((host, 443), timeout=NETWORK_PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False


# Datasets whose "test" split has no labels: evaluate on "validation" (the paper's ImageNet figures
# are on the 50k validation images).
TEST_SPLITS = {"imagenet2012": "validation", "imagenet2012_subset": "validation", "imagenette": "validation"}


def load_tfds(name: str, data_dir: str | None = None) -> Splits:
    """A TFDS image-classification dataset: prepared under `data_dir`, or downloaded.

    TFDS retries unreachable downloads for minutes; when the dataset is not prepared, this
    probes the dataset's host first (10 s) and fails at once with instructions instead.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DatasetError(
            f"Unknown dataset {name!r}: not 'digits', not an image folder, and not a TFDS dataset "
            f"(for example cifar10, cifar100, imagenet2012). Received: dataset={name!r}") from e
    where = data_dir or "~/tensorflow_datasets"
    if not builder.is_prepared():
        how = (f"Prepare it on a machine with internet access (`tfds build {name} --data_dir DIR`) and pass "
               f"--data-dir DIR here, or copy the prepared folder to {where}.")
        if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
            how = (f"{name} needs a manual download: {builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()} "
                   f"Put the files in {where}/downloads/manual and run `tfds build {name} --data_dir {where}`.")
            raise DatasetError(f"TFDS dataset {name!r} is not prepared in {where}. {how}")
        if not _network_reachable(builder.info.homepage):
            raise DatasetError(f"TFDS dataset {name!r} is not prepared in {where} and cannot be downloaded "
                               f"(no network route to {builder.info.homepage}). {how}")
        builder.download_and_prepare()
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise DatasetError(f"TFDS dataset {name!r} is not an image-classification dataset "
                           f"(features {list(features)}; need 'image' and 'label').")
    shape = tuple(features["image"].shape)
    splits = builder.info.splits
    test_split = TEST_SPLITS.get(name, "validation" if "test" not in splits and "validation" in splits else "test")
    read = dict(as_supervised=True, shuffle_files=False)
    train = builder.as_dataset(split="train", **read)
    test = builder.as_dataset(split=test_split, **read)

    def size(split, ds):
        if split in splits:
            return splits[split].num_examples
        return int(ds.reduce(0, lambda n, _: n + 1))  # split sizes unknown (e.g. under tfds mock_data)

    info = DatasetInfo(name, features["label"].num_classes, size("train", train), size(test_split, test),
                       shape if None not in shape else None, tuple(features["label"].names))
    if info.image_shape is not None and info.image_shape[-1] == 1:
        to_rgb = lambda x, y: (tf.image.grayscale_to_rgb(x), y)  # noqa: E731
        info = DatasetInfo(**{**info.__dict__, "image_shape": shape[:-1] + (3,)})
    else:
        to_rgb = lambda x, y: (x, y)  # noqa: E731
    return Splits(train.map(to_rgb), test.map(to_rgb), info)


# --------------------------------------------------------------------------- statistics


def normalization_statistics(train: tf.data.Dataset, mode: str = "per_pixel", max_examples: int = 50_000):
    """Mean and variance of the training split for `mode`.

    per_pixel: the paper's per-pixel mean subtraction (mean image [H, W, 3], variance 1).
    per_channel: per-channel standardization (mean and variance of each of R, G, B).
    The statistics come from at most `max_examples` training images (all of CIFAR's 50k).
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"`normalization` must be one of {NORMALIZATIONS}. Received: normalization={mode!r}")
    per_pixel = mode == "per_pixel"
    shape = train.element_spec[0].shape
    if per_pixel and not shape[:2].is_fully_defined():
        raise ValueError("`normalization='per_pixel'` needs images of one fixed size (a mean image); these "
                         f"images vary in size ({shape}). Use normalization='per_channel'.")

    def sums(image, _):  # per image: sum, sum of squares, and how many values each entry averages
        x = tf.cast(image, tf.float64)
        if per_pixel:
            return x, x * x, tf.constant(1.0, tf.float64)
        x = tf.reshape(x, [-1, 3])
        return tf.reduce_sum(x, 0), tf.reduce_sum(x * x, 0), tf.cast(tf.shape(x)[0], tf.float64)

    count, total, total_sq = 0.0, 0.0, 0.0
    for s, sq, n in train.take(max_examples).map(sums, num_parallel_calls=AUTOTUNE).batch(1000):
        total, total_sq = total + tf.reduce_sum(s, 0), total_sq + tf.reduce_sum(sq, 0)
        count += float(tf.reduce_sum(n))
    if count == 0:
        raise DatasetError("The training split is empty.")
    mean = (total / count).numpy()
    variance = np.ones_like(mean) if per_pixel else (total_sq / count).numpy() - mean**2
    return mean.astype("float32"), np.maximum(variance, 1e-6).astype("float32")


NORMALIZATIONS = ("per_pixel", "per_channel")


def normalization_layer(mean: np.ndarray, variance: np.ndarray) -> keras.layers.Layer:
    """A `keras_resnet_v2.Standardize` layer holding training-split statistics.

    A per-pixel mean is [H, W, 3], a per-channel one [3]. The statistics are weights of the
    model, so `.keras` files, SavedModels and ONNX files all carry them.
    """
    return keras_resnet_v2.Standardize(mean=mean, variance=variance, name="normalization")


# --------------------------------------------------------------------------- augmentation


def random_crop_flip(images: tf.Tensor, padding: int, flip: bool, seed: tf.Tensor) -> tf.Tensor:
    """Pads a batch by `padding` zeros, crops each image back at a random offset, flips half.

    Vectorized over the batch (two gathers), stateless under `seed` (a shape-[2] int tensor).
    """
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    seeds = tf.random.experimental.stateless_split(seed, 3)
    dy = tf.random.stateless_uniform([batch], seeds[0], 0, 2 * padding + 1, tf.int32)
    dx = tf.random.stateless_uniform([batch], seeds[1], 0, 2 * padding + 1, tf.int32)
    rows = dy[:, None] + tf.range(height)[None]
    cols = dx[:, None] + tf.range(width)[None]
    if flip:
        flipped = tf.random.stateless_uniform([batch], seeds[2]) < 0.5
        cols = tf.where(flipped[:, None], tf.reverse(cols, [1]), cols)
    out = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(out, cols, axis=2, batch_dims=1)


def _scale_augment(image, seed, crop: int, flip: bool = True):
    """ImageNet scale augmentation (paper, Appendix; He et al. 2015, Sec. 3.4): shorter side in [256, 480],
    random 224 crop, flip.

    For another crop size the side range scales with it ([256, 480] x crop / 224).
    """
    seeds = tf.random.experimental.stateless_split(seed, 3)
    min_side, max_side = round(256 * crop / 224), round(480 * crop / 224)
    side = tf.random.stateless_uniform([], seeds[0], min_side, max_side + 1, tf.int32)
    image = image_ops.resize_shorter(image, side)
    image = tf.image.stateless_random_crop(image, [crop, crop, 3], seeds[1])
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seeds[2])
    return image


def pipeline(dataset: tf.data.Dataset, info: DatasetInfo, batch_size: int, *, training: bool,
             seed: int = 0, start_step: int = 0, image_size: int = 224, cache: bool = True,
             padding: int = 4, resize_side: int | None = None, repeat: bool = True,
             interpolation: str = "bilinear") -> tf.data.Dataset:
    """Batches a split for training (`training=True`) or evaluation.

    Training data repeats forever (the caller counts steps per epoch: `steps_per_epoch` of
    `model.fit`) or, with `repeat=False`, is one epoch of full batches, reshuffled each time it is
    iterated, so `model.fit(ds, epochs=N)` needs no steps: load -> cache -> shuffle -> repeat ->
    batch (drop remainder) -> augment the whole batch (vectorized) -> prefetch.
    Variable-size (ImageNet-style) images are augmented one by one before batching. Each
    batch's augmentation is seeded by `(seed, step)`, so a run is deterministic under `seed`
    and a resumed run (`start_step`) draws new crops rather than replaying the first epoch's.
    Evaluation data is batched once, in order, keeping the last partial batch; variable-size
    images have their shorter side resized to `resize_side` (default image_size x 256 / 224:
    256 for 224) and are centre-cropped to `image_size`. The paper's 320 test (Sec. 5, Table 5) is
    `image_size=320, resize_side=320`; `interpolation` "bicubic" resizes them as timm's checkpoints
    were tested (`keras_resnet_v2.plumbing.images`). Images stay
    0..255 float32: the model's normalization layer does the rest.

    Example:
        >>> splits = load("digits")
        >>> images, labels = next(iter(pipeline(splits.train, splits.info, 64, training=True)))
        >>> model.fit(pipeline(splits.train, splits.info, 64, training=True, repeat=False), epochs=15)  # doctest: +SKIP
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = dataset.with_options(options)
    fixed_size = info.image_shape is not None
    if fixed_size and cache:
        ds = ds.cache()
    if not training:
        if not fixed_size:
            # The function serve_image_bytes applies too (keras_resnet_v2.plumbing.images).
            side = resize_side or image_ops.default_side(image_size)
            ds = ds.map(lambda x, y: (image_ops.centre_crop(x, image_size, side, interpolation), y),
                        num_parallel_calls=AUTOTUNE)
        return ds.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(AUTOTUNE)

    ds = ds.shuffle(min(info.train_examples, 50_000), seed=seed + start_step, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    step_seed = lambda i: tf.stack([tf.cast(seed, tf.int64), i])  # noqa: E731
    if not fixed_size:
        ds = ds.enumerate(start_step * batch_size).map(
            lambda i, xy: (_scale_augment(xy[0], step_seed(i), image_size, flip=info.flip), xy[1]),
            num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    if fixed_size:
        ds = ds.enumerate(start_step).map(
            lambda i, xy: (random_crop_flip(tf.cast(xy[0], tf.float32), padding, info.flip, step_seed(i)), xy[1]),
            num_parallel_calls=AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y))
    return ds.prefetch(AUTOTUNE)
