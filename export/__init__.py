"""Export a trained keras_resnet_v2 model for serving, and prove the export right.

- `export_savedmodel(model, base_dir)`: a versioned SavedModel for TF Serving, written
  atomically, with `serving_default` (float pixels), `serve_uint8`, `serve_image_bytes`, `classify`
  (TF Serving's Classify API) and warmup records; `models.config` and `batching_parameters.txt` beside.
- `StandIn(version_dir)`: a version run as TF Serving runs it (TF1 session, gRPC protos, REST bodies),
  the SavedModel's verification until a TF Serving binary can run beside the tests.
- `export_onnx(model, path)`: an ONNX file (tf2onnx) with a dynamic batch axis.
- `export_and_verify(model, savedmodel=BASE_DIR, onnx=FILE, litert=..., openvino=..., int8_onnx=...,
  int8_litert=..., calibration=IMAGES)`: each format of `formats.FORMATS` written, verified, published.
- `verify(model, savedmodel_dir=..., onnx_path=..., litert=..., ...)`: the same batch through all of them
  (int8 files: top-1 agreement and accuracy on `evaluation` images).

Example:
    >>> import keras_resnet_v2
    >>> from keras_resnet_v2 import export
    >>> model = keras_resnet_v2.ResNet20()
    >>> path = export.export_savedmodel(model, "/tmp/serving/resnet20")   # .../1
    >>> report = export.verify(model, savedmodel_dir=path)

Needs the `export` extra: `pip install "keras_resnet_v2[export]"` (TensorFlow, tf2onnx,
ONNX Runtime, tensorflow-serving-api); LiteRT and OpenVINO need the `deploy` extra too (ai-edge-litert, openvino).
"""

from keras_resnet_v2.plumbing.extras import check_import_name, require

check_import_name(__name__, "keras_resnet_v2.export")
require("export", __name__)

from keras_resnet_v2.plumbing.files import DirectoryBusyError  # noqa: E402, F401  (standard library only)
from keras_resnet_v2.plumbing.lazy import lazy_package  # noqa: E402

# Public names by defining module, imported on first use (keras_resnet_v2.plumbing.lazy).
EXPORTS = {
    "formats": ("FORMATS",),
    "onnx": ("export_onnx",),
    "savedmodel": ("export_savedmodel",),
    "serving": ("float32_copy", "load_model", "run_preprocessing", "training_metadata"),
    "rest": ("ServingError",),
    "stand_in": ("StandIn",),
    "verification": ("VerificationError", "verify"),
    "workflow": ("export_and_verify",),
}
__getattr__, __dir__, _names = lazy_package(__name__, EXPORTS)
__all__ = ["DirectoryBusyError", *_names]
