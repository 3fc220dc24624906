"""SavedModel for TF Serving: `BASE_DIR/<version>/saved_model.pb`, written atomically."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import keras
import tensorflow as tf

import keras_resnet_v2
from keras_resnet_v2.export import image_bytes as bytes_checks
from keras_resnet_v2.names import short_repr
from keras_resnet_v2.plumbing import images as image_ops
from keras_resnet_v2.plumbing.files import DirectoryLock, check_writable_directory, model_file, usual_modes

# How serve_image_bytes sizes images: a mode name, a dict of Preprocessing's fields, or a Preprocessing.
Preprocessing = Union[str, dict, image_ops.Preprocessing]


def _classifier(model: keras.Model) -> tuple:
    """The layer that computes the model's output and its activation's name, looking inside nested
    models (`keras.Sequential([Input, Rescaling(1 / 255), trained_resnet])` ends in the ResNet's
    classifier); a `Softmax` layer counts as a softmax."""
    last = model.layers[-1]
    while isinstance(last, keras.Model) and last.layers:
        last = last.layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return last, "softmax"
    return last, getattr(getattr(last, "activation", None), "__name__", None)


DECODES_AT_ONCE = 4  # serve_image_bytes: images of one request decoded in parallel

# Layers that bring pixels to the network's input range: a model starting with one takes 0-255 pixels.
SCALING_LAYERS = ("Standardize", "Rescaling", "Normalization")


def _first_layer(model: keras.Model):
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    first = layers[0] if layers else None
    return _first_layer(first) if isinstance(first, keras.Model) else first


def scales_its_input(model: keras.Model) -> bool:
    """True if the first layer the input meets (inside nested models too) is a scaling layer
    (`Standardize`, `Rescaling`, `Normalization`); False for a bare network such as `ResNet20()`."""
    return type(_first_layer(model)).__name__ in SCALING_LAYERS


def check_input_scale(input_scale) -> Optional[float]:
    if input_scale is None:
        return None
    if isinstance(input_scale, bool) or not isinstance(input_scale, (int, float)) or not (
            math.isfinite(input_scale) and input_scale > 0):
        raise ValueError(f"`input_scale` must be a positive number (1/255 for a network trained on pixels / 255) "
                         f"or None. Received: input_scale={input_scale!r}")
    return float(input_scale)


def with_input_scale(model: keras.Model, input_scale: Optional[float]) -> keras.Model:
    """`model` behind a `Rescaling(input_scale)` layer, so exports take 0-255 pixels; `model` itself for None.

    Without a scale, a bare network (no scaling layer in front of its stem) is exported as it is and a
    warning says that the signatures pass 0-255 pixels to it unchanged.
    """
    input_scale = check_input_scale(input_scale)
    if input_scale is None:
        if not scales_its_input(model):
            warnings.warn(f"{model.name!r} has no scaling layer ({', '.join(SCALING_LAYERS)}) in front of its stem: "
                          "the exports pass 0-255 pixels to it unchanged. If it was trained on other inputs (x / 255, "
                          "standardized), pass input_scale (resnet-v2-export --input-scale) or put the layer in "
                          "front", UserWarning, stacklevel=3)
        return model
    inputs = keras.Input(model.input_shape[1:], name="images")
    scaled = keras.layers.Rescaling(input_scale, name="input_scale")(inputs)
    return keras.Model(inputs, model(scaled), name=model.name)


def _check_classifier(model) -> None:
    """Export serves class probabilities: the model must end in a softmax or linear (logits) classifier."""
    if not isinstance(model, keras.Model) or len(model.outputs) != 1 or len(model.output_shape) != 2:
        raise ValueError(
            "Export needs a classifier: a keras.Model with one output of shape (batch, classes) "
            f"(build it with include_top=True). Received: model={getattr(model, 'name', model)!r} "
            f"with output shape {getattr(model, 'output_shape', None)}"
        )
    last, activation = _classifier(model)
    if activation not in ("softmax", "linear"):
        raise ValueError(
            "Export needs a classifier: the last layer must have a softmax or linear (logits) activation, "
            "so that the served `probabilities` are what the model computes (build it with include_top=True). "
            f"Received: last layer {last.name!r} ({type(last).__name__}) with activation {activation!r}"
        )
    shape = model.input_shape
    if len(shape) != 4 or None in shape[1:]:
        raise ValueError(
            "Export needs a fixed input size (height, width, channels) to serve encoded images. "
            f"Received: input shape {shape}"
        )
    if any(getattr(layer, "data_format", None) == "channels_first" for layer in model._flatten_layers()):
        raise ValueError(
            "Export serves channels_last images ([N, H, W, C], what TF Serving and ONNX Runtime clients send): "
            "build the same network with data_format='channels_last' and give it these weights (the same in "
            "both formats: ResNet(..., data_format='channels_last', weights='model.keras')). "
            f"Received: a channels_first model, input shape {shape}"
        )


def float32_copy(model: keras.Model) -> keras.Model:
    """The same network with every layer in float32 (weights copied); `model` if already so."""
    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model
    config = model.get_config()

    def to_float32(node):
        if isinstance(node, dict):
            if node.get("class_name") == "DTypePolicy":
                return {**node, "config": {**node["config"], "name": "float32"}}
            return {key: to_float32(value) for key, value in node.items()}
        if isinstance(node, list):
            return [to_float32(value) for value in node]
        return node

    copy = model.__class__.from_config(to_float32(config))
    copy.set_weights(model.get_weights())
    return copy


def _probabilities(model: keras.Model):
    softmax_inside = _classifier(model)[1] == "softmax"
    return lambda images: (model(images, training=False) if softmax_inside
                           else tf.nn.softmax(model(images, training=False)))


def serving_outputs(model: keras.Model):
    """images -> {"probabilities": float32 [N, classes], "classes": int64 [N]}, as every export serves."""
    probabilities = _probabilities(model)

    def outputs(images):
        p = tf.cast(probabilities(images), tf.float32)
        return {"probabilities": p, "classes": tf.argmax(p, axis=-1, output_type=tf.int64)}

    return outputs


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


def _serving_archive(model: keras.Model, preprocessing: image_ops.Preprocessing) -> keras.export.ExportArchive:
    """Keras' ExportArchive (it tracks the variables the way TF Serving's loader restores
    them) with three signatures, each returning `probabilities` (float32) and `classes` (int64).

    `serve_image_bytes` brings each decoded image to the input size with the function training and
    evaluation use (`keras_resnet_v2.plumbing.images.prepare` with `preprocessing`)."""
    height, width, channels = model.input_shape[1:]
    shape = [None, height, width, channels]
    classes = model.output_shape[-1]
    # The network is traced once, as one function that all three signatures call: tracing a
    # deep net is most of an export's time (ResNet-1001: ~20k layer calls per trace).
    network = tf.function(serving_outputs(model), input_signature=[tf.TensorSpec(shape, tf.float32)])

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

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", outputs,
                         input_signature=[tf.TensorSpec(shape, tf.float32, name="images")])
    archive.add_endpoint("serve_uint8", lambda images: outputs(tf.cast(images, tf.float32)),
                         input_signature=[tf.TensorSpec(shape, tf.uint8, name="images")])
    archive.add_endpoint(
        "serve_image_bytes",
        # At most DECODES_AT_ONCE images are decoded at a time, so a request of many large images
        # holds a few decoded images at once, not all of them.
        lambda image_bytes: outputs(tf.map_fn(decode, image_bytes, fn_output_signature=tf.float32,
                                              parallel_iterations=DECODES_AT_ONCE)),
        input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    return archive


def _next_version(base_dir: str) -> int:
    versions = [int(n) for n in os.listdir(base_dir) if re.fullmatch(r"\d+", n)] if os.path.isdir(base_dir) else []
    return max(versions, default=0) + 1


# What each export does with a NaN or Inf pixel in float32 `images` (its metadata says it; the README too).
NON_FINITE_SAVEDMODEL = "refused: InvalidArgumentError '`images` must be finite' (serving_default)"
NON_FINITE_ONNX = ("not refused: ONNX has no assert op, and ONNX Runtime answers NaN probabilities (class 0) for "
                   "an image with a NaN or Inf value; check np.isfinite(images).all() in the client. An in-graph "
                   "refusal measured 1.03-1.25x batch-1 latency (benchmarks/onnx_finite_check.py)")


def metadata(model: keras.Model) -> dict:
    return {
        "model_name": model.name,
        "input_shape": list(model.input_shape[1:]),
        "input": ("RGB pixel values 0-255; any normalization is inside the model" if scales_its_input(model) else
                  "RGB pixel values 0-255, passed to the network unchanged: it has no scaling layer in front"),
        "non_finite_input": NON_FINITE_SAVEDMODEL,
        "classes": int(model.output_shape[-1]),
        "layers": len(model.layers),
        "parameters": int(model.count_params()),
        "keras_resnet_v2": keras_resnet_v2.__version__,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
    }


def load_model(path: str) -> keras.Model:
    """Loads a `.keras` file, or `model.keras` in a training run directory, with a clear error."""
    candidate = model_file(path)
    try:
        # compile=False: serving and evaluation need no optimizer, and files a user compiled with
        # an optimizer of their own load without it.
        return keras.models.load_model(candidate, safe_mode=True, compile=False)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(
            f"MODEL {candidate!r} is not a loadable Keras model ({type(error).__name__}: {error})"
        ) from error


TRAINING_KEYS = ("model", "unit", "shortcut", "variant_options", "dataset", "precision", "recipe", "image_size")


def training_metadata(run_config: dict) -> dict:
    """What metadata.json says about how the model was trained, from a run's config.json."""
    recipe = run_config.get("recipe_values") or {}
    return {"training": {k: run_config.get(k) for k in TRAINING_KEYS if k in run_config},
            "normalization": recipe.get("normalization", "none (raw pixels)")}


