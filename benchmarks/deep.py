"""Deep networks, plain vs stacked (`scan=True`), each with and without remat: build time,
constructor-to-first-finished-step, steady training rate, peak memory, and (TensorFlow) export.

    python benchmarks/deep.py                                    # CPU, TensorFlow, ResNet-164 and -1001
    python benchmarks/deep.py --model resnet1202 --modes plain,stacked --export
    KERAS_BACKEND=jax python benchmarks/deep.py --device gpu --precision mixed_bfloat16 \
        --batch-size 128 --steps 30 --modes torch,plain,stacked   # a GPU machine without TensorFlow

Every (model, mode) runs in a fresh process, one after another in the order given; each row is
printed when it is done, with ratios against the plain and torch rows measured before it in the
same run (so list those first). A step is `model.fit` (SGD, momentum 0.9, Nesterov) on random
CIFAR-sized data; "first" is from the constructor call to the end of the first training step
(building, tracing, compiling), "img/s" the median of the steps after the first two, "loss" Keras'
epoch mean (PyTorch: the last step's). Peak memory: the process's maximum resident set on CPU, the
device's peak bytes in use on a GPU. The `torch` mode is the PyTorch peer (benchmarks/torch_resnet.py,
eager, channels-last) on the same device. `--export` times SavedModel + ONNX export with verification
(TensorFlow only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

MODES = ("plain", "stacked", "plain_remat", "stacked_remat", "torch")
DEPTHS = {"resnet164": 164, "resnet1001": 1001, "resnet1202": 1202}

CHILD = r"""
import json, os, resource, sys, tempfile, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
start = time.perf_counter()
args = json.loads(sys.argv[1])
import numpy as np
batch, steps, depth, mode, gpu = args["batch"], args["steps"], args["depth"], args["mode"], args["device"] == "gpu"
rng = np.random.default_rng(0)
x = rng.uniform(0, 1, (batch * steps, 32, 32, 3)).astype("float32")
y = rng.integers(0, 10, batch * steps)
out = {"mode": mode, "depth": depth}

def peak_gib():
    if gpu and mode != "torch":
        import jax
        return jax.devices()[0].memory_stats()["peak_bytes_in_use"] / 2**30
    if gpu:
        import torch
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

if mode == "torch":
    import torch
    sys.path.insert(0, os.path.dirname(args["script"]))
    from torch_resnet import PreActResNet
    device = "cuda" if gpu else "cpu"
    torch.set_num_threads(os.cpu_count() if gpu else 2)
    torch.zeros(1, device=device)  # device start-up is not the model's time
    t0 = time.perf_counter()
    net = PreActResNet(depth, 10).to(device, memory_format=torch.channels_last)
    out["build_s"] = time.perf_counter() - t0
    opt = torch.optim.SGD(net.parameters(), lr=args["lr"], momentum=0.9, nesterov=True)
    dtype = {"mixed_bfloat16": torch.bfloat16, "mixed_float16": torch.float16}.get(args["precision"])
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    xs = torch.tensor(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last).to(device)
    ys = torch.tensor(y).to(device)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(net(xs[i * batch:(i + 1) * batch]), ys[i * batch:(i + 1) * batch])
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        out["final_loss"] = float(loss)
        times.append(time.perf_counter() - t)
        if i == 0:
            out["first_s"] = time.perf_counter() - t0
else:
    # first: before TensorFlow, so its oneDNN CPU kernels are on (keras_resnet_v2.plumbing.onednn)
    import keras_resnet_v2 as krv2

    # isort: split
    import keras
    if args["graph_optimizer"] == "off":  # TensorFlow's Grappler passes on the traced step
        import tensorflow as tf
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    keras.ops.convert_to_numpy(keras.ops.zeros(1) + 1)  # device start-up is not the model's time
    if args["precision"] != "float32":
        keras.config.set_dtype_policy(args["precision"])
    times = []
    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, b, logs=None): self.t = time.perf_counter()
        def on_train_batch_end(self, b, logs=None):
            float(logs["loss"]); times.append(time.perf_counter() - self.t)
            if b == 0: out["first_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    krv2.builder.SCAN_UNROLL = args["unroll"] or krv2.builder.SCAN_UNROLL
    model = krv2.ResNet(depth, scan=mode.startswith("stacked"), remat=mode.endswith("remat"))
    out["build_s"] = time.perf_counter() - t0
    model.compile(optimizer=keras.optimizers.SGD(args["lr"], momentum=0.9, nesterov=True),
                  loss=keras.losses.SparseCategoricalCrossentropy())
    krv2.build_optimizer(model)
    history = model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[Timer()])
    out["final_loss"] = history.history["loss"][-1]
    if args["export"]:
        from keras_resnet_v2.export import export_and_verify
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            report = export_and_verify(model, os.path.join(tmp, "sm"), os.path.join(tmp, "m.onnx"))["report"]
            out["export_s"] = time.perf_counter() - t
            out["export_passed"] = report["passed"]
