"""The table of export formats: every format written, verified and published alike (issue 34)."""

import dataclasses
import errno
import json
import os

import keras
import numpy as np
import pytest

import keras_resnet_v2 as krv2
from conftest import message_lines
from keras_resnet_v2 import export
from keras_resnet_v2.export import formats, litert, openvino
from keras_resnet_v2.export.__main__ import _parser, _wants_int8, main

LABELS = ["cat", "dog", "bird"]


def _model(seed=0):
    """A small net with a Standardize layer in front, BatchNorm statistics as after training."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 3), name="images")
    x = krv2.Standardize(mean=[120.0, 110.0, 100.0], variance=[3000.0, 2800.0, 2600.0])(inputs)
    model = krv2.ResNet(8, input_tensor=x, classes=3)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_variance.assign(rng.uniform(1.0, 2.0, layer.moving_variance.shape).astype("float32"))
    return model


def _images(n, seed=1):
    return np.random.default_rng(seed).uniform(0, 255, (n, 16, 16, 3)).astype("float32")


def _visible(folder):
    return sorted(n for n in os.listdir(folder) if not n.startswith("."))


def _targets(folder):
    return {"savedmodel": str(folder / "serving"), "onnx": str(folder / "m.onnx"), "litert": str(folder / "m.tflite"),
            "openvino": str(folder / "m.xml"), "int8_onnx": str(folder / "m.int8.onnx"),
            "int8_litert": str(folder / "m.int8.tflite")}


def test_every_format_is_written_verified_and_published_with_its_metadata(tmp_path):
    model = _model()
    result = export.export_and_verify(model, labels=LABELS, calibration=_images(64), max_accuracy_drop=100,
                                      **_targets(tmp_path))
    report = result["report"]
    assert report["passed"] and set(formats.BY_NAME) <= set(report)
    assert _visible(tmp_path) == sorted(["serving", "m.onnx", "m.tflite", "m.xml", "m.bin", "m.int8.onnx",
                                         "m.int8.tflite"])
    assert result["report_path"] == os.path.join(result["savedmodel"] + ".verification.json")
    for name in ("savedmodel", "onnx", "litert", "openvino"):  # float32: within the float32 bound
        assert report[name]["max_rel_error"] <= report["max_relative_error_allowed"], (name, report[name])
        assert report[name]["classes_match"], name
    for name in ("int8_onnx", "int8_litert"):  # int8: agreement on the (unlabelled) calibration images
        assert report[name]["images"] == 64 and 0 < report[name]["top1_agreement"] <= 1 and report[name]["passed"]
    # Each file says what it is, with the class names, inside it.
    assert litert.read_metadata(result["litert"])["class_names"] == LABELS
    int8_meta = litert.read_metadata(result["int8_litert"])
    assert int8_meta["precision"] == "int8" and int8_meta["quantization"]["calibration_images"] == 64
    assert openvino.read_metadata(result["openvino"])["class_names"] == LABELS
    import onnx

    props = {p.key: p.value for p in onnx.load(result["int8_onnx"]).metadata_props}
    assert json.loads(props["class_names"]) == LABELS and props["precision"] == "int8"
    assert {n.op_type for n in onnx.load(result["int8_onnx"]).graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    # Every file answers float32 pixels [N, 16, 16, 3] with probabilities: the same client code for each.
    x = _images(5, seed=7)
    reference = np.asarray(model(x, training=False))
    for name in ("onnx", "litert", "openvino"):
        probabilities, classes = formats.BY_NAME[name].answer(result[name])(x)
        np.testing.assert_allclose(probabilities, reference, atol=1e-5, err_msg=name)
        assert probabilities.shape == (5, 3) and list(classes) == list(reference.argmax(-1)), name
    for name in ("int8_onnx", "int8_litert"):
        probabilities, _ = formats.BY_NAME[name].answer(result[name])(x)
        assert probabilities.shape == (5, 3) and np.allclose(probabilities.sum(-1), 1, atol=0.02), name


def test_an_int8_export_that_loses_accuracy_is_refused_and_nothing_is_published(tmp_path):
    model = _model()
    colours = np.random.default_rng(3).uniform(0, 255, (200, 1, 1, 3))  # solid colours: the net tells them apart
    x = np.broadcast_to(colours, (200, 16, 16, 3)).astype("float32")
    keras_classes = np.asarray(model(x, training=False)).argmax(-1)
    assert len(set(keras_classes)) > 1  # a check that can fail: the net answers more than one class
    # Calibrated on black images, every activation range is tiny: the int8 net saturates.
    with pytest.raises(export.VerificationError, match="int8 loses .* points of accuracy"):
        export.export_and_verify(model, int8_onnx=str(tmp_path / "q.onnx"), calibration=np.zeros((8, 16, 16, 3)),
                                 evaluation=(x, keras_classes), max_accuracy_drop=1.0)
    assert _visible(tmp_path) == ["q.onnx.verification.json"]
    report = json.loads((tmp_path / "q.onnx.verification.json").read_text())
    assert not report["passed"] and report["int8_onnx"]["accuracy_drop_points"] > 1
    assert report["int8_onnx"]["float32_accuracy"] == 1.0


@pytest.mark.parametrize("case, kwargs, expected", [
    ("unknown format", {"tflite": "m.tflite"}, "Unknown export format"),
    ("no calibration", {"int8_onnx": "q.onnx"}, "--int8-onnx needs calibration images"),
    ("suffix", {"litert": "m.onnx"}, "LiteRT file name must end in .tflite"),
    ("same file", {"onnx": "m.onnx", "int8_onnx": "m.onnx", "calibration": np.zeros((2, 16, 16, 3))},
     "--int8-onnx and --onnx would write the same file"),
    ("calibration shape", {"int8_onnx": "q.onnx", "calibration": np.zeros((2, 8, 8, 3))}, "`calibration` must be"),
    ("drop", {"onnx": "m.onnx", "max_accuracy_drop": -1}, "`max_accuracy_drop` must be"),
    ("labels", {"litert": "m.tflite", "labels": ["one", "two"]}, "`labels` must name each of the 3 classes"),
])
def test_bad_arguments_are_one_line_before_anything_is_written(tmp_path, case, kwargs, expected):
    kwargs = {k: str(tmp_path / v) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=expected) as raised:
        export.export_and_verify(_model(), **kwargs)
    assert "\n" not in str(raised.value) and _visible(tmp_path) == []


def test_a_symlinked_target_and_a_missing_runtime_are_refused(tmp_path):
    (tmp_path / "elsewhere.tflite").write_bytes(b"")
    (tmp_path / "m.tflite").symlink_to(tmp_path / "elsewhere.tflite")
    with pytest.raises(ValueError, match="symbolic link"):
        export.export_and_verify(_model(), litert=str(tmp_path / "m.tflite"))
    (tmp_path / "w.bin").mkdir()  # OpenVINO's weights file would be a folder
    with pytest.raises(ValueError, match="is a directory"):
        export.export_and_verify(_model(), openvino=str(tmp_path / "w.xml"))
    absent = dataclasses.replace(formats.BY_NAME["litert"], runtime=(("no_such_runtime_module", "no-such-runtime"),))
    with pytest.raises(ValueError, match='--litert needs no-such-runtime: pip install "keras_resnet_v2\\[deploy\\]"'):
        absent.check_runtime()


def test_a_full_disk_in_a_later_format_publishes_none_of_them(tmp_path, monkeypatch):
    def full_disk(model, folder, name, labels, extra):
        open(os.path.join(folder, name), "w").write("<half")
        raise OSError(errno.ENOSPC, "No space left on device", folder)

    monkeypatch.setattr(openvino, "_write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        export.export_and_verify(_model(), str(tmp_path / "serving"), str(tmp_path / "m.onnx"),
                                 litert=str(tmp_path / "m.tflite"), openvino=str(tmp_path / "m.xml"))
    assert _visible(tmp_path) == ["serving"] and _visible(tmp_path / "serving") == []
    assert [n for n in os.listdir(tmp_path) if not n.endswith(".lock") and n != "serving"] == []


def test_verify_names_a_damaged_file_of_each_format_in_one_line(tmp_path):
    model = _model()
    (tmp_path / "m.tflite").write_bytes(b"TFL3 not a flatbuffer")
    (tmp_path / "m.xml").write_text("<net>")
    for name, path in (("litert", "m.tflite"), ("openvino", "m.xml")):
        with pytest.raises(export.VerificationError, match="does not load") as raised:
            export.verify(model, **{name: str(tmp_path / path)})
        assert "\n" not in str(raised.value), name


def _format_flags(command: str) -> dict:
    """flag -> (metavar, help) of a resnet-v2-export command's parser, for the table's formats."""
    actions = _parser().commands[command]._actions
    return {action.option_strings[0]: (action.metavar, action.help) for action in actions
            if action.option_strings and action.dest in formats.BY_NAME}


def test_the_command_line_has_one_flag_per_format_and_refuses_int8_without_images(tmp_path, capsys):
    for command in ("export", "verify"):  # flags, arguments and help lines are the table's
        target = "target" if command == "export" else "verify_target"
        assert _format_flags(command) == {e.flag: (getattr(e, target), e.purpose) for e in formats.FORMATS}
    assert [name for name in formats.BY_NAME if _wants_int8({name: 1})] == [e.name for e in formats.FORMATS if e.int8]
    _model().save(tmp_path / "model.keras")
    code = main([str(tmp_path / "model.keras"), "--int8-litert", str(tmp_path / "q.tflite")])
    err = message_lines(capsys.readouterr().err)
    assert code == 1 and len(err) == 1 and "give --calibration DIR" in err[0], err
    assert _visible(tmp_path) == ["model.keras"]


def test_a_folder_of_images_calibrates_an_int8_export_from_the_command_line(tmp_path, capsys):
    import tensorflow as tf

    folder = tmp_path / "calibration"
    folder.mkdir()
    for i, image in enumerate(_images(12, seed=5).astype("uint8")):
        (folder / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    _model().save(tmp_path / "model.keras")
    out = tmp_path / "out"
    out.mkdir()
    code = main([str(tmp_path / "model.keras"), "--int8-onnx", str(out / "q.onnx"), "--calibration", str(folder),
                 "--calibration-images", "8", "--max-accuracy-drop", "100"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "int8: calibrating on 8 images of" in captured.out and "checking on 4 unlabelled images" in captured.out
    report = json.loads((out / "q.onnx.verification.json").read_text())
    assert report["int8_onnx"]["images"] == 4 and report["int8_onnx"]["accuracy"] is None
    code = main(["verify", str(tmp_path / "model.keras"), "--int8-onnx", str(out / "q.onnx"), "--calibration",
                 str(folder), "--max-accuracy-drop", "100"])
    assert code == 0 and json.loads((out / "q.onnx.verification.json").read_text())["int8_onnx"]["images"] == 12


@pytest.mark.slow
def test_a_trained_digits_network_keeps_its_accuracy_in_int8_in_every_format(tmp_path):
    """A trained network in every format: float32 files within the float32 bound with the Keras model's
    top-1 on every test image; int8 ONNX and LiteRT within the default gate (1 point) and agreeing on
    >= 98.5% (measured: 0 and -0.28 points, 99.4-99.7%; benchmarks/RESULTS.md; a rerun's training may differ
    in the last digits, so the test holds the gate, not the measured figures)."""
    import subprocess
    import sys

    run_dir, export_dir = tmp_path / "run", tmp_path / "export"
    command = [sys.executable, "-m", "keras_resnet_v2.training", "--dataset", "digits", "--model", "resnet20",
               "--epochs", "15", "--batch-size", "64", "--run-dir", str(run_dir), "--quiet",
               "--export-dir", str(export_dir), "--export-formats", ",".join(formats.BY_NAME)]
    done = subprocess.run(command, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((export_dir / "savedmodel" / "1.verification.json").read_text())
    assert report["passed"] and report["evaluation_images"] == 360  # the whole digits test split
    for name in ("savedmodel", "onnx", "litert", "openvino"):
        assert report[name]["max_rel_error"] <= report["max_relative_error_allowed"], name
        assert report[name]["evaluation_top1_agreement"] == 1.0, name
    for name in ("int8_onnx", "int8_litert"):
        assert report[name]["accuracy_drop_points"] <= 1.0 and report[name]["top1_agreement"] >= 0.985, report
    sample = np.load(run_dir / "deploy_sample.npz")
    assert sample["calibration"].shape == (512, 32, 32, 3) and sample["calibration"].dtype == np.uint8
    assert sample["test_images"].shape == (360, 32, 32, 3) and sample["test_labels"].shape == (360,)
    # The command line exports from the run's deploy sample, without the dataset or the training code.
    out = tmp_path / "again"
    out.mkdir()
    assert main([str(run_dir), "--int8-onnx", str(out / "q.onnx"), "--calibration-images", "128"]) == 0
    again = json.loads((out / "q.onnx.verification.json").read_text())["int8_onnx"]
    assert again["images"] == 360 and again["accuracy_drop_points"] <= 1.0
    props = {p.key: p.value for p in __import__("onnx").load(out / "q.onnx").metadata_props}
    assert json.loads(props["quantization"])["calibration_images"] == 128
    assert json.loads(props["class_names"]) == [str(i) for i in range(10)]
    assert main(["verify", str(run_dir), "--litert", str(export_dir / "model.tflite"), "--openvino",
                 str(export_dir / "model.xml"), "--int8-litert", str(export_dir / "model.int8.tflite")]) == 0


def test_training_refuses_an_unknown_export_format_before_it_starts(tmp_path, capsys):
    from keras_resnet_v2.training import cli

    code = cli.main(["--dataset", "digits", "--model", "resnet8", "--epochs", "1", "--batch-size", "256", "--run-dir",
                     str(tmp_path / "run"), "--quiet", "--export-dir", str(tmp_path / "x"), "--export-formats",
                     "savedmodel,tflite"])
    err = message_lines(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and "--export-formats must be a comma-separated list" in err[0], err
    assert not (tmp_path / "run").exists() and not (tmp_path / "x").exists()


def test_a_deploy_sample_round_trips_and_a_damaged_one_is_one_line(tmp_path):
    from keras_resnet_v2.plumbing import samples

    images = _images(6)
    samples.write_sample(str(tmp_path), images[:4], images[4:], [1, 2])
    back = samples.read_sample(str(tmp_path))
    np.testing.assert_array_equal(back["calibration"], np.round(images[:4]))  # pixels stored as uint8
    assert back["test_labels"].tolist() == [1, 2] and back["test_images"].dtype == np.float32
    (tmp_path / samples.SAMPLE_FILE).write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ValueError, match="deploy_sample.npz is damaged") as raised:
        samples.read_sample(str(tmp_path))
    assert "\n" not in str(raised.value)
    with pytest.raises(ValueError, match="has no deploy_sample.npz"):
        samples.read_sample(str(tmp_path / "elsewhere"))


def test_a_new_format_is_its_module_and_its_table_entry(tmp_path, monkeypatch, capsys):
    """A `.keras` copy as a format: its module (stage, answer) and one entry, and nothing else changes. The
    command lines (flags, help, --export-formats), export_and_verify and verify take it from the table."""
    import sys
    import types

    from keras_resnet_v2.export.staging import stage_file
    from keras_resnet_v2.training import cli as train_cli

    writer = types.ModuleType("keras_resnet_v2.export.keras_copy")

    def stage(entry, model, path, options):
        return stage_file(path, lambda tmp: model.save(tmp), ".keras")

    def answer(path):
        reloaded = keras.models.load_model(path, compile=False)

        def run(images):
            probabilities = np.asarray(reloaded(images, training=False))
            return probabilities, probabilities.argmax(-1)

        return run

    writer.stage, writer.answer = stage, answer
    entry = formats.Format("keras_copy", "Keras copy", ".keras", "copy.keras", "a .keras copy, for the test",
                           "keras_copy")
    monkeypatch.setitem(sys.modules, writer.__name__, writer)
    monkeypatch.setattr(formats, "FORMATS", (*formats.FORMATS, entry))
    monkeypatch.setattr(formats, "BY_NAME", {**formats.BY_NAME, entry.name: entry})

    assert _format_flags("export")["--keras-copy"] == ("FILE", "a .keras copy, for the test")
    assert "keras-copy" in train_cli._export_formats_help()
    assert formats.parse_names("onnx,keras-copy") == ("onnx", "keras_copy")
    model = _model()
    result = export.export_and_verify(model, keras_copy=str(tmp_path / "m.keras"), onnx=str(tmp_path / "m.onnx"))
    assert result["keras_copy"] == str(tmp_path / "m.keras") and os.path.isfile(result["keras_copy"])
    assert result["report"]["keras_copy"]["max_abs_error"] == 0.0  # the same weights, the same kernels
    assert export.verify(model, keras_copy=result["keras_copy"])["passed"]
    model.save(tmp_path / "model.keras")
    capsys.readouterr()
    assert main([str(tmp_path / "model.keras"), "--keras-copy", str(tmp_path / "cli.keras")]) == 0
    out = capsys.readouterr().out
    assert f"Keras copy: {tmp_path / 'cli.keras'}" in out and os.path.isfile(tmp_path / "cli.keras")
    assert main(["verify", str(tmp_path / "model.keras"), "--keras-copy", str(tmp_path / "cli.keras")]) == 0

