"""Backups and resuming: a run directory's backup/ (tf.train.Checkpoint of model, optimizer and epoch,
two kept) and the checks that make rerunning the same command resume exactly that run."""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import shutil
from typing import Optional

from keras_resnet_v2.plumbing.files import read_json_object
from keras_resnet_v2.training.config import IDENTITY_FIELDS, TrainConfig, changed_settings


def recorded_run(run_dir: str) -> Optional[dict]:
    """The config.json of a run directory that holds a run to resume (a backup), or None when it holds no
    backup; a one-line ValueError when it holds a backup but no (readable) config.json."""
    if not os.path.exists(os.path.join(run_dir, "backup", "checkpoint")):
        return None
    try:
        return read_json_object(os.path.join(run_dir, "config.json"))
    except FileNotFoundError:
        raise ValueError(f"Run directory {run_dir!r} holds a backup but no config.json, so it cannot be resumed "
                         "safely; move its backup/ aside to start over, or use another --run-dir.") from None


def backup_epoch(run_dir: str) -> Optional[int]:
    """The epoch of the newest backup in `run_dir` (read from backup/checkpoint, TensorFlow's text record
    of its `ckpt-{epoch}` files, without TensorFlow), or None when it holds none: where a rerun resumes.

    Example:
        >>> backup_epoch("runs/digits")  # doctest: +SKIP
        15
    """
    try:
        with open(os.path.join(run_dir, "backup", "checkpoint"), encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError):
        return None
    match = re.search(r'^model_checkpoint_path:\s*"[^"]*?ckpt-(\d+)"', text, re.M)
    return int(match.group(1)) if match else None


def check_resume(run_dir: str, effective: dict) -> bool:
    """True if run_dir holds a run to resume; refuses one made by a different configuration."""
    previous = recorded_run(run_dir)
    if previous is None:
        return False
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # runs saved before a field existed
    defaults["normalization"] = (previous.get("recipe_values") or {}).get("normalization")
    defaults["padding"] = "same"  # runs saved before the field existed were built with Keras' "same"
    previous = {k: previous.get(k, defaults.get(k)) for k in IDENTITY_FIELDS}
    changed = changed_settings(previous, effective, IDENTITY_FIELDS)
    if changed:
        raise ValueError(f"Run directory {run_dir!r} holds a run with a different configuration ({changed}); "
                         "use another --run-dir.")
    return True


def remove_partial_backups(backup_dir: str) -> None:
    """TensorFlow writes a backup as `ckpt-N_temp/` and renames it: a kill or full disk leaves that."""
    for leftover in glob.glob(os.path.join(backup_dir, "ckpt-*_temp*")):
        if os.path.isdir(leftover):
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            os.remove(leftover)


def restore_newest_readable(checkpoint, manager, backup_dir: str, log) -> str:
    """Restores the newest backup that reads back whole (two are kept); returns its path.

    A truncated or corrupt newest backup falls back to the previous one, saying so; if none reads,
    a ValueError names the files.
    """
    failures = []
    for path in reversed(manager.checkpoints):
        try:
            checkpoint.restore(path).expect_partial()  # reads every built variable now
        except Exception as error:  # noqa: BLE001 - a damaged file fails in many ways (DataLossError, IndexError, ...)
            failures.append(f"{path}: {str(error).strip().splitlines()[0][:200]}")
            continue
        if failures:
            log(f"warning: the newest backup is unreadable ({failures[0]}); resuming from the previous one, {path}")
        return path
    raise ValueError(f"Cannot resume: no backup reads back ({'; '.join(failures) or 'none listed'}). "
                     f"Move {backup_dir} aside to start over.")


def restore_epoch(checkpoint, manager, epoch: int, backup_dir: str) -> str:
    """Restores the kept backup of `epoch` (`ckpt-{epoch}`: two are kept); returns its path, or a ValueError
    when it is not among them."""
    wanted = [path for path in manager.checkpoints if path.rsplit("-", 1)[-1] == str(epoch)]
    if not wanted:
        raise ValueError(f"Cannot resume: the workers' backups disagree and {backup_dir} no longer holds the "
                         f"one of epoch {epoch} (it holds {[os.path.basename(p) for p in manager.checkpoints]}). "
                         "Move every worker's backup aside to start over.")
    checkpoint.restore(wanted[0]).expect_partial()
    return wanted[0]
