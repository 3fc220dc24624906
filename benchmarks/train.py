"""Training-throughput benchmark: keras_resnet_v2 against its peers, side by side in one process.

    python benchmarks/train.py                                  # ResNet-164 and ResNet-50, all peers
    python benchmarks/train.py --model resnet164 --model resnet20 --batch-size 64,128 --peers ours,torch
    python benchmarks/train.py --model resnet164 --peers ours,torch --profile   # then time by op, side by side
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/train.py ...   # AVX2 on an AVX-512 CPU
    python benchmarks/train.py --model resnet164 --peers ours,torch --precision float32,mixed_bfloat16
    python benchmarks/train.py --device gpu --precision mixed_float16 [--strategy mirrored]

Each peer trains the same architecture on random data (SGD momentum 0.9, softmax
cross-entropy) in each `--precision` (float32; Keras' `mixed_bfloat16` / `mixed_float16` policy against
PyTorch's `torch.autocast` in that dtype) and is timed in steady state: `--steps` steps after `--warmup` steps, the
median step time of one run, images/s = batch / that. Peers run alternately, `--repeats` rounds,
and the table gives each peer's median over rounds and its ratio to PyTorch, and the cores it kept busy
(the process's CPU seconds per wall second over a round, median: 2.00 is both cores of a 2-core CPU).

Peers: `ours` (`keras_resnet_v2.ResNet(depth)` through `model.fit`, as a notebook user gets it: fused
BatchNorm by default under TensorFlow), `ours_keras_bn` (`fused_batchnorm=False`: Keras' own BatchNorm),
`ours_scan` (`scan=True`: units 2..n of each stage as one loop, the default from 100 units a stage),
`torch` (the same network written plainly in PyTorch, channels-last: benchmarks/torch_resnet.py,
parameter count checked), and for ResNet-50 `keras_applications` (`keras.applications.ResNet50V2`) and
`keras_hub` (`keras_hub.models.ResNetBackbone`, pre-activation, with an average-pool + dense head).

GFLOP/s counts 3x the forward multiply-adds x 2 (forward, and backward for inputs and weights)
of the convolutions and the classifier. The fp32 peak is cores x clock x FLOP/cycle/core, the
last from the CPU flags (capped by `ONEDNN_MAX_CPU_ISA`): 2 FMA units x 16 lanes (AVX-512) or 8
(AVX2) x 2; override it with `--peak-gflops` when the clock or the FMA-unit count is known better.

The header names the CPU's vector flags, `ONEDNN_MAX_CPU_ISA` when set (oneDNN, in TensorFlow and
PyTorch alike, then uses no wider instructions; PyTorch's own kernels, BatchNorm and ReLU among them,
take `ATEN_CPU_CAPABILITY=avx2`: with both an AVX-512 machine measures the AVX2 kernels), whether
TensorFlow's oneDNN kernels are on, and PyTorch's CPU capability. `--profile` then runs one more
`--steps` of every peer under its framework's profiler (TensorFlow's trace, `torch.profiler`) and
prints the time per step of each kind of work side by side: convolution forward / backward,
BatchNorm forward / backward, ReLU, additions, padding, the optimizer's update.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Before Keras, as docs/notes.md asks of a notebook: TensorFlow's oneDNN CPU kernels on unless the environment
# says otherwise (keras_resnet_v2.plumbing.onednn); run with TF_ENABLE_ONEDNN_OPTS=0 for TensorFlow's own.
import keras_resnet_v2 as krv2  # noqa: E402

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.serve import cpu_info, vector_flags  # noqa: E402
from benchmarks.timing import fit_step_seconds  # noqa: E402

CONFIGS = {  # model -> (depth, input side, classes, batch, peers)
    "resnet20": (20, 32, 10, 64, ("ours", "ours_keras_bn", "ours_scan", "torch")),
    "resnet164": (164, 32, 10, 64, ("ours", "ours_keras_bn", "ours_scan", "torch")),
    "resnet50": (50, 224, 1000, 16, ("ours", "ours_keras_bn", "torch", "keras_applications", "keras_hub")),
    "resnet1001": (1001, 32, 10, 64, ("ours", "ours_keras_bn", "torch")),
}


# ------------------------------------------------------------------ arithmetic


def forward_macs(model: keras.Model) -> int:
    """Multiply-adds of one image's forward pass through the convolutions and dense layers."""
    total = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            k_h, k_w, c_in, _ = layer.kernel.shape
            total += h * w * c_out * k_h * k_w * c_in
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return total


