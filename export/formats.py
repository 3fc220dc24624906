"""The table of export formats: each one entry of data, and one writer module that does the work.

`export_and_verify`, `verify`, `resnet-v2-export` (its flags, help lines and summary) and
`resnet-v2-train --export-formats` (its choices and help) read `FORMATS`. Reading the table imports
no TensorFlow, so the command lines build their parsers from it before TensorFlow starts.

A new format is one module under `keras_resnet_v2.export` plus its entry here. The module defines

    stage(entry, model, target, options) -> staging.Staged   # written to a hidden temporary
    answer(path) -> (images -> (probabilities, classes))     # the written file, run by its runtime

and may define `check_options(options)` (one-line ValueErrors, before anything is written),
`companions(path)` (files published beside the target), `summary(path, report) -> str` (a line
`resnet-v2-export` prints after the path) and, for a target that is no single file,
`check_target(entry, model, target, options) -> absolute target` and `lock(target)`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Optional, Sequence


@dataclass
class Options:
    """What the formats' writers need besides the model and the target (`export_and_verify`'s keywords)."""

    version: Optional[int] = None  # SavedModel
    overwrite: bool = False  # SavedModel: replace an existing version
    opset: Optional[int] = None  # ONNX
    labels: Optional[Sequence[str]] = None
    extra_metadata: Optional[dict] = None
    preprocessing: Any = "resize"  # SavedModel's serve_image_bytes (a mode, or `plumbing.images.Preprocessing`)
    calibration: Any = None  # int8: float32 pixels 0-255, [N, H, W, C]


@dataclass(frozen=True)
class Format:
    """One export format. `name` is its keyword (`export_and_verify(model, litert=PATH)`), its key in the
    verification report and, dashed, its command-line flag (`--int8-onnx`); `purpose` is the flag's help."""

    name: str
    title: str
    suffix: str  # the file name's ending ("" for the SavedModel's base directory)
    run_file: str  # its name under `resnet-v2-train --export-dir`
    purpose: str
    module: str  # keras_resnet_v2.export.<module>: its writer and reader (the protocol above)
    target: str = "FILE"  # what its flag takes, for an export
    verify_target: str = "FILE"  # and for `resnet-v2-export verify`
    runtime: tuple = ()  # (module, pip package) its writer and runtime need beyond the `export` extra
    int8: bool = False  # calibrated on images; verified by accuracy, not by a tolerance
    versioned: bool = False  # a TF Serving base directory: an export adds a version, verify reads one

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def writer(self) -> ModuleType:
        """Its module, imported on first use (it imports TensorFlow)."""
        return importlib.import_module(f"keras_resnet_v2.export.{self.module}")

    def check_runtime(self) -> None:
        """A one-line ValueError if the packages this format needs are not installed."""
        missing = [package for module, package in self.runtime if importlib.util.find_spec(module) is None]
        if missing:
            raise ValueError(f"{self.flag} needs {', '.join(missing)}: pip install \"keras_resnet_v2[deploy]\"")

    def check(self, model, target: str, options: Options) -> str:
        """Every check that needs no writing; returns the absolute target. One-line ValueErrors."""
        self.check_runtime()
        if hasattr(self.writer, "check_options"):
            self.writer.check_options(options)
        if self.int8 and options.calibration is None:
            raise ValueError(f"{self.flag} needs calibration images: a training run directory (its deploy sample) "
                             "or --calibration DIR of images. Received: neither")
        if hasattr(self.writer, "check_target"):
            return self.writer.check_target(self, model, target, options)
        from keras_resnet_v2.export.serving import check_classifier, check_labels
        from keras_resnet_v2.export.staging import check_file_target

        check_classifier(model)
        if options.labels is not None:
            check_labels(options.labels, model.output_shape[-1])
        path = check_file_target(target, self.suffix, self.title)
        for companion in self.companions(path):
            check_file_target(companion, os.path.splitext(companion)[1], self.title)
        return path

    def stage(self, model, target: str, options: Options):
        """The export written to a hidden temporary (`staging.Staged`), not yet published."""
        return self.writer.stage(self, model, target, options)

    def answer(self, path: str):
        """`images -> (probabilities, classes)` of the written export."""
        return self.writer.answer(path)

    def companions(self, path: str) -> tuple:
        """The files published beside `path` (OpenVINO's `.bin`)."""
        return tuple(self.writer.companions(path)) if hasattr(self.writer, "companions") else ()

    def lock(self, target: str):
        """The lock one writer of `target` holds."""
        if hasattr(self.writer, "lock"):
            return self.writer.lock(target)
        from keras_resnet_v2.export.staging import file_lock

        return file_lock(target, self.title)

    def describe(self, path: str) -> str:
        """`The ONNX file m.onnx`: how a verification message names the export."""
        return f"The {self.title} {path}" if self.versioned else f"The {self.title} file {path}"


#: The export formats, one `Format` each: flag, writer module, runtime packages, verification.
FORMATS = (
    Format("savedmodel", "SavedModel", "", "savedmodel", "SavedModel for TF Serving (gRPC/REST) and TensorFlow: "
           "predict signatures for float pixels, uint8 pixels and encoded images, a classify signature, warmup "
           "records (export: its base directory; verify: a version, e.g. serving/1)", "savedmodel",
           target="BASE_DIR", verify_target="VERSION_DIR", versioned=True),
    Format("onnx", "ONNX", ".onnx", "model.onnx", "ONNX file for ONNX Runtime and every ONNX tool, float32", "onnx"),
    Format("litert", "LiteRT", ".tflite", "model.tflite", "LiteRT (.tflite) file for phones and edge devices "
           "(ai-edge-litert, Android, iOS), float32", "litert", runtime=(("ai_edge_litert", "ai-edge-litert"),)),
    Format("openvino", "OpenVINO", ".xml", "model.xml", "OpenVINO IR FILE.xml (+ FILE.bin) for Intel CPUs and GPUs "
           "(OpenVINO Runtime), float32", "openvino", target="FILE.xml", verify_target="FILE.xml",
           runtime=(("openvino", "openvino"),)),
    Format("int8_onnx", "int8 ONNX", ".onnx", "model.int8.onnx", "int8 ONNX file (QDQ, float32 interface) for CPUs "
           "with ONNX Runtime, calibrated", "onnx", int8=True),
    Format("int8_litert", "int8 LiteRT", ".tflite", "model.int8.tflite", "int8 LiteRT file (float32 interface) for "
           "phones and edge devices, calibrated", "litert", runtime=(("ai_edge_litert", "ai-edge-litert"),), int8=True),
)
BY_NAME = {entry.name: entry for entry in FORMATS}


def targets(paths: dict) -> dict:
    """`{Format: path}` in table order from `{name: path or None}`; an unknown name is a one-line error."""
    unknown = sorted(set(paths) - set(BY_NAME))
    if unknown:
        raise ValueError(f"Unknown export format(s) {', '.join(unknown)}: the formats are "
                         f"{', '.join(BY_NAME)}. Received: {unknown}")
    return {entry: paths[entry.name] for entry in FORMATS if paths.get(entry.name)}


def names_help() -> str:
    """The formats as `--export-formats` spells them: `savedmodel, onnx, ..., int8-onnx, int8-litert`."""
    return ", ".join(entry.name.replace("_", "-") for entry in FORMATS)


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
