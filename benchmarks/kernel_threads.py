"""How much a second thread speeds up each framework's kernels: TensorFlow against PyTorch, one
kernel at a time, float32 and bfloat16, at ResNet-164's shapes (CIFAR, batch 64).

    python benchmarks/kernel_threads.py
    python benchmarks/kernel_threads.py --dtype bfloat16 --rounds 5
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 python benchmarks/kernel_threads.py   # bfloat16 without AMX

Issue 48 found ResNet-164 under `mixed_bfloat16` slower in `model.fit` than in PyTorch's autocast,
though both call oneDNN's kernels (the same ones under `ONEDNN_VERBOSE=1`). This measures why, outside
of any model: chains of `--chain` convolutions of one shape (forward only, then forward and both
gradients) and of additions and ReLU gradients (a step's elementwise work), in a `tf.function` with
TensorFlow's intra-op pool at 1 and at 2 threads (`TF_NUM_INTRAOP_THREADS`, a subprocess each:
TensorFlow reads it once), against the same chains in PyTorch, channels-last, under
`torch.set_num_threads(1 | 2)`. Each cell is ms per op (median of `--rounds` timed calls); "x2" is
the 1-thread time over the 2-thread time (2.0 would be perfect scaling), "util" the process's CPU
seconds per wall second at 2 threads. The header names the CPU's vector flags and
`ONEDNN_MAX_CPU_ISA` when set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.serve import cpu_flags  # noqa: E402
from benchmarks.serve import measure as call_seconds  # noqa: E402

# (side, channels in = out, kernel): ResNet-164's bottleneck convolutions at each stage (Sec. 4 / Table 2).
SHAPES = ((32, 64, 1), (32, 16, 3), (16, 128, 1), (16, 32, 3), (8, 256, 1), (8, 64, 3))
BATCH = 64
ELEMENTWISE = (BATCH, 32, 32, 64)  # the largest activation of ResNet-164 (stage 1, a unit's input and output)


def time_calls(call, rounds: int) -> float:
    """Median seconds of `rounds` calls of `call` after three warm-up calls."""
    for _ in range(3):
        call()
    return statistics.median(call_seconds(lambda _: call(), None, rounds))


def measure(call, rounds: int, chain: int) -> tuple[float, float]:
    """(ms per op of a chain of `chain`, the process's CPU seconds per wall second meanwhile)."""
    start_cpu, start = sum(os.times()[:2]), time.perf_counter()
    ms = time_calls(call, rounds) / chain * 1e3
    return ms, (sum(os.times()[:2]) - start_cpu) / (time.perf_counter() - start)


def tensorflow_rows(dtype: str, chain: int, rounds: int, side: int, channels: int, kernel: int) -> dict:
    import tensorflow as tf

    x = tf.cast(tf.random.normal((BATCH, side, side, channels)), dtype)
    filters = [tf.Variable(tf.cast(tf.random.normal((kernel, kernel, channels, channels)) * 0.1, dtype))
               for _ in range(chain)]

    def convolutions(y):
        for w in filters:
            y = tf.nn.conv2d(y, w, 1, "SAME")
        return tf.reduce_sum(tf.cast(y, tf.float32))

    @tf.function
    def training(y):
        with tf.GradientTape() as tape:
            tape.watch(y)
            loss = convolutions(y)
        gradients = tape.gradient(loss, [y, *filters])  # each one used: none pruned by Grappler
        return loss + tf.add_n([tf.cast(tf.reshape(g, [-1])[0], tf.float32) for g in gradients])

    name = f"{side}x{side}x{channels} k{kernel}"
    return {f"{name} | {work}": measure(lambda f=f: f(x).numpy(), rounds, chain)
            for work, f in (("forward", tf.function(convolutions)), ("forward + gradients", training))}


def tensorflow_worker(dtype: str, chain: int, rounds: int) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    results = {}
    for shape in SHAPES:
        results.update(tensorflow_rows(dtype, chain, rounds, *shape))
    x = tf.cast(tf.random.normal(ELEMENTWISE), dtype)

    @tf.function
    def add(y):
        for _ in range(chain):
            y = y + x
        return y[0, 0, 0, 0]

    @tf.function
    def relu_gradient(y):
        for _ in range(chain):
            y = tf.raw_ops.ReluGrad(gradients=y, features=x)
        return y[0, 0, 0, 0]

    for work, f in (("add", add), ("ReLU gradient", relu_gradient)):
        results[f"{'x'.join(map(str, ELEMENTWISE))} | {work}"] = measure(lambda f=f: f(x).numpy(), rounds, chain)
    return results


def torch_rows(dtype: str, chain: int, rounds: int, side: int, channels: int, kernel: int) -> dict:
    import torch

    torch_dtype = getattr(torch, dtype)
    x = torch.randn(BATCH, channels, side, side, dtype=torch_dtype).contiguous(memory_format=torch.channels_last)
    convs = [torch.nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False)
             .to(torch_dtype).to(memory_format=torch.channels_last) for _ in range(chain)]
    for conv in convs:
        torch.nn.init.normal_(conv.weight, std=0.1)
    x_grad = x.clone().requires_grad_()

    def forward():
        with torch.no_grad():
            y = x
            for conv in convs:
                y = conv(y)
            return float(y.float().sum())

    def training():
        y = x_grad
        for conv in convs:
            y = conv(y)
        y.float().sum().backward()
        return float(x_grad.grad[0, 0, 0, 0]) + sum(float(conv.weight.grad.flatten()[0]) for conv in convs)

    name = f"{side}x{side}x{channels} k{kernel}"
    return {f"{name} | {work}": measure(f, rounds, chain)
            for work, f in (("forward", forward), ("forward + gradients", training))}


