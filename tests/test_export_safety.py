"""Exports that cannot be crashed, go live only once verified, and serve only what the model computes."""

import errno
import json
import os
import re
import stat
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_resnet_v2 as krv2
from conftest import message_lines
from keras_resnet_v2 import export
from keras_resnet_v2.export.serving import serving_outputs


def _served_model(classifier_activation="softmax"):
    """A small net with a Standardize layer in front, as resnet-v2-train builds it (0..255 pixels in)."""
    inputs = keras.Input((16, 16, 3), name="images")
    x = krv2.Standardize(mean=[120.0, 110.0, 100.0], variance=[3000.0, 2800.0, 2600.0])(inputs)
    return krv2.ResNet(8, input_tensor=x, classes=3, classifier_activation=classifier_activation)


CALLS = textwrap.dedent("""
    import json, sys
    import numpy as np, tensorflow as tf
    loaded = tf.saved_model.load(sys.argv[1])
    results = {}
    for signature, dtype in (("serving_default", tf.float32), ("serve_uint8", tf.uint8)):
        for shape in ([16, 16, 3], [1, 1, 1, 3], [1, 16, 1, 3], [1, 16, 16, 1], [2, 16, 16, 3, 1], [0, 16, 16, 3],
                      [2, 16, 16, 3], "nan", "inf"):
            key = f"{signature} {shape}"
            images = tf.zeros([2, 16, 16, 3], dtype) if isinstance(shape, str) else tf.zeros(shape, dtype)
            if isinstance(shape, str) and dtype == tf.float32:  # one bad pixel in the second image
                images = tf.tensor_scatter_nd_update(images, [[1, 5, 7, 2]], [float(shape)])
            try:
                out = loaded.signatures[signature](images=images)
                results[key] = {k: list(v.shape) for k, v in out.items()}
            except tf.errors.InvalidArgumentError as error:
                results[key] = "InvalidArgumentError: " + error.message
    print(json.dumps(results))
""")


