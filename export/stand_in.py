"""A stand-in for TF Serving: a SavedModel version run the way the C++ server runs it.

No TF Serving binary runs here, so the export is checked against the server's own rules instead:

- the version is loaded with the `serve` tag into a TF1 session, and each SignatureDef is run by its
  input and output tensor names (what the server's `RunPredict` and `RunClassify` do);
- gRPC requests are tensorflow-serving-api's `PredictRequest` and `ClassificationRequest` protos,
  answered with its response protos;
- REST bodies are decoded by TF Serving's documented rules (`instances` row form, `inputs` columnar
  form, `{"b64": ...}` for bytes, `examples` for `:classify`) and answered as its REST API answers;
- the warmup file is parsed and every record replayed, as the server does when it loads a version.

`check_version` is the SavedModel's verification (`keras_resnet_v2.export.verification.verify`).
One difference from the server: TF1's Python client refuses an input whose shape contradicts the
signature's (`Cannot feed value of shape ...`) before running, where the server runs the graph and
the signature's own check refuses it (`images` must have shape ...).

Example:
    >>> server = StandIn("serving/resnet/1")
    >>> server.rest("predict", '{"instances": [{"b64": "iVBORw0KGgo..."}], "signature_name": "serve_image_bytes"}')
    {'predictions': [{'classes': 3, 'probabilities': [...]}]}
"""

from __future__ import annotations

import base64
import json
import os
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from keras_resnet_v2.export import tf_serving

DEFAULT_SIGNATURE = "serving_default"


class ServingError(ValueError):
    """A request TF Serving would refuse, with its status code (`INVALID_ARGUMENT`, `NOT_FOUND`)."""

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT"):
        super().__init__(f"{code}: {message}")
        self.code = code


