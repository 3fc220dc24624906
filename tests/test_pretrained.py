"""from_timm (timm's pre-activation ResNets converted), pyramid_outputs and fine-tuning from a file.

The fixtures in tests/data are tiny random timm networks and timm's outputs, made by
tests/scripts/make_timm_fixture.py (timm 1.0.31, torch 2.14.1); no PyTorch is needed here.
"""

import hashlib
import json
import os

import keras
import numpy as np
import pytest

import keras_resnet_v2 as krv2
from keras_resnet_v2 import pretrained, timm_checkpoint

DATA = os.path.join(os.path.dirname(__file__), "data")
FIXTURES = ("timm_resnetv2_50_tiny", "timm_resnetv2_18_tiny")


def _fixture(name):
    return os.path.join(DATA, f"{name}.safetensors"), np.load(os.path.join(DATA, f"{name}.npz"))


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("scan", [False, True])
def test_converted_network_gives_timms_outputs(name, scan):
    path, expected = _fixture(name)
    model = krv2.from_timm(path, input_shape=(64, 64, 3), classifier_activation=None, scan=scan)
    images = expected["images"].astype("float32")
    logits = keras.ops.convert_to_numpy(model(images, training=False))
    # float32 through ~50 layers of different summation orders: relative error about 1e-6 measured.
    scale = np.abs(expected["logits"]).max()
    assert np.abs(logits - expected["logits"]).max() / scale < 1e-4
    features = krv2.pyramid_outputs(model)
    assert list(features) == ["P2", "P3", "P4", "P5"]
    extractor = keras.Model(model.inputs, features)
    out = {k: keras.ops.convert_to_numpy(v) for k, v in extractor(images, training=False).items()}
    atol = 1e-4 * np.abs(expected["features"]).max()
    np.testing.assert_allclose(out["P5"], expected["features"], rtol=1e-4, atol=atol)
    raw = keras.Model(model.inputs, krv2.pyramid_outputs(model, normalized=False))(images, training=False)
    for i, key in enumerate(["P2", "P3", "P4", "P5"]):
        stage = expected[f"stage{i}"]
        assert raw[key].shape == stage.shape
        assert np.abs(keras.ops.convert_to_numpy(raw[key]) - stage).max() < 1e-4 * np.abs(stage).max()


def test_keras_same_padding_would_not_give_timms_outputs():
    # The padding decision matters: the same weights in a padding="same" network differ.
    path, expected = _fixture("timm_resnetv2_50_tiny")
    model = krv2.from_timm(path, input_shape=(64, 64, 3), classifier_activation=None)
    same = krv2.ResNet50(input_shape=(64, 64, 3), widths=(8, 16, 32, 64), classes=7, padding="same",
                         classifier_activation=None)
    body = keras.Model(model.get_layer("timm_standardize").output, model.output)
    krv2.copy_weights(body, same)
    x = keras.ops.convert_to_numpy(model.get_layer("timm_standardize")(expected["images"].astype("float32")))
    gap = np.abs(keras.ops.convert_to_numpy(same(x, training=False)) - expected["logits"]).max()
    assert gap > 1e-2 * np.abs(expected["logits"]).max()


def test_conversion_refuses_other_networks_and_mismatched_checkpoints():
    path, _ = _fixture("timm_resnetv2_50_tiny")
    state = krv2.pretrained.read_safetensors(path)
    for name, what in (("resnetv2_50x1_bit.goog_in21k", "BiT"), ("resnetv2_50d", "ResNet-D"),
                       ("resnet50.a1_in1k", "v1"), ("vit_base", "timm model name")):
        with pytest.raises(ValueError, match=what):
            krv2.from_timm(name)
    missing = {k: v for k, v in state.items() if k != "stages.2.blocks.3.conv2.weight"}
    with pytest.raises(ValueError, match="no 'stages.2.blocks.3.conv2.weight'"):
        krv2.from_timm(missing, input_shape=(64, 64, 3))
    extra = {**state, "stages.0.blocks.0.se.fc.weight": np.zeros((1, 1))}
    with pytest.raises(ValueError, match="holds 'stages.0.blocks.0.se.fc.weight'"):
        krv2.from_timm(extra, input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="accepts include_top.*Received: depth=101"):
        krv2.from_timm(path, depth=101)
    bad = os.path.join(os.path.dirname(path), "missing.safetensors")
    with pytest.raises(ValueError, match="does not exist"):
        krv2.from_timm(bad)