def test_serving_signatures_check_shapes_and_survive_bad_requests(tmp_path):
    version = export.export_savedmodel(_served_model(), str(tmp_path / "serving"))
    # A separate process: before the checks, one malformed request aborted the whole process.
    done = subprocess.run([sys.executable, "-c", CALLS, version], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for signature in ("serving_default", "serve_uint8"):
        for shape in ([16, 16, 3], [1, 1, 1, 3], [1, 16, 1, 3], [1, 16, 16, 1], [2, 16, 16, 3, 1]):
            answer = results[f"{signature} {shape}"]
            assert isinstance(answer, str) and answer.startswith("InvalidArgumentError"), (signature, shape, answer)
            assert "[batch, 16, 16, 3]" in answer or "[?,16,16,3]" in answer, answer
        assert results[f"{signature} [0, 16, 16, 3]"] == {"probabilities": [0, 3], "classes": [0]}
        assert results[f"{signature} [2, 16, 16, 3]"] == {"probabilities": [2, 3], "classes": [2]}
    # A NaN or Inf pixel is refused, not answered with NaN probabilities and class 0 (uint8 is always finite).
    for value in ("nan", "inf"):
        answer = results[f"serving_default {value}"]
        assert isinstance(answer, str) and "`images` must be finite" in answer, (value, answer)
        assert results[f"serve_uint8 {value}"] == {"probabilities": [2, 3], "classes": [2]}


def test_each_exports_metadata_says_what_it_does_with_non_finite_pixels(tmp_path):
    # Issue 37: the SavedModel refuses a NaN pixel; the ONNX file cannot (no assert op; an in-graph refusal
    # measured 1.03-1.25x latency) and answers NaN probabilities, as its metadata says: tested, so it stays true.
    import onnx
    import onnxruntime as ort

    model = _served_model()
    path = export.export_onnx(model, str(tmp_path / "m.onnx"))
    images = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    images[1, 5, 7, 2] = np.nan
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    probabilities = session.run(["probabilities"], {"images": images})[0]
    assert np.isfinite(probabilities[0]).all() and np.isnan(probabilities[1]).all()
    props = {entry.key: entry.value for entry in onnx.load(path).metadata_props}
    assert props["non_finite_input"].startswith("not refused") and "np.isfinite" in props["non_finite_input"]
    version = export.export_savedmodel(model, str(tmp_path / "serving"))
    saved = json.loads(open(os.path.join(version, "assets", "metadata.json")).read())
    assert saved["non_finite_input"].startswith("refused")


def test_damaged_exports_fail_verification_in_one_line_naming_the_file(tmp_path):
    # Issue 37: a truncated ONNX file, a damaged metadata.json and truncated SavedModel variables reached
    # `resnet-v2-export verify` as loader tracebacks (InvalidProtobuf, IndexError) or, the metadata, not at all.
    import shutil

    model = _served_model()
    result = export.export_and_verify(model, str(tmp_path / "serving"), str(tmp_path / "m.onnx"))
    version = result["savedmodel"]
    damaged = {}
    shutil.copy(result["onnx"], tmp_path / "bad.onnx")
    os.truncate(tmp_path / "bad.onnx", 2000)
    damaged["onnx"] = (dict(onnx_path=str(tmp_path / "bad.onnx")), r"The ONNX file .*bad.onnx does not load")
    for name, harm in (("metadata", lambda v: open(os.path.join(v, "assets", "metadata.json"), "w").write("{")),
                       ("variables", lambda v: os.truncate(sorted(
                           os.path.join(v, "variables", f) for f in os.listdir(os.path.join(v, "variables"))
                           if ".data-" in f)[0], 100))):
        copy = str(tmp_path / name)
        shutil.copytree(version, copy)
        harm(copy)
        damaged[name] = (dict(savedmodel_dir=copy), rf"The SavedModel .*{name} does not load")
    for name, (where, message) in damaged.items():
        report_path = str(tmp_path / f"{name}.json")
        with pytest.raises(export.VerificationError, match=message) as caught:
            export.verify(model, report_path=report_path, **where)
        assert "\n" not in str(caught.value), str(caught.value)
        assert json.loads(open(report_path).read())["passed"] is False
    assert "metadata.json is damaged" in json.loads(open(tmp_path / "metadata.json").read())["error"]


def test_labels_with_line_breaks_are_refused_before_any_export(tmp_path):
    model = _served_model()
    for labels, shown in ((["cat", "dog\nfox", "owl"], r"labels\[1\]='dog\\nfox'"),
                          (["cat", "", "owl"], r"labels\[1\]=''"), (["cat", "dog"], "Received: 2 labels"),
                          (["cat", "dog", "owl\u2028"], r"labels\[2\]")):
        with pytest.raises(ValueError, match=shown):
            export.export_savedmodel(model, str(tmp_path / "serving"), labels=labels)
    assert not (tmp_path / "serving").exists()
    version = export.export_savedmodel(model, str(tmp_path / "serving"), labels=["cat", "dog fox", "owl"])
    assert open(os.path.join(version, "assets", "labels.txt")).read().splitlines() == ["cat", "dog fox", "owl"]


@pytest.mark.parametrize("build, found", [
    (lambda: krv2.ResNet(8, input_shape=(16, 16, 3), include_top=False, pooling="avg"),
     r"'avg_pool' \(GlobalAveragePooling2D\) with activation None"),
    (lambda: _served_model(classifier_activation="sigmoid"), r"'predictions' \(Dense\) with activation 'sigmoid'"),
])
def test_models_that_are_not_softmax_or_logits_classifiers_are_refused(tmp_path, build, found):
    model = build()
    for call in (lambda: export.export_and_verify(model, str(tmp_path / "serving"), str(tmp_path / "m.onnx")),
                 lambda: export.export_savedmodel(model, str(tmp_path / "serving")),
                 lambda: export.export_onnx(model, str(tmp_path / "m.onnx"))):
        with pytest.raises(ValueError, match="softmax or linear.*" + found):
            call()
    assert os.listdir(tmp_path) == []  # refused before anything was written


def test_a_trained_network_inside_a_sequential_exports_with_its_own_softmax(tmp_path):
    inner = krv2.ResNet(8, input_shape=(16, 16, 3), classes=3)
    wrapped = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Rescaling(1 / 255), inner])
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    version = export.export_savedmodel(wrapped, str(tmp_path / "serving"))
    served = tf.saved_model.load(version).signatures["serving_default"](images=tf.constant(x))["probabilities"]
    # The inner softmax is found and not applied twice (a second softmax would flatten these rows).
    np.testing.assert_allclose(served.numpy(), np.asarray(wrapped(x, training=False)), rtol=1e-5, atol=1e-7)
    logits = keras.Sequential([keras.Input((16, 16, 3)), krv2.ResNet(8, input_shape=(16, 16, 3), classes=3,
                                                                   classifier_activation=None)])
    assert serving_outputs(logits)(x)["probabilities"].numpy().sum(-1) == pytest.approx([1, 1], rel=1e-5)


