"""A stand-in for TF Serving: a SavedModel version run the way the C++ server runs it.

No TF Serving binary runs here, so the export is checked against the server's own rules instead:

- the version is loaded with the `serve` tag into a TF1 session, and each SignatureDef is run by its
  input and output tensor names (what the server's `RunPredict` and `RunClassify` do);
- gRPC requests are tensorflow-serving-api's `PredictRequest` and `ClassificationRequest` protos,
  answered with its response protos;
- REST bodies are decoded by TF Serving's documented rules (`keras_resnet_v2.export.rest`: `instances`
  row form, `inputs` columnar form, `{"b64": ...}` for bytes, `examples` for `:classify`) and answered
  as its REST API answers;
- the warmup file is parsed and every record replayed, as the server does when it loads a version.

`check_version` is the SavedModel's verification (`keras_resnet_v2.export.verification.verify`).
One difference from the server: TF1's Python client refuses an input whose shape contradicts the
signature's (`Cannot feed value of shape ...`) before running, where the server runs the graph and
the signature's own check refuses it (`images` must have shape ...).

Example:
    >>> server = StandIn("serving/resnet/1")  # doctest: +SKIP
    >>> server.rest(  # doctest: +SKIP
    ...     "predict", '{"instances": [{"b64": "iVBORw0KGgo..."}], "signature_name": "serve_image_bytes"}')
    {'predictions': [{'classes': 3, 'probabilities': [...]}]}
"""

from __future__ import annotations

import json
import os
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from keras_resnet_v2.export import rest, tf_serving
from keras_resnet_v2.export.rest import ServingError

DEFAULT_SIGNATURE = "serving_default"


class StandIn:
    """One version loaded as TF Serving loads it (TF1 session, `serve` tag); see the module's docstring.

    Example:
        >>> server = StandIn("serving/resnet/1")  # doctest: +SKIP
        >>> request = predict_pb2.PredictRequest(model_spec={"signature_name": "serve_uint8"})  # doctest: +SKIP
        >>> request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 32, 32, 3), "uint8")))  # doctest: +SKIP
        >>> tf.make_ndarray(server.predict(request).outputs["classes"])  # doctest: +SKIP
        array([3])
        >>> server.rest(  # doctest: +SKIP
        ...     "classify", '{"signature_name": "classify", "examples": [{"image/encoded": {"b64": "..."}}]}')
        {'results': [[['cat', 0.91], ['dog', 0.05], ...]]}
    """

    def __init__(self, version_dir: str):
        from keras_resnet_v2.plumbing.files import read_json_object

        self.version_dir = version_dir
        # assets/metadata.json (ours: what the signatures expect), read first: a damaged one names itself
        path = os.path.join(version_dir, "assets", "metadata.json")
        self.metadata = read_json_object(path) if os.path.exists(path) else {}
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

    # REST: JSON bodies in and out (keras_resnet_v2.export.rest)
    def rest(self, verb: str, body: str) -> dict:
        """A REST body of `POST /v1/models/NAME:predict` (or `:classify`) answered as TF Serving answers it."""
        request = rest.parse(body)
        signature = request.get("signature_name", DEFAULT_SIGNATURE)
        if verb == "classify":
            return rest.classification_json(self.classify(rest.classification_request(request, signature)))
        if verb != "predict":
            raise ServingError(f"Unsupported REST method: {verb}", "NOT_FOUND")
        tensors, rows = rest.predict_tensors(request, self._signature(signature).inputs)
        return rest.predict_json(self.run(signature, tensors), rows)


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
        kinds = {request.model_spec.signature_name for request, _ in answered}
        if DEFAULT_SIGNATURE not in kinds:  # empty, truncated to nothing, or not the records this export writes
            return {"error": f"The TF Serving warmup file {path} ({os.path.getsize(path):,} bytes) holds "
                             f"{len(answered)} records and none of {DEFAULT_SIGNATURE}: it is damaged; export the "
                             "model again"}
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

    preprocessing = image_ops.Preprocessing.from_metadata(server.metadata)
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