def run_preprocessing(run_config: dict) -> str:
    """How `serve_image_bytes` should size images for a model trained by this run (its config.json):
    ImageNet-style data (images of varying sizes) was tested on centre crops, the rest resized."""
    if run_config.get("preprocessing") in image_ops.MODES:
        return run_config["preprocessing"]
    info = run_config.get("dataset_info") or {}
    return "shorter_side_crop" if "image_shape" in info and info["image_shape"] is None else "resize"


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


@dataclass
class Staged:
    """An export written to a hidden temporary `path`, invisible to servers until `publish()`."""

    path: str
    final: str
    version_dir: bool = False  # a SavedModel version, which may replace an existing one

    def publish(self) -> str:
        """Renames the export into place (atomically) with the usual modes; returns its path."""
        usual_modes(self.path)
        if self.version_dir and os.path.exists(self.final):  # overwrite: old version aside, new one in
            base, version = os.path.split(self.final)
            old = tempfile.mkdtemp(prefix=f".old-{version}-", dir=base)
            os.rename(self.final, os.path.join(old, "v"))
            os.rename(self.path, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.path, self.final)
        return self.final

    def discard(self) -> None:
        if os.path.isdir(self.path):
            shutil.rmtree(self.path, ignore_errors=True)
        elif os.path.exists(self.path):
            os.remove(self.path)