def test_verification_compares_with_the_models_own_output(tmp_path):
    model = _served_model(classifier_activation=None)  # logits: served as softmax(logits)
    result = export.export_and_verify(model, str(tmp_path / "serving"), str(tmp_path / "m.onnx"))
    assert result["report"]["passed"]

    images = np.random.default_rng(0).uniform(0, 255, (3, 16, 16, 3)).astype("float32")
    logits = np.asarray(model(images, training=False), dtype="float64")
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    served = tf.saved_model.load(result["savedmodel"]).signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, rtol=1e-5, atol=1e-7)


def _published(folder):
    return sorted(n for n in os.listdir(folder) if not n.endswith(".lock"))


def test_a_failed_verification_publishes_nothing(tmp_path, monkeypatch):
    seen = {}

    def failing_verify(model, savedmodel=None, onnx=None, report_path=None, **kwargs):
        # Verification reads the hidden temporaries, not published paths.
        seen.update(savedmodel=savedmodel, onnx=onnx)
        assert os.path.basename(savedmodel).startswith(".tmp-1-") and os.path.isdir(savedmodel)
        assert os.path.basename(onnx).startswith(".tmp-m.onnx-") and os.path.isfile(onnx)
        raise export.VerificationError("parity failed (injected)")

    from keras_resnet_v2.export import workflow

    monkeypatch.setattr(workflow, "verify", failing_verify)
    base = tmp_path / "serving"
    with pytest.raises(export.VerificationError, match="injected"):
        export.export_and_verify(_served_model(), str(base), str(tmp_path / "m.onnx"))
    assert seen and _published(base) == [] and _published(tmp_path) == ["serving"]


def test_bad_arguments_are_refused_before_any_export(tmp_path):
    model = _served_model()
    (tmp_path / "a_file").write_text("x")
    cases = [
        (dict(onnx=str(tmp_path / "m.onnx"), opset=7), "`opset` must be an integer from 13 to 18"),
        (dict(onnx=str(tmp_path / "m.txt")), "must end in .onnx"),
        (dict(savedmodel=str(tmp_path / "a_file")), "must be a directory, but .*a_file is a file"),
        (dict(savedmodel=str(tmp_path / "a_file" / "sub")), "must be a directory, but .*a_file is a file"),
        (dict(version=0), "`version` must be a positive integer"),
    ]
    for kwargs, message in cases:
        kwargs = {"savedmodel": str(tmp_path / "serving"), **kwargs}
        with pytest.raises(ValueError, match=message):
            export.export_and_verify(model, **kwargs)
        assert not (tmp_path / "serving").exists(), kwargs  # the SavedModel step did not start


