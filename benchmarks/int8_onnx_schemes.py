"""Which int8 ONNX scheme: the same ONNX file quantized six ways, timed side by side (issue 34).

    python benchmarks/int8_onnx_schemes.py resnet50      # ResNet-50 at 224, random calibration images
    python benchmarks/int8_onnx_schemes.py RUN_DIR       # a digits run: accuracy and agreement too

Each scheme: QDQ, int8 weights per output channel, MinMax calibration (`quantize_static`), activations
int8 (S8S8) or uint8 (U8S8), and which operators are quantized. ONNX Runtime with 2 threads, two
rounds; batch-1 median latency and batch-32 throughput. With a training run directory (its
deploy_sample.npz), the test accuracy and the top-1 agreement with the Keras model too.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnxruntime.quantization import (  # noqa: E402
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: E402

ALL = ["Conv", "MatMul", "Gemm", "Add", "Mul", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "Pad"]
SCHEMES = {
    "int8 (S8S8), all": (QuantType.QInt8, ALL),
    "uint8 (U8S8), all": (QuantType.QUInt8, ALL),
    "int8, convolutions only": (QuantType.QInt8, ["Conv", "MatMul", "Gemm"]),
    "uint8, convolutions only": (QuantType.QUInt8, ["Conv", "MatMul", "Gemm"]),
    "uint8, convolutions + Add": (QuantType.QUInt8, ["Conv", "MatMul", "Gemm", "Add"]),
    "int8, convolutions + Relu": (QuantType.QInt8, ["Conv", "MatMul", "Gemm", "Relu"]),
}


class Batches(CalibrationDataReader):
    def __init__(self, images):
        self.images, self.starts = images, iter(range(0, len(images), 16))

    def get_next(self):
        start = next(self.starts, None)
        return None if start is None else {"images": self.images[start:start + 16]}


def timed(path: str, x: np.ndarray, calls: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    session.run(None, {"images": x})
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        session.run(None, {"images": x})
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), session


def main() -> None:
    from serve import build

    from keras_resnet_v2 import export
    from keras_resnet_v2.plumbing import samples

    which = sys.argv[1] if len(sys.argv) > 1 else "resnet50"
    test = None
    if os.path.isdir(which):
        model, sample = export.load_model(which), samples.read_sample(which)
        calibration, test = sample["calibration"][:256], (sample["test_images"], sample["test_labels"])
        reference = model.predict(test[0], verbose=0).argmax(-1)
    else:
        depth, size, classes = {"resnet20": (20, 32, 10), "resnet50": (50, 224, 1000)}[which]
        model = build(depth, size, classes)
        calibration = np.random.default_rng(2).uniform(0, 255, (32, size, size, 3)).astype("float32")
    size = model.input_shape[1]
    folder = tempfile.mkdtemp()
    export.export_onnx(model, f"{folder}/float.onnx")
    quant_pre_process(f"{folder}/float.onnx", f"{folder}/prepared.onnx", skip_symbolic_shape=True)
    one = np.random.default_rng(3).uniform(0, 255, (1, size, size, 3)).astype("float32")
    many = np.random.default_rng(3).uniform(0, 255, (32, size, size, 3)).astype("float32")
    calls = (50, 10) if size == 32 else (10, 2)
    for round_ in range(2):
        b1, _ = timed(f"{folder}/float.onnx", one, calls[0])
        b32, _ = timed(f"{folder}/float.onnx", many, calls[1])
        print(f"round {round_} float32: b1 {1e3 * b1:.2f} ms, b32 {32 / b32:.0f} img/s", flush=True)
        for index, (name, (activations, operators)) in enumerate(SCHEMES.items()):
            path = f"{folder}/{index}.onnx"
            if not os.path.exists(path):
                quantize_static(f"{folder}/prepared.onnx", path, Batches(calibration), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=activations, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=operators)
            b1, session = timed(path, one, calls[0])
            b32, _ = timed(path, many, calls[1])
            quality = ""
            if test is not None:
                classes = session.run(["classes"], {"images": test[0]})[0]
                quality = (f", accuracy {np.mean(classes == test[1]):.4f}, "
                           f"agreement {np.mean(classes == reference):.4f}")
            print(f"round {round_} {name}: b1 {1e3 * b1:.2f} ms, b32 {32 / b32:.0f} img/s{quality}", flush=True)


if __name__ == "__main__":
    main()
