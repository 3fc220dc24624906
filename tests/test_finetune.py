"""resnet-v2-train --init: fine-tuning a run of ours or timm's checkpoint, offline.

timm's checkpoints are written by the tests (the tensor names and shapes of resnetv2_50, random values),
so no timm or network is needed; SOURCE runs are trained here on scikit-learn's digits.
"""

import json
import os
import shutil
import struct
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_resnet_v2
from conftest import kill_after_first_epoch, message_lines
from keras_resnet_v2.plumbing.files import file_sha256
from keras_resnet_v2.training import callbacks as cb
from keras_resnet_v2.training import cli, finetune, optimizers, recipes
from keras_resnet_v2.weights import unit_value, weights_by_unit

RESNETV2_50_UNITS = (3, 4, 6, 3)


def timm_resnetv2_state(widths=(64, 128, 256, 512), units=RESNETV2_50_UNITS, classes=1000, seed=0) -> dict:
    """A randomly initialised state dict with the tensor names and shapes of timm's `resnetv2_50` (at
    `widths`): PreActBottleneck blocks, a 1x1 conv classifier, BatchNorm statistics and counters."""
    rng = np.random.default_rng(seed)
    state = {}

    def conv(key, out, inp, k):
        state[key] = rng.normal(0, (2 / (inp * k * k)) ** 0.5, (out, inp, k, k)).astype("float32")

    def norm(key, channels):
        state[f"{key}.weight"] = rng.uniform(0.5, 1.5, channels).astype("float32")
        state[f"{key}.bias"] = rng.normal(0, 0.1, channels).astype("float32")
        state[f"{key}.running_mean"] = rng.normal(0, 0.1, channels).astype("float32")
        state[f"{key}.running_var"] = rng.uniform(0.5, 2.0, channels).astype("float32")
        state[f"{key}.num_batches_tracked"] = np.array(1000, "int64")

    conv("stem.conv.weight", widths[0], 3, 7)
    channels = widths[0]
    for s, (width, count) in enumerate(zip(widths, units, strict=True)):
        for b in range(count):
            prefix = f"stages.{s}.blocks.{b}"
            norm(f"{prefix}.norm1", channels)
            if b == 0:
                conv(f"{prefix}.downsample.conv.weight", 4 * width, channels, 1)
            conv(f"{prefix}.conv1.weight", width, channels, 1)
            norm(f"{prefix}.norm2", width)
            conv(f"{prefix}.conv2.weight", width, width, 3)
            norm(f"{prefix}.norm3", width)
            conv(f"{prefix}.conv3.weight", 4 * width, width, 1)
            channels = 4 * width
    norm("norm", channels)
    conv("head.fc.weight", classes, channels, 1)
    state["head.fc.bias"] = np.zeros(classes, "float32")
    return state


def write_safetensors(path, state: dict) -> str:
    """`state` in the .safetensors format (8-byte header length, JSON header, raw little-endian data)."""
    names = {"float32": "F32", "int64": "I64"}
    header, blobs, offset = {}, [], 0
    for key, value in state.items():
        data = np.ascontiguousarray(value).tobytes()
        header[key] = {"dtype": names[str(value.dtype)], "shape": list(value.shape),
                       "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    return str(path)


def digits_folder(root, classes=(0, 1, 2), per_class=None, size=32) -> str:
    """An image folder cut from scikit-learn's digits: one subfolder of PNGs per digit in `classes`."""
    import tensorflow as tf
    from sklearn.datasets import load_digits

    digits = load_digits()
    for digit in classes:
        folder = root / f"digit{digit}"
        folder.mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(digits.target == digit)[:per_class]):
            image = np.repeat(digits.images[index][..., None] * (255 / 16), 3, -1)
            image = tf.image.resize(image[None], (size, size), antialias=True)[0]
            png = tf.io.encode_png(tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8))
            (folder / f"{i}.png").write_bytes(png.numpy())
    return str(root)


def saved_source(path, depth=8) -> str:
    """A `.keras` file as a training run saves one (a per-pixel `Standardize` in front), with BatchNorm
    statistics away from their initial values so that copying them shows."""
    inputs = keras.Input((32, 32, 3), name="images")
    rng = np.random.default_rng(1)
    x = keras_resnet_v2.Standardize(mean=rng.uniform(50, 150, (32, 32, 3)), variance=np.ones((32, 32, 3)),
                                    name="normalization")(inputs)
    model = keras_resnet_v2.ResNet(depth, input_tensor=x, classes=10)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()])
    model.save(path)
    return str(path)


def features(model: keras.Model) -> keras.Model:
    return keras.Model(model.inputs, model.get_layer("avg_pool").output)


