"""How fast each exported artifact answers on this CPU, side by side with PyTorch (issue 34).

    python benchmarks/serve.py                          # ResNet-20 at 32x32 and ResNet-50 at 224x224
    python benchmarks/serve.py --model resnet20 --rounds 5 --no-compile

Each model (BatchNorm statistics calibrated on one batch, as after training) is exported to every
format of `keras_resnet_v2.export.formats` (int8 calibrated on 64 random images: this measures speed;
the int8 accuracy is the verification report's, on a trained network), then, in rounds that visit
the runners in turn (these machines are noisy): batch-1 latency (median and 99th percentile of the
calls) and batch-32 throughput of Keras `predict`, the SavedModel's `serving_default`, ONNX Runtime
(float32, int8), LiteRT (float32, int8), OpenVINO (as compiled by default, which is bfloat16 on CPUs
with AVX512_BF16/AMX, and with the float32 hint), and the same network in PyTorch eager and
`torch.compile` (benchmarks/torch_resnet.py, channels-last, inference mode). Every runtime gets the
machine's cores. Prints the CPU flags and a Markdown table per model; medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

MODELS = {"resnet20": (20, 32, 10), "resnet50": (50, 224, 1000)}  # depth, input size, classes
CALLS = {"resnet20": (100, 20), "resnet50": (20, 3)}  # batch-1 calls, batch-32 calls per round


# The CPU flags every benchmark figure names (the vector units the kernels choose between).
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "avx_vnni")


def cpu_info(field: str) -> str:
    """The first /proc/cpuinfo line's value for `field` ("flags", "model name", ...), "" where none."""
    with open("/proc/cpuinfo") as handle:
        return next((line.split(":", 1)[1].strip() for line in handle if line.startswith(field)), "")


def vector_flags() -> str:
    """The VECTOR_FLAGS this CPU has, space-separated."""
    flags = cpu_info("flags").split()
    return " ".join(f for f in VECTOR_FLAGS if f in flags)


def cpu_flags() -> str:
    return f"{cpu_info('model name') or '?'}, {len(os.sched_getaffinity(0))} cores, flags: {vector_flags()}"


def build(depth: int, size: int, classes: int):
    import keras

    import keras_resnet_v2 as krv2

    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3), name="images")
    x = krv2.Standardize(mean=[124.0, 116.0, 104.0], variance=[3400.0, 3300.0, 3300.0])(inputs)
    model = krv2.ResNet(depth, input_tensor=x, classes=classes)
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.momentum = 0.0
    model(np.random.default_rng(1).uniform(0, 255, (16, size, size, 3)).astype("float32"), training=True)
    for layer in layers:
        layer.momentum = 0.9
    return model


def runners(model, depth: int, folder: str, threads: int, compile_torch: bool) -> dict:
    """name -> (batch -> callable answering a prepared batch), after exporting every format."""
    import tensorflow as tf

    from keras_resnet_v2.export import export_and_verify, formats, openvino

    size = model.input_shape[1]
    calibration = np.random.default_rng(2).uniform(0, 255, (64, size, size, 3)).astype("float32")
    paths = {entry.name: os.path.join(folder, entry.run_file) for entry in formats.FORMATS}
    start = time.perf_counter()
    result = export_and_verify(model, calibration=calibration, max_accuracy_drop=100, **paths)
    print(f"exported every format in {time.perf_counter() - start:.1f} s: "
          + ", ".join(f"{k[:-2]} {v} s" for k, v in result["report"].items() if k.endswith("_s")), flush=True)
    out = {"Keras predict": lambda x: model.predict(x, verbose=0, batch_size=len(x))}
    signature = tf.saved_model.load(result["savedmodel"]).signatures["serving_default"]
    out["SavedModel serving_default"] = lambda x: signature(images=tf.constant(x))["probabilities"].numpy()

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    for name, key in (("ONNX Runtime float32", "onnx"), ("ONNX Runtime int8", "int8_onnx")):
        session = ort.InferenceSession(result[key], options, providers=["CPUExecutionProvider"])
        out[name] = lambda x, s=session: s.run(["probabilities"], {"images": x})[0]
    from ai_edge_litert.interpreter import Interpreter

    for name, key in (("LiteRT float32", "litert"), ("LiteRT int8", "int8_litert")):
        per_batch = {}  # one interpreter per batch size: resizing the input each call would be timed

        def run(x, path=result[key], per_batch=per_batch):
            if len(x) not in per_batch:
                per_batch[len(x)] = Interpreter(model_path=path, num_threads=threads).get_signature_runner()
            return per_batch[len(x)](images=x)["probabilities"]
        out[name] = run
    import openvino as ov

    core = ov.Core()
    for name, config in (("OpenVINO default", {}), ("OpenVINO f32 hint", openvino.FLOAT32)):
        compiled = core.compile_model(result["openvino"], "CPU", {**config, "INFERENCE_NUM_THREADS": threads})
        precision = compiled.get_property("INFERENCE_PRECISION_HINT")
        out[f"{name} ({precision})"] = lambda x, c=compiled: c({"images": x})["probabilities"]
    import torch
    from torch_resnet import PreActResNet

    torch.set_num_threads(threads)
    net = PreActResNet(depth, model.output_shape[-1]).eval()
    net = net.to(memory_format=torch.channels_last)

    def torch_runner(module):
        def run(x):
            with torch.inference_mode():
                images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
                return torch.softmax(module(images), -1).numpy()
        return run
    out["PyTorch eager"] = torch_runner(net)
    if compile_torch:
        out["PyTorch torch.compile"] = torch_runner(torch.compile(net))
    return out