def test_new_head_and_no_top_from_a_timm_checkpoint():
    path, expected = _fixture("timm_resnetv2_50_tiny")
    model = krv2.from_timm(path, input_shape=(64, 64, 3), include_top=False, pooling="avg")
    pooled = keras.ops.convert_to_numpy(model(expected["images"].astype("float32"), training=False))
    want = expected["features"].mean(axis=(1, 2))
    # Absolute error relative to the largest feature (~40): float32 sums in another order, 4e-7 measured.
    np.testing.assert_allclose(pooled, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert krv2.from_timm(path, input_shape=(64, 64, 3), classes=3).output_shape == (None, 3)


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_fine_tuning_loads_every_weight_but_the_classifier(tmp_path, suffix, images):
    trained = krv2.ResNet20(input_shape=(16, 16, 3), classes=5)
    x = images((2, 16, 16, 3))
    trained(x, training=True)  # non-trivial moving statistics
    path = str(tmp_path / f"trained{suffix}")
    trained.save_weights(path) if suffix == ".weights.h5" else trained.save(path)
    features = keras.Model(trained.inputs, trained.get_layer("avg_pool").output)
    no_top = krv2.ResNet20(input_shape=(16, 16, 3), include_top=False, pooling="avg", weights=path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(no_top(x)), keras.ops.convert_to_numpy(features(x)),
                               rtol=1e-6, atol=1e-6)
    new_head = krv2.ResNet20(input_shape=(16, 16, 3), classes=3, weights=path)
    assert new_head.output_shape == (None, 3)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(new_head.get_layer("stem_conv").kernel),
                                  keras.ops.convert_to_numpy(trained.get_layer("stem_conv").kernel))
    with pytest.raises(ValueError, match="does not fit this architecture|does not hold"):
        krv2.ResNet32(input_shape=(16, 16, 3), include_top=False, weights=path)


def test_pyramid_outputs_of_cifar_nets_and_plain_equals_stacked(images):
    plain = krv2.ResNet20(input_shape=(16, 16, 3))
    stacked = krv2.to_stacked(plain)
    x = images((2, 16, 16, 3))
    outs = [keras.Model(m.inputs, krv2.pyramid_outputs(m))(x) for m in (plain, stacked)]
    assert list(outs[0]) == ["P0", "P1", "P2"]
    assert [tuple(v.shape[1:]) for v in outs[0].values()] == [(16, 16, 16), (8, 8, 32), (4, 4, 64)]
    for key in outs[0]:
        np.testing.assert_allclose(keras.ops.convert_to_numpy(outs[0][key]), keras.ops.convert_to_numpy(outs[1][key]),
                                   rtol=1e-5, atol=1e-5)
    assert float(keras.ops.min(outs[0]["P1"])) >= 0.0  # after the next stage's BN-ReLU
    with pytest.raises(ValueError, match="remat=True"):
        krv2.pyramid_outputs(krv2.ResNet20(input_shape=(16, 16, 3), remat=True))


def _timm_resize(image, side, crop):
    """timm's eval transform, written out in NumPy terms on TF's resize: the shorter side to
    `side` (bicubic, antialiased, clipped and rounded as PIL's uint8), the centre `crop`."""
    import tensorflow as tf

    height, width = image.shape[:2]
    scale = side / min(height, width)
    size = (round(height * scale), round(width * scale))
    resized = np.round(np.clip(tf.image.resize(image, size, "bicubic", antialias=True).numpy(), 0, 255))
    top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
    return resized[top:top + crop, left:left + crop].astype("float32")


