"""What every export serves: a float32 classifier's `images -> probabilities, classes`, and what it says.

Each format (`keras_resnet_v2.export.formats`) converts the same function, `serving_function`, so
every file answers the same inputs (float32 pixels 0-255, [N, H, W, 3]) with the same names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tempfile
import warnings
from typing import Optional, Sequence, Union

import keras
import tensorflow as tf

import keras_resnet_v2
from keras_resnet_v2.names import short_repr
from keras_resnet_v2.plumbing import images as image_ops
from keras_resnet_v2.plumbing.files import model_file


def classifier(model: keras.Model) -> tuple:
    """The layer that computes the model's output and its activation's name, looking inside nested
    models (`keras.Sequential([Input, Rescaling(1 / 255), trained_resnet])` ends in the ResNet's
    classifier); a `Softmax` layer counts as a softmax."""
    last = model.layers[-1]
    while isinstance(last, keras.Model) and last.layers:
        last = last.layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return last, "softmax"
    return last, getattr(getattr(last, "activation", None), "__name__", None)



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


def check_classifier(model) -> None:
    """Export serves class probabilities: the model must end in a softmax or linear (logits) classifier."""
    if not isinstance(model, keras.Model) or len(model.outputs) != 1 or len(model.output_shape) != 2:
        raise ValueError(
            "Export needs a classifier: a keras.Model with one output of shape (batch, classes) "
            f"(build it with include_top=True). Received: model={getattr(model, 'name', model)!r} "
            f"with output shape {getattr(model, 'output_shape', None)}"
        )
    last, activation = classifier(model)
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
    softmax_inside = classifier(model)[1] == "softmax"
    return lambda images: (model(images, training=False) if softmax_inside
                           else tf.nn.softmax(model(images, training=False)))


def serving_outputs(model: keras.Model):
    """images -> {"probabilities": float32 [N, classes], "classes": int64 [N]}, as every export serves."""
    probabilities = _probabilities(model)

    def outputs(images):
        p = tf.cast(probabilities(images), tf.float32)
        return {"probabilities": p, "classes": tf.argmax(p, axis=-1, output_type=tf.int64)}

    return outputs


# What each export does with a NaN or Inf pixel in float32 `images` (its metadata says it; docs/export.md too).
NON_FINITE_SAVEDMODEL = "refused: InvalidArgumentError '`images` must be finite' (serving_default)"
NON_FINITE_ONNX = ("not refused: ONNX has no assert op, and ONNX Runtime answers NaN probabilities (class 0) for "
                   "an image with a NaN or Inf value; check np.isfinite(images).all() in the client. An in-graph "
                   "refusal measured 1.03-1.25x batch-1 latency (benchmarks/onnx_finite_check.py)")
NON_FINITE_UNCHECKED = ("not refused: the file has no assert op, so a NaN or Inf pixel is answered with NaN "
                        "probabilities; check np.isfinite(images).all() in the client")


def metadata(model: keras.Model, non_finite: str = NON_FINITE_SAVEDMODEL) -> dict:
    """What every export says about itself (the SavedModel's metadata.json, the other files' metadata)."""
    return {
        "model_name": model.name,
        "input_shape": list(model.input_shape[1:]),
        "input": ("RGB pixel values 0-255; any normalization is inside the model" if scales_its_input(model) else
                  "RGB pixel values 0-255, passed to the network unchanged: it has no scaling layer in front"),
        "non_finite_input": non_finite,
        "classes": int(model.output_shape[-1]),
        "layers": len(model.layers),
        "parameters": int(model.count_params()),
        "keras_resnet_v2": keras_resnet_v2.__version__,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
    }


def file_metadata(model: keras.Model, non_finite: str, labels: Optional[Sequence[str]] = None,
                  extra: Optional[dict] = None) -> dict:
    """What a single-file export (ONNX, LiteRT, OpenVINO) carries inside it: `metadata`, then `extra`
    (training settings, precision), then the class names (`labels`) where given."""
    return {**metadata(model, non_finite), **(extra or {}),
            **({"class_names": list(labels)} if labels is not None else {})}


def load_failure(what: str, error: BaseException, limit: int = 300) -> str:
    """"WHAT does not load (ErrorType: its first line)": one line for a file that a loader refused."""
    first = (str(error).strip().splitlines() or [""])[0][:limit]
    return f"{what} does not load ({type(error).__name__}: {first})"


def load_model(path: str) -> keras.Model:
    """Loads a `.keras` file, or `model.keras` in a training run directory, with a clear error."""
    candidate = model_file(path)
    try:
        # compile=False: serving and evaluation need no optimizer, and files a user compiled with
        # an optimizer of their own load without it.
        return keras.models.load_model(candidate, safe_mode=True, compile=False)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same clear message, one line
        raise ValueError(load_failure(f"MODEL {candidate!r}", error)) from None


TRAINING_KEYS = ("model", "unit", "shortcut", "variant_options", "dataset", "precision", "recipe", "image_size",
                 "init", "freeze")


def training_metadata(run_config: dict) -> dict:
    """What metadata.json says about how the model was trained, from a run's config.json."""
    recipe = run_config.get("recipe_values") or {}
    return {"training": {k: run_config.get(k) for k in TRAINING_KEYS if k in run_config},
            "normalization": run_config.get("normalization") or recipe.get("normalization", "none (raw pixels)")}