def test_an_unwritable_directory_is_one_line(tmp_path, monkeypatch, capsys):
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # root may write anywhere: let the check see what another user would
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(locked) else
                            real_access(path, mode))
    with pytest.raises(ValueError, match=f"not writable: no permission to write in {locked}"):
        export.export_and_verify(_served_model(), str(locked / "serving"))
    model = _served_model()
    model.save(tmp_path / "model.keras")
    from keras_resnet_v2.export.__main__ import main

    assert main([str(tmp_path / "model.keras"), "--onnx", str(locked / "m.onnx")]) == 1
    err = message_lines(capsys.readouterr().err)
    assert len(err) == 1 and "not writable" in err[0], err


def test_a_full_disk_says_so_in_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    import tf2onnx

    def full_disk(*args, output_path=None, **kwargs):
        with open(output_path, "wb") as handle:
            handle.write(b"half an onnx file")
        raise OSError(errno.ENOSPC, "No space left on device", output_path)

    monkeypatch.setattr(tf2onnx.convert, "from_function", full_disk)
    model = _served_model()
    model.save(tmp_path / "model.keras")
    from keras_resnet_v2.export.__main__ import main

    out = tmp_path / "out"
    out.mkdir()
    code = main([str(tmp_path / "model.keras"), "--savedmodel", str(out / "serving"), "--onnx", str(out / "m.onnx")])
    err = message_lines(capsys.readouterr().err)
    assert code == 1 and len(err) == 1 and "no space left on device writing" in err[0], err
    # The SavedModel was written first, but nothing is published and no temporary is left.
    assert _published(out / "serving") == [] and _published(out) == ["serving"]


@pytest.mark.parametrize("writing", ["variables", "warmup records"])
def test_a_full_disk_while_the_savedmodel_is_written_is_one_line(tmp_path, monkeypatch, capsys, writing):
    def full_disk(self, path, **kwargs):  # what TensorFlow's SaveV2 raises on a full disk
        os.makedirs(os.path.join(path, "variables"), exist_ok=True)
        open(os.path.join(path, "variables", "variables.data-00000-of-00001"), "wb").write(b"half")
        raise tf.errors.ResourceExhaustedError(None, None, f"{path}/variables/variables_temp; No space left on device")

    def full_disk_record(self, record):  # what TensorFlow's record writer raises on a full disk
        raise tf.errors.ResourceExhaustedError(None, None, "tf_serving_warmup_requests; No space left on device")

    if writing == "variables":
        # keras.export.ExportArchive() makes the backend's archive class (TFExportArchive): patch that one.
        monkeypatch.setattr(type(keras.export.ExportArchive()), "write_out", full_disk)
    else:
        monkeypatch.setattr(tf.io.TFRecordWriter, "write", full_disk_record)
    _served_model().save(tmp_path / "model.keras")
    from keras_resnet_v2.export.__main__ import main

    code = main([str(tmp_path / "model.keras"), "--savedmodel", str(tmp_path / "serving")])
    err = message_lines(capsys.readouterr().err)
    assert code == 1 and len(err) == 1, err  # was a 44-line traceback
    assert "no space left on device writing" in err[0] and "nothing was published" in err[0], err
    assert _published(tmp_path / "serving") == []


def test_published_exports_have_the_usual_modes(tmp_path):
    previous = os.umask(0o022)
    try:
        result = export.export_and_verify(_served_model(), str(tmp_path / "serving"), str(tmp_path / "m.onnx"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(result["savedmodel"]).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(result["onnx"]).st_mode) == 0o644
    for root, _dirs, files in os.walk(result["savedmodel"]):
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) & 0o044 == 0o044, name


