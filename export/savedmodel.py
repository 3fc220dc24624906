"""SavedModel for TF Serving: `BASE_DIR/<version>/saved_model.pb`, written atomically."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Optional, Sequence, Union

import keras
import tensorflow as tf

from keras_resnet_v2.export import image_bytes as bytes_checks
from keras_resnet_v2.export import tf_serving
from keras_resnet_v2.export.serving import (
    check_classifier,
    check_labels,
    float32_copy,
    metadata,
    serving_outputs,
    with_input_scale,
    write_out,
)
from keras_resnet_v2.export.staging import Staged
from keras_resnet_v2.plumbing import images as image_ops
from keras_resnet_v2.plumbing.files import DirectoryLock, check_writable_directory

# How serve_image_bytes sizes images: a mode name, a dict of Preprocessing's fields, or a Preprocessing.
Preprocessing = Union[str, dict, image_ops.Preprocessing]


DECODES_AT_ONCE = 4  # serve_image_bytes: images of one request decoded in parallel

def _checked_images(images, height: int, width: int, channels: int):
    """`images` if it is [batch, height, width, channels], else an InvalidArgumentError naming that shape.

    A SavedModel signature does not check the shapes of its inputs: without this a rank-3 tensor
    reached the convolution kernels (a oneDNN check aborts the whole server on it) and broadcastable
    shapes such as [1, 1, 1, 3] were answered.
    """
    expected = f"`images` must have shape [batch, {height}, {width}, {channels}]"
    tf.debugging.assert_equal(tf.rank(images), 4, message=expected)
    tf.debugging.assert_equal(tf.shape(images)[1:], tf.constant([height, width, channels]), message=expected)
    return tf.ensure_shape(images, [None, height, width, channels])


def _serving_archive(model: keras.Model, preprocessing: image_ops.Preprocessing,
                     labels: Optional[Sequence[str]] = None) -> keras.export.ExportArchive:
    """Keras' ExportArchive (it tracks the variables the way TF Serving's loader restores
    them) with three predict signatures, each returning `probabilities` (float32) and `classes`
    (int64), and the classify signature (TF Serving's Classify API).

    `serve_image_bytes` brings each decoded image to the input size with the function training and
    evaluation use (`keras_resnet_v2.plumbing.images.prepare` with `preprocessing`). `classify`
    reads serialized `tf.Example`s holding an encoded image under `image/encoded`, decodes them the
    same way and answers the `TOP_K` best `classes` (the names of `labels`, else the class indices
    as text) with their `scores`, best first."""
    height, width, channels = model.input_shape[1:]
    shape = [None, height, width, channels]
    classes = model.output_shape[-1]
    # The network is traced once, as one function that all four signatures call: tracing a
    # deep net is most of an export's time (ResNet-1001: ~20k layer calls per trace).
    network = tf.function(serving_outputs(model), input_signature=[tf.TensorSpec(shape, tf.float32)],
                          autograph=False)

    # Traced once for the four signatures; written with tf.cond, so AutoGraph's conversion is not needed.
    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32)], autograph=False)
    def outputs(images):
        images = _checked_images(images, height, width, channels)
        # A NaN or Inf pixel would be answered with NaN probabilities and class 0, a real-looking label.
        images = tf.debugging.assert_all_finite(images, "`images` must be finite: a NaN or Inf pixel value "
                                                        "was sent")
        empty = {"probabilities": tf.zeros([0, classes], tf.float32), "classes": tf.zeros([0], tf.int64)}
        # An empty batch gets empty outputs (BatchNorm kernels reject a batch of 0 images).
        return tf.cond(tf.shape(images)[0] > 0, lambda: network(images), lambda: empty)

    largest = bytes_checks.max_pixels(height, width)

    def decode(data):
        # The declared size is checked before anything is decoded, and a GIF keeps its first frame only.
        data = bytes_checks.checked(data, largest)
        image = tf.io.decode_image(data, channels=channels, expand_animations=False)
        image = image_ops.prepare(image, height, width, preprocessing)
        return tf.ensure_shape(image, (height, width, channels))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    def read_images(image_bytes):
        # At most DECODES_AT_ONCE images are decoded at a time, so a request of many large images
        # holds a few decoded images at once, not all of them. Traced once for both signatures that read images.
        return tf.map_fn(decode, image_bytes, fn_output_signature=tf.float32, parallel_iterations=DECODES_AT_ONCE)

    names = tf.constant(list(labels) if labels is not None else [str(i) for i in range(classes)])

    def classify(inputs):
        examples = tf.io.parse_example(inputs, {tf_serving.IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string)})
        scores, best = tf.math.top_k(outputs(read_images(examples[tf_serving.IMAGE_FEATURE]))["probabilities"],
                                     min(tf_serving.TOP_K, classes))
        return {"classes": tf.gather(names, best), "scores": scores}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", outputs,
                         input_signature=[tf.TensorSpec(shape, tf.float32, name="images")])
    archive.add_endpoint("serve_uint8", lambda images: outputs(tf.cast(images, tf.float32)),
                         input_signature=[tf.TensorSpec(shape, tf.uint8, name="images")])
    archive.add_endpoint("serve_image_bytes", lambda image_bytes: outputs(read_images(image_bytes)),
                         input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.add_endpoint(tf_serving.CLASSIFY_SIGNATURE, classify,
                         input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    return archive


def _next_version(base_dir: str) -> int:
    versions = [int(n) for n in os.listdir(base_dir) if re.fullmatch(r"\d+", n)] if os.path.isdir(base_dir) else []
    return max(versions, default=0) + 1


# What an export writes before publishing: `.tmp-<version>-<random>` (a version being written) and
# `.old-<version>-<random>/v` (a version moved aside by overwrite=True). TF Serving loads numeric
# folders only, so neither is ever served.
LEFTOVER = re.compile(r"\.(tmp|old)-(\d+)-")


def clean_leftovers(base_dir: str) -> list[str]:
    """Removes what a killed export (SIGKILL, power loss) left in `base_dir`; returns the names.

    Call it holding `base_dir`'s lock (`DirectoryLock`): then no other export is running there,
    so every temporary is a leftover, whichever process once wrote it (no process ID is trusted).
    A killed export leaves only a hidden temporary folder, which TF Serving ignores. If it was
    killed while replacing a version (`overwrite=True`) between moving the old version aside and
    moving the new one in, the old version is put back.
    """
    removed = []
    for name in sorted(os.listdir(base_dir)):
        match = LEFTOVER.match(name)
        if not match:
            continue
        path, final = os.path.join(base_dir, name), os.path.join(base_dir, match.group(2))
        if match.group(1) == "old" and os.path.isdir(os.path.join(path, "v")) and not os.path.exists(final):
            os.rename(os.path.join(path, "v"), final)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(name)
    return removed


def check_savedmodel_arguments(model: keras.Model, base_dir: str, version: Optional[int] = None,
                               labels: Optional[Sequence[str]] = None, preprocessing: Preprocessing = "resize") -> str:
    """Every check that needs no writing, before any export starts; returns the absolute base directory."""
    check_classifier(model)
    if image_ops.as_preprocessing(preprocessing).mode == "shorter_side_crop" and \
            model.input_shape[1] != model.input_shape[2]:
        raise ValueError(f"`preprocessing='shorter_side_crop'` needs a square input. Received: input shape "
                         f"{model.input_shape}")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        raise ValueError(f"`version` must be a positive integer or None. Received: version={version!r}")
    if labels is not None:
        check_labels(labels, model.output_shape[-1])
    base_dir = os.path.abspath(os.fspath(base_dir))
    check_writable_directory(base_dir, "The SavedModel base directory")
    return base_dir


def stage_savedmodel(model: keras.Model, base_dir: str, version: Optional[int] = None, overwrite: bool = False,
                     labels: Optional[Sequence[str]] = None, keep_mixed_precision: bool = False,
                     extra_metadata: Optional[dict] = None, preprocessing: Preprocessing = "resize") -> Staged:
    """Writes the SavedModel into a hidden temporary folder of `base_dir` (whose lock the caller holds).

    The version is chosen here (next free by default) and checked against `overwrite`.
    """
    clean_leftovers(base_dir)
    version = _next_version(base_dir) if version is None else version
    final = os.path.join(base_dir, str(version))
    if os.path.exists(final) and not overwrite:
        raise FileExistsError(f"Version {version} already exists at {final}; pass overwrite=True to replace it")
    serving_model = model if keep_mixed_precision else float32_copy(model)
    preprocessing = image_ops.as_preprocessing(preprocessing)
    archive = _serving_archive(serving_model, preprocessing, labels)
    name = os.path.basename(base_dir)
    staged = Staged(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base_dir), final, version_dir=True,
                    beside={os.path.join(base_dir, "models.config"): tf_serving.models_config(name),
                            os.path.join(base_dir, "batching_parameters.txt"): tf_serving.batching_parameters()})
    try:
        write_out(archive, staged.path)
        tf_serving.mark_classify(staged.path)
        tf_serving.write_warmup(staged.path, name, serving_model.input_shape[1:])
        assets = os.path.join(staged.path, "assets")
        os.makedirs(assets, exist_ok=True)
        with open(os.path.join(assets, "metadata.json"), "w") as handle:
            json.dump({**metadata(serving_model), **preprocessing.as_metadata(),
                       "image_bytes_max_pixels": bytes_checks.max_pixels(*serving_model.input_shape[1:3]),
                       "image_bytes_decodes_at_once": DECODES_AT_ONCE,
                       **tf_serving.metadata(serving_model.output_shape[-1], labels is not None),
                       **(extra_metadata or {})}, handle, indent=2)
        if labels is not None:
            with open(os.path.join(assets, "labels.txt"), "w") as handle:
                handle.write("\n".join(labels) + "\n")
    except BaseException:
        staged.discard()
        raise
    return staged


def answer(version_dir: str):
    """`images -> (probabilities, classes)`: gRPC `PredictRequest`s of `serving_default` answered by the
    version loaded as TF Serving loads it (`stand_in.Answer`, whose `check` runs the other signatures
    and the warmup records); its metadata.json is read first (a damaged one names itself)."""
    from keras_resnet_v2.export.stand_in import Answer

    return Answer(version_dir)


def export_savedmodel(model: keras.Model, base_dir: str, version: Optional[int] = None,
                      overwrite: bool = False, labels: Optional[Sequence[str]] = None,
                      keep_mixed_precision: bool = False, extra_metadata: Optional[dict] = None,
                      preprocessing: Preprocessing = "resize", input_scale: Optional[float] = None) -> str:
    """Writes `base_dir/<version>` for TF Serving and returns its path, unverified.

    `export_and_verify` publishes a version only once it has been verified; use it to serve.
    Here: `version` defaults to one more than the highest existing version. The export is
    written into a hidden temporary sibling and renamed into place at the end, so TF Serving
    never sees a half-written version and a failure leaves nothing behind. One export at a time
    writes into `base_dir` (its `.lock`); a second raises `DirectoryBusyError` naming the first.
    Each export first removes what a killed one left (`clean_leftovers`). An existing version is
    replaced only with `overwrite=True`. Mixed-precision models are exported in float32 unless
    `keep_mixed_precision=True`. `extra_metadata` (how the model was trained: unit, shortcut,
    normalization) is merged into `assets/metadata.json`. `preprocessing` is how
    `serve_image_bytes` brings an image to the input size, as the model was trained and tested:
    "resize" (CIFAR-style: stretched, antialiased) or "shorter_side_crop" (ImageNet-style: shorter
    side to 256/224 of the crop, centre crop), or a dict / `keras_resnet_v2.plumbing.images.Preprocessing`
    that also sets `crop_fraction` and `interpolation` (`keras_resnet_v2.TIMM_SERVING` for a model
    converted by `from_timm`); metadata.json names all three.
    `input_scale` multiplies the served pixels before a network with no scaling layer of its own
    (`with_input_scale`: 1/255 for one trained on pixels / 255).
    The version holds the predict signatures, the `classify` signature (TF Serving's Classify API:
    the `TOP_K` best of `labels` with scores) and `assets.extra/tf_serving_warmup_requests`
    (`keras_resnet_v2.export.tf_serving`); once it is published, `models.config` and
    `batching_parameters.txt` are written into `base_dir` where absent.

    Example:
        >>> export_savedmodel(keras_resnet_v2.ResNet20(), "serving/resnet20", input_scale=1 / 255)  # doctest: +ELLIPSIS
        '.../serving/resnet20/1'
    """
    base_dir = check_savedmodel_arguments(model, base_dir, version, labels, preprocessing)
    model = with_input_scale(model, input_scale)
    with DirectoryLock(base_dir, "an export"):
        return stage_savedmodel(model, base_dir, version, overwrite, labels, keep_mixed_precision,
                                extra_metadata, preprocessing).publish()


# ---------------------------------------------------------------- its entry's protocol (formats.py)


def check_target(entry, model: keras.Model, base_dir: str, options) -> str:
    """A base directory, not a file: `check_savedmodel_arguments`."""
    return check_savedmodel_arguments(model, base_dir, options.version, options.labels, options.preprocessing)


def stage(entry, model: keras.Model, base_dir: str, options) -> Staged:
    return stage_savedmodel(model, base_dir, options.version, options.overwrite, labels=options.labels,
                            extra_metadata=options.extra_metadata, preprocessing=options.preprocessing)


def lock(base_dir: str) -> DirectoryLock:
    """One export at a time into a base directory (its versions are numbered there)."""
    return DirectoryLock(base_dir, "an export")


def summary(version_dir: str, report: dict) -> str:
    """What `resnet-v2-export` says of a published version besides its path: what TF Serving gets."""
    base = os.path.dirname(version_dir)
    return (f"TF Serving: signatures serving_default, serve_uint8, serve_image_bytes, classify; "
            f"{report['warmup_records']} warmup records; {os.path.join(base, 'models.config')}, "
            f"{os.path.join(base, 'batching_parameters.txt')}")
