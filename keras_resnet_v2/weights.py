"""Loading `weights=` into a built network: `.keras` or `.weights.h5` files, checked first."""

from __future__ import annotations

import io
import math
import os
import zipfile

import keras


def check_weights_path(weights) -> None:
    """One-line ValueError unless `weights` is None or an existing `.keras` / `.weights.h5` path."""
    if weights is None:
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            "`weights` must be None or the path of a `.keras` or `.weights.h5` file. "
            f"Received: weights={weights!r}"
        )
    path = os.fspath(weights)
    if not (path.endswith(".keras") or path.endswith(".weights.h5")):
        raise ValueError(
            "`weights` must be None or the path of a `.keras` or `.weights.h5` file "
            f"(pretrained downloads are not offered). Received: weights={weights!r}"
        )
    if not os.path.isfile(path):
        raise ValueError(f"`weights` file does not exist. Received: weights={weights!r}")


def _weight_shapes_in_file(path: str) -> list[tuple]:
    import h5py  # a Keras dependency

    def shapes(handle) -> list[tuple]:
        found: list[tuple] = []
        layers = handle.get("layers")
        if layers is not None:
            layers.visititems(
                lambda _, obj: found.append(tuple(obj.shape)) if isinstance(obj, h5py.Dataset) else None
            )
        return found

    try:
        if path.endswith(".keras"):
            with zipfile.ZipFile(path) as archive:
                data = archive.read("model.weights.h5")
            with h5py.File(io.BytesIO(data), "r") as handle:
                return shapes(handle)
        with h5py.File(path, "r") as handle:
            return shapes(handle)
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"`weights` is not a readable Keras weights file ({error}). Received: weights={path!r}"
        ) from error


def load_weights(model: keras.Model, path: str) -> None:
    """Loads `path` into `model`, first comparing the arrays' shapes so a mismatch is one line
    (naming `scan=` and `to_plain`/`to_stacked` when the file is of the other form)."""
    path = os.fspath(path)
    expected = sorted(tuple(w.shape) for w in model.weights)
    found = sorted(_weight_shapes_in_file(path))
    if found != expected:
        stacked_file, stacked_model = (any(len(s) == 5 for s in shapes) for shapes in (found, expected))
        if stacked_file != stacked_model:
            forms = {True: "stacked form (scan=True)", False: "per-unit form (scan=False)"}
            raise ValueError(
                f"`weights` file was saved from the {forms[stacked_file]}, this model is in the "
                f"{forms[stacked_model]}: build with scan={stacked_file}, or load it into that form and "
                f"convert with keras_resnet_v2.{'to_plain' if stacked_file else 'to_stacked'}. "
                f"Received: weights={path!r}")
        raise ValueError(
            f"`weights` file does not fit this architecture: it holds {len(found)} arrays "
            f"({sum(math.prod(s) for s in found):,} values), the model has {len(expected)} "
            f"({sum(math.prod(s) for s in expected):,} values). Build the architecture it was "
            "saved from (same depth, unit, shortcut, classes and include_top). "
            f"Received: weights={path!r}"
        )
    try:
        model.load_weights(path)
    except ValueError as error:
        raise ValueError(
            f"`weights` file does not fit this architecture ({error}). Received: weights={path!r}"
        ) from error
