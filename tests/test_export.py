"""SavedModel and ONNX exports agree with the Keras model, and are written safely."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_resnet_v2 as krv2
from conftest import message_lines, tiered
from keras_resnet_v2 import export

# TF Serving's config files, written beside the versions once one is published (export/tf_serving.py)
SERVING_CONFIGS = ["batching_parameters.txt", "models.config"]


def _listing(folder):
    """What a server or a user sees in `folder`: everything but the hidden lock files."""
    return sorted(n for n in os.listdir(folder) if not n.endswith(".lock"))


def _trained_like(model, seed=0):
    """Non-trivial BatchNorm statistics, as after training (an untrained net in inference
    mode passes unnormalized activations)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_variance.assign(rng.uniform(1.0, 2.0, layer.moving_variance.shape).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape).astype("float32"))
    return model


def _calibrated(model, images):
    """BatchNorm moving statistics set to the batch statistics of `images` (momentum 0 for one
    training-mode pass), so inference normalizes every layer as training does: activations of
    the size a trained net has, where random moving statistics would let a 1001-layer net blow up."""
    layers = [layer for layer in model.layers if isinstance(layer, (keras.layers.BatchNormalization, krv2.UnitStack))]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    model(images, training=True)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    return model


MODELS = {
    "original_cifar": lambda: krv2.ResNet20(unit="original"),
    "preact_imagenet": lambda: krv2.ResNet18(input_shape=(64, 64, 3), classes=5),
    "gated": lambda: krv2.ResNet20(shortcut="exclusive_gating"),
    "mixed_float16": lambda: krv2.ResNet20(dtype="mixed_float16"),
    "logits": lambda: krv2.ResNet20(classifier_activation=None, classes=4),
}


@pytest.mark.parametrize("key", tiered(sorted(MODELS), slow={"preact_imagenet", "gated", "logits", "mixed_float16"}))
def test_savedmodel_and_onnx_match_keras(key, tmp_path):
    model = _trained_like(MODELS[key]())
    saved = export.export_savedmodel(model, str(tmp_path / "serving"))
    onnx_path = export.export_onnx(model, str(tmp_path / "model.onnx"))
    report = export.verify(model, savedmodel_dir=saved, onnx_path=onnx_path,
                           report_path=str(tmp_path / "verification.json"))
    assert report["passed"]
    for kind in ("savedmodel", "onnx"):
        assert report[kind]["max_rel_error"] < 1e-4 and report[kind]["classes_match"], report
    assert json.loads((tmp_path / "verification.json").read_text())["passed"] is True
    assert os.path.basename(saved) == "1" and os.path.isfile(os.path.join(saved, "saved_model.pb"))
    meta = json.loads(open(os.path.join(saved, "assets", "metadata.json")).read())
    assert meta["classes"] == model.output_shape[-1] and meta["model_name"] == model.name