out["img_s"] = batch / float(np.median(times[2:]))
out["peak_gib"] = peak_gib()
print("RESULT " + json.dumps(out), flush=True)
"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", choices=sorted(DEPTHS), help="default: resnet164, resnet1001")
    parser.add_argument("--modes", default="plain,stacked,plain_remat,stacked_remat",
                        help=f"comma-separated, from {', '.join(MODES)}")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="training steps per mode (>= 4)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--precision", choices=("float32", "mixed_float16", "mixed_bfloat16"), default="float32")
    parser.add_argument("--unroll", type=int, default=0, help="UnitStack unroll (JAX); 0: the builder's default")
    parser.add_argument("--graph-optimizer", choices=("default", "off"), default="default",
                        help="TensorFlow only: 'off' disables Grappler (the graph optimizer) for the run")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (no warm-up)")
    parser.add_argument("--export", action="store_true", help="also time SavedModel + ONNX export (TensorFlow)")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    if not set(modes) <= set(MODES) or args.steps < 4:
        parser.error(f"--modes must be from {', '.join(MODES)} and --steps >= 4. Received: {args.modes}, {args.steps}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    print(f"backend {os.environ.get('KERAS_BACKEND', 'tensorflow')}, device {args.device}, {args.precision}, "
          f"batch {args.batch_size}, {args.steps} steps, lr {args.lr}, unroll {args.unroll or 'default'}, "
          f"graph optimizer {args.graph_optimizer}")
    print("| model | mode | build s | first step s | img/s | img/s x plain | img/s x torch | first x plain | peak GiB "
          "| peak x plain | loss | export s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.model or ["resnet164", "resnet1001"]:
        rows: dict[str, dict] = {}
        for mode in modes:  # each in a fresh process, one after another; a row is printed when it is done
            child = {"batch": args.batch_size, "steps": args.steps, "depth": DEPTHS[name], "mode": mode,
                     "device": args.device, "precision": args.precision, "unroll": args.unroll, "lr": args.lr,
                     "graph_optimizer": args.graph_optimizer,
                     "export": args.export and mode != "torch", "script": os.path.abspath(__file__)}
            run = subprocess.run([sys.executable, "-c", CHILD, json.dumps(child)], env=env, capture_output=True,
                                 text=True)
            lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
            if run.returncode or not lines:
                print(f"| {name} | {mode} | failed: {(run.stderr.strip().splitlines() or ['?'])[-1][:150]} |")
                continue
            r = rows[mode] = json.loads(lines[-1][7:])
            plain, torch = rows.get("plain"), rows.get("torch")  # ratios against the rows measured so far

            def ratio(key, peer, r=r):
                return f"{r[key] / peer[key]:.2f}" if peer else "-"

            passed = "verified" if r.get("export_passed") else "FAILED"
            export = f"{r['export_s']:.0f} ({passed})" if "export_s" in r else "-"
            print(f"| {name} | {mode} | {r['build_s']:.1f} | {r['first_s']:.1f} | {r['img_s']:.1f} "
                  f"| {ratio('img_s', plain)} | {ratio('img_s', torch)} | {ratio('first_s', plain)} "
                  f"| {r['peak_gib']:.2f} | {ratio('peak_gib', plain)} | {r.get('final_loss', float('nan')):.3g} "
                  f"| {export} |", flush=True)

if __name__ == "__main__":
    main()