class StandIn:
    """One version loaded as TF Serving loads it (TF1 session, `serve` tag); see the module's docstring.

    Example:
        >>> server = StandIn("serving/resnet/1")
        >>> request = predict_pb2.PredictRequest(model_spec={"signature_name": "serve_uint8"})
        >>> request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 32, 32, 3), "uint8")))
        >>> tf.make_ndarray(server.predict(request).outputs["classes"])
        array([3])
        >>> server.rest("classify", '{"signature_name": "classify", "examples": [{"image/encoded": {"b64": "..."}}]}')
        {'results': [[['cat', 0.91], ['dog', 0.05], ...]]}
    """

    def __init__(self, version_dir: str):
        self.version_dir = version_dir
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        logger = tf.get_logger()
        level = logger.level
        logger.setLevel("ERROR")  # the TF1 loader's deprecation warning: TF Serving's own loader is this one
        try:
            with self.graph.as_default():
                meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], version_dir)
        finally:
            logger.setLevel(level)
        self.signatures = {k: v for k, v in meta_graph.signature_def.items() if not k.startswith("__")}

    def close(self) -> None:
        self.session.close()

    def run(self, signature_name: str, inputs: dict, output_filter=()) -> dict:
        """Runs a SignatureDef by tensor names: `inputs` {input key: array} -> {output key: array}."""
        signature = self._signature(signature_name)
        sent, wanted = set(inputs), set(signature.inputs)
        if sent != wanted:
            raise ServingError(f"input size does not match signature: {len(sent)}!={len(wanted)} len({{"
                               f"{','.join(sorted(wanted))}}}). Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
                               f"Missing but required: {{{','.join(sorted(wanted - sent))}}}.")
        outputs = list(output_filter) or sorted(signature.outputs)
        unknown = [name for name in outputs if name not in signature.outputs]
        if unknown:
            raise ServingError(f"output tensor alias not found in signature: {unknown[0]}")
        feeds = {}
        for key, value in inputs.items():
            value = np.asarray(value)
            sent = tf.string if value.dtype == object else tf.dtypes.as_dtype(value.dtype)
            if sent.as_datatype_enum != signature.inputs[key].dtype:
                raise ServingError(f"Expects arg[0] to be {_type_name(signature.inputs[key].dtype)} but "
                                   f"{_type_name(sent.as_datatype_enum)} is provided")
            feeds[signature.inputs[key].name] = value
        try:
            values = self.session.run([signature.outputs[name].name for name in outputs], feeds)
        except ValueError as error:  # TF1's Python client refuses a shape the signature declares otherwise
            raise ServingError(str(error)) from None  # (the server runs it, and the graph's own check refuses it)
        except tf.errors.OpError as error:
            raise ServingError(_first_line(error.message or str(error)),
                               "INVALID_ARGUMENT" if isinstance(error, tf.errors.InvalidArgumentError)
                               else type(error).__name__) from None
        return dict(zip(outputs, values, strict=True))

    def _signature(self, name: str):
        if name not in self.signatures:
            raise ServingError(f'Serving signature name: "{name}" not found in signature def', "FAILED_PRECONDITION")
        return self.signatures[name]

    # gRPC: tensorflow-serving-api's protos in and out
    def predict(self, request):
        """A `PredictRequest` answered with a `PredictResponse` (the Predict RPC)."""
        from tensorflow_serving.apis import predict_pb2

        signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
        outputs = self.run(signature, {k: tf.make_ndarray(v) for k, v in request.inputs.items()},
                           request.output_filter)
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(request.model_spec)
        response.model_spec.signature_name = signature
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def classify(self, request):
        """A `ClassificationRequest` answered with a `ClassificationResponse` (the Classify RPC): the
        examples serialized into the signature's `inputs`, its `classes` and `scores` checked as the
        server checks them (rank 2, DT_STRING and DT_FLOAT, one row per example)."""
        from tensorflow_serving.apis import classification_pb2

        signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
        examples = _serialized_examples(request.input)
        if not examples:
            raise ServingError("ClassificationRequest::input is empty.")
        outputs = self.run(signature, {"inputs": np.array(examples, dtype=object)})
        classes, scores = outputs.get("classes"), outputs.get("scores")
        for name, value, dtype in (("classes", classes, object), ("scores", scores, np.float32)):
            if value is None:
                continue
            if value.ndim != 2 or value.shape[0] != len(examples) or value.dtype != dtype:
                raise ServingError(f"Expected {name} Tensor of shape [batch_size num_classes] and "
                                   f"{'DT_STRING' if dtype is object else 'DT_FLOAT'}, batch {len(examples)}. "
                                   f"Got: {value.dtype} {list(value.shape)}")
        response = classification_pb2.ClassificationResponse()
        response.model_spec.CopyFrom(request.model_spec)
        response.model_spec.signature_name = signature
        for row in range(len(examples)):
            result = response.result.classifications.add()
            for column in range((classes if classes is not None else scores).shape[1]):
                entry = result.classes.add()
                if classes is not None:
                    entry.label = classes[row, column].decode("utf-8")
                if scores is not None:
                    entry.score = float(scores[row, column])
        return response

    def replay(self, path: str) -> list:
        """Every record of a warmup file through `predict` or `classify`, as the server replays them
        when it loads the version; returns [(record, response), ...]."""
        answered = []
        for log in tf_serving.read_warmup(path):
            kind = log.WhichOneof("log_type")
            if kind == "predict_log":
                answered.append((log.predict_log.request, self.predict(log.predict_log.request)))
            elif kind == "classify_log":
                answered.append((log.classify_log.request, self.classify(log.classify_log.request)))
            else:
                raise ValueError(f"The TF Serving warmup file {path} holds a {kind} record, which this "
                                 "export does not write")
        return answered

    # REST: JSON bodies in and out
    def rest(self, verb: str, body: str) -> dict:
        """A REST body of `POST /v1/models/NAME:predict` (or `:classify`) answered as TF Serving answers it."""
        try:
            request = json.loads(body)
        except json.JSONDecodeError as error:
            raise ServingError(f"JSON Parse error: {error}") from None
        if not isinstance(request, dict):
            raise ServingError("JSON Value is not an object")
        signature = request.get("signature_name", DEFAULT_SIGNATURE)
        if verb == "classify":
            return self._rest_classify(request, signature)
        if verb != "predict":
            raise ServingError(f"Unsupported REST method: {verb}", "NOT_FOUND")
        if ("instances" in request) == ("inputs" in request):
            raise ServingError("Missing 'inputs' or 'instances' key" if "inputs" not in request
                               else "Not allowed to have both 'inputs' and 'instances' keys")
        inputs = self._signature(signature).inputs
        names = sorted(inputs)
        dtype = {name: tf.dtypes.as_dtype(inputs[name].dtype) for name in names}
        if "instances" in request:
            rows = request["instances"]
            if not isinstance(rows, list) or not rows:
                raise ServingError("'instances' must be a non-empty JSON list")
            named = [row if len(names) > 1 or _named(row, names) else {names[0]: row} for row in rows]
            tensors = {name: _tensor([row.get(name) for row in named], dtype[name], "instances")
                       for name in names}
            outputs = self.run(signature, tensors)
            return {"predictions": [_json(outputs, row) for row in range(len(rows))]}
        columns = request["inputs"]
        columns = columns if len(names) > 1 or _named(columns, names) else {names[0]: columns}
        outputs = self.run(signature, {name: _tensor(columns.get(name), dtype[name], "inputs") for name in names})
        return {"outputs": _json(outputs)}

    def _rest_classify(self, request: dict, signature: str) -> dict:
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
        response = self.classify(proto)
        return {"results": [[[c.label, c.score] for c in result.classes]
                            for result in response.result.classifications]}


