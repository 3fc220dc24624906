"""Ours against Keras' own `model.export(format=...)` on the same model: time, interface, what the file says.

    python benchmarks/keras_export.py [--depth 20] [--size 32]

For each format both can write (SavedModel, ONNX, LiteRT, OpenVINO), one export each, side by side:
seconds, the input's name, dtype and shape (is the batch axis dynamic?), the output names, whether
the class names and the preprocessing are inside the file, and the largest difference from the
Keras model's probabilities on 4 images (measured here, not by either exporter). Prints a Markdown
table and the CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from serve import build, cpu_flags  # noqa: E402

LABELS = [f"class_{i}" for i in range(10)]


def describe(fmt: str, path: str, x: np.ndarray) -> tuple[str, str, str, np.ndarray]:
    """(input, outputs, metadata, probabilities or logits of x) of an exported file."""
    if fmt == "onnx":
        import onnx
        import onnxruntime as ort

        proto = onnx.load(path)
        value = proto.graph.input[0]
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        out = session.run(None, {session.get_inputs()[0].name: x})[0]
        keys = sorted(p.key for p in proto.metadata_props)
        return (f"{value.name} {dims}", ", ".join(o.name for o in proto.graph.output),
                "class_names" if "class_names" in keys else f"{len(keys)} entries", out)
    if fmt == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=path)
        signature = interpreter.get_signature_list()
        name, io = next(iter(signature.items()))
        detail = interpreter.get_input_details()[0]
        out = interpreter.get_signature_runner(name)(**{io["inputs"][0]: x})
        try:
            from keras_resnet_v2.export import litert

            meta = "class_names" if "class_names" in litert.read_metadata(path) else "none"
        except ValueError:
            meta = "none"
        first = "probabilities" if "probabilities" in out else sorted(out)[0]
        shape = [int(v) for v in detail["shape_signature"]]
        return f"{io['inputs'][0]} {shape}", ", ".join(io["outputs"]), meta, out[first]
    if fmt == "openvino":
        import openvino as ov

        core = ov.Core()
        model = core.read_model(path)
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        out = compiled([x])
        names = [", ".join(sorted(o.get_names())) or "(unnamed)" for o in model.outputs]
        first = next((v for o, v in out.items() if "probabilities" in o.get_names()), next(iter(out.values())))
        meta = "class_names" if model.has_rt_info(["model_info", "keras_resnet_v2"]) else "none"
        inputs = f"{model.inputs[0].get_any_name()} {model.inputs[0].get_partial_shape()}"
        return inputs, "; ".join(names), meta, first
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    signature = loaded.signatures["serving_default"]
    name, spec = next(iter(signature.structured_input_signature[1].items()))
    out = signature(**{name: tf.constant(x)})
    first = out["probabilities"] if "probabilities" in out else next(iter(out.values()))
    meta = "labels.txt" if os.path.exists(os.path.join(path, "assets", "labels.txt")) else "none"
    return (f"{name} {spec.shape}", ", ".join(sorted(out)) + f" ({len(loaded.signatures)} signatures)", meta,
            first.numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    from keras_resnet_v2 import export

    print(cpu_flags())
    model = build(args.depth, args.size, 10)
    x = np.random.default_rng(5).uniform(0, 255, (4, args.size, args.size, 3)).astype("float32")
    reference = np.asarray(model(x, training=False))
    keras_formats = {"savedmodel": "tf_saved_model", "onnx": "onnx", "litert": "litert", "openvino": "openvino"}
    suffix = {"savedmodel": "", "onnx": ".onnx", "litert": ".tflite", "openvino": ".xml"}
    print("| format | exporter | seconds | input | outputs | class names inside | max abs. diff. from Keras |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for fmt, keras_name in keras_formats.items():
            ours_path = os.path.join(folder, "ours_" + fmt + suffix[fmt])
            start = time.perf_counter()
            result = export.export_and_verify(model, labels=LABELS, **{fmt: ours_path})
            ours_s = time.perf_counter() - start
            theirs_path = os.path.join(folder, "keras_" + fmt + suffix[fmt])
            start = time.perf_counter()
            try:
                model.export(theirs_path, format=keras_name, verbose=False)
                theirs_s, theirs = time.perf_counter() - start, describe(fmt, theirs_path, x)
            except Exception as error:  # noqa: BLE001 - report what Keras' exporter does, whatever it is
                theirs_s, theirs = time.perf_counter() - start, (f"failed: {type(error).__name__}", "", "", None)
            published = result[fmt] if fmt != "savedmodel" else result["savedmodel"]
            rows = (("ours (export_and_verify, verified)", ours_s, describe(fmt, published, x)),
                    (f"Keras model.export(format={keras_name!r})", theirs_s, theirs))
            for who, seconds, (inputs, outputs, meta, out) in rows:
                diff = "-" if out is None else f"{float(np.max(np.abs(np.asarray(out) - reference))):.1e}"
                print(f"| {fmt} | {who} | {seconds:.1f} | {inputs} | {outputs} | {meta} | {diff} |", flush=True)


if __name__ == "__main__":
    main()