def _striped_folder(root):
    """train/ and test/ with two classes of 512x384 PNGs with fine stripes, which a resize without
    antialiasing aliases; returns the test files in the order the test split reads them."""
    test_files = []
    for split in ("train", "test"):
        for cls, period in (("coarse", 7), ("fine", 3)):  # sorted: the split's class order
            for i in range(2):
                rows = (np.arange(384)[:, None] + i) % period < period // 2 + 1
                image = np.where(rows[..., None], [250, 240, 10 * i], [5, 20, 200]).astype("uint8")
                path = root / split / cls / f"{i}.png"
                os.makedirs(path.parent, exist_ok=True)
                path.write_bytes(tf.io.encode_png(np.broadcast_to(image, (384, 512, 3))).numpy())
                if split == "test":
                    test_files.append(str(path))
    return test_files


@pytest.mark.parametrize("native", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["resize", "shorter_side_crop"])
def test_serve_image_bytes_matches_the_evaluation_path(tmp_path, native):
    from keras_resnet_v2.training import data

    test_files = _striped_folder(tmp_path / "images")
    # As resnet-v2-train loads a folder: resized to the input size, or kept native (ImageNet-style).
    splits = data.load_folder(str(tmp_path / "images"), image_size=None if native else 32)
    test = data.pipeline(splits.test, splits.info, 4, training=False, image_size=32)
    inputs = keras.Input((32, 32, 3))
    x = krv2.Standardize(mean=[128.0] * 3, variance=[5000.0] * 3)(inputs)
    keras.utils.set_random_seed(0)
    model = krv2.ResNet(8, input_tensor=x, classes=2)
    # Sharper probabilities than an untrained net's near-0.5 ones, so the self-check at the end
    # (the other mode answers otherwise) holds whatever the initial weights.
    kernel = model.get_layer("predictions").kernel
    kernel.assign(kernel * 30.0)
    evaluated = np.concatenate([np.asarray(model(images, training=False)) for images, _ in test])
    mode = "shorter_side_crop" if native else "resize"
    version = export.export_savedmodel(model, str(tmp_path / "serving"), preprocessing=mode)
    meta = json.loads(open(os.path.join(version, "assets", "metadata.json")).read())
    assert meta["image_bytes_preprocessing"] == mode
    encoded = tf.constant([open(f, "rb").read() for f in test_files])
    served = tf.saved_model.load(version).signatures["serve_image_bytes"](image_bytes=encoded)["probabilities"]
    assert served.shape == evaluated.shape == (4, 2)
    np.testing.assert_allclose(served.numpy(), evaluated, rtol=1e-5, atol=1e-6)
    # The other mode gives these images other probabilities: the check above can fail.
    from keras_resnet_v2.plumbing import images as image_ops

    other = "resize" if native else "shorter_side_crop"
    decoded = [tf.io.decode_image(open(f, "rb").read(), channels=3) for f in test_files]
    otherwise = model(tf.stack([image_ops.prepare(image, 32, 32, other) for image in decoded]), training=False)
    assert np.abs(np.asarray(otherwise) - evaluated).max() > 1e-3


@pytest.mark.parametrize("text, said", [
    ('{"class_names": ["a", "b", "c"], "model": ', r"config.json is damaged \(not valid JSON: Expecting value"),
    ('["a", "b", "c"]', "config.json is damaged: it must hold a JSON object. Received: list"),
    ('{"class_names": 5}', r"config.json is damaged: `class_names` must be a list .* Received: class_names=5"),
    ('{"class_names": [[1], 2, "c"]}', r"`class_names` must be a list of class-name strings. .*=\[\[1\]"),
])
def test_a_damaged_run_config_is_one_line_naming_the_file_and_the_key(tmp_path, capsys, text, said):
    from keras_resnet_v2.export.__main__ import main

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _served_model().save(run_dir / "model.keras")
    (run_dir / "config.json").write_text(text)
    assert main([str(run_dir), "--onnx", str(tmp_path / "m.onnx")]) == 1
    err = message_lines(capsys.readouterr().err)
    assert len(err) == 1 and str(run_dir / "config.json") in err[0], err
    assert re.search(said, err[0]), err
    assert not (tmp_path / "m.onnx").exists()


