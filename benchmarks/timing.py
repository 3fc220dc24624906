"""Step timing for the `model.fit` benchmarks: the seconds between the ends of consecutive steps.

A `model.fit` call also spends time outside its steps (building the epoch's data iterator, callbacks;
0.1 to 1.6 s per call on a 2-core CPU, seen 2026-12-04), so a call's wall time divided by its steps is
not a step time: these time the steps themselves, from the end of one to the end of the next.
"""

from __future__ import annotations

import time

import keras
import numpy as np


class StepTimes(keras.callbacks.Callback):
    """Records when each training step's result is ready (`ends`)."""

    def __init__(self):
        super().__init__()
        self.ends: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        float(logs["loss"])  # waits for the step's result
        self.ends.append(time.perf_counter())


def fit_step_seconds(model: keras.Model, steps: int, x, y=None, batch_size: int | None = None) -> list[float]:
    """One `model.fit` epoch of `steps` steps on `x` (arrays with `y`, or a dataset); the seconds of
    steps 2.. (step 1 also waits for the data)."""
    timer = StepTimes()
    model.fit(x, y, batch_size=batch_size, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer])
    return list(np.diff(timer.ends))