def isa_note() -> str:
    """The CPU's vector flags, oneDNN's ISA cap if any, and whether TensorFlow's oneDNN kernels are on."""
    from keras_resnet_v2.plumbing.onednn import onednn_enabled

    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    onednn = {True: "on", False: "off"}.get(onednn_enabled(), "unknown")
    note = (f"CPU flags {vector_flags()}" + (f", ONEDNN_MAX_CPU_ISA={cap}" if cap else "")
            + f"; TensorFlow oneDNN {onednn}")
    if "torch" in sys.modules:
        note += f"; PyTorch CPU capability {sys.modules['torch'].backends.cpu.get_cpu_capability()}"
    return note


def fp32_peak_gflops() -> tuple[float, str]:
    mhz = 0.0
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("cpu MHz"):
                mhz = max(mhz, float(line.split(":")[1]))
    flags = cpu_info("flags").split()
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper().startswith("AVX2")
    lanes = 16 if "avx512f" in flags and not capped else 8 if "avx2" in flags else 4
    cores = len(os.sched_getaffinity(0))
    per_cycle = 2 * lanes * 2
    return cores * mhz / 1e3 * per_cycle, f"{cores} cores x {mhz / 1e3:.2f} GHz x {per_cycle} FLOP/cycle"


# ------------------------------------------------------------------ peers


def keras_peer(model: keras.Model, side: int, classes: int, batch: int, precision: str):
    """`model` was built under the precision policy and in the strategy's scope; compiles it there."""
    import tensorflow as tf

    from keras_resnet_v2.training import runtime

    images = np.random.default_rng(0).uniform(0, 255, (batch, side, side, 3)).astype("float32")
    labels = np.random.default_rng(1).integers(0, classes, batch)
    data = tf.data.Dataset.from_tensors((images, labels)).repeat().prefetch(2)
    model.compile(optimizer=runtime.wrap_optimizer(keras.optimizers.SGD(0.01, momentum=0.9), precision),
                  loss=keras.losses.SparseCategoricalCrossentropy())

    def run(steps: int) -> list[float]:
        return fit_step_seconds(model, steps, data)

    return run


def torch_peer(depth: int, side: int, classes: int, batch: int, device: str, precision: str):
    import torch

    from benchmarks.torch_resnet import PreActResNet

    torch.manual_seed(0)
    model = PreActResNet(depth, classes).to(device=device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    images = torch.rand(batch, 3, side, side, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, classes, (batch,), device=device)
    autocast = {"mixed_float16": torch.float16, "mixed_bfloat16": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler(device, enabled=precision == "mixed_float16")

    def run(steps: int) -> list[float]:
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=autocast, enabled=autocast is not None):
                loss = loss_fn(model(images), labels)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss.item()
            times.append(time.perf_counter() - start)
        return times

    return run, sum(p.numel() for p in model.parameters())


def keras_hub_resnet50(classes: int) -> keras.Model:
    import keras_hub

    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[3, 4, 6, 3], stackwise_num_strides=[1, 2, 2, 2],
        block_type="bottleneck_block", use_pre_activation=True, image_shape=(224, 224, 3))
    x = keras.layers.GlobalAveragePooling2D()(backbone.output)
    return keras.Model(backbone.input, keras.layers.Dense(classes, activation="softmax")(x))