def test_a_keras_file_that_is_a_decompression_bomb_is_refused_before_loading(tmp_path, capsys):
    import zipfile

    from keras_resnet_v2.export.__main__ import main

    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.json", '{"keras_version": "3.15.1"}')
        archive.writestr("config.json", '{"class_name": "Functional", "config": {}}')
        with archive.open("model.weights.h5", "w") as member:
            for _ in range(100):  # 100 MiB of zeros: about 100 KB deflated
                member.write(bytes(1 << 20))
    assert bomb.stat().st_size < 1 << 20
    assert main([str(bomb), "--onnx", str(tmp_path / "m.onnx")]) == 1
    err = message_lines(capsys.readouterr().err)
    assert len(err) == 1 and "member 'model.weights.h5' inflates" in err[0], err
    assert "decompression bomb" in err[0] and not (tmp_path / "m.onnx").exists()
    # A real model file passes the check (weights compress about 1.1x).
    _served_model().save(tmp_path / "real.keras")
    from keras_resnet_v2.plumbing.files import model_file

    assert model_file(str(tmp_path / "real.keras")) == str(tmp_path / "real.keras")


@pytest.mark.slow
def test_a_bare_network_is_exported_with_its_input_scale_or_a_warning(tmp_path, capsys):
    # A ResNet20() trained on x / 255 with no scaling layer: served 0-255 pixels went in unscaled
    # (0/16 served PNGs right). input_scale builds the scale into the exports, which are verified with it.
    keras.utils.set_random_seed(0)
    bare = _trained_like_bare()
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 16, 16, 3)).astype("float32")
    result = export.export_and_verify(bare, str(tmp_path / "serving"), str(tmp_path / "m.onnx"), input_scale=1 / 255)
    assert result["report"]["passed"]
    served = tf.saved_model.load(result["savedmodel"]).signatures["serving_default"](images=tf.constant(pixels))
    np.testing.assert_allclose(served["probabilities"].numpy(), np.asarray(bare(pixels / 255, training=False)),
                               rtol=1e-4, atol=1e-6)
    assert not np.allclose(served["probabilities"].numpy(), np.asarray(bare(pixels, training=False)), atol=1e-3)
    meta = json.loads(open(os.path.join(result["savedmodel"], "assets", "metadata.json")).read())
    assert meta["input"].startswith("RGB pixel values 0-255; any normalization is inside the model")
    # Without input_scale: a warning, and metadata.json says the pixels go in unchanged.
    with pytest.warns(UserWarning, match="has no scaling layer .* in front of its stem: the exports pass 0-255"):
        version = export.export_savedmodel(bare, str(tmp_path / "serving"))
    assert "passed to the network unchanged" in json.loads(open(os.path.join(version, "assets",
                                                                                 "metadata.json")).read())["input"]
    for bad in (0, -1.0, float("nan"), "1/255", True):
        with pytest.raises(ValueError, match="`input_scale` must be a positive number"):
            export.export_and_verify(bare, str(tmp_path / "other"), input_scale=bad)
    assert not (tmp_path / "other").exists()
    # The command line: --input-scale, and the warning as one line.
    from keras_resnet_v2.export.__main__ import main

    bare.save(tmp_path / "bare.keras")
    assert main([str(tmp_path / "bare.keras"), "--onnx", str(tmp_path / "w.onnx")]) == 0
    err = message_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("warning: 'resnet8") and "--input-scale" in err[0], err
    scaled = tmp_path / "s.onnx"
    assert main([str(tmp_path / "bare.keras"), "--onnx", str(scaled), "--input-scale", "0.00392156862745098"]) == 0
    assert message_lines(capsys.readouterr().err) == []
    assert main(["verify", str(tmp_path / "bare.keras"), "--onnx", str(scaled), "--input-scale", "0"]) == 1
    assert "--input-scale must be a positive number" in capsys.readouterr().err