def _main(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as stop:  # argparse's usage errors
        return stop.code


# --------------------------------------------------------------------------- fast


def test_the_finetune_recipe_warms_up_then_decays_by_a_cosine():
    schedule = recipes.resolve(recipes.get_recipe("finetune"), 64, 50)  # 10 epochs of 50 steps at its batch
    assert (schedule.kind, schedule.total_steps, schedule.warmup_steps) == ("cosine", 500, 25)  # 5% of the run
    assert schedule.lr == 0.0025 and schedule.warmup_lr == 1e-5
    lr = optimizers.make_schedule(schedule)
    values = [float(lr(step)) for step in (0, 12, 25, 262, 499, 500)]
    assert values[0] == pytest.approx(1e-5) and values[1] == pytest.approx(1e-5 + (0.0025 - 1e-5) * 12 / 25)
    assert values[2] == pytest.approx(0.0025) and values[3] == pytest.approx(0.0025 / 2, rel=1e-2)
    assert 0 < values[4] < 1e-6 and values[5] == 0
    clone = optimizers.WarmupCosine.from_config(lr.get_config())
    assert float(clone(262)) == float(lr(262))
    doubled = recipes.resolve(recipes.get_recipe("finetune"), 128, 50, epochs=2)  # lr scales with the batch
    assert (doubled.lr, doubled.warmup_lr, doubled.total_steps, doubled.warmup_steps) == (0.005, 2e-5, 100, 5)


def test_each_kind_of_source_is_described_without_reading_its_weights(tmp_path, monkeypatch):
    state = timm_resnetv2_state(widths=(8, 16, 32, 64), classes=7)
    path = write_safetensors(tmp_path / "model.safetensors", state)
    timm = finetune.describe(path)
    asked = []
    monkeypatch.setattr(finetune, "download", lambda name, what: asked.append((name, what)) or path)
    by_name = finetune.describe("resnetv2_50.a1h_in1k")  # a timm name: the file huggingface_hub would fetch
    assert asked == [("resnetv2_50.a1h_in1k", "init")] and by_name.file == timm.file
    assert by_name.architecture == timm.architecture and by_name.spec == "resnetv2_50.a1h_in1k"
    assert timm.kind == "timm" and timm.architecture == {
        "model": "resnet50", "unit": "full_preact", "shortcut": "identity", "block": None, "padding": "symmetric",
        "variant_options": {}, "widths": [8, 16, 32, 64]}
    assert (timm.front, timm.normalization, timm.image_size, timm.fixed_size) == ("timm", "timm", 224, False)
    assert timm.preprocessing == {"mode": "shorter_side_crop", "crop_fraction": 0.95, "interpolation": "bicubic"}
    assert finetune.frozen_parts("backbone", timm) == ("stem", "stage1", "stage2", "stage3", "stage4", "post")

    ours = finetune.describe(saved_source(tmp_path / "ours.keras", depth=14))
    assert ours.kind == "keras" and ours.architecture["model"] == "resnet14" and ours.architecture["block"] == "basic"
    assert (ours.front, ours.front_name, ours.front_shape) == ("standardize", "normalization", [32, 32, 3])
    assert (ours.normalization, ours.image_size, ours.fixed_size) == ("per_pixel", 32, True)
    assert finetune.frozen_parts("stem, stage3", ours) == ("stem", "stage3")


@pytest.mark.parametrize("init, extra, fragment", [
    ("missing.safetensors", [], "`init` file does not exist. Received: init="),
    ("garbage.safetensors", [], "`init` is not a readable .safetensors file"),
    ("v1.safetensors", [], "`init` holds the original post-activation ResNet (v1"),
    ("resnet50.a1_in1k", [], "`init` 'resnet50.a1_in1k' is the original post-activation ResNet"),
    ("ours.keras", ["--freeze", "stage4"], "`freeze` part 'stage4' does not exist in resnet8 (its parts: stem, "
                                           "stage1, stage2, stage3, post; or none, backbone)"),
    ("ours.keras", ["--model", "resnet20"], "`model` comes from --init, whose network has model='resnet8'"),
    ("ours.keras", ["--image-size", "64"], "per-pixel mean image of 32x32"),
    (None, ["--model", "resnet8", "--freeze", "backbone"], "`freeze` keeps parts of a trained network: it needs"),
])
def test_a_bad_source_or_setting_is_one_line_before_tensorflow_and_writes_nothing(tmp_path, capsys, init, extra,
                                                                                fragment):
    (tmp_path / "garbage.safetensors").write_bytes(os.urandom(64))
    write_safetensors(tmp_path / "v1.safetensors", {"conv1.weight": np.zeros((4, 3, 7, 7), "float32"),
                                                    "layer1.0.conv1.weight": np.zeros((4, 4, 1, 1), "float32")})
    if init == "ours.keras":
        saved_source(tmp_path / "ours.keras")
    run_dir = tmp_path / "run"
    source = [] if init is None else ["--init", init if "." not in init or "_in1k" in init else str(tmp_path / init)]
    code = _main(["--dataset", "digits", "--run-dir", str(run_dir), *source, *extra])
    lines = message_lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 1 and fragment in lines[0], lines
    assert not run_dir.exists()


def test_a_run_directory_refuses_the_other_kind_of_start_in_one_line(tmp_path, capsys):
    source = saved_source(tmp_path / "ours.keras")
    for recorded, argv, fragment in (
            (None, ["--init", source], "started from random weights, not from --init"),
            (source, ["--model", "resnet8"], f"holds a run fine-tuned from init={source!r}: give the same --init"),
            ("other.keras", ["--init", source], "holds a run fine-tuned from init='other.keras'; use another")):
        run_dir = tmp_path / "run"
        shutil.rmtree(run_dir, ignore_errors=True)
        (run_dir / "backup").mkdir(parents=True)
        (run_dir / "backup" / "checkpoint").write_text("")
        (run_dir / "config.json").write_text(json.dumps({"model": "resnet8", "dataset": "digits", "init": recorded}))
        code = _main(["--dataset", "digits", "--run-dir", str(run_dir), *argv])
        lines = message_lines(capsys.readouterr().err)
        assert code == 2 and len(lines) == 1 and fragment in lines[0], lines


def test_the_first_forward_pass_gives_the_sources_features(tmp_path):
    from keras_resnet_v2.training import data as data_lib
    from keras_resnet_v2.training import runner
    from keras_resnet_v2.training.config import TrainConfig

    info = data_lib.DatasetInfo("three", 3, 30, 6, None, ("a", "b", "c"))
    images = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32")

    state = timm_resnetv2_state(widths=(8, 16, 32, 64), classes=7)
    path = write_safetensors(tmp_path / "model.safetensors", state)
    config = TrainConfig(init=path, dataset="three", run_dir=str(tmp_path / "run"))
    source = finetune.prepare(config)
    model = runner.build_model(config, info, 64, None, None, source)
    digest = finetune.initialize(model, source)
    assert len(digest) == 64 and model.output_shape == (None, 3)
    reference = keras_resnet_v2.from_timm(state, include_top=False, pooling="avg", input_shape=(64, 64, 3))
    np.testing.assert_allclose(features(model).predict(images, verbose=0), reference.predict(images, verbose=0),
                               rtol=1e-5, atol=1e-5)

    trained = keras.models.load_model(saved_source(tmp_path / "ours.keras"))
    info = data_lib.DatasetInfo("three", 3, 30, 6, (32, 32, 3), ("a", "b", "c"))
    config = TrainConfig(init=str(tmp_path / "ours.keras"), dataset="three", run_dir=str(tmp_path / "run"))
    source = finetune.prepare(config)
    model = runner.build_model(config, info, 32, None, None, source)
    finetune.initialize(model, source)
    np.testing.assert_array_equal(model.get_layer("normalization").get_weights()[0],
                                  trained.get_layer("normalization").get_weights()[0])
    np.testing.assert_allclose(features(model).predict(images[:, :32, :32], verbose=0),
                               features(trained).predict(images[:, :32, :32], verbose=0), rtol=1e-5, atol=1e-5)


def test_freeze_backbone_trains_only_the_new_head_and_keeps_every_statistic(tmp_path):
    from keras_resnet_v2.training import runner
    from keras_resnet_v2.training.config import TrainConfig

    source = saved_source(tmp_path / "ours.keras")
    folder = digits_folder(tmp_path / "folder", per_class=24)
    config = TrainConfig(init=source, dataset=folder, run_dir=str(tmp_path / "run"), freeze="backbone", steps=3,
                         batch_size=16, verbose=0)
    result = runner.run(config)
    before = weights_by_unit(keras.models.load_model(source))
    after = weights_by_unit(keras.models.load_model(result["model"]))
    backbone = [key for key in after if key[0] != "predictions"]
    assert len(backbone) == len(before) - 2 and any(field == "moving_variance" for _, field in backbone)
    for key in backbone:  # weights, BatchNorm statistics and the Standardize statistics
        assert np.array_equal(unit_value(*after[key]), unit_value(*before[key])), key
    assert unit_value(*after[("predictions", "kernel")]).shape == (64, 3)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["init"] == source and recorded["freeze"] == "backbone" and recorded["recipe"] == "finetune"
    assert recorded["init_source"]["sha256"] == file_sha256(source)
    assert recorded["class_names"] == ["digit0", "digit1", "digit2"]


# --------------------------------------------------------------------------- slow


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def _train(*argv, timeout=600):
    return subprocess.run([sys.executable, "-m", "keras_resnet_v2.training", "--quiet", *argv], env=_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_a_digits_run_fine_tunes_on_a_three_class_folder_survives_a_kill_and_exports(tmp_path):
    source = tmp_path / "digits"
    done = _train("--dataset", "digits", "--model", "resnet8", "--epochs", "10", "--batch-size", "64",
                  "--run-dir", str(source))
    assert done.returncode == 0, done.stderr[-2000:]
    folder = digits_folder(tmp_path / "folder")
    run_dir, export_dir = tmp_path / "fine", tmp_path / "export"
    command = [sys.executable, "-m", "keras_resnet_v2.training", "--quiet", "--init", str(source), "--dataset",
               folder, "--epochs", "6", "--run-dir", str(run_dir), "--export-dir", str(export_dir)]
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kill_after_first_epoch(process, run_dir, timeout=300)
    shutil.move(str(source), str(tmp_path / "moved"))  # the resumed run must not need SOURCE

    resumed = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "initialized from" not in resumed.stdout
    rows = cb.read_history(str(run_dir / "history.csv"))
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    result = json.loads(resumed.stdout[resumed.stdout.index("{"):])
    # Stated in docs/finetuning.md ("Fine-tune with `resnet-v2-train --init`"): a digits ResNet-8 fine-tuned for 6
    # epochs on 0/1/2 errs on at most 10% of the folder's test images (2 of 48 on the machine that wrote this).
    assert result["test_accuracy"] >= 0.90, result
    labels = (export_dir / "savedmodel" / "1" / "assets" / "labels.txt").read_text().split()
    assert labels == ["digit0", "digit1", "digit2"]
    recorded = json.loads((run_dir / "config.json").read_text())
    assert recorded["init_source"]["kind"] == "run" and len(recorded["init_source"]["sha256"]) == 64


@pytest.mark.slow
def test_a_resnetv2_50_state_dict_fine_tunes_with_timms_preprocessing_to_a_verified_export(tmp_path):
    torch = pytest.importorskip("torch")
    state = timm_resnetv2_state()  # resnetv2_50 itself: 25.5M parameters, 1000 classes
    checkpoint = tmp_path / "resnetv2_50.pth"
    (tmp_path / "garbage.pth").write_bytes(os.urandom(300))
    refused = _train("--init", str(tmp_path / "garbage.pth"), "--dataset", "digits", "--run-dir", str(tmp_path / "r"))
    assert refused.returncode == 2 and "`init` is not a readable PyTorch state dict" in refused.stderr
    assert refused.stderr.count("\n") <= 2 and not (tmp_path / "r").exists()  # the start line and the error
    torch.save({key: torch.from_numpy(value) for key, value in state.items()}, str(checkpoint))
    folder = digits_folder(tmp_path / "folder", per_class=16, size=80)
    run_dir, export_dir = tmp_path / "fine", tmp_path / "export"
    done = _train("--init", str(checkpoint), "--dataset", folder, "--image-size", "64", "--steps", "2",
                  "--batch-size", "8", "--freeze", "stem,stage1,stage2", "--run-dir", str(run_dir),
                  "--export-dir", str(export_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    recorded = json.loads((run_dir / "config.json").read_text())
    assert recorded["model"] == "resnet50" and recorded["normalization"] == "timm"
    assert recorded["preprocessing"] == {"mode": "shorter_side_crop", "crop_fraction": 0.95, "interpolation": "bicubic"}
    metadata = json.loads((export_dir / "savedmodel" / "1" / "assets" / "metadata.json").read_text())
    assert (metadata["image_bytes_crop_fraction"], metadata["image_bytes_interpolation"]) == (0.95, "bicubic")
    model = keras.models.load_model(str(run_dir / "model.keras"))
    reference = keras_resnet_v2.from_timm(str(checkpoint), include_top=False, input_shape=(64, 64, 3))
    after = weights_by_unit(model)
    for key, slot in weights_by_unit(reference).items():  # the frozen parts are SOURCE's, bit for bit
        if key[0].startswith(("stem_", "stage1_", "stage2_")):
            assert np.array_equal(unit_value(*after[key]), unit_value(*slot)), key
    moved = [key for key in after if key[0].startswith("stage4_") and key[1] == "kernel"
             and not np.array_equal(unit_value(*after[key]), unit_value(*weights_by_unit(reference)[key]))]
    assert moved, "stage4 was not trained"