def build(peer: str, depth: int, side: int, classes: int):
    if peer.startswith("ours"):  # `ours`: the default, fused BatchNorm under TensorFlow; `ours_keras_bn`: Keras'
        # BatchNorm; `ours_scan`: the stacked form (`scan=True`, the default from 100 units a stage)
        return krv2.ResNet(depth, input_shape=(side, side, 3), classes=classes, fused_batchnorm=peer != "ours_keras_bn",
                           scan=True if peer == "ours_scan" else None)
    if peer == "keras_applications":
        return keras.applications.ResNet50V2(weights=None, classes=classes)
    if peer == "keras_hub":
        return keras_hub_resnet50(classes)
    raise ValueError(f"unknown peer {peer!r}")


# ------------------------------------------------------------------ main


def measure(name: str, batch: int, args, precision: str) -> dict[str, float]:
    """One table: every peer of `name` at `batch` in `precision`, side by side; returns each peer's median images/s."""
    depth, side, classes, _, default_peers = CONFIGS[name]
    peers = args.peers.split(",") if args.peers else list(default_peers)
    bad = [p for p in peers if p not in default_peers]
    if bad:
        raise SystemExit(f"--peers for {name} must be among {', '.join(default_peers)}. Received: {bad}")
    from keras_resnet_v2.training import runtime

    runtime.set_precision(precision)  # before any Keras model is built
    strategy = runtime.make_strategy(args.strategy)
    runtime.per_replica_batch(batch, strategy)  # a global batch that splits evenly
    runners, macs = {}, None
    for peer in peers:
        if peer == "torch":  # one device: the PyTorch peer is the single-GPU (or CPU) reference
            runners[peer], torch_params = torch_peer(depth, side, classes, batch,
                                                     "cuda" if args.device == "gpu" else "cpu", precision)
            continue
        with strategy.scope():
            try:
                model = build(peer, depth, side, classes)
            except ValueError as error:  # e.g. mixed_bfloat16 where TensorFlow has no bfloat16 convolution
                print(f"\n{name}: batch {batch}, {precision}: {peer} refused: {error}; {isa_note()}", flush=True)
                return {}
            if peer == "ours":
                macs = forward_macs(model)
                ours_params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
            runners[peer] = keras_peer(model, side, classes, batch, precision)
    if "torch" in runners and "ours" in runners and torch_params != ours_params:
        raise SystemExit(f"PyTorch peer has {torch_params:,} parameters, ours {ours_params:,}: not the same net")
    for run in runners.values():  # compile / first steps, not timed
        run(args.warmup)
    rates: dict[str, list[float]] = {peer: [] for peer in peers}
    cores: dict[str, list[float]] = {peer: [] for peer in peers}  # the process's CPU seconds per wall second
    for _ in range(args.repeats):
        for peer, run in runners.items():
            cpu, wall = sum(os.times()[:2]), time.perf_counter()
            rates[peer].append(batch / statistics.median(run(args.steps)))
            cores[peer].append((sum(os.times()[:2]) - cpu) / (time.perf_counter() - wall))
    if args.device == "gpu":
        peak, how = args.peak_gflops or float("nan"), "give --peak-gflops for the GPU's peak"
    else:
        peak, how = (args.peak_gflops, "given") if args.peak_gflops else fp32_peak_gflops()
    flops = 6 * macs if macs else None
    print(f"\n{name}: batch {batch}, {side}x{side}, {precision}, {runtime.strategy_name(strategy)} "
          f"({strategy.num_replicas_in_sync} replicas), {args.repeats} rounds x {args.steps} steps; "
          f"train GFLOP/image {flops / 1e9:.2f}; fp32 peak {peak:.0f} GFLOP/s ({how}); {isa_note()}")
    print("| peer | images/s (median) | step ms | rounds (images/s) | vs torch | GFLOP/s | % of peak | cores busy |")
    print("|---|---|---|---|---|---|---|---|")
    base = statistics.median(rates["torch"]) if "torch" in rates else None
    for peer in peers:
        rate = statistics.median(rates[peer])
        gflops = rate * flops / 1e9
        ratio = f"{rate / base:.2f}" if base else "-"
        spread = ", ".join(f"{r:.1f}" for r in rates[peer])
        print(f"| {peer} | {rate:.1f} | {1e3 * batch / rate:.0f} | {spread} | {ratio} | {gflops:.0f} | "
              f"{100 * gflops / peak:.0f}% | {statistics.median(cores[peer]):.2f} |", flush=True)
    if args.profile:
        profile(runners, args.steps)
    return {peer: statistics.median(rates[peer]) for peer in peers}


