"""The table of export formats: each one entry saying how it is checked, written, locked and run.

`export_and_verify`, `verify`, `resnet-v2-export` (its flags and summary) and `resnet-v2-train
--export-dir` iterate over `FORMATS`; a new format is one module (write, stage, `answer`) plus
its entry here.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import keras
import numpy as np

from keras_resnet_v2.export import litert, onnx, openvino, savedmodel
from keras_resnet_v2.export.serving import check_classifier, check_labels
from keras_resnet_v2.export.staging import Staged, check_file_target, file_lock
from keras_resnet_v2.plumbing.files import DirectoryLock


@dataclass
class Options:
    """What the formats' writers need besides the model and the target (`export_and_verify`'s keywords)."""

    version: Optional[int] = None  # SavedModel
    overwrite: bool = False  # SavedModel: replace an existing version
    opset: Optional[int] = None  # ONNX
    labels: Optional[Sequence[str]] = None
    extra_metadata: Optional[dict] = None
    preprocessing: savedmodel.Preprocessing = "resize"  # SavedModel's serve_image_bytes
    calibration: Optional[np.ndarray] = None  # int8: float32 pixels 0-255, [N, H, W, C]


@dataclass(frozen=True)
class Format:
    """One export format. `name` is its keyword (`export_and_verify(model, litert=PATH)`), its key in the
    verification report and, dashed, its command-line flag (`--int8-onnx`)."""

    name: str
    title: str
    suffix: str  # the file name's ending ("" for the SavedModel's base directory)
    run_file: str  # its name under `resnet-v2-train --export-dir`
    purpose: str
    stage: Callable[[keras.Model, str, Options], Staged]
    # path -> images -> (probabilities, classes); the callable may have `check(keras_fn, allowed) -> dict`,
    # further checks that `verify` runs (the SavedModel's through TF Serving's rules: `stand_in.Answer`)
    answer: Callable[[str], Callable]
    runtime: tuple = ()  # (module, pip package) its writer and runtime need beyond the `export` extra
    int8: bool = False
    companions: Callable[[str], Sequence[str]] = field(default=lambda path: ())  # files published beside it
    check_options: Callable[[Options], object] = field(default=lambda options: None)  # one-line ValueErrors

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check_runtime(self) -> None:
        """A one-line ValueError if the packages this format needs are not installed."""
        missing = [package for module, package in self.runtime if importlib.util.find_spec(module) is None]
        if missing:
            raise ValueError(f"{self.flag} needs {', '.join(missing)}: pip install \"keras_resnet_v2[deploy]\"")

    def check(self, model: keras.Model, target: str, options: Options) -> str:
        """Every check that needs no writing; returns the absolute target. One-line ValueErrors."""
        self.check_runtime()
        self.check_options(options)
        if self.int8 and options.calibration is None:
            raise ValueError(f"{self.flag} needs calibration images: a training run directory (its deploy sample) "
                             "or --calibration DIR of images. Received: neither")
        if self.name == "savedmodel":
            return savedmodel.check_savedmodel_arguments(model, target, options.version, options.labels,
                                                         options.preprocessing)
        check_classifier(model)
        if options.labels is not None:
            check_labels(options.labels, model.output_shape[-1])
        path = check_file_target(target, self.suffix, self.title)
        for companion in self.companions(path):
            check_file_target(companion, os.path.splitext(companion)[1], self.title)
        return path

    def lock(self, target: str) -> DirectoryLock:
        return DirectoryLock(target, "an export") if self.name == "savedmodel" else file_lock(target, self.title)


FORMATS = (
    Format("savedmodel", "SavedModel", "", "savedmodel", "TF Serving (gRPC/REST), TensorFlow: predict signatures "
           "for float pixels, uint8 pixels and encoded images, a classify signature, warmup records",
           lambda m, t, o: savedmodel.stage_savedmodel(m, t, o.version, o.overwrite, labels=o.labels,
                                                       extra_metadata=o.extra_metadata, preprocessing=o.preprocessing),
           savedmodel.answer),
    Format("onnx", "ONNX", ".onnx", "model.onnx", "ONNX Runtime and every ONNX tool, float32",
           lambda m, t, o: onnx.stage_onnx(m, t, onnx.check_opset(o.opset), o.labels, o.extra_metadata), onnx.answer,
           check_options=lambda o: onnx.check_opset(o.opset)),
    Format("litert", "LiteRT", ".tflite", "model.tflite", "phones and edge devices (ai-edge-litert, Android, "
           "iOS), float32", lambda m, t, o: litert.stage_litert(m, t, o.labels, o.extra_metadata), litert.answer,
           runtime=(("ai_edge_litert", "ai-edge-litert"),)),
    Format("openvino", "OpenVINO", ".xml", "model.xml", "Intel CPUs and GPUs (OpenVINO Runtime), float32",
           lambda m, t, o: openvino.stage_openvino(m, t, o.labels, o.extra_metadata), openvino.answer,
           runtime=(("openvino", "openvino"),), companions=lambda path: (openvino.weights_path(path),)),
    Format("int8_onnx", "int8 ONNX", ".onnx", "model.int8.onnx", "int8 on CPUs with ONNX Runtime (QDQ, float32 "
           "interface)", lambda m, t, o: onnx.stage_int8_onnx(m, t, onnx.check_opset(o.opset), o.calibration,
                                                               o.labels, o.extra_metadata),
           onnx.answer, int8=True, check_options=lambda o: onnx.check_opset(o.opset)),
    Format("int8_litert", "int8 LiteRT", ".tflite", "model.int8.tflite", "int8 on phones and edge devices "
           "(float32 interface)", lambda m, t, o: litert.stage_litert(m, t, o.labels, o.extra_metadata, o.calibration),
           litert.answer, runtime=(("ai_edge_litert", "ai-edge-litert"),), int8=True),
)
BY_NAME = {entry.name: entry for entry in FORMATS}


def targets(paths: dict) -> dict:
    """`{Format: path}` in table order from `{name: path or None}`; an unknown name is a one-line error."""
    unknown = sorted(set(paths) - set(BY_NAME))
    if unknown:
        raise ValueError(f"Unknown export format(s) {', '.join(unknown)}: the formats are "
                         f"{', '.join(BY_NAME)}. Received: {unknown}")
    return {entry: paths[entry.name] for entry in FORMATS if paths.get(entry.name)}


def parse_names(text: str) -> tuple:
    """`"savedmodel,onnx,int8-onnx"` -> the formats' names, checked (resnet-v2-train --export-formats)."""
    names = tuple(part.strip().replace("-", "_") for part in text.split(",") if part.strip())
    wrong = [name for name in names if name not in BY_NAME]
    if not names or wrong:
        raise ValueError(f"--export-formats must be a comma-separated list of {', '.join(BY_NAME)}. "
                         f"Received: {text!r}")
    return names


def check_distinct(checked: dict) -> None:
    """Two formats never write the same file (`--onnx m.onnx --int8-onnx m.onnx`)."""
    seen = {}
    for entry, path in checked.items():
        for file in (path, *entry.companions(path)):
            if file in seen:
                raise ValueError(f"{entry.flag} and {seen[file].flag} would write the same file. Received: {file!r}")
            seen[file] = entry