def _type_name(enum: int) -> str:
    """TensorFlow's C++ name of a dtype, as the server's errors say it (DT_FLOAT: "float")."""
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(enum)[3:].lower()


def _first_line(message: str) -> str:
    """What went wrong in a TensorFlow error: its first line past "Graph execution error:" and node names."""
    lines = [line.strip() for line in message.splitlines()]
    useful = [line for line in lines if line and not line.startswith(("Graph execution error", "[[", "Detected at"))]
    return (useful or lines or [""])[0]


def _serialized_examples(proto_input) -> list:
    kind = proto_input.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in proto_input.example_list.examples]
    if kind == "example_list_with_context":  # each example is the context, its own features over it
        context = proto_input.example_list_with_context.context
        merged = []
        for example in proto_input.example_list_with_context.examples:
            combined = tf.train.Example()
            combined.CopyFrom(context)
            for key, feature in example.features.feature.items():
                combined.features.feature[key].CopyFrom(feature)
            merged.append(combined.SerializeToString())
        return merged
    return []


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


def _preprocessing(version_dir: str):
    from keras_resnet_v2.plumbing import images as image_ops
    from keras_resnet_v2.plumbing.files import read_json_object

    meta = read_json_object(os.path.join(version_dir, "assets", "metadata.json"))
    return image_ops.Preprocessing(meta["image_bytes_preprocessing"], meta["image_bytes_crop_fraction"],
                                   meta["image_bytes_interpolation"])


def _labels(version_dir: str, classes: int) -> list:
    path = os.path.join(version_dir, "assets", "labels.txt")
    if not os.path.exists(path):
        return [str(i) for i in range(classes)]
    with open(path, encoding="utf-8") as handle:
        return handle.read().splitlines()


class Answer:
    """`images -> (probabilities, classes)` of a version: gRPC `PredictRequest`s of `serving_default`
    answered by a `StandIn`; `check` runs the rest of the version's checks on the same loaded session."""

    def __init__(self, version_dir: str):
        self.version_dir = version_dir
        self.server = StandIn(version_dir)

    def __call__(self, images):
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.signature_name = DEFAULT_SIGNATURE
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.asarray(images, "float32")))
        outputs = self.server.predict(request).outputs
        return tf.make_ndarray(outputs["probabilities"]), tf.make_ndarray(outputs["classes"])

    def check(self, keras_fn: Callable[[np.ndarray], np.ndarray], allowed: float) -> dict:
        """`check_version` on this answer's server."""
        return check_version(self.version_dir, keras_fn, allowed, self.server)


def check_version(version_dir: str, keras_fn: Callable[[np.ndarray], np.ndarray], allowed: float,
                  server: Optional[StandIn] = None) -> dict:
    """The SavedModel's checks through the stand-in (`server`, else one loaded here and closed after),
    against `keras_fn` (float32 pixels -> probabilities):

    every warmup record replayed (a missing or damaged file fails), each predict signature's answer
    within `allowed` relative error of the Keras model on the same pixels (the bytes signature's
    images decoded and prepared as the signature does), the classify answers equal to the `TOP_K`
    best of those probabilities with the labels' names, and REST bodies in row and columnar form
    answered as the gRPC request. Returns the report's entries; `error` says what failed.
    """
    path = os.path.join(version_dir, tf_serving.WARMUP_FILE)
    if not os.path.exists(path):
        return {"error": f"The SavedModel {version_dir} has no TF Serving warmup file ({tf_serving.WARMUP_FILE}); "
                         "export it again with this version of keras_resnet_v2"}
    own = server is None
    server = StandIn(version_dir) if own else server
    try:
        try:
            answered = server.replay(path)
        except ValueError as error:  # a damaged record, or one the version refuses: one line naming the file
            return {"error": str(error) if str(error).startswith("The TF Serving warmup file") else
                    f"The TF Serving warmup file {path} is refused by the version ({error})"}
        worst, problems, bytes_probabilities = _predict_errors(server, answered, keras_fn, allowed)
        problems += _classify_problems(answered, bytes_probabilities, version_dir)
        rest_ok = _rest_matches(server, answered)
    finally:
        if own:
            server.close()
    if not rest_ok:
        problems.append("a REST body is not answered as its gRPC request")
    result = {"warmup_records": len(answered), "signatures_max_rel_error": worst, "rest_matches_grpc": rest_ok}
    if problems:
        result["error"] = f"The SavedModel {version_dir} through TF Serving's rules: " + "; ".join(problems)
    return result


