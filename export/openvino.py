"""OpenVINO IR (`NAME.xml` + `NAME.bin`), float32, converted by `openvino.convert_model`.

Input `images` float32 pixels 0-255 [?, H, W, C], outputs `probabilities` and `classes`, as the
SavedModel. What its metadata.json says is in the IR's `rt_info` (`model_info/keras_resnet_v2`, JSON).
Weights are stored in float32 (`compress_to_fp16=False`). OpenVINO's CPU plugin computes in bfloat16
by default on CPUs with bfloat16 instructions (AVX512_BF16, AMX): compile with
`{"INFERENCE_PRECISION_HINT": "f32"}` for float32 answers (what `verify` checks).
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import keras

from keras_resnet_v2.export.serving import (
    NON_FINITE_UNCHECKED,
    converted_through_savedmodel,
    file_metadata,
    float32_copy,
)
from keras_resnet_v2.export.staging import Staged, stage_file

RT_INFO = ["model_info", "keras_resnet_v2"]
FLOAT32 = {"INFERENCE_PRECISION_HINT": "f32"}


def _write(model: keras.Model, folder: str, name: str, labels: Optional[Sequence[str]], extra: Optional[dict]) -> None:
    import openvino

    converted = converted_through_savedmodel(model, os.path.join(folder, name), openvino.convert_model)
    values = file_metadata(model, NON_FINITE_UNCHECKED, labels,
                           {"openvino": openvino.__version__, "float32_compile_options": FLOAT32, **(extra or {})})
    converted.set_rt_info(json.dumps(values), RT_INFO)
    openvino.save_model(converted, os.path.join(folder, name), compress_to_fp16=False)


def read_metadata(xml_path: str) -> dict:
    """The `keras_resnet_v2` rt_info of an IR written here; a ValueError if it has none."""
    import openvino

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
    import openvino

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