def torch_worker(dtype: str, chain: int, rounds: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    results = {}
    for shape in SHAPES:
        results.update(torch_rows(dtype, chain, rounds, *shape))
    x = torch.randn(*ELEMENTWISE, dtype=getattr(torch, dtype))

    def add():
        y = x
        for _ in range(chain):
            y = y + x
        return float(y[0, 0, 0, 0])

    def relu_gradient():
        y = x
        for _ in range(chain):
            y = torch.ops.aten.threshold_backward(y, x, 0)
        return float(y[0, 0, 0, 0])

    for work, f in (("add", add), ("ReLU gradient", relu_gradient)):
        results[f"{'x'.join(map(str, ELEMENTWISE))} | {work}"] = measure(f, rounds, chain)
    return results


def run_worker(framework: str, threads: int, args) -> dict:
    """One framework at one thread count in a fresh process (TensorFlow reads its pool sizes once)."""
    env = dict(os.environ, TF_NUM_INTRAOP_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    command = [sys.executable, os.path.abspath(__file__), "--worker", framework, "--threads", str(threads),
               "--dtype", args.dtype[0], "--chain", str(args.chain), "--rounds", str(args.rounds)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{framework} worker failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", type=lambda text: text.split(","), default=["float32", "bfloat16"],
                        help="comma-separated: float32, bfloat16")
    parser.add_argument("--chain", type=int, default=10, help="convolutions per timed call")
    parser.add_argument("--rounds", type=int, default=10, help="timed calls per cell")
    parser.add_argument("--worker", choices=("tensorflow", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if bad := [d for d in args.dtype if d not in ("float32", "bfloat16")]:
        parser.error(f"--dtype must be float32 and/or bfloat16. Received: {','.join(bad)}")
    if args.chain < 1 or args.rounds < 1:
        parser.error(f"--chain and --rounds must be >= 1. Received: {args.chain}, {args.rounds}")
    if args.worker:
        worker = tensorflow_worker if args.worker == "tensorflow" else torch_worker
        extra = (args.threads,) if args.worker == "torch" else ()
        print(json.dumps(worker(args.dtype[0], args.chain, args.rounds, *extra)))
        return

    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    print(f"# {cpu_flags()}" + (f"; ONEDNN_MAX_CPU_ISA={isa}" if isa else ""))
    print(f"# ms per op, batch {BATCH}, a chain of {args.chain}, median of {args.rounds} calls")
    for dtype in args.dtype:
        one_dtype = argparse.Namespace(**{**vars(args), "dtype": [dtype]})
        cells = {(fw, t): run_worker(fw, t, one_dtype) for fw in ("tensorflow", "torch") for t in (1, 2)}
        print(f"\n## {dtype}\n")
        print("| shape | work | TF 1 thread | TF 2 threads | TF x2 | TF util | PyTorch 1 | PyTorch 2 | PyTorch x2 "
              "| PyTorch util | TF / PyTorch at 2 |")
        print("|---" * 11 + "|")
        for row in cells["tensorflow", 1]:
            (tf1, _), (tf2, tf_util) = cells["tensorflow", 1][row], cells["tensorflow", 2][row]
            (pt1, _), (pt2, pt_util) = cells["torch", 1][row], cells["torch", 2][row]
            print(f"| {row} | {tf1:.2f} | {tf2:.2f} | {tf1 / tf2:.2f} | {tf_util:.2f} | {pt1:.2f} | {pt2:.2f} | "
                  f"{pt1 / pt2:.2f} | {pt_util:.2f} | {tf2 / pt2:.2f} |")

if __name__ == "__main__":
    main()
