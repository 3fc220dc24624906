"""A finished run's model handed to serving: `export_run` (`resnet-v2-train --export-dir`)."""

from __future__ import annotations

import os

import keras


def export_run(model: keras.Model, export_dir: str, labels, effective: dict) -> dict:
    """SavedModel (next version under export_dir/savedmodel) + ONNX, each verified."""
    from keras_resnet_v2 import export

    result = export.export_and_verify(model, os.path.join(export_dir, "savedmodel"),
                                      os.path.join(export_dir, "model.onnx"), labels=labels,
                                      extra_metadata=export.training_metadata(effective),
                                      preprocessing=export.run_preprocessing(effective))
    report = result["report"]
    print(f"exported {result['savedmodel']} and {result['onnx']}; verification passed "
          f"(max relative error SavedModel {report['savedmodel']['max_rel_error']:.1e}, "
          f"ONNX {report['onnx']['max_rel_error']:.1e}); report {result['report_path']}", flush=True)
    return {"savedmodel": result["savedmodel"], "onnx": result["onnx"], "report": result["report_path"]}
