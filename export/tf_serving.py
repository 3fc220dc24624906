"""What TF Serving needs beside the signatures: warmup records, and its two configuration files.

- `assets.extra/tf_serving_warmup_requests` (in each version): one `PredictionLog` per signature and
  batch size of `WARMUP_BATCHES`, written with tensorflow-serving-api's protos. TF Serving replays
  them when it loads the version, before it reports the version available, so the first client
  request does not pay TensorFlow's lazy initialization (TF Serving's "SavedModel Warmup" guide).
  The image-bytes and classify records carry real PNG and JPEG images.
- `models.config` (a `ModelServerConfig`, for `--model_config_file`) and `batching_parameters.txt`
  (a `BatchingParameters`, for `--enable_batching --batching_parameters_file`), written beside the
  versions, where TF Serving ignores them (it loads numeric folders only).

Example:
    >>> write_warmup("serving/resnet/.tmp-1-x", "resnet", (32, 32, 3))
    'serving/resnet/.tmp-1-x/assets.extra/tf_serving_warmup_requests'
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from keras_resnet_v2.export.serving import full_disk_as_oserror, load_failure

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")  # where TF Serving looks for it
WARMUP_BATCHES = (1, 8)  # one image, and a typical batch of a batching server
CLASSIFY_SIGNATURE = "classify"  # TF Serving's Classify API: `inputs` (tf.Example) -> `classes`, `scores`
CLASSIFY_METHOD = "tensorflow/serving/classify"
IMAGE_FEATURE = "image/encoded"  # the tf.Example feature holding the encoded image (TF's usual key)
TOP_K = 5  # classes (names and scores) a classify answer lists per image, best first
PREDICT_SIGNATURES = {"serving_default": ("images", "float32"), "serve_uint8": ("images", "uint8"),
                      "serve_image_bytes": ("image_bytes", "string")}


def metadata(classes: int, labelled: bool) -> dict:
    """What metadata.json says of the classify signature and the warmup records."""
    return {"classify": {"signature": CLASSIFY_SIGNATURE, "input": f"inputs: serialized tf.Example, the encoded "
                         f"image under {IMAGE_FEATURE!r}", "top_k": min(TOP_K, classes),
                         "classes": "labels.txt names" if labelled else "class indices"},
            "warmup": {"file": WARMUP_FILE, "batches": list(WARMUP_BATCHES),
                       "signatures": [*PREDICT_SIGNATURES, CLASSIFY_SIGNATURE]}}


def warmup_images(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """`count` uint8 RGB images [count, height, width, 3]: smooth gradients with noise, so that their
    JPEG and PNG encodings are images as a camera would give, not constant planes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    images = []
    for _ in range(count):
        phase = rng.uniform(0, 2 * np.pi, 3)
        planes = [127 + 100 * np.sin(x / max(width, 1) * 6 + y / max(height, 1) * 3 + p) for p in phase]
        image = np.stack(planes, -1) + rng.normal(0, 12, (height, width, 3))
        images.append(np.clip(image, 0, 255).astype("uint8"))
    return np.stack(images)


def encoded_images(images: np.ndarray) -> list:
    """PNG and JPEG (alternately) encodings of uint8 images, as a client sends them."""
    return [(tf.io.encode_png if i % 2 == 0 else tf.io.encode_jpeg)(image).numpy() for i, image in enumerate(images)]


def image_example(data: bytes):
    """A `tf.train.Example` holding one encoded image under `IMAGE_FEATURE` (what the classify signature reads)."""
    feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))
    return tf.train.Example(features=tf.train.Features(feature={IMAGE_FEATURE: feature}))


