"""Loading `weights=` into a built network (`.keras` or `.weights.h5` files; the path is checked with the
other arguments, `config.check_weights_path`), and the address of every weight by residual unit, which
converting and fine-tuning share.

A weight's address is (per-unit layer name, variable name), e.g. ("stage1_unit5_1_conv", "kernel"),
in either form of a network: in a `UnitStack` that weight is row 3 of `stage1_unit2_to_unit18`'s
`1_conv_kernel`. `weights_by_unit` lists them; `assign_by_unit` writes values to them.
"""

from __future__ import annotations

import io
import math
import os
import warnings
import zipfile
from typing import Any, Callable, Mapping, Optional

import keras
import numpy as np

from keras_resnet_v2.layers import Rematerialized, Standardize
from keras_resnet_v2.names import UNIT_NAME, short_repr
from keras_resnet_v2.plumbing.files import check_keras_archive
from keras_resnet_v2.stack import UnitStack

_FIELDS = ("moving_variance", "moving_mean", "kernel", "bias", "gamma", "beta")
CLASSIFIER = "predictions"  # the dense head's layer name (builder.py)

Address = tuple[str, str]


def leaf_layers(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """Every layer by name, looking inside `Rematerialized` blocks."""
    found = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, (keras.Model, Rematerialized)):
            found[layer.name] = layer
    return found


def weights_by_unit(model: keras.Model) -> dict[Address, tuple[Any, Optional[int]]]:
    """(layer name, variable name) -> (variable, row): a stack's rows appear as per-unit layers."""
    found = {}
    for layer in leaf_layers(model).values():
        for variable in layer.weights:
            if not isinstance(layer, UnitStack):
                found[(layer.name, variable.name)] = (variable, None)
                continue
            match = UNIT_NAME.match(layer.name)
            field = next(f for f in _FIELDS if variable.name.endswith(f"_{f}"))
            key = variable.name[: -len(field) - 1]
            for row, unit in enumerate(range(int(match.group(2)), int(match.group(3)) + 1)):
                found[(f"{match.group(1)}_unit{unit}_{key}", field)] = (variable, row)
    return found


def unit_value(variable, row: Optional[int]) -> np.ndarray:
    """The value at one address: the variable, or its row of a stack."""
    value = keras.ops.convert_to_numpy(variable.value)
    return value if row is None else value[row]


def slot_shape(slot: tuple[Any, Optional[int]]) -> tuple[int, ...]:
    """The shape of the value one address holds: a plain variable's, or a stacked one's without its unit axis."""
    variable, row = slot
    return tuple(variable.shape)[0 if row is None else 1:]


def assign_by_unit(want: Mapping[Address, tuple[Any, Optional[int]]], values: Mapping[Address, np.ndarray]) -> None:
    """Writes `values[address]` to each address of `want` (from `weights_by_unit`); a stacked variable is
    assigned once, with all its rows."""
    rows: dict[int, tuple[Any, dict[int, np.ndarray]]] = {}
    for key, (variable, row) in want.items():
        if row is None:
            variable.assign(values[key])
        else:
            rows.setdefault(id(variable), (variable, {}))[1][row] = values[key]
    for variable, stacked in rows.values():
        variable.assign(np.stack([stacked[i] for i in range(len(stacked))]))


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


def _shape_difference(found: list[tuple], expected: list[tuple]) -> Optional[list[tuple]]:
    """The shapes `found` has beyond `expected` (sorted), or None if `expected` is not inside it."""
    rest = list(found)
    for shape in expected:
        if shape not in rest:
            return None
        rest.remove(shape)
    return sorted(rest)


def _head_arrays(model: keras.Model) -> list[tuple]:
    head = leaf_layers(model).get(CLASSIFIER)
    return [tuple(w.shape) for w in head.weights] if head is not None else []


def _file_classes(found: list[tuple], model: keras.Model, features: int) -> Optional[int]:
    """The class count of the file's classifier if the file is this network with another head (or
    with a head where the model has none), else None."""
    body = sorted(tuple(w.shape) for w in model.weights)
    for shape in _head_arrays(model):
        body.remove(shape)
    extra = _shape_difference(found, body)
    if extra is None or len(extra) != 2:
        return None
    bias, kernel = extra  # sorted: (K,) before (F, K)
    if len(bias) == 1 and kernel == (features, bias[0]):
        return bias[0]
    return None


def _feature_width(model: keras.Model) -> int:
    """The channels the classifier reads: its kernel's rows, or the output of a model without one."""
    head = leaf_layers(model).get(CLASSIFIER)
    if head is not None:
        return int(head.kernel.shape[0])
    config = getattr(model, "resnet_config", None)
    channels_first = config is not None and config.data_format == "channels_first" and len(model.output_shape) == 4
    return int(model.output_shape[1 if channels_first else -1])