@pytest.mark.slow  # 15 s; the fast tier loads converted weights (fine-tuning) and exports trained runs elsewhere
def test_converted_model_exports_and_evaluates_with_timms_preprocessing(tmp_path, monkeypatch, capsys):
    # A converted .keras file exports (resnet-v2-export, no flags) and evaluates (resnet-v2-train
    # evaluate --dataset imagenet2012) with timm's test-time sizing: shorter side floor(64 / 0.95) = 67,
    # bicubic, centre 64 crop; other sizing gives other outputs, so the checks can fail.
    import json

    import tensorflow as tf
    import tensorflow_datasets as tfds

    from keras_resnet_v2.export.__main__ import main as export_main
    from keras_resnet_v2.training import data
    from keras_resnet_v2.training.evaluation import evaluate

    path, _ = _fixture("timm_resnetv2_18_tiny")
    model = krv2.from_timm(path, input_shape=(64, 64, 3), classes=1000)
    assert krv2.pretrained.timm_preprocessing(model) == krv2.TIMM_SERVING
    model_path = str(tmp_path / "converted.keras")
    model.save(model_path)
    names = tmp_path / "labels.txt"
    names.write_text("".join(f"class {i}\n" for i in range(999)))
    assert export_main([model_path, "--savedmodel", str(tmp_path / "serving"), "--labels", str(names)]) == 1
    assert "must name each of the 1000 classes. Received: 999 labels" in capsys.readouterr().err
    names.write_text("".join(f"class {i}\n" for i in range(1000)))
    assert export_main([model_path, "--savedmodel", str(tmp_path / "serving"), "--labels", str(names)]) == 0
    version = str(tmp_path / "serving" / "1")
    assert open(os.path.join(version, "assets", "labels.txt")).read() == names.read_text()
    meta = json.loads(open(os.path.join(version, "assets", "metadata.json")).read())
    assert (meta["image_bytes_preprocessing"], meta["image_bytes_crop_fraction"],
            meta["image_bytes_interpolation"]) == ("shorter_side_crop", 0.95, "bicubic")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    png = tf.io.encode_png(image).numpy()
    served = tf.saved_model.load(version).signatures["serve_image_bytes"](image_bytes=tf.constant([png]))
    expected = keras.ops.convert_to_numpy(model(_timm_resize(image, 67, 64)[None], training=False))
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, rtol=1e-4, atol=1e-6)
    ours = keras.ops.convert_to_numpy(model(_timm_resize(image, 73, 64)[None], training=False))
    assert np.abs(ours - expected).max() > 1e-4 * np.abs(expected).max()

    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    with tfds.testing.mock_data(num_examples=4):
        result = evaluate(model_path, "imagenet2012", batch_size=3)
        images, labels = zip(*tfds.as_numpy(data.load("imagenet2012").test), strict=True)
    probabilities = keras.ops.convert_to_numpy(model(np.stack([_timm_resize(x, 67, 64) for x in images]),
                                                     training=False))
    loss = -np.mean(np.log(probabilities[np.arange(len(labels)), np.array(labels)]))
    assert result["examples"] == len(labels) == 4
    assert abs(result["loss"] - loss) < 1e-4 * loss
    with pytest.raises(ValueError, match="`crop_fraction` must be a number in \\(0, 1\\].*Received: crop_fraction=1.5"):
        evaluate(model_path, "imagenet2012", crop_fraction=1.5)


@pytest.mark.parametrize("name", ["resnetv2_50", "resnetv2_18"])
def test_against_timm_live(name):
    # Where timm is installed (not in CI): timm's own full-width network, random weights and BatchNorm
    # statistics, its state dict of torch tensors passed as it is, logits compared at 224x224.
    timm = pytest.importorskip("timm")
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("fixture", os.path.join(os.path.dirname(__file__), "scripts",
                                                                          "make_timm_fixture.py"))
    fixture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixture)
    reference = timm.create_model(name, pretrained=False, num_classes=10)
    fixture.randomize(reference, torch.Generator().manual_seed(1))
    reference.eval()
    images = np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    x = ((images / 255.0 - fixture.MEAN) / fixture.STD).transpose(0, 3, 1, 2).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    model = krv2.from_timm(reference.state_dict(), classifier_activation=None)
    logits = keras.ops.convert_to_numpy(model(images.astype("float32"), training=False))
    assert np.abs(logits - expected).max() / np.abs(expected).max() < 1e-4
    with pytest.raises(ValueError, match="ResNet-D"):
        krv2.from_timm(timm.create_model("resnetv2_50d", pretrained=False).state_dict())