def warmup_requests(model_name: str, input_shape) -> list:
    """The warmup `PredictionLog`s: each predict signature and the classify signature at each of
    `WARMUP_BATCHES`; the pixels of `serving_default` and `serve_uint8` and the images encoded for the
    bytes and classify signatures are the same images."""
    from tensorflow_serving.apis import classification_pb2, input_pb2, model_pb2, predict_pb2, prediction_log_pb2

    height, width = input_shape[:2]
    logs = []
    for batch in WARMUP_BATCHES:
        images = warmup_images(batch, height, width, seed=batch)
        encoded = encoded_images(images)
        values = {"float32": images.astype("float32"), "uint8": images, "string": np.array(encoded, dtype=object)}
        for signature, (name, dtype) in PREDICT_SIGNATURES.items():
            request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name,
                                                                                signature_name=signature))
            request.inputs[name].CopyFrom(tf.make_tensor_proto(values[dtype]))
            logs.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request)))
        request = classification_pb2.ClassificationRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=CLASSIFY_SIGNATURE),
            input=input_pb2.Input(example_list=input_pb2.ExampleList(examples=[image_example(e) for e in encoded])))
        logs.append(prediction_log_pb2.PredictionLog(
            classify_log=prediction_log_pb2.ClassifyLog(request=request)))
    return logs


def write_warmup(version_dir: str, model_name: str, input_shape) -> str:
    """Writes `WARMUP_FILE` (a TFRecord file of `warmup_requests`) into a staged version; returns its path."""
    path = os.path.join(version_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    logs = warmup_requests(model_name, input_shape)
    with full_disk_as_oserror(path), tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read_warmup(path: str) -> list:
    """The `PredictionLog`s of a warmup file; a damaged file is a ValueError naming it, in one line."""
    from tensorflow_serving.apis import prediction_log_pb2

    try:
        return [prediction_log_pb2.PredictionLog.FromString(record.numpy())
                for record in tf.data.TFRecordDataset(path)]
    except Exception as error:  # noqa: BLE001 - a damaged record fails in TFRecord's reader or in protobuf
        raise ValueError(load_failure(f"The TF Serving warmup file {path}", error, limit=200)) from None


def mark_classify(version_dir: str) -> None:
    """Gives the classify signature TF Serving's classify method name in `saved_model.pb`.

    `tf.saved_model.save` names every signature's method `tensorflow/serving/predict`; TF Serving's
    Classify API accepts that by default, and refuses it when the server runs with
    `--enable_signature_method_name_check`. With the classify method name it is served either way.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(version_dir, "saved_model.pb")
    with open(path, "rb") as handle:
        saved = saved_model_pb2.SavedModel.FromString(handle.read())
    for graph in saved.meta_graphs:
        if CLASSIFY_SIGNATURE in graph.signature_def:
            graph.signature_def[CLASSIFY_SIGNATURE].method_name = CLASSIFY_METHOD
    with open(path, "wb") as handle:  # a staged version: nothing reads it until it is published
        handle.write(saved.SerializeToString())


# TF Serving's batching: `max_batch_size` images per batch at most, a batch closed 1 ms after its first
# request, `num_batch_threads` batches run at once (the serving machine's cores: set it there). Field
# names are those of TF Serving's BatchingParameters (session_bundle_config.proto).
BATCHING = {"max_batch_size": 32, "batch_timeout_micros": 1000, "max_enqueued_batches": 100, "num_batch_threads": 4}


def models_config(name: str) -> str:
    """`models.config` for `--model_config_file`: one model, `name`, served from `/models/<name>` (where
    docs/serving.md's docker command mounts the base directory), its newest version."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(name=name, base_path=f"/models/{name}", model_platform="tensorflow")
    model.model_version_policy.latest.num_versions = 1
    return (f"# TF Serving's --model_config_file (a ModelServerConfig), written by keras_resnet_v2's export.\n"
            f"# base_path is this folder as the server sees it: /models/{name} when it is mounted there\n"
            f"# (docker run -v \"$PWD/{name}:/models/{name}\" ...); for a server outside docker, write this\n"
            f"# folder's absolute path.\n" + text_format.MessageToString(config))


def batching_parameters() -> str:
    """`batching_parameters.txt` for `--enable_batching --batching_parameters_file` (`BATCHING`)."""
    lines = [f"{key} {{ value: {value} }}" for key, value in BATCHING.items()]
    return ("# TF Serving's --batching_parameters_file (a BatchingParameters), written by keras_resnet_v2's export.\n"
            "# Every signature batches (batch dimension -1). Set num_batch_threads to the serving machine's cores;\n"
            "# on a GPU a larger max_batch_size (64-256) pays. The warmup records cover batches of "
            f"{' and '.join(map(str, WARMUP_BATCHES))}.\n" + "\n".join(lines) + "\n")