def run_preprocessing(run_config: dict) -> Union[str, dict]:
    """How `serve_image_bytes` should size images for a model trained by this run (its config.json):
    ImageNet-style data (images of varying sizes) was tested on centre crops, the rest resized; a run
    fine-tuned from timm's checkpoint records timm's sizing (bicubic, 0.95 crop) as a dict of
    `plumbing.images.Preprocessing` fields."""
    recorded = run_config.get("preprocessing")
    if recorded in image_ops.MODES:
        return recorded
    if isinstance(recorded, dict):
        return dataclasses.asdict(image_ops.as_preprocessing(recorded))  # checked
    info = run_config.get("dataset_info") or {}
    return "shorter_side_crop" if "image_shape" in info and info["image_shape"] is None else "resize"


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


def serving_function(model: keras.Model) -> tf.types.experimental.GenericFunction:
    """`serving_outputs(model)` as a `tf.function` of float32 `images` [None, H, W, C] (the input every
    format names `images`)."""
    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="images")
    return tf.function(serving_outputs(model), input_signature=[spec])


def write_serving_savedmodel(model: keras.Model, directory: str) -> str:
    """A SavedModel of `serving_function(model)` alone (signature `serving_default`) in `directory`, the
    source the LiteRT and OpenVINO converters read (Keras' ExportArchive tracks the variables so that
    the converters see their values); returns `directory`."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="images")
    archive.add_endpoint("serving_default", serving_outputs(model), input_signature=[spec])
    write_out(archive, directory)
    return directory


@contextlib.contextmanager
def full_disk_as_oserror(path: str):
    """TensorFlow's error for a full disk while writing `path` (SaveV2, a TFRecord file: an OpError with 40
    lines of C++ stack) raised as an OSError (ENOSPC) instead, which the command lines say in one line."""
    import errno

    try:
        yield
    except tf.errors.OpError as error:
        if "no space left" not in (error.message or "").lower():
            raise
        raise OSError(errno.ENOSPC, "No space left on device", path) from None


def write_out(archive: keras.export.ExportArchive, directory: str) -> None:
    """`archive.write_out(directory)`, a full disk an OSError (ENOSPC) (`full_disk_as_oserror`)."""
    with full_disk_as_oserror(directory):
        archive.write_out(directory, verbose=False)


def converted_through_savedmodel(model: keras.Model, tmp: str, convert):
    """`convert(savedmodel_dir)` on a temporary `write_serving_savedmodel` beside `tmp` (a staged temporary),
    named after it so that the next export of the same target removes it if a kill leaves it; removed
    afterwards whatever happens."""
    import shutil

    folder = tempfile.mkdtemp(prefix=f"{os.path.basename(tmp)}-", dir=os.path.dirname(tmp))
    try:
        return convert(write_serving_savedmodel(model, os.path.join(folder, "m")))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
