"""Export benchmark: build, SavedModel export, ONNX export and verification of a deep net.

    python benchmarks/export_time.py --depth 164 --depth 1001

The model's BatchNorm statistics are calibrated on one batch first (momentum 0, one training
pass), as after training, so verification compares informative outputs. Prints a Markdown table
row per depth: seconds for each stage, and the parity errors against Keras, with the float32
noise floor that sets the allowed error (export/verification.py).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_resnet_v2 as krv2  # noqa: E402
from keras_resnet_v2 import export  # noqa: E402


def calibrate(model: keras.Model, images: np.ndarray) -> None:
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.momentum, momentum = 0.0, layer.momentum
    model(images, training=True)
    for layer in layers:
        layer.momentum = momentum


def row(depth: int) -> str:
    keras.backend.clear_session()
    start = time.perf_counter()
    model = krv2.ResNet(depth)
    build_s = time.perf_counter() - start
    calibrate(model, np.random.default_rng(1).uniform(0, 255, (64, 32, 32, 3)).astype("float32"))
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        result = export.export_and_verify(model, os.path.join(folder, "serving"), os.path.join(folder, "m.onnx"))
        total_s = time.perf_counter() - start
    r = result["report"]
    verify_s = total_s - r["savedmodel_s"] - r["onnx_s"]
    return (f"| ResNet-{depth} | {build_s:.1f} | {r['savedmodel_s']:.1f} | {r['onnx_s']:.1f} | {verify_s:.1f} | "
            f"{r['savedmodel']['max_rel_error']:.1e} | {r['onnx']['max_rel_error']:.1e} | "
            f"{r['float32_noise_floor']:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, action="append", help="CIFAR depth (repeatable), default 164 and 1001")
    depths = parser.parse_args().depth or [164, 1001]
    print("| model | build s | SavedModel s | ONNX s | verify s | SavedModel rel. err | ONNX rel. err | "
          "float32 noise floor |")
    print("|---|---|---|---|---|---|---|---|")
    for depth in depths:
        print(row(depth), flush=True)


if __name__ == "__main__":
    main()
