"""TF Serving's REST API by its documented rules: a JSON body decoded into tensors or a
`ClassificationRequest`, and the answer written as the server writes it.

- predict: `{"signature_name": ..., "instances": [...]}` (row form: one entry per image, the value of
  the single input or an object naming the inputs) or `{"inputs": ...}` (columnar form: the whole
  batch), answered with `{"predictions": [...]}` or `{"outputs": ...}`;
- classify: `{"signature_name": ..., "context": {...}, "examples": [{feature: value}, ...]}`, answered
  with `{"results": [[[label, score], ...], ...]}`;
- bytes are `{"b64": "..."}`; an output whose name ends in `_bytes` is answered as base64, any other
  string as text; numbers must fit the input's type (no fraction or out-of-range value for an integer
  input); lists of unequal lengths are refused.

Example:
    >>> tensors, rows = predict_tensors(  # doctest: +SKIP
    ...     parse('{"instances": [{"b64": "iVBO..."}]}'), signature.inputs)
    >>> predict_json({"classes": np.array([3])}, rows)  # doctest: +SKIP
    {'predictions': [3]}
"""

from __future__ import annotations

import base64
import json
from typing import Optional

import numpy as np
import tensorflow as tf


class ServingError(ValueError):
    """A request TF Serving would refuse, with its status code (`INVALID_ARGUMENT`, `NOT_FOUND`)."""

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT"):
        super().__init__(f"{code}: {message}")
        self.code = code


def parse(body: str) -> dict:
    """The JSON object of a request body, or a ServingError as the server's "JSON Parse error"."""
    try:
        request = json.loads(body)
    except json.JSONDecodeError as error:
        raise ServingError(f"JSON Parse error: {error}") from None
    if not isinstance(request, dict):
        raise ServingError("JSON Value is not an object")
    return request


def predict_tensors(request: dict, inputs) -> tuple:
    """`({input: array}, rows)` of a predict body for a signature's `inputs` (name -> TensorInfo); `rows`
    is the batch size of the row form, None for the columnar form."""
    if ("instances" in request) == ("inputs" in request):
        raise ServingError("Missing 'inputs' or 'instances' key" if "inputs" not in request
                           else "Not allowed to have both 'inputs' and 'instances' keys")
    names = sorted(inputs)
    dtype = {name: tf.dtypes.as_dtype(inputs[name].dtype) for name in names}
    if "instances" in request:
        rows = request["instances"]
        if not isinstance(rows, list) or not rows:
            raise ServingError("'instances' must be a non-empty JSON list")
        named = [row if len(names) > 1 or _named(row, names) else {names[0]: row} for row in rows]
        if not all(isinstance(row, dict) for row in named):
            raise ServingError(f"Each instance must be a JSON object naming the inputs {names}")
        return {name: _tensor([row.get(name) for row in named], dtype[name], "instances") for name in names}, len(rows)
    columns = request["inputs"]
    columns = columns if len(names) > 1 or _named(columns, names) else {names[0]: columns}
    if not isinstance(columns, dict):
        raise ServingError(f"'inputs' must be a JSON object naming the inputs {names}")
    return {name: _tensor(columns.get(name), dtype[name], "inputs") for name in names}, None


def predict_json(outputs: dict, rows: Optional[int]) -> dict:
    """The answer to a predict body: `{"predictions": [...]}` for the row form, `{"outputs": ...}` else."""
    if rows is None:
        return {"outputs": _json(outputs)}
    return {"predictions": [_json(outputs, row) for row in range(rows)]}


def classification_request(request: dict, signature: str):
    """A classify body as the `ClassificationRequest` the server builds from it."""
    from tensorflow_serving.apis import classification_pb2

    examples = request.get("examples")
    if not isinstance(examples, list):
        raise ServingError("'examples' must be a JSON list of objects")
    proto = classification_pb2.ClassificationRequest()
    proto.model_spec.signature_name = signature
    if "context" in request:
        proto.input.example_list_with_context.context.CopyFrom(_example(request["context"]))
        target = proto.input.example_list_with_context.examples
    else:
        target = proto.input.example_list.examples
    for item in examples:
        target.add().CopyFrom(_example(item))
    return proto