def _trained_like_bare():
    """A bare ResNet-8 (no scaling layer) whose BatchNorm statistics are those of x / 255 inputs."""
    model = krv2.ResNet(8, input_shape=(16, 16, 3), classes=3)
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.momentum = 0.0
    model(np.random.default_rng(1).uniform(0, 1, (8, 16, 16, 3)).astype("float32"), training=True)
    for layer in layers:
        layer.momentum = 0.99
    kernel = model.get_layer("predictions").kernel
    kernel.assign(kernel * 10.0)  # sharp probabilities: scaled and unscaled inputs tell apart
    return model


def _encoded(array, fmt, **options) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


def test_declared_image_sizes_are_read_from_every_format_header():
    from keras_resnet_v2.export import image_bytes

    rgb = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, rgb[..., :1]])
    for array, fmt, options in ((rgb, "PNG", {}), (rgb, "JPEG", {}), (rgb, "GIF", {}), (rgb, "BMP", {}),
                                (rgb, "WEBP", {"lossless": True}), (rgb, "WEBP", {"quality": 80}),
                                (rgba, "WEBP", {"quality": 80})):  # VP8L, VP8 and VP8X headers
        assert image_bytes.declared_size(tf.constant(_encoded(array, fmt, **options))).numpy().tolist() == [37, 53], fmt
    assert image_bytes.declared_size(tf.constant(b"not an image")).numpy().tolist() == [0, 0]
    # A GIF is cut after its first frame (TensorFlow's decoder expands every frame otherwise).
    import io

    from PIL import Image

    frames = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 30, 3), dtype=np.uint8)) for i in range(6)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    animation = tf.constant(buffer.getvalue())
    cut = image_bytes.first_gif_frame(animation)
    assert tf.io.decode_gif(animation).shape[0] == 6 and tf.io.decode_gif(cut).shape[0] == 1
    np.testing.assert_array_equal(tf.io.decode_gif(cut)[0].numpy(), tf.io.decode_gif(animation)[0].numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match="first frame is incomplete"):
        image_bytes.first_gif_frame(tf.constant(buffer.getvalue()[:200]))  # cut inside the first frame
    assert image_bytes.max_pixels(32, 32) == 4096 * 4096 and image_bytes.max_pixels(448, 448) == 256 * 448 * 448


MEMORY_PROBE = textwrap.dedent("""
    import json, resource, sys
    import tensorflow as tf
    serve = tf.saved_model.load(sys.argv[1]).signatures["serve_image_bytes"]
    files = {name: open(f"{sys.argv[2]}/{name}", "rb").read() for name in ("bomb.png", "frames.gif", "first.gif")}
    serve(image_bytes=tf.constant([files["first.gif"]]))  # warm: the first call builds the kernels
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        serve(image_bytes=tf.constant([files["bomb.png"]] * 4))
        refused = ""
    except tf.errors.InvalidArgumentError as error:
        refused = error.message
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    frames = serve(image_bytes=tf.constant([files["frames.gif"]]))["probabilities"].numpy().tolist()
    first = serve(image_bytes=tf.constant([files["first.gif"]]))["probabilities"].numpy().tolist()
    print(json.dumps({"refused": refused, "grown_mb": grown, "frames": frames, "first": first}))
""")


