"""Step timing for the `model.fit` benchmarks: the seconds between the ends of consecutive steps.

A `model.fit` call also spends time outside its steps (building the epoch's data iterator, callbacks;
0.1 to 1.6 s per call on a 2-core CPU, seen 2026-12-04), so a call's wall time divided by its steps is
not a step time: these time the steps themselves, from the end of one to the end of the next.
"""

from __future__ import annotations

import argparse
import time


def fit_step_seconds(model, steps: int, x, y=None, batch_size: int | None = None) -> list[float]:
    """One `model.fit` epoch of `steps` steps on `x` (arrays with `y`, or a dataset); the seconds of
    steps 2.. (step 1 also waits for the data), from the end of one step to the end of the next."""
    import keras  # here, so that importing this module (and a benchmark's --help) loads no backend

    ends: list[float] = []

    def step_end(batch, logs):
        float(logs["loss"])  # waits for the step's result
        ends.append(time.perf_counter())

    model.fit(x, y, batch_size=batch_size, epochs=1, steps_per_epoch=steps, verbose=0,
              callbacks=[keras.callbacks.LambdaCallback(on_train_batch_end=step_end)])
    return [later - earlier for earlier, later in zip(ends[:-1], ends[1:], strict=True)]


def add_round_options(parser: argparse.ArgumentParser, steps: int, rounds: int) -> None:
    """`--steps` (a `model.fit` call's steps, >= 2: `fit_step_seconds` times steps 2..) and `--rounds`;
    `check_round_options` checks them once parsed."""
    parser.add_argument("--steps", type=int, default=steps, help="steps per model.fit call (>= 2)")
    parser.add_argument("--rounds", type=int, default=rounds, help="timed model.fit calls per model (>= 1)")


def check_round_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A one-line usage error for `--steps` < 2 or `--rounds` < 1."""
    if args.steps < 2 or args.rounds < 1:
        parser.error(f"--steps must be >= 2 and --rounds >= 1. Received: {args.steps}, {args.rounds}")