def classification_json(response) -> dict:
    """A `ClassificationResponse` as the REST answer: `{"results": [[[label, score], ...], ...]}`."""
    return {"results": [[[c.label, c.score] for c in result.classes] for result in response.result.classifications]}


def _named(value, names) -> bool:
    """A JSON object that names the signature's inputs (not a `{"b64": ...}` value)."""
    return isinstance(value, dict) and set(value) <= set(names) and bool(value)


def _leaf(value, dtype: tf.DType, where: str):
    if dtype == tf.string:
        if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError:
                raise ServingError(f"Unable to base64 decode the value in {where}") from None
        if isinstance(value, str):
            return value.encode("utf-8")
    elif isinstance(value, bool) or isinstance(value, (dict, str)) or value is None:
        pass
    elif dtype.is_integer and isinstance(value, int) and dtype.min <= value <= dtype.max:
        return value
    elif dtype.is_floating and isinstance(value, (int, float)):
        return value
    raise ServingError(f"Failed to process element of '{where}'. JSON Value: {json.dumps(value)} Type: "
                       f"{type(value).__name__} is not of expected type: {dtype.name}")


def _tensor(value, dtype: tf.DType, where: str) -> np.ndarray:
    """A JSON value (nested lists of numbers, strings or `{"b64": ...}`) as an array of `dtype`; lists
    of unequal lengths are refused, as the server refuses them, and so is a value of another type (a
    fraction or an out-of-range number for an integer input, a boolean, a string for a number)."""
    if value is None:
        raise ServingError(f"Missing an input of '{where}'")
    if dtype == tf.string:  # few values (encoded images): checked one by one
        def shape(item):
            if isinstance(item, list):
                inner = [shape(x) for x in item]
                if any(s != inner[0] for s in inner):
                    raise ServingError(f"Expecting tensors of the same shape in '{where}'")
                return (len(item), *(inner[0] if inner else ()))
            return ()

        def flat(item):
            return [leaf for x in item for leaf in flat(x)] if isinstance(item, list) else [_leaf(item, dtype, where)]

        return np.array(flat(value), dtype=object).reshape(shape(value))
    try:  # numbers (an image is 10^5 of them): NumPy checks the shape and the types at once
        array = np.array(value)
    except ValueError:
        raise ServingError(f"Expecting tensors of the same shape in '{where}'") from None
    if array.dtype.kind not in ("iu" if dtype.is_integer else "iuf") and array.size:
        wrong = next((v for v in array.ravel().tolist() if isinstance(v, bool) or not isinstance(v, (int, float))),
                     array.ravel().tolist()[0])
        _leaf(wrong, dtype, where)  # raises, naming the value
        raise ServingError(f"Failed to process '{where}': values of type {array.dtype} where {dtype.name} is expected")
    if dtype.is_integer and array.size and (array.min() < dtype.min or array.max() > dtype.max):
        _leaf(int(array.max() if array.max() > dtype.max else array.min()), dtype, where)  # raises
    return array.astype(dtype.as_numpy_dtype)


def _json_value(name: str, value):
    if isinstance(value, np.ndarray):
        return [_json_value(name, v) for v in value]
    if isinstance(value, bytes):  # TF Serving: an output named *_bytes is base64, any other string is text
        return {"b64": base64.b64encode(value).decode()} if name.endswith("_bytes") else value.decode("utf-8")
    return value.item() if isinstance(value, np.generic) else value


def _json(outputs: dict, row: Optional[int] = None):
    values = {name: _json_value(name, value if row is None else value[row]) for name, value in outputs.items()}
    return next(iter(values.values())) if len(values) == 1 else values


def _example(features: dict):
    """A `tf.train.Example` from a REST example: numbers (ints as int64, others float), strings, `{"b64"}`."""
    if not isinstance(features, dict):
        raise ServingError("An example must be a JSON object of feature names and values")
    example = tf.train.Example()
    for key, value in features.items():
        values = value if isinstance(value, list) else [value]
        feature = example.features.feature[key]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            feature.int64_list.value.extend(values)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            feature.float_list.value.extend(values)
        else:
            feature.bytes_list.value.extend(_leaf(v, tf.string, f"examples/{key}") for v in values)
    return example