@pytest.mark.slow
def test_serve_image_bytes_refuses_decompression_bombs_in_bounded_memory(tmp_path):
    from PIL import Image

    version = export.export_savedmodel(_served_model(), str(tmp_path / "serving"))
    meta = json.loads(open(os.path.join(version, "assets", "metadata.json")).read())
    assert meta["image_bytes_max_pixels"] == 4096 * 4096 and meta["image_bytes_decodes_at_once"] == 4
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")  # 48 KB that decodes to 1.2 GB of RGB
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)) for _ in range(6)]
    frames[0].save(tmp_path / "frames.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "first.gif")
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, version, str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "declares more than 16,777,216 pixels" in report["refused"] and "20000" in report["refused"], report
    assert report["grown_mb"] < 300, report  # four decoded bombs: 4.8 GB
    # An animation is served from its first frame, the only one decoded.
    np.testing.assert_allclose(report["frames"], report["first"], rtol=1e-6)


def _damaged_copies(source: str, folder) -> dict:
    """Copies of a `.keras` file as a crash or a bad disk leaves them: cut short, and bytes changed inside
    its config and inside its weights (the zip stays readable; its checksums do not match)."""
    import zipfile

    data = open(source, "rb").read()
    entries = {info.filename: info for info in zipfile.ZipFile(source).infolist()}
    copies = {"truncated": data[: len(data) // 2]}
    for name, member in (("config", "config.json"), ("weights", "model.weights.h5")):
        start = entries[member].header_offset + 30 + len(member) + entries[member].compress_size // 2
        changed = bytearray(data)
        changed[start:start + 32] = bytes(b ^ 0x5A for b in changed[start:start + 32])
        copies[name] = bytes(changed)
    paths = {}
    for name, content in copies.items():
        (folder / name).mkdir()
        (folder / name / "checkpoints").mkdir()
        paths[name] = folder / name / "checkpoints" / "best.keras"
        paths[name].write_bytes(content)
    return paths


def test_a_damaged_keras_file_is_one_line_naming_it_in_export_verify_and_evaluate(tmp_path, capsys):
    # Issue 37: model.keras, checkpoints/best.keras or last.keras damaged after training reach resnet-v2-export,
    # its verify and resnet-v2-train evaluate; each names the file in one line and exits non-zero, no traceback.
    from keras_resnet_v2.export.__main__ import main as export_main
    from keras_resnet_v2.training import cli

    _served_model().save(tmp_path / "good.keras")
    for kind, path in _damaged_copies(str(tmp_path / "good.keras"), tmp_path).items():
        onnx_path = str(tmp_path / f"{kind}.onnx")
        calls = {"export": (export_main, [str(path), "--onnx", onnx_path]),
                 "verify": (export_main, ["verify", str(path), "--onnx", onnx_path]),
                 "evaluate": (cli.main, ["evaluate", "--model", str(path), "--dataset", "digits"])}
        for command, (main, argv) in calls.items():
            capsys.readouterr()
            code = main(argv)
            lines = message_lines(capsys.readouterr().err)
            assert code != 0, (kind, command)
            assert len(lines) == 1 and lines[0].startswith("error: MODEL") and str(path) in lines[0], (kind, lines)
            assert ("not a .keras archive" if kind == "truncated" else "Bad CRC-32") in lines[0], (kind, lines)
        assert not (tmp_path / f"{kind}.onnx").exists()


# Slow tier (16 s here): the fast tier keeps the stand-in's one-request checks (bad requests, signatures).
@pytest.mark.slow
def test_eight_threads_of_requests_are_answered_as_each_alone_in_bounded_memory(tmp_path):
    # Issue 37: 8 threads x 200 requests to each SavedModel signature and to one shared ONNX Runtime session;
    # serve_image_bytes' stream mixes valid, oversized and broken images. A separate process, for its memory.
    result = export.export_and_verify(_served_model(), str(tmp_path / "serving"), str(tmp_path / "m.onnx"))
    script = os.path.join(os.path.dirname(__file__), "scripts", "serve_concurrently.py")
    done = subprocess.run([sys.executable, script, result["savedmodel"], result["onnx"], "8", "200"],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["distinct_answers"] == 48  # a request answered with another one's output would show
    assert report["bad_requests"] == report["refused_alone"] == 16
    for name in ("serving_default", "serve_uint8", "serve_image_bytes", "onnx"):
        assert report[name]["requests"] == 1600 and report[name]["wrong"] == 0, (name, report)
        assert report[name]["worst_relative_error"] <= 1e-6, (name, report)
    # Measured: +3 MiB over 6,400 requests after the first round (861 MiB). A leak of 8 KiB a request would
    # add 50 MiB.
    assert report["rss_mib_after"] - report["rss_mib_after_one_round"] < 48, report
