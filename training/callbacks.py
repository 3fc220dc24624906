"""Keras callbacks for runs: history.csv, curves.png, atomic best/last checkpoints.

They use only the standard callback hooks and `logs`, so they work in `model.fit` as well
as in this package's training loop. Every file is written to a temporary sibling and renamed
into place, so a kill at any moment leaves the previous complete file.
"""

from __future__ import annotations

import csv
import math
import os

import keras

from keras_resnet_v2.models import functional_like
from keras_resnet_v2.plumbing.files import atomic_write


def read_history(path: str) -> list[dict]:
    """Rows of a history.csv as dicts of floats (`epoch` and `step` as ints).

    A damaged file (truncated or edited by hand) raises a ValueError naming the file and line.
    """
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    parsed = []
    for line, row in enumerate(rows, start=2):
        try:
            if None in row or None in row.values() or row.get("epoch") in (None, "") or row.get("step") in (None, ""):
                raise ValueError("missing or extra fields")
            parsed.append({k: (int(float(v)) if k in ("epoch", "step") else float(v))
                           for k, v in row.items() if v not in ("", None)})
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path} is damaged at line {line} ({error}); repair or delete it (the run's "
                             "backup/ holds the model), then rerun") from None
    return parsed


def _write_history(path: str, rows: list[dict]) -> None:
    columns = ["epoch", "step"] + sorted({k for row in rows for k in row} - {"epoch", "step"})

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def save_model(model: keras.Model, path: str) -> None:
    """Writes `model` to `path` (`.keras`) atomically, without its training state.

    The file holds the architecture and weights of an uncompiled model sharing `model`'s layers
    (a functional view, made in milliseconds; a `StackedModel` for a stacked net), so it loads with
    `keras.models.load_model` after importing only `keras_resnet_v2`, for serving or fine-tuning.
    The optimizer state of a run lives in its `backup/` checkpoint, which is what resuming reads.
    """
    view = functional_like(model, model.input, model.output, model.name)
    atomic_write(path, lambda tmp: view.save(tmp))


class HistoryCSV(keras.callbacks.Callback):
    """One row per epoch in `path`: `epoch` (1-based), `step` (iterations so far), and every log.

    On a resumed run (`initial_epoch` > 0) rows of epochs at or after the resume point are
    dropped first, so an epoch redone after a crash appears once. `steps_per_epoch` gives the
    iteration count when the model has no optimizer to ask.
    """

    def __init__(self, path: str, steps_per_epoch: int | None = None, enabled: bool = True):
        super().__init__()
        self.path, self.steps_per_epoch, self.enabled = path, steps_per_epoch, enabled
        self.rows: list[dict] = []

    def on_train_begin(self, logs=None):
        self.rows = read_history(self.path)

    def on_epoch_begin(self, epoch, logs=None):
        if self.rows and self.rows[-1]["epoch"] > epoch:
            self.rows = [r for r in self.rows if r["epoch"] <= epoch]

    def on_epoch_end(self, epoch, logs=None):
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            step = int(keras.ops.convert_to_numpy(optimizer.iterations))
        else:
            step = (epoch + 1) * (self.steps_per_epoch or 0)
        row = {"epoch": epoch + 1, "step": step}
        row.update({k: float(v) for k, v in (logs or {}).items() if _is_number(v)})
        self.rows.append(row)
        if self.enabled:
            _write_history(self.path, self.rows)


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def subplots(*args, figsize=None, **kwargs):
    """`(figure, axes)` drawn off screen, for a file: a `matplotlib.figure.Figure`, not pyplot, so the
    caller's backend and figures are left alone (switching pyplot to Agg made a notebook's `plt.show()`
    show nothing after a `run()`)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def save_figure(fig, png_path: str) -> None:
    """Lays out `fig` and writes it to `png_path` atomically."""
    fig.tight_layout()
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def plot_curves(history_path: str, png_path: str, title: str = "") -> None:
    """Training loss and test error (%) against iterations, as in the paper's Fig. 1."""
    rows = read_history(history_path)
    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig, (ax_loss, ax_err) = subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(steps, [r.get("loss", math.nan) for r in rows], label="training loss")
    ax_loss.set_xlabel("iterations")
    ax_loss.set_ylabel("training loss")
    if any("val_accuracy" in r for r in rows):
        ax_err.plot(steps, [100 * (1 - r.get("val_accuracy", math.nan)) for r in rows], "r", label="test error")
    if any("accuracy" in r for r in rows):
        ax_err.plot(steps, [100 * (1 - r.get("accuracy", math.nan)) for r in rows], "b--", label="training error")
    ax_err.set_xlabel("iterations")
    ax_err.set_ylabel("error (%)")
    ax_err.legend()
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    save_figure(fig, png_path)


class TrainingCurves(keras.callbacks.Callback):
    """Redraws `png_path` from `history_path` at each epoch end (put it after HistoryCSV)."""

    def __init__(self, history_path: str, png_path: str, title: str = "", enabled: bool = True):
        super().__init__()
        self.history_path, self.png_path, self.title, self.enabled = history_path, png_path, title, enabled

    def on_epoch_end(self, epoch, logs=None):
        if self.enabled:
            plot_curves(self.history_path, self.png_path, self.title)


class AtomicModelCheckpoint(keras.callbacks.Callback):
    """Saves the model (`.keras`, weights and architecture: `save_model`) at each epoch end, atomically.

    `monitor=None` saves every epoch (the "last" checkpoint); otherwise only when `monitor`
    improves (`mode` "max" or "min"), the "best" checkpoint. `enabled=False` on non-chief
    workers of a multi-worker run.
    """

    def __init__(self, path: str, monitor: str | None = None, mode: str = "max", enabled: bool = True,
                 initial_best: float | None = None):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"`mode` must be 'max' or 'min'. Received: mode={mode!r}")
        if not path.endswith(".keras"):
            raise ValueError(f"`path` must end in .keras. Received: path={path!r}")
        self.path, self.monitor, self.mode, self.enabled = path, monitor, mode, enabled
        self.best = initial_best

    def _improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor is not None:
            value = (logs or {}).get(self.monitor)
            if value is None or not self._improved(float(value)):
                return
            self.best = float(value)
        if self.enabled:
            save_model(self.model, self.path)