def print_precisions(name: str, batch: int, results: dict[str, dict[str, float]]) -> None:
    """Each precision's rates beside float32's: what mixed precision gains each peer, and ours against torch."""
    print(f"\n{name}, batch {batch}: the precisions side by side (images/s; {isa_note()})")
    print("| precision | " + " | ".join(f"{peer} | {peer} vs its float32" for peer in results[next(iter(results))])
          + " | ours vs torch |")
    print("|---|" + "---|---|" * len(results[next(iter(results))]) + "---|")
    base = results.get("float32", {})
    for precision, rates in results.items():
        cells = []
        for peer, rate in rates.items():
            gain = f"{rate / base[peer]:.2f}x" if base.get(peer) else "-"
            cells.append(f"{rate:.1f} | {gain}")
        ratio = f"{rates['ours'] / rates['torch']:.2f}x" if rates.get("ours") and rates.get("torch") else "-"
        print(f"| {precision} | " + " | ".join(cells) + f" | {ratio} |", flush=True)


def profile(runners: dict, steps: int) -> None:
    """One more `steps` of each peer under its framework's profiler: time per step by kind of work."""
    import tensorflow as tf

    from benchmarks.profiles import WORK, print_table, tally, tf_kernels, torch_ops

    tables, ops = {}, {}
    for peer, run in runners.items():
        if peer == "torch":
            import torch

            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as recorded:
                run(steps)
            records, profiled = torch_ops(recorded), steps
        else:
            logdir = tempfile.mkdtemp(prefix="train_profile_")
            tf.profiler.experimental.start(logdir)
            try:
                run(steps + 1)  # `fit_step_seconds` times steps 2..: the profile holds steps + 1
            finally:
                tf.profiler.experimental.stop()
            records, profiled = tf_kernels(logdir), steps + 1
            shutil.rmtree(logdir, ignore_errors=True)
        tables[peer], ops[peer] = tally(records, profiled, by_work=True), tally(records, profiled)
    print(f"\nTime per step by kind of work ({steps} profiled steps; see benchmarks/profiles.py for what counts)")
    print_table(tables, order=WORK, label="work")
    for peer, table in ops.items():
        print(f"\n{peer}: the op types with the most time")
        print_table({peer: table}, rows=15)


PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def precisions(text: str) -> list[str]:
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in chosen if p not in PRECISIONS]
    if bad or not chosen:
        raise argparse.ArgumentTypeError(f"each must be one of {', '.join(PRECISIONS)}. Received: {text!r}")
    return chosen


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", choices=sorted(CONFIGS),
                        help="repeatable; default resnet164 and resnet50")
    parser.add_argument("--peers", help="comma-separated subset of the model's peers")
    parser.add_argument("--batch-size", type=lambda text: [int(b) for b in text.split(",")],
                        help="comma-separated, e.g. 64,128; default the model's own")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--precision", type=precisions, default=["float32"],
                        help="comma-separated, an axis: float32,mixed_bfloat16 (default float32)")
    parser.add_argument("--strategy", choices=("default", "mirrored"), default="default")
    parser.add_argument("--peak-gflops", type=float)
    parser.add_argument("--profile", action="store_true",
                        help="then profile ours and torch: time per step by kind of work, side by side")
    args = parser.parse_args(argv)
    if args.device == "gpu":
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            raise SystemExit("--device gpu: TensorFlow sees no GPU on this machine")
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # set before TensorFlow initialises its devices
    for name in args.model or ["resnet164", "resnet50"]:
        for batch in args.batch_size or [CONFIGS[name][3]]:
            results = {}
            for precision in args.precision:
                keras.backend.clear_session()
                results[precision] = measure(name, batch, args, precision)
            if len(results) > 1:
                print_precisions(name, batch, {p: r for p, r in results.items() if r})


if __name__ == "__main__":
    main()