def test_mixed_precision_exports_in_float32(tmp_path):
    model = krv2.ResNet20(dtype="mixed_float16")
    copy = export.float32_copy(model)
    assert {layer.dtype_policy.name for layer in copy.layers} == {"float32"}
    for a, b in zip(model.weights, copy.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_signatures_and_saved_model_cli(tmp_path):
    model = _trained_like(krv2.ResNet20(classes=3))
    saved = export.export_savedmodel(model, str(tmp_path / "serving"), labels=["a", "b", "c"])
    cli = shutil.which("saved_model_cli", path=os.path.dirname(sys.executable)) or shutil.which("saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", saved, "--all"], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for signature in ("serving_default", "serve_uint8", "serve_image_bytes"):
        assert f"signature_def['{signature}']" in shown.stdout
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    run = subprocess.run([cli, "run", "--dir", saved, "--tag_set", "serve", "--signature_def", "serving_default",
                          "--inputs", f"images={tmp_path / 'x.npy'}", "--outdir", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    served = np.load(tmp_path / "out" / "probabilities.npy")
    np.testing.assert_allclose(served, np.asarray(model(x, training=False)), rtol=1e-4, atol=1e-6)
    assert (tmp_path / "serving" / "1" / "assets" / "labels.txt").read_text().split() == ["a", "b", "c"]

    loaded = tf.saved_model.load(saved)
    uint8 = loaded.signatures["serve_uint8"](images=tf.constant(x.astype("uint8")))
    np.testing.assert_allclose(uint8["probabilities"].numpy(),
                               np.asarray(model(x.astype("uint8").astype("float32"), training=False)), rtol=1e-4)
    pngs = tf.stack([tf.io.encode_png(tf.constant(img.astype("uint8"))) for img in x])
    decoded = loaded.signatures["serve_image_bytes"](image_bytes=pngs)
    np.testing.assert_allclose(decoded["probabilities"].numpy(), uint8["probabilities"].numpy(), rtol=1e-4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="(?i)unknown image file format|image"):
        loaded.signatures["serve_image_bytes"](image_bytes=tf.constant([b"not an image"]))


@pytest.mark.slow
def test_versions_are_numbered_and_never_overwritten_silently(tmp_path):
    model = krv2.ResNet20()
    base = str(tmp_path / "serving")
    first = export.export_savedmodel(model, base)
    second = export.export_savedmodel(model, base)
    assert [os.path.basename(first), os.path.basename(second)] == ["1", "2"]
    before = {name: os.path.getmtime(os.path.join(first, name)) for name in os.listdir(first)}
    with pytest.raises(FileExistsError, match="Version 1 already exists"):
        export.export_savedmodel(model, base, version=1)
    assert {name: os.path.getmtime(os.path.join(first, name)) for name in os.listdir(first)} == before
    replaced = export.export_savedmodel(model, base, version=1, overwrite=True)
    assert replaced == first and os.path.isfile(os.path.join(first, "saved_model.pb"))
    assert _listing(base) == ["1", "2", *SERVING_CONFIGS]


def test_a_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    # Fails late: after the SavedModel itself is written, while writing its metadata.
    monkeypatch.setattr(export.savedmodel, "metadata", explode)
    base = tmp_path / "serving"
    with pytest.raises(RuntimeError, match="disk full"):
        export.export_savedmodel(krv2.ResNet20(), str(base))
    assert _listing(base) == []


def test_bad_input_is_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="needs a classifier.*include_top=True"):
        export.export_savedmodel(krv2.ResNet20(include_top=False), str(tmp_path))
    with pytest.raises(ValueError, match="`version` must be a positive integer.*version=0"):
        export.export_savedmodel(krv2.ResNet20(), str(tmp_path), version=0)
    with pytest.raises(ValueError, match="`opset` must be.*opset=7"):
        export.export_onnx(krv2.ResNet20(), str(tmp_path / "m.onnx"), opset=7)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "keras_resnet_v2.export", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_cli_exports_verifies_and_reports_bad_input(tmp_path):
    model = _trained_like(krv2.ResNet20(unit="original"))
    model.save(tmp_path / "model.keras")
    ok = _cli(str(tmp_path), "--savedmodel", str(tmp_path / "serving"), "--onnx", str(tmp_path / "m.onnx"))
    assert ok.returncode == 0, ok.stderr[-3000:]
    report = json.loads((tmp_path / "serving" / "1.verification.json").read_text())
    assert report["passed"] and report["onnx"]["max_rel_error"] < 1e-4 and "savedmodel_s" in report
    again = _cli(str(tmp_path / "model.keras"), "--savedmodel", str(tmp_path / "serving"), "--version", "1")
    assert again.returncode == 1 and "already exists" in again.stderr
    missing = _cli(str(tmp_path / "nope.keras"), "--onnx", str(tmp_path / "x.onnx"))
    assert missing.returncode == 1 and "nope.keras" in missing.stderr
    (tmp_path / "junk.keras").write_bytes(b"junk")
    junk = _cli(str(tmp_path / "junk.keras"), "--onnx", str(tmp_path / "x.onnx"))
    assert junk.returncode == 1 and "exists but is not a .keras archive" in junk.stderr
    verified = _cli("verify", str(tmp_path / "model.keras"), "--onnx", str(tmp_path / "m.onnx"))
    assert verified.returncode == 0 and "verification passed" in verified.stdout


def test_failed_cli_verification_still_writes_its_report(tmp_path, capsys):
    from keras_resnet_v2.export.__main__ import main

    inputs = keras.Input((16, 16, 3))
    x = krv2.Standardize(mean=[128.0] * 3, variance=[5000.0] * 3)(inputs)  # pixels in: soft outputs
    exported = _trained_like(krv2.ResNet(8, input_tensor=x, classes=3))
    other = keras.models.clone_model(exported)
    other.set_weights(exported.get_weights())
    bias = other.get_layer("predictions").bias
    bias.assign(bias.numpy() + np.array([4.0, 0.0, -4.0], "float32"))  # moves every probability
    version_dir = export.export_savedmodel(exported, str(tmp_path / "serving"))
    other.save(str(tmp_path / "other.keras"))
    assert main(["verify", str(tmp_path / "other.keras"), "--savedmodel", version_dir]) == 1
    assert f"report: {version_dir}.verification.json" in capsys.readouterr().err
    report = json.loads(open(f"{version_dir}.verification.json").read())
    assert report["passed"] is False and report["savedmodel"]["max_rel_error"] > 1e-4
    # The base directory instead of a version: one line naming the version to give, before TensorFlow.
    assert main(["verify", str(tmp_path / "other.keras"), "--savedmodel", str(tmp_path / "serving")]) == 1
    err = message_lines(capsys.readouterr().err)
    assert len(err) == 1 and f"give a version, e.g. {version_dir}" in err[0], err
    # Another model's export (5 classes against 3): one line saying so, and the report is written.
    krv2.ResNet(8, input_tensor=x, classes=5).save(str(tmp_path / "five.keras"))
    assert main(["verify", str(tmp_path / "five.keras"), "--savedmodel", version_dir]) == 1
    err = message_lines(capsys.readouterr().err)
    assert len(err) == 1 and "shape [4, 3], the Keras model [4, 5]: it is not this model's export" in err[0], err
    assert "error" in json.loads(open(f"{version_dir}.verification.json").read())["savedmodel"]


@pytest.mark.slow
def test_resnet1001_savedmodel_and_onnx_match_keras(tmp_path):
    # Issue 4: ResNet-1001 (paper Table 3: 333 bottleneck units, 10.2M parameters) through both exports.
    # Issue 12: in its stacked form (scan=True), whose loops export as loops: 25 s for both exports
    # and verification instead of 226 s for the per-unit graph (benchmarks/RESULTS.md), which
    # tests/test_deep.py still builds and differentiates.
    images = np.random.default_rng(1).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    model = _calibrated(krv2.ResNet1001(scan=True), images)
    assert len([layer for layer in model.layers if isinstance(layer, krv2.UnitStack)]) == 3
    probabilities = model.predict(images, verbose=0)
    # Calibrated, not saturated: the parity check below compares informative outputs.
    assert np.all(np.isfinite(probabilities)) and probabilities.max() < 0.99
    result = export.export_and_verify(model, str(tmp_path / "serving"), str(tmp_path / "r1001.onnx"))
    report = json.loads(open(result["report_path"]).read())
    assert report["passed"] and result["savedmodel"] == str(tmp_path / "serving" / "1")
    # The same TensorFlow kernels: exact. ONNX Runtime's kernels round differently, and a 1001-layer
    # net amplifies rounding: its bound is 5x the Keras model's own float32 noise floor.
    assert report["savedmodel"]["max_rel_error"] < 1e-6 and report["savedmodel"]["classes_match"], report
    assert report["max_relative_error_allowed"] == max(1e-4, 5 * report["float32_noise_floor"])
    assert report["onnx"]["max_rel_error"] <= report["max_relative_error_allowed"] and report["onnx"]["classes_match"]
    assert report["savedmodel_s"] > 0 and report["onnx_s"] > 0
    # Still a real check: one BatchNorm's statistics changed in the Keras model fail verification.
    layer = model.get_layer("stage3_unit2_to_unit111")
    variance = layer.get_weight("2_bn_moving_variance")  # of all 110 units
    variance.assign(variance * 1.5)
    with pytest.raises(export.VerificationError, match="parity failed for onnx"):
        export.verify(model, onnx_path=result["onnx"])


def _dead_pid():
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


KILLED_EXPORT = """
import sys, keras_resnet_v2
from keras_resnet_v2 import export
export.{fn}(keras_resnet_v2.ResNet20(), sys.argv[1])
"""


@pytest.mark.slow
@pytest.mark.parametrize("fn", ["export_savedmodel", "export_onnx"])
def test_a_killed_export_leaves_no_version_and_the_next_export_cleans_up(tmp_path, fn):
    target = tmp_path / ("serving" if fn == "export_savedmodel" else "m.onnx")
    folder = target if fn == "export_savedmodel" else tmp_path
    process = subprocess.Popen([sys.executable, "-c", KILLED_EXPORT.format(fn=fn), str(target)])
    try:
        deadline = time.monotonic() + 300
        while not (folder.is_dir() and any(n.startswith(".tmp-") for n in os.listdir(folder))):
            assert process.poll() is None and time.monotonic() < deadline, "the export never started writing"
            time.sleep(0.05)
        time.sleep(0.5)  # mid-write
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    leftovers = [n for n in os.listdir(folder) if n.startswith(".tmp-")]
    assert leftovers and not any(n == "1" or n == "m.onnx" for n in os.listdir(folder))  # nothing servable
    model = _trained_like(krv2.ResNet20())
    # The killed process's lock died with it: the next export runs and removes the leftovers.
    if fn == "export_savedmodel":
        assert export.export_savedmodel(model, str(target)) == str(target / "1")
        assert _listing(target) == ["1", *SERVING_CONFIGS]
    else:
        export.export_onnx(model, str(target))
        assert _listing(tmp_path) == ["m.onnx"]


def test_leftovers_are_cleaned_under_the_lock_whatever_pid_wrote_them(tmp_path):
    base = tmp_path / "serving"
    old = base / ".old-1-abc" / "v"  # version 1, moved aside by an overwrite that was killed
    old.mkdir(parents=True)
    (old / "saved_model.pb").write_bytes(b"version 1")
    (base / ".tmp-1-def").mkdir()  # the new version 1, killed before it landed
    # Written by a process whose PID is alive again (this one: in a container the exporter is
    # often PID 1 on every start). The lock, not the PID, says no export is running.
    (base / f".tmp-3-{os.getpid()}-ghi").mkdir()
    names = _listing(base)
    with export.savedmodel.DirectoryLock(str(base), "a test"):
        assert export.savedmodel.clean_leftovers(str(base)) == names
    assert _listing(base) == ["1"]
    assert (base / "1" / "saved_model.pb").read_bytes() == b"version 1"


def test_a_second_export_into_a_busy_directory_is_refused_naming_the_first(tmp_path):
    base = tmp_path / "serving"
    model = krv2.ResNet(8, input_shape=(16, 16, 3), classes=3)
    with export.savedmodel.DirectoryLock(str(base), "a running export"):
        (base / ".tmp-1-live").mkdir()  # what the running export is writing: never touched
        with pytest.raises(export.DirectoryBusyError, match=rf"in use by a running export \(pid {os.getpid()}"):
            export.export_savedmodel(model, str(base))
        with pytest.raises(export.DirectoryBusyError, match="in use by a running export"):
            export.export_and_verify(model, str(base), str(tmp_path / "m.onnx"))
        assert _listing(base) == [".tmp-1-live"] and not (tmp_path / "m.onnx").exists()
    assert export.export_savedmodel(model, str(base)) == str(base / "1")


def test_onnx_file_lists_probabilities_first_names_the_batch_axis_and_carries_metadata(tmp_path):
    import onnxruntime as ort

    model = _trained_like(krv2.ResNet(8, input_shape=(16, 16, 3), classes=3))
    path = export.export_onnx(model, str(tmp_path / "m.onnx"), labels=["cat", "dog", "eel"],
                              extra_metadata={"normalization": "per_channel"})
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probabilities", "classes"]
    assert session.get_inputs()[0].shape == ["batch", 16, 16, 3]
    assert session.get_outputs()[0].shape == ["batch", 3]
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    first = session.run(None, {"images": x})[0]  # run(None) gives the probabilities first
    np.testing.assert_allclose(first, np.asarray(model(x, training=False)), rtol=1e-4, atol=1e-6)
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["class_names"]) == ["cat", "dog", "eel"]
    assert json.loads(props["input_shape"]) == [16, 16, 3] and props["normalization"] == "per_channel"
    assert props["keras_resnet_v2"] == krv2.__version__ and "0-255" in props["input"]