def copy_all_but_head(source: keras.Model, target: keras.Model, path: str, what: str = "weights") -> None:
    """Copies every weight of `target` but its classifier from `source`, a network of the same architecture
    in either form (plain or stacked), by address (layer name, variable; a unit's in a stack too): a
    `Standardize` in front of both is copied too when it has the same name. One-line ValueErrors naming
    the argument `what` (= `path`) when an address or a shape is missing; a warning when only `source`
    standardizes its inputs."""
    have, want = weights_by_unit(source), weights_by_unit(target)
    want = {key: value for key, value in want.items() if key[0] != CLASSIFIER}
    missing = [key for key in want if key not in have]
    if missing:
        raise ValueError(f"`{what}` file does not hold {'/'.join(missing[0])}, which this model has: build the "
                         f"architecture it was saved from. Received: {what}={path!r}")
    values = {key: unit_value(*have[key]) for key in want}
    for key, value in values.items():
        shape = slot_shape(want[key])
        if value.shape != shape:
            raise ValueError(f"`{what}` file holds {'/'.join(key)} of shape {value.shape}, this model's is "
                             f"{shape}. Received: {what}={path!r}")
    assign_by_unit(want, values)
    standardize = [layer for layer in source.layers if isinstance(layer, Standardize)]
    if standardize and not any(isinstance(layer, Standardize) for layer in target.layers):
        warnings.warn(f"`{what}` file's model standardizes its inputs ({standardize[0].name!r}, a Standardize "
                      "layer), this model does not: feed it standardized images, or build it on "
                      "`input_tensor=keras_resnet_v2.Standardize(mean, variance)(inputs)` with the file's statistics.",
                      UserWarning, stacklevel=4)


def _copy_same_head(source: keras.Model, target: keras.Model, path: str) -> None:
    """The file's classifier into `target`'s when they have the same shapes: a head is new (initialised)
    only where the caller asked for one (`include_top=False` or another `classes`); a file without a
    classifier leaves `target`'s new, with a warning."""
    head = leaf_layers(target).get(CLASSIFIER)
    if head is None:
        return
    theirs = leaf_layers(source).get(CLASSIFIER)
    if theirs is None:
        warnings.warn(f"`weights` file {path!r} has no classifier: this model's ({head.units} classes) starts from its "
                      "initialisation; train it before use.", UserWarning, stacklevel=4)
        return
    if [tuple(w.shape) for w in theirs.weights] == [tuple(w.shape) for w in head.weights]:
        for mine, value in zip(head.weights, theirs.weights, strict=True):
            mine.assign(value)


def read_keras_file(path: str, what: str = "weights") -> keras.Model:
    """The model of a `.keras` file a user hands over, loaded as Keras' safe mode allows (no `Lambda` code
    runs) and uncompiled, after `plumbing.files.check_keras_archive`; anything Keras refuses is one line
    naming the argument `what` (Keras' own messages run to many lines)."""
    check_keras_archive(path, f"`{what}`")
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # noqa: BLE001 - a damaged, foreign or unsafe file fails in many ways: one line each
        first = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(f"`{what}` {path!r} is not a loadable Keras model ({type(error).__name__}: "
                         f"{short_repr(first, 300)}). Received: {what}={path!r}") from None


def load_weights(model: keras.Model, path: str,
                 with_head: Optional[Callable[[int], keras.Model]] = None) -> None:
    """Loads `path` into `model`, first comparing the arrays' shapes so a mismatch is one line
    (naming `scan=` and `to_plain`/`to_stacked` when the file is of the other form).

    Fine-tuning (keras.applications' "no top"): when `model` is the file's network without its
    classifier (include_top=False) or with another class count, every weight but the classifier is
    loaded. A `.keras` file is loaded whole and copied by unit (so either form loads into either;
    layers in front of the network, such as the `Standardize` of `resnet-v2-train`, are skipped with a
    warning); a `.weights.h5` file is loaded into `with_head(classes)`, the model's network with the
    file's head, and copied from there.
    """
    path = os.fspath(path)
    expected = sorted(tuple(w.shape) for w in model.weights)
    found = sorted(_weight_shapes_in_file(path))
    if found == expected:
        try:
            model.load_weights(path)
        except ValueError as error:
            raise ValueError(
                f"`weights` file does not fit this architecture ({error}). Received: weights={path!r}"
            ) from error
        return
    if path.endswith(".keras"):  # the whole model is in the file: copy by unit, from either form
        source = read_keras_file(path)
        copy_all_but_head(source, model, path)
        _copy_same_head(source, model, path)
        return
    stacked_file, stacked_model = (any(len(s) == 5 for s in shapes) for shapes in (found, expected))
    if stacked_file != stacked_model:
        forms = {True: "stacked form (scan=True)", False: "per-unit form (scan=False)"}
        raise ValueError(
            f"`weights` file was saved from the {forms[stacked_file]}, this model is in the "
            f"{forms[stacked_model]}: build with scan={stacked_file}, or load it into that form and "
            f"convert with keras_resnet_v2.{'to_plain' if stacked_file else 'to_stacked'}. "
            f"Received: weights={path!r}")
    classes = _file_classes(found, model, _feature_width(model))
    if classes is not None and with_head is not None:
        source = with_head(classes)
        load_weights(source, path)
        copy_all_but_head(source, model, path)
        return
    raise ValueError(
        f"`weights` file does not fit this architecture: it holds {len(found)} arrays "
        f"({sum(math.prod(s) for s in found):,} values), the model has {len(expected)} "
        f"({sum(math.prod(s) for s in expected):,} values). Build the architecture it was "
        "saved from (same depth, unit, shortcut, widths and padding; the classifier may differ). "
        f"Received: weights={path!r}"
    )