def _write_safetensors(path, arrays: dict) -> None:
    """The .safetensors layout: an 8-byte header length, a JSON header, then each tensor's float32 bytes."""
    import json
    import struct

    header, offset, blobs = {}, 0, []
    for key, value in arrays.items():
        data = np.ascontiguousarray(value, dtype="<f4").tobytes()
        header[key] = {"dtype": "F32", "shape": list(value.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def _write_header(path, header: dict, body: bytes = b"") -> None:
    """A .safetensors file whose header declares what the test says, whatever its data holds."""
    import json
    import struct

    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + body)


@pytest.mark.parametrize("declared,fragment", [
    ({"dtype": "F32", "shape": [2**32, 2**32, 7, 7], "data_offsets": [0, 0]}, "lies outside the file"),
    ({"dtype": "F32", "shape": [2048, 0, 7, 7], "data_offsets": [0, 0]}, "axes must be positive integers"),
    ({"dtype": "F32", "shape": [8, -3, 7, 7], "data_offsets": [0, 0]}, "axes must be positive integers"),
    ({"dtype": "F32", "shape": [8, 3, 7, 7], "data_offsets": [0, 4]}, "lies outside the file"),
    ({"dtype": "F32", "shape": "8x3", "data_offsets": [0, 4]}, "axes must be positive integers"),
])
def test_a_checkpoint_header_is_checked_before_anything_is_built(declared, fragment, tmp_path):
    # Issue 50: a 2-8 KB header declaring an impossible tensor is refused in one line, header only.
    path = str(tmp_path / "bad.safetensors")
    _write_header(path, {"stem.conv.weight": declared}, b"\0" * 16)
    for read in (krv2.pretrained.read_safetensors, timm_checkpoint.safetensors_shapes):
        with pytest.raises(ValueError) as caught:
            read(path, "init")
        message = str(caught.value)
        assert "\n" not in message and fragment in message and "init=" in message, message


def test_a_deeply_nested_header_and_inconsistent_channels_are_one_line(tmp_path):
    path = str(tmp_path / "deep.safetensors")
    text = ("[" * 200_000 + "]" * 200_000).encode()
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
    with pytest.raises(ValueError, match="nests too deeply") as caught:
        timm_checkpoint.safetensors_shapes(path)
    assert "\n" not in str(caught.value)
    # Every declared shape is real data here, but stage 2's first conv reads 7 channels where stage 1 gives 8.
    state = dict(timm_checkpoint.read_safetensors(_fixture("timm_resnetv2_18_tiny")[0]))
    state["stages.1.blocks.0.conv1.weight"] = np.zeros((16, 7, 3, 3), "float32")
    with pytest.raises(ValueError, match=r"stages\.1\.blocks\.0\.conv1\.weight' of shape \(16, 7, 3, 3\)") as caught:
        timm_checkpoint.timm_architecture(state)
    assert "(16, 8, 3, 3) there" in str(caught.value)
    with pytest.raises(ValueError, match=r"\(16, 7, 3, 3\)"):
        krv2.from_timm(state)


def _timm_resnetv2_18_state(seed: int = 0) -> dict:
    """A random state dict with timm's resnetv2_18 names and shapes (what its checkpoint holds)."""
    from keras_resnet_v2.weights import slot_shape, weights_by_unit

    rng = np.random.default_rng(seed)
    state = {}
    for (layer, field), slot in weights_by_unit(krv2.ResNet18()).items():
        key, shape = pretrained.timm_key(layer, field), slot_shape(slot)
        if len(shape) == 4:  # ours (kh, kw, in, out), timm's (out, in, kh, kw)
            shape = (shape[3], shape[2], shape[0], shape[1])
        elif len(shape) == 2:
            shape = shape[::-1]
        scale = 1.0 if field in ("gamma", "moving_variance") else 0.05
        value = rng.normal(0.0, scale, shape)
        state[key] = np.abs(value) + 0.5 if field == "moving_variance" else value
    return state


def test_weights_imagenet_converts_timms_checkpoint_once_and_then_reads_the_cache(tmp_path, monkeypatch):
    # Issue 39: keras.applications' weights="imagenet", from timm's trained checkpoint, offline here: the
    # checkpoint is written into the cache folder, where a user without network puts the downloaded file.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # where huggingface_hub is installed: no download is tried
    cache = pretrained.imagenet_cache_dir()
    assert cache == str(tmp_path / "keras_home" / "models" / "keras_resnet_v2")
    with pytest.raises(ValueError, match=r"no copy of it in .*keras_resnet_v2.*Download https://huggingface\.co/timm/"
                                         r"resnetv2_18\.ra4_e3600_r224_in1k/resolve/main/model\.safetensors and save "
                                         r"it as .*resnetv2_18\.ra4_e3600_r224_in1k\.safetensors") as offline:
        krv2.ResNet18(weights="imagenet")
    assert "\n" not in str(offline.value) and "source=" not in str(offline.value)
    assert str(offline.value).count("Received:") == 1  # one message, not one nested in another
    os.makedirs(cache)
    source = os.path.join(cache, "resnetv2_18.ra4_e3600_r224_in1k.safetensors")
    _write_safetensors(source, _timm_resnetv2_18_state())
    images = np.random.default_rng(1).uniform(0, 255, (2, 224, 224, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(krv2.from_timm(source)(images, training=False))

    model = krv2.ResNet18(weights="imagenet")
    assert model.input_shape == (None, 224, 224, 3) and model.output_shape == (None, 1000)
    assert model.layers[1].name == "timm_standardize"  # pixels 0..255 in, like from_timm
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(images, training=False)), expected)
    # keras.applications' whole flow, names from the shipped list
    rows = krv2.decode_predictions(model.predict(krv2.preprocess_input(images), verbose=0), top=3)
    classes = krv2.imagenet_classes()
    for row, probabilities in zip(rows, expected, strict=True):
        best = np.argsort(probabilities)[::-1][:3]
        assert [(wnid, name) for wnid, name, _ in row] == [classes[i] for i in best]
        np.testing.assert_allclose([score for _, _, score in row], probabilities[best], rtol=1e-5)
    record = json.loads(open(os.path.join(cache, "resnetv2_18.ra4_e3600_r224_in1k.json")).read())
    assert record["source"] == "timm/resnetv2_18.ra4_e3600_r224_in1k"
    assert record["source_sha256"] == hashlib.sha256(open(source, "rb").read()).hexdigest()
    cached = os.path.join(cache, "resnetv2_18.ra4_e3600_r224_in1k.keras")
    assert record["keras_sha256"] == hashlib.sha256(open(cached, "rb").read()).hexdigest()

    os.remove(source)  # the second call needs neither the checkpoint nor a network
    again = krv2.ResNet18(weights="imagenet", classifier_activation=None)
    logits = keras.ops.convert_to_numpy(again(images, training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.softmax(logits)), expected, rtol=1e-5, atol=1e-7)
    backbone = krv2.ResNet18(weights="imagenet", include_top=False, pooling="avg")
    assert backbone.input_shape == (None, None, None, 3) and backbone.output_shape == (None, 512)
    features = keras.Model(model.inputs, model.get_layer("avg_pool").output)(images, training=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(backbone(images, training=False)),
                               keras.ops.convert_to_numpy(features), rtol=1e-5, atol=1e-6)
    small = krv2.ResNet18(weights="imagenet", include_top=False, input_shape=(96, 128, 3))
    assert small.output_shape == (None, 3, 4, 512)

    with open(cached, "r+b") as f:  # a damaged cache with no source left: one line
        f.seek(1000)
        f.write(b"\0" * 64)
    with pytest.raises(ValueError, match="no longer matches its recorded checksum; the download failed") as damaged:
        krv2.ResNet18(weights="imagenet")
    assert "\n" not in str(damaged.value) and "source=" not in str(damaged.value)
    assert str(damaged.value).count("Received:") == 1  # one message, not one nested in another


@pytest.mark.parametrize("change,fragment", [
    (lambda state: {**state, "head.fc.weight": state["head.fc.weight"][:10],
                    "head.fc.bias": state["head.fc.bias"][:10]},
     "classes 10 (timm's resnetv2_18.ra4_e3600_r224_in1k: 1000)"),
    (lambda state: {key: value for key, value in state.items() if not key.startswith("stages.3.blocks.1.")},
     "depth"),
])
def test_weights_imagenet_refuses_a_cached_source_of_another_network(change, fragment, tmp_path, monkeypatch):
    # Issue 50: a NAME.safetensors in the cache that is not the named network (another head, another
    # depth) is refused in one line naming the file, before anything is converted or cached.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = pretrained.imagenet_cache_dir()
    os.makedirs(cache)
    source = os.path.join(cache, "resnetv2_18.ra4_e3600_r224_in1k.safetensors")
    _write_safetensors(source, change(_timm_resnetv2_18_state()))
    with pytest.raises(ValueError) as caught:
        krv2.ResNet18(weights="imagenet")
    message = str(caught.value)
    assert "\n" not in message and source in message and fragment in message, message
    assert "nothing was converted or cached" in message
    assert sorted(os.listdir(cache)) == ["resnetv2_18.ra4_e3600_r224_in1k.safetensors"]


@pytest.mark.parametrize("arguments,fragments", [
    ({"depth": 152}, ["ResNet18, ResNet34, ResNet50, ResNet101", "depth=152"]),
    ({"depth": 20}, ["ResNet18", "depth=20", "family='cifar'"]),
    ({"depth": 50, "classes": 10}, ["`classes` must be 1000", "include_top=False", "classes=10"]),
    ({"depth": 50, "unit": "original"}, ["full_preact units", "unit='original'"]),
    ({"depth": 50, "stride_in": "last", "padding": "same"}, ["stride_in='last', padding='same'"]),
    ({"depth": 50, "widths": (8, 16, 32, 64)}, ["default widths", "widths=(8, 16, 32, 64)"]),
])
def test_weights_imagenet_refuses_what_timm_never_trained_in_one_line(arguments, fragments, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # nothing is read or written before the refusal
    with pytest.raises(ValueError) as caught:
        krv2.ResNet(weights="imagenet", **arguments)
    message = str(caught.value)
    assert "\n" not in message and all(fragment in message for fragment in fragments), message
    assert not os.listdir(tmp_path)
