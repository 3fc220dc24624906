"""`python -m keras_resnet_v2 [DEPTH] [--unit ...] [--shortcut ...]`: build one network
and describe it (stages, parameters, build and first-call time, output shape).

The forward pass runs in training mode: an untrained network's BatchNorm moving
statistics are still 0 and 1, so in inference mode a deep one (ResNet-1001) overflows.

Example:
    python -m keras_resnet_v2 1001
    python -m keras_resnet_v2 110 --unit original --shortcut exclusive_gating
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

from keras_resnet_v2.depths import resolve_depth
from keras_resnet_v2.plumbing.startup import VERBOSE_HELP, announce, start_backend


def _parser() -> argparse.ArgumentParser:
    from keras_resnet_v2.names import BLOCKS, FAMILIES, SHORTCUT_NAMES, UNITS

    parser = argparse.ArgumentParser(prog="python -m keras_resnet_v2", description=__doc__.split("\n\n")[0])
    parser.add_argument("depth", nargs="?", type=int, default=1001, help="network depth (default 1001)")
    parser.add_argument("--unit", default="full_preact", choices=UNITS)
    parser.add_argument("--shortcut", default="identity", choices=SHORTCUT_NAMES)
    parser.add_argument("--family", choices=FAMILIES)
    parser.add_argument("--block", choices=BLOCKS, help="CIFAR units (default: the paper's for the depth)")
    parser.add_argument("--classes", type=int)
    parser.add_argument("--summary", action="store_true", help="print Keras' full layer summary")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    return parser


def describe(depth: int, unit: str, shortcut: str, family: Optional[str] = None,
             classes: Optional[int] = None, summary: bool = False, block: Optional[str] = None) -> dict:
    """Builds the network, runs one batch (training mode) and returns and prints its figures."""
    import numpy as np

    from keras_resnet_v2 import resnet

    start = time.perf_counter()
    model = resnet.ResNet(depth, unit=unit, shortcut=shortcut, family=family, classes=classes, block=block)
    build_s = time.perf_counter() - start
    batch = np.random.default_rng(0).uniform(0, 1, (2,) + tuple(model.input_shape[1:])).astype("float32")
    start = time.perf_counter()
    out = np.asarray(model(batch, training=True))
    call_s = time.perf_counter() - start
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    figures = {
        "name": model.name, "layers": len(model.layers), "trainable_params": trainable,
        "params": model.count_params(), "build_s": build_s, "first_call_s": call_s,
        "output_shape": out.shape, "finite": bool(np.isfinite(out).all()),
    }
    if summary:
        model.summary()
    stages = {stage.name: stage.units for stage in model.resnet_config.stages}
    print(f"{model.name}: {len(model.layers)} layers, {trainable:,} trainable parameters "
          f"({trainable / 1e6:.2f}M), {model.count_params():,} in all")
    print("units per stage: " + ", ".join(f"{s}={len(u)}" for s, u in stages.items()))
    print(f"build {build_s:.1f} s, first call (training mode) {call_s:.1f} s, "
          f"output {out.shape}, finite: {figures['finite']}")
    return figures


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Arguments first (no backend yet), one line saying what runs, then the backend, quietly."""
    args = _parser().parse_args(argv)
    try:
        resolve_depth(args.depth, args.family, args.block)  # before any backend starts
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    announce("keras-resnet-v2", f"building ResNet-{args.depth} ({args.unit}, {args.shortcut}); starting Keras")
    start_backend(args.verbose)
    try:
        describe(args.depth, args.unit, args.shortcut, args.family, args.classes, args.summary, args.block)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