def _predict_errors(server: StandIn, answered: list, keras_fn, allowed: float) -> tuple:
    """The largest relative error of the predict records' answers against `keras_fn` on the pixels each
    signature computes on, the records above `allowed`, and the bytes signature's probabilities by batch."""
    from keras_resnet_v2.plumbing import images as image_ops

    preprocessing = _preprocessing(server.version_dir)
    height, width = server_input_size(server)
    references, bytes_probabilities, worst, problems = {}, {}, 0.0, []
    for request, response in answered:
        signature = request.model_spec.signature_name
        if signature == tf_serving.CLASSIFY_SIGNATURE:
            continue
        (value,) = (tf.make_ndarray(v) for v in request.inputs.values())
        if value.dtype == object:  # encoded images: decoded and prepared as the signature does
            value = np.stack([image_ops.prepare(tf.io.decode_image(data, channels=3, expand_animations=False),
                                                height, width, preprocessing).numpy() for data in value])
        pixels = value.astype("float32")
        key = pixels.tobytes()  # serving_default and serve_uint8 records hold the same pixels
        if key not in references:
            references[key] = keras_fn(pixels)
        probabilities = tf.make_ndarray(response.outputs["probabilities"])
        if signature == "serve_image_bytes":
            bytes_probabilities[len(pixels)] = probabilities
        error = float(np.max(np.abs(probabilities - references[key])) / np.max(np.abs(references[key])))
        worst = max(worst, error)
        if error > allowed:
            problems.append(f"{signature} (batch {len(pixels)}) differs from the Keras model by {error:.2e}")
    return worst, problems, bytes_probabilities


def _classify_problems(answered: list, bytes_probabilities: dict, version_dir: str) -> list:
    """Each classify record's answer against the `TOP_K` best classes of serve_image_bytes on the same images."""
    problems = []
    for request, response in answered:
        if request.model_spec.signature_name != tf_serving.CLASSIFY_SIGNATURE:
            continue
        probabilities = bytes_probabilities[len(response.result.classifications)]
        labels = _labels(version_dir, probabilities.shape[1])
        best = np.argsort(-probabilities, axis=1, kind="stable")[:, :min(tf_serving.TOP_K, probabilities.shape[1])]
        names = [[labels[i] for i in row] for row in best]
        got = [[c.label for c in r.classes] for r in response.result.classifications]
        scores = np.array([[c.score for c in r.classes] for r in response.result.classifications])
        if got != names or not np.allclose(scores, np.take_along_axis(probabilities, best, 1), atol=1e-6):
            problems.append(f"classify (batch {len(got)}) does not answer the best classes of serve_image_bytes")
    return problems


def server_input_size(server: StandIn) -> tuple:
    shape = server.signatures[DEFAULT_SIGNATURE].inputs["images"].tensor_shape
    return shape.dim[1].size, shape.dim[2].size


def _rest_matches(server: StandIn, answered: list) -> bool:
    """The batch of the first float32 warmup record sent as REST rows and as columns: the same answer
    as its gRPC request, up to JSON's decimal printing of float32."""
    for request, response in answered:
        if request.model_spec.signature_name != DEFAULT_SIGNATURE:
            continue
        images = tf.make_ndarray(request.inputs["images"])
        expected = tf.make_ndarray(response.outputs["probabilities"])
        rows = server.rest("predict", json.dumps({"instances": images.tolist()}))["predictions"]
        columns = server.rest("predict", json.dumps({"signature_name": DEFAULT_SIGNATURE,
                                                     "inputs": {"images": images.tolist()}}))["outputs"]
        return (np.allclose([r["probabilities"] for r in rows], expected, atol=1e-6)
                and np.allclose(columns["probabilities"], expected, atol=1e-6)
                and [r["classes"] for r in rows] == columns["classes"] == expected.argmax(-1).tolist())
    return False