def check_labels(labels: Sequence[str], classes: int) -> None:
    """One line of `assets/labels.txt` per class: each label a non-empty string on one line.

    A name holding a line break (a folder named so) would shift every later label by a line, so a
    client reading label `i` from line `i` would name the wrong class.
    """
    if len(labels) != classes:
        raise ValueError(f"`labels` must name each of the {classes} classes. Received: {len(labels)} labels")
    for index, label in enumerate(labels):
        if not isinstance(label, str) or label.splitlines() != [label]:
            raise ValueError(f"`labels` must be non-empty strings without line breaks (one line of labels.txt "
                             f"each). Received: labels[{index}]={short_repr(label)}")


def check_savedmodel_arguments(model: keras.Model, base_dir: str, version: Optional[int] = None,
                               labels: Optional[Sequence[str]] = None, preprocessing: Preprocessing = "resize") -> str:
    """Every check that needs no writing, before any export starts; returns the absolute base directory."""
    _check_classifier(model)
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
    archive = _serving_archive(serving_model, preprocessing)
    staged = Staged(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base_dir), final, version_dir=True)
    try:
        try:
            archive.write_out(staged.path, verbose=False)
        except tf.errors.OpError as error:  # SaveV2 on a full disk: ResourceExhaustedError, 40 lines of C++ stack
            if "no space left" not in (error.message or "").lower():
                raise
            raise OSError(errno.ENOSPC, "No space left on device", staged.path) from None
        assets = os.path.join(staged.path, "assets")
        os.makedirs(assets, exist_ok=True)
        with open(os.path.join(assets, "metadata.json"), "w") as handle:
            json.dump({**metadata(serving_model), **preprocessing.as_metadata(),
                       "image_bytes_max_pixels": bytes_checks.max_pixels(*serving_model.input_shape[1:3]),
                       "image_bytes_decodes_at_once": DECODES_AT_ONCE,
                       **(extra_metadata or {})}, handle, indent=2)
        if labels is not None:
            with open(os.path.join(assets, "labels.txt"), "w") as handle:
                handle.write("\n".join(labels) + "\n")
    except BaseException:
        staged.discard()
        raise
    return staged


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

    Example:
        >>> export_savedmodel(keras_resnet_v2.ResNet20(), "/tmp/serving/resnet20", input_scale=1 / 255)
        '/tmp/serving/resnet20/1'
    """
    base_dir = check_savedmodel_arguments(model, base_dir, version, labels, preprocessing)
    model = with_input_scale(model, input_scale)
    with DirectoryLock(base_dir, "an export"):
        return stage_savedmodel(model, base_dir, version, overwrite, labels, keep_mixed_precision,
                                extra_metadata, preprocessing).publish()