def measure(run, x: np.ndarray, calls: int) -> list[float]:
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        run(x)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", choices=tuple(MODELS), help="default: both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--no-compile", action="store_true", help="leave out torch.compile (its compile is slow)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    print(cpu_flags(), flush=True)
    figures = {}
    for key in args.model or list(MODELS):
        depth, size, classes = MODELS[key]
        model = build(depth, size, classes)
        with tempfile.TemporaryDirectory() as folder:
            run = runners(model, depth, folder, args.threads, not args.no_compile)
            one = np.random.default_rng(3).uniform(0, 255, (1, size, size, 3)).astype("float32")
            many = np.random.default_rng(4).uniform(0, 255, (32, size, size, 3)).astype("float32")
            for name, fn in run.items():  # warm-up (torch.compile compiles here)
                start = time.perf_counter()
                for _ in range(3):
                    fn(one)
                fn(many)
                print(f"  warm-up {name}: {time.perf_counter() - start:.1f} s", flush=True)
            samples = {name: {"b1": [], "b32": []} for name in run}
            calls_1, calls_32 = CALLS[key]
            for _ in range(args.rounds):
                for name, fn in run.items():
                    time.sleep(0.5)  # the previous runtime's threads stop spinning (2 cores: they would steal one)
                    samples[name]["b1"] += measure(fn, one, calls_1)
                    samples[name]["b32"].append(32 * calls_32 / sum(measure(fn, many, calls_32)))
        rows = {}
        for name, s in samples.items():
            b1 = sorted(s["b1"])
            rows[name] = {"b1_median_ms": 1e3 * statistics.median(b1), "b1_p99_ms": 1e3 * b1[int(0.99 * (len(b1) - 1))],
                          "b32_images_per_s": statistics.median(s["b32"])}
        eager = rows["PyTorch eager"]
        print(f"\n{key} at {size}x{size}, {args.threads} threads, {args.rounds} rounds "
              f"({calls_1} batch-1 calls, {calls_32} batch-32 calls a round)")
        print("| runtime | batch 1 median ms | batch 1 p99 ms | batch 32 img/s | b1 vs PyTorch eager | b32 vs eager |")
        print("|---|---|---|---|---|---|")
        for name, r in rows.items():
            print(f"| {name} | {r['b1_median_ms']:.2f} | {r['b1_p99_ms']:.2f} | {r['b32_images_per_s']:.1f} | "
                  f"{eager['b1_median_ms'] / r['b1_median_ms']:.2f}x | "
                  f"{r['b32_images_per_s'] / eager['b32_images_per_s']:.2f}x |", flush=True)
        figures[key] = rows
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"cpu": cpu_flags(), "threads": args.threads, "figures": figures}, handle, indent=2)


if __name__ == "__main__":
    main()
