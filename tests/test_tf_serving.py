"""TF Serving, complete: warmup records, the classify signature, its config files, and its client contract.

No TF Serving binary runs here: each export is run through `export.stand_in` (the version loaded with
the `serve` tag into a TF1 session, signatures run by tensor names, gRPC protos and REST bodies decoded
by the server's rules), and compared with the Keras model.
"""

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

import keras_resnet_v2 as krv2
from keras_resnet_v2 import export
from keras_resnet_v2.export import stand_in, tf_serving
from keras_resnet_v2.export.verification import VerificationError

LABELS = ["cat", "dog", "eel", "fox"]
SERVING_DOCS = Path(__file__).resolve().parent.parent / "docs" / "serving.md"  # the TF Serving commands users copy


def _model():
    keras.utils.set_random_seed(0)
    model = krv2.ResNet(8, input_shape=(32, 32, 3), classes=len(LABELS))
    rng = np.random.default_rng(0)
    for layer in model.layers:  # BatchNorm statistics as after training
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_variance.assign(rng.uniform(1.0, 2.0, layer.moving_variance.shape).astype("float32"))
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One verified export (base directory `resnet`, labels) and its Keras model."""
    model = _model()
    base = tmp_path_factory.mktemp("tfs") / "resnet"
    result = export.export_and_verify(model, str(base), labels=LABELS, input_scale=1 / 255)
    return model, base, result


@pytest.fixture(scope="module")
def server(exported):
    server = stand_in.StandIn(str(exported[1] / "1"))
    yield server
    server.close()


def _keras(model, images):
    return np.asarray(model(np.asarray(images, "float32") / 255, training=False))


def test_the_export_writes_warmup_records_for_every_signature_and_batch(exported):
    _, base, result = exported
    logs = tf_serving.read_warmup(str(base / "1" / tf_serving.WARMUP_FILE))
    seen = set()
    for log in logs:
        kind = log.WhichOneof("log_type")
        request = getattr(log, kind).request
        if kind == "classify_log":
            batch = len(request.input.example_list.examples)
            data = request.input.example_list.examples[0].features.feature[tf_serving.IMAGE_FEATURE].bytes_list.value[0]
        else:
            (name, tensor), = request.inputs.items()
            value = tf.make_ndarray(tensor)
            batch = len(value)
            data = value[0] if value.dtype == object else None
        if data is not None:  # real images, decodable as the server decodes them
            assert data[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xdb")
            assert tf.io.decode_image(data, channels=3).shape == (32, 32, 3)
        seen.add((request.model_spec.signature_name, batch))
    signatures = {*tf_serving.PREDICT_SIGNATURES, tf_serving.CLASSIFY_SIGNATURE}
    assert seen == {(s, b) for s in signatures for b in tf_serving.WARMUP_BATCHES}
    assert len(logs) == len(seen)
    assert result["report"]["savedmodel"]["warmup_records"] == len(logs)
    metadata = json.loads((base / "1" / "assets" / "metadata.json").read_text())
    assert metadata["warmup"]["batches"] == list(tf_serving.WARMUP_BATCHES)


def test_every_warmup_record_replays_through_the_server_as_the_keras_model_answers(exported, server):
    model, base, _ = exported
    answered = server.replay(str(base / "1" / tf_serving.WARMUP_FILE))
    for request, response in answered:
        if request.model_spec.signature_name in ("serving_default", "serve_uint8"):
            images = tf.make_ndarray(request.inputs["images"])
            np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"]), _keras(model, images),
                                       atol=1e-5)
            assert tf.make_ndarray(response.outputs["classes"]).tolist() == _keras(model, images).argmax(-1).tolist()
    assert len(answered) == 8


def test_classify_answers_the_best_class_names_and_scores_of_the_image_bytes_signature(exported, server):
    model, _, _ = exported
    images = tf_serving.warmup_images(3, 32, 32, seed=7)
    encoded = tf_serving.encoded_images(images)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.signature_name = "classify"
    for data in encoded:
        request.input.example_list.examples.add().CopyFrom(tf_serving.image_example(data))
    response = server.classify(request)
    decoded = np.stack([tf.io.decode_image(d, channels=3).numpy() for d in encoded])
    expected = _keras(model, decoded)  # "resize" to the same size keeps the decoded pixels
    for row, result in enumerate(response.result.classifications):
        order = np.argsort(-expected[row])
        assert [c.label for c in result.classes] == [LABELS[i] for i in order]
        np.testing.assert_allclose([c.score for c in result.classes], expected[row][order], atol=1e-5)
    # the REST classify body of the same images: the same answer
    body = {"signature_name": "classify",
            "examples": [{"image/encoded": {"b64": base64.b64encode(d).decode()}} for d in encoded]}
    results = server.rest("classify", json.dumps(body))["results"]
    assert [[label for label, _ in r] for r in results] == [[c.label for c in r.classes]
                                                             for r in response.result.classifications]
    # a context holds the image for every example (ExampleListWithContext)
    context = {"signature_name": "classify", "context": body["examples"][0], "examples": [{}, {}]}
    results = server.rest("classify", json.dumps(context))["results"]
    assert results[0] == results[1] and results[0][0][0] == response.result.classifications[0].classes[0].label


def test_the_classify_signature_has_the_classify_method_and_the_server_rules_for_its_outputs(exported, server):
    signature = server.signatures["classify"]
    assert signature.method_name == "tensorflow/serving/classify"
    assert list(signature.inputs) == ["inputs"] and signature.inputs["inputs"].dtype == tf.string.as_datatype_enum
    assert signature.outputs["classes"].dtype == tf.string.as_datatype_enum
    assert signature.outputs["scores"].dtype == tf.float32.as_datatype_enum
    # TF2's loader reads the version as well (the method name is only a SignatureDef field)
    loaded = tf.saved_model.load(str(exported[1] / "1"))
    assert set(loaded.signatures) == {"serving_default", "serve_uint8", "serve_image_bytes", "classify"}
    with pytest.raises(stand_in.ServingError, match="ClassificationRequest::input is empty"):
        server.classify(classification_pb2.ClassificationRequest(
            model_spec={"signature_name": "classify"}))
    request = classification_pb2.ClassificationRequest(model_spec={"signature_name": "classify"})
    request.input.example_list.examples.add()  # no image in it
    with pytest.raises(stand_in.ServingError, match="image/encoded"):
        server.classify(request)


def test_rest_rows_columns_and_b64_are_decoded_as_tf_serving_decodes_them(exported, server):
    model, _, _ = exported
    images = tf_serving.warmup_images(2, 32, 32, seed=3)
    expected = _keras(model, images)
    rows = server.rest("predict", json.dumps({"instances": images.tolist()}))["predictions"]
    np.testing.assert_allclose([r["probabilities"] for r in rows], expected, atol=1e-5)
    assert [r["classes"] for r in rows] == expected.argmax(-1).tolist()
    named = server.rest("predict", json.dumps({"signature_name": "serve_uint8",
                                               "instances": [{"images": image} for image in images.tolist()]}))
    assert [r["classes"] for r in named["predictions"]] == expected.argmax(-1).tolist()
    columns = server.rest("predict", json.dumps({"signature_name": "serving_default", "inputs": images.tolist()}))
    np.testing.assert_allclose(columns["outputs"]["probabilities"], expected, atol=1e-5)
    png = [{"b64": base64.b64encode(d).decode()} for d in tf_serving.encoded_images(images[:1])]
    answer = server.rest("predict", json.dumps({"signature_name": "serve_image_bytes", "instances": png}))
    np.testing.assert_allclose(answer["predictions"][0]["probabilities"], expected[0], atol=1e-5)


@pytest.mark.parametrize("body, message", [
    ({"instances": [[[[0] * 3] * 32] * 32], "inputs": []}, "both 'inputs' and 'instances'"),
    ({"signature_name": "serving_default"}, "Missing 'inputs' or 'instances'"),
    ({"instances": [[[[0] * 3] * 32] * 32, [[[0] * 3] * 32] * 31]}, "same shape"),
    ({"signature_name": "serve_uint8", "instances": [[[[0.5] * 3] * 32] * 32]}, "expected type: uint8"),
    ({"signature_name": "serve_uint8", "instances": [[[[256] * 3] * 32] * 32]}, "expected type: uint8"),
    ({"instances": [[[[True] * 3] * 32] * 32]}, "expected type: float32"),
    ({"instances": [[[["0"] * 3] * 32] * 32]}, "expected type: float32"),
    ({"signature_name": "serve_image_bytes", "instances": [{"b64": "not base64!"}]}, "base64"),
    ({"signature_name": "nope", "instances": [1]}, 'signature name: "nope" not found'),
    ({"instances": [[[[0] * 3] * 31] * 32]}, "Cannot feed value of shape (1, 32, 31, 3)"),
])
def test_rest_bodies_the_server_refuses_are_refused_in_one_line(server, body, message):
    with pytest.raises(stand_in.ServingError, match=re.escape(message)) as caught:
        server.rest("predict", json.dumps(body))
    assert "\n" not in str(caught.value)


def test_grpc_requests_of_the_wrong_type_or_inputs_are_refused_as_the_server_refuses_them(server):
    request = predict_pb2.PredictRequest(model_spec={"signature_name": "serve_uint8"})
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 32, 32, 3), "float32")))
    with pytest.raises(stand_in.ServingError, match="to be uint8 but float is provided"):
        server.predict(request)
    request.inputs["extra"].CopyFrom(tf.make_tensor_proto(np.zeros(1, "float32")))
    with pytest.raises(stand_in.ServingError, match=r"Sent extra: \{extra\}"):
        server.predict(request)
    request = predict_pb2.PredictRequest(model_spec={"signature_name": "serving_default"}, output_filter=["classes"])
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((2, 32, 32, 3), "float32")))
    assert list(server.predict(request).outputs) == ["classes"]


def _batching_parameters_class():
    """TF Serving's BatchingParameters (tensorflow_serving/servables/tensorflow/session_bundle_config.proto),
    its batch-scheduling fields, built here: the message is not in tensorflow-serving-api's wheel."""
    file = descriptor_pb2.FileDescriptorProto(name="batching_test.proto", package="tensorflow.serving",
                                              syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    message = file.message_type.add(name="BatchingParameters")
    for number, name in enumerate(("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                                   "num_batch_threads"), start=1):
        message.field.add(name=name, number=number, type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                          type_name=".google.protobuf.Int64Value",
                          label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    from google.protobuf import wrappers_pb2
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


# Slow tier (12 s here): the fast tier keeps the warmup records, classify, REST and gRPC against the stand-in.
@pytest.mark.slow
def test_the_config_files_parse_as_the_server_parses_them_and_an_edited_copy_is_kept(exported, tmp_path):
    _, base, _ = exported
    config = text_format.Parse((base / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("resnet", "/models/resnet", "tensorflow")
    assert model.model_version_policy.latest.num_versions == 1
    batching = text_format.Parse((base / "batching_parameters.txt").read_text(), _batching_parameters_class()())
    assert batching.max_batch_size.value >= max(tf_serving.WARMUP_BATCHES)
    assert oct(os.stat(base / "models.config").st_mode & 0o777) == "0o644"
    # a user's edited copy survives the next export; a missing one is written again
    edited = tmp_path / "resnet"
    export.export_and_verify(_model(), str(edited), input_scale=1 / 255)
    (edited / "models.config").write_text("# mine\n")
    (edited / "batching_parameters.txt").unlink()
    export.export_and_verify(_model(), str(edited), input_scale=1 / 255)
    assert (edited / "models.config").read_text() == "# mine\n"
    assert (edited / "batching_parameters.txt").exists()
    unlabelled = stand_in.StandIn(str(edited / "2"))  # without labels, classify names the class indices
    request = classification_pb2.ClassificationRequest(model_spec={"signature_name": "classify"})
    request.input.example_list.examples.add().CopyFrom(
        tf_serving.image_example(tf_serving.encoded_images(tf_serving.warmup_images(1, 32, 32))[0]))
    classes = unlabelled.classify(request).result.classifications[0].classes
    assert sorted(c.label for c in classes) == ["0", "1", "2", "3"]
    unlabelled.close()
    assert sorted(p.name for p in edited.iterdir() if p.name[0] != ".") == [
        "1", "1.verification.json", "2", "2.verification.json", "batching_parameters.txt", "models.config"]


@pytest.mark.parametrize("kept", [100, 9, 0])
def test_a_damaged_warmup_file_fails_verification_in_one_line_naming_it(exported, tmp_path, kept):
    # Issue 50: truncated to 9 or 0 bytes, the file holds no record; it is named, not REST.
    model, base, _ = exported
    version = tmp_path / "1"
    shutil.copytree(base / "1", version)
    warmup = version / tf_serving.WARMUP_FILE
    warmup.write_bytes(warmup.read_bytes()[:kept])
    served = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255), model])
    with pytest.raises(VerificationError) as caught:
        export.verify(served, savedmodel_dir=str(version))
    message = str(caught.value)
    assert "\n" not in message and f"warmup file {warmup}" in message and "REST" not in message, message


def _readme_block(heading: str) -> str:
    text = SERVING_DOCS.read_text()
    section = text[text.index(heading):]
    return section[section.index("```bash") + 7:section.index("```", section.index("```bash") + 7)]


def test_the_documented_curl_bodies_are_answered_by_the_stand_in(exported, server, tmp_path):
    """docs/serving.md's serving commands run as written (docker skipped, curl replaced by a function that
    keeps its body and URL), and each body is decoded and answered by TF Serving's REST rules."""
    block = _readme_block("## Serve and query")
    image = tf_serving.warmup_images(1, 40, 50)[0]  # any size: the signatures resize it
    (tmp_path / "cat.jpg").write_bytes(tf.io.encode_jpeg(image).numpy())
    script = ("set -e\ndocker() { :; }\nn=0\ncurl() { n=$((n+1)); body=$2; case $body in @*) body=$(cat ${body#@});; "
              "esac; printf '%s' \"$body\" > body$n.json; echo \"$3\" >> urls.txt; }\n" + block)
    subprocess.run(["bash", "-c", script], cwd=tmp_path, check=True, timeout=60)
    urls = (tmp_path / "urls.txt").read_text().split()
    assert len(urls) >= 3
    for n, url in enumerate(urls, start=1):
        verb = url.rsplit(":", 1)[1]
        answer = server.rest(verb, (tmp_path / f"body{n}.json").read_text())
        if verb == "classify":
            assert answer["results"][0][0][0] in LABELS
        else:
            assert 0 <= answer["predictions"][0]["classes"] < len(LABELS)
    assert {url.rsplit(":", 1)[1] for url in urls} == {"classify", "predict"}
    signatures = {json.loads((tmp_path / f"body{n}.json").read_text()).get("signature_name", "serving_default")
                  for n in range(1, len(urls) + 1)}
    assert signatures == {*tf_serving.PREDICT_SIGNATURES, "classify"}  # a body for every signature


def test_the_documented_grpc_client_runs_against_the_stand_in(exported, server, tmp_path, monkeypatch, capsys):
    text = SERVING_DOCS.read_text()
    section = text[text.index("## Serve and query"):]
    start = section.index("```python") + 9
    client = section[start:section.index("```", start)]
    image = tf_serving.warmup_images(1, 32, 32)[0]
    (tmp_path / "cat.jpg").write_bytes(tf.io.encode_jpeg(image).numpy())

    class Stub:  # the generated stub's two calls, answered by the stand-in
        def __init__(self, channel):
            pass

        def Predict(self, request, timeout=None):
            return server.predict(request)

        def Classify(self, request, timeout=None):
            return server.classify(request)

    monkeypatch.setattr(prediction_service_pb2_grpc, "PredictionServiceStub", Stub)
    monkeypatch.chdir(tmp_path)
    exec(compile(client, "docs/serving.md", "exec"), {})
    printed = capsys.readouterr().out.split()
    assert printed[0] in LABELS and len([w for w in printed if w in LABELS]) == len(LABELS)
