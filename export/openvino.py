"""OpenVINO IR (`NAME.xml` + `NAME.bin`), float32, read from the model's ONNX form by OpenVINO's ONNX frontend.

Input `images` float32 pixels 0-255 [?, H, W, C], outputs `probabilities` and `classes`, as the
SavedModel. What its metadata.json says is in the IR's `rt_info` (`model_info/keras_resnet_v2`, JSON).
Weights are stored in float32 (`compress_to_fp16=False`). OpenVINO's CPU plugin computes in bfloat16
by default on CPUs with bfloat16 instructions (AVX512_BF16, AMX): compile with
`{"INFERENCE_PRECISION_HINT": "f32"}` for float32 answers (what `verify` checks).

The conversion sends nothing anywhere and writes nothing outside its target. OpenVINO's model
conversion API (`openvino.tools.ovc`, `openvino.convert_model`) starts OpenVINO's telemetry when it is
imported, and `import openvino` imports it: it writes `~/intel/openvino_ga_cid` and `~/intel/stats`
and reports the import to Google Analytics (on by default, as OpenVINO documents). So this module
imports OpenVINO without that API (`runtime()`: the runtime, its frontends and `save_model`), reads
the IR from the ONNX file this package writes (`onnx.write_onnx`, a temporary in the staged folder)
with `Core().read_model` (the runtime's ONNX frontend), and saves it with `save_model`
(tests/test_checked_inputs.py exports and verifies under an empty HOME: no `intel/` appears).
"""

from __future__ import annotations

import json
import os
import sys
from types import ModuleType
from typing import Optional, Sequence

import keras

from keras_resnet_v2.export import onnx
from keras_resnet_v2.export.serving import NON_FINITE_UNCHECKED, file_metadata, float32_copy
from keras_resnet_v2.export.staging import Staged, stage_file

RT_INFO = ["model_info", "keras_resnet_v2"]
FLOAT32 = {"INFERENCE_PRECISION_HINT": "f32"}


def runtime() -> ModuleType:
    """`openvino`, imported without `openvino.tools.ovc` (the model conversion API, whose import starts the
    telemetry): Python refuses an import whose `sys.modules` entry is None, and OpenVINO's `__init__` passes
    over that ImportError. Where OpenVINO was imported already, that module is returned as it is."""
    if "openvino" in sys.modules:
        return sys.modules["openvino"]
    blocked = "openvino.tools.ovc"
    sys.modules[blocked] = None  # type: ignore[assignment]
    try:
        import openvino
    finally:
        if sys.modules.get(blocked, 0) is None:
            del sys.modules[blocked]
    return openvino


def _write(model: keras.Model, folder: str, name: str, labels: Optional[Sequence[str]], extra: Optional[dict]) -> None:
    openvino = runtime()

    source = os.path.join(folder, os.path.splitext(name)[0] + ".onnx")  # inside the staged folder: removed with it
    onnx.write_onnx(model, source, onnx.DEFAULT_OPSET)
    converted = openvino.Core().read_model(source)
    os.remove(source)
    values = file_metadata(model, NON_FINITE_UNCHECKED, labels,
                           {"openvino": openvino.__version__, "float32_compile_options": FLOAT32, **(extra or {})})
    converted.set_rt_info(json.dumps(values), RT_INFO)
    openvino.save_model(converted, os.path.join(folder, name), compress_to_fp16=False)


def read_metadata(xml_path: str) -> dict:
    """The `keras_resnet_v2` rt_info of an IR written here; a ValueError if it has none."""
    openvino = runtime()

    model = openvino.Core().read_model(xml_path)
    if not model.has_rt_info(RT_INFO):
        raise ValueError(f"{xml_path} has no {'/'.join(RT_INFO)} rt_info: it was not written by resnet-v2-export")
    return json.loads(model.get_rt_info(RT_INFO).astype(str))


def stage_openvino(model: keras.Model, path: str, labels: Optional[Sequence[str]] = None,
                   extra_metadata: Optional[dict] = None) -> Staged:
    """The IR in a hidden temporary folder beside `path` (NAME.xml, whose lock the caller holds), staged to
    publish `NAME.bin` first and `NAME.xml` last."""
    serving_model = float32_copy(model)
    name = os.path.basename(path)
    staged = stage_file(path, lambda folder: _write(serving_model, folder, name, labels, extra_metadata))
    stem = os.path.splitext(name)[0]
    weights = (os.path.join(staged.path, f"{stem}.bin"), weights_path(path))
    return Staged(os.path.join(staged.path, name), path, companions=[weights], folder=staged.path)


def weights_path(xml_path: str) -> str:
    """The `.bin` OpenVINO reads beside `NAME.xml`."""
    return os.path.splitext(xml_path)[0] + ".bin"


def answer(xml_path: str, options: Optional[dict] = None):
    """`images -> (probabilities, classes)` of the IR compiled for OpenVINO's CPU plugin (float32 by default
    here: `FLOAT32`; `options={}` compiles it as OpenVINO's defaults do)."""
    openvino = runtime()

    read_metadata(xml_path)
    compiled = openvino.Core().compile_model(xml_path, "CPU", FLOAT32 if options is None else options)

    def run(images):
        out = compiled({"images": images})
        return out["probabilities"], out["classes"]

    run.precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    return run


# ---------------------------------------------------------------- its entry's protocol (formats.py)


def stage(entry, model: keras.Model, path: str, options) -> Staged:
    return stage_openvino(model, path, options.labels, options.extra_metadata)


def companions(path: str) -> tuple:
    """`NAME.bin`, published beside `NAME.xml`."""
    return (weights_path(path),)
