"""Files a user hands over are checked before they are believed (issue 50): `.keras` archives, calibration
images, warmup files, edited run records. Each refusal is one line naming the argument and the file."""

import os
import zipfile

import keras
import numpy as np
import pytest

import keras_resnet_v2 as krv2


def _bomb(path, inflated: int = 100 << 20) -> None:
    """A .keras-looking zip whose weights member inflates `inflated` bytes of zeros from about 100 KB."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", "{}")
        with archive.open("model.weights.h5", "w", force_zip64=True) as member:
            block = b"\0" * (1 << 20)
            for _ in range(inflated >> 20):
                member.write(block)


def test_weights_a_decompression_bomb_is_refused_before_it_inflates(tmp_path):
    path = str(tmp_path / "bomb.keras")
    _bomb(path)
    assert os.path.getsize(path) < 1 << 20
    with pytest.raises(ValueError) as caught:
        krv2.ResNet20(weights=path)
    message = str(caught.value)
    assert "\n" not in message and "decompression bomb" in message and "`weights`" in message, message


def test_weights_a_keras_file_with_code_is_refused_in_one_line(tmp_path):
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Lambda(lambda x: x * 2.0)(inputs)
    keras.Model(inputs, outputs).save(tmp_path / "lambda.keras")
    with pytest.raises(ValueError) as caught:
        krv2.ResNet20(weights=str(tmp_path / "lambda.keras"))
    message = str(caught.value)
    assert "\n" not in message and "is not a loadable Keras model" in message and "weights=" in message, message
    assert "Lambda" in message or "safe_mode" in message, message


def test_weights_a_keras_file_of_the_same_network_loads_its_head_too(tmp_path):
    # A file of the same classes whose front differs (a Standardize before it) is copied by unit: the head is
    # copied too, never left at its random initialisation.
    inputs = keras.Input((32, 32, 3))
    x = krv2.Standardize(mean=[120.0, 110.0, 100.0], variance=[3000.0, 2800.0, 2600.0])(inputs)
    trained = krv2.ResNet(8, input_tensor=x, classes=3)
    trained.get_layer("predictions").kernel.assign(np.full((64, 3), 0.25, "float32"))
    trained.save(tmp_path / "run.keras")
    with pytest.warns(UserWarning, match="standardizes its inputs"):
        model = krv2.ResNet(8, classes=3, weights=str(tmp_path / "run.keras"))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("predictions").kernel),
                                  np.full((64, 3), 0.25, "float32"))


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG that declares width x height 1-bit pixels (a few hundred bytes: its data is never reached)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                + chunk(b"IEND", b""))


def _png(path, seed: int) -> None:
    import tensorflow as tf

    image = np.random.default_rng(seed).integers(0, 255, (20, 20, 3)).astype("uint8")
    with open(path, "wb") as f:
        f.write(tf.io.encode_png(image).numpy())


def test_calibration_images_are_size_checked_and_a_large_folder_is_sampled(tmp_path):
    from keras_resnet_v2.export import calibration
    from keras_resnet_v2.plumbing import images as image_ops

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(8):
        _png(folder / f"{i}.png", i)
    images, total = calibration.folder_images(str(folder), (16, 16, 3), image_ops.as_preprocessing("resize"), limit=5)
    assert images.shape == (5, 16, 16, 3) and total == 8 and images.dtype == np.float32
    again, _ = calibration.folder_images(str(folder), (16, 16, 3), image_ops.as_preprocessing("resize"), limit=5)
    np.testing.assert_array_equal(images, again)  # a seeded sample: the same images every time
    _, evaluation, source = calibration.images_for(str(tmp_path / "m.keras"), (16, 16, 3), 4, str(folder),
                                                   image_ops.as_preprocessing("resize"))
    assert source == f"4 images of {folder}" and len(evaluation[0]) == 4
    _png_header_only(folder / "huge.png", 20_000, 20_000)
    assert os.path.getsize(folder / "huge.png") < 1000
    with pytest.raises(ValueError) as caught:
        calibration.folder_images(str(folder), (16, 16, 3), image_ops.as_preprocessing("resize"))
    message = str(caught.value)
    assert "\n" not in message and "huge.png declares 20000 x 20000 pixels" in message, message
    assert "16,777,216 an image may have" in message, message


def _run_with_home(home, code: str) -> None:
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key not in ("CI", "KERAS_HOME")}  # CI=true mutes it
    env.update(HOME=str(home), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_openvino_is_imported_without_its_telemetry(tmp_path):
    # `import openvino` alone writes HOME/intel (its telemetry's client id and stats): the test can fail.
    plain, ours = tmp_path / "plain", tmp_path / "ours"
    plain.mkdir(), ours.mkdir()
    _run_with_home(plain, "import openvino")
    assert (plain / "intel").is_dir()
    _run_with_home(ours, "from keras_resnet_v2.export.openvino import runtime\n"
                         "ov = runtime()\nassert not hasattr(ov, 'convert_model') and ov.Core().available_devices")
    assert not (ours / "intel").exists(), sorted(os.listdir(ours))


@pytest.mark.slow
def test_an_openvino_export_writes_nothing_in_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    _run_with_home(home, f"""
import keras, numpy as np, keras_resnet_v2 as krv2
from keras_resnet_v2 import export
model = krv2.ResNet(8, input_shape=(16, 16, 3), classes=3)
result = export.export_and_verify(model, openvino={str(tmp_path / 'm.xml')!r})
assert result['report']['passed'] and export.verify(model, openvino=result['openvino'])['passed']
""")
    assert os.path.isfile(tmp_path / "m.xml") and os.path.isfile(tmp_path / "m.bin")
    written = sorted(str(path.relative_to(home)) for path in home.rglob("*"))
    assert not any(name.startswith("intel") for name in written), written
    # What Keras and matplotlib write there, and nothing else (docs/finetuning.md says so).
    assert {name.split(os.sep)[0] for name in written} <= {".keras", ".cache", ".config"}, written


def _keras_with_config(path, config) -> None:
    import json

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
        archive.writestr("model.weights.h5", b"")


NETWORK = {"depth": 8, "family": "cifar", "block": "basic", "unit": "full_preact", "shortcut": "identity",
           "padding": "symmetric", "widths": [16, 32, 64], "stride_in": "first", "shortcut_options": {}}


@pytest.mark.parametrize("config,fragment", [
    ({"config": {"resnet_config": {k: v for k, v in NETWORK.items() if k != "depth"}}}, "KeyError: 'depth'"),
    ({"config": "resnet_config"}, "holds no network of keras_resnet_v2"),
    ({"config": {"resnet_config": NETWORK, "layers": [{"class_name": "Standardize", "config": {"name": "s"}}]}},
     "KeyError: 'shape'"),
    ({"config": {"resnet_config": {**NETWORK, "widths": 16}}}, "TypeError"),
])
def test_init_a_malformed_keras_description_is_one_line(config, fragment, tmp_path):
    from keras_resnet_v2.training import finetune

    path = str(tmp_path / "edited.keras")
    _keras_with_config(path, config)
    with pytest.raises(ValueError) as caught:
        finetune.describe(path)
    message = str(caught.value)
    assert "\n" not in message and fragment in message and "init=" in message, message


def test_init_an_edited_init_source_and_a_spaced_freeze_are_one_line(tmp_path):
    import json

    from keras_resnet_v2.training import finetune
    from keras_resnet_v2.training.config import TrainConfig

    source = tmp_path / "source.keras"
    _keras_with_config(source, {"config": {"resnet_config": NETWORK, "layers": []}})
    recorded = finetune.record(finetune.describe(str(source)))
    run = tmp_path / "run"
    (run / "backup").mkdir(parents=True)
    (run / "backup" / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
    for edit in ({"image_size": "224"}, {"architecture": {"depth": 8}}, {"color": "red"}):
        (run / "config.json").write_text(json.dumps({"init": str(source), "init_source": {**recorded, **edit}}))
        with pytest.raises(ValueError) as caught:
            finetune.prepare(TrainConfig(init=str(source), run_dir=str(run)))
        message = str(caught.value)
        assert "\n" not in message and "init_source" in message and "config.json is damaged" in message, message
    # " none" is none (was refused as a part named 'none', "or none, backbone"); none in a list is refused.
    config = TrainConfig(init=str(source), run_dir=str(tmp_path / "new"), freeze=" none")
    finetune.prepare(config)
    assert config.freeze == "none"
    with pytest.raises(ValueError, match="none or backbone alone"):
        finetune.prepare(TrainConfig(init=str(source), run_dir=str(tmp_path / "new"), freeze="stem, none"))


def test_a_stop_names_the_epoch_a_rerun_resumes_from(tmp_path):
    # SIGTERM between epoch 3's history row and its backup: the rerun resumes from epoch 2's backup.
    from keras_resnet_v2.training import cli
    from keras_resnet_v2.training.config import TrainConfig

    run = tmp_path / "run"
    (run / "backup").mkdir(parents=True)
    (run / "history.csv").write_text("epoch,step,loss\n1,22,2.0\n2,44,1.5\n3,66,1.2\n")
    (run / "backup" / "checkpoint").write_text('model_checkpoint_path: "ckpt-2"\n'
                                               'all_model_checkpoint_paths: "ckpt-1"\n'
                                               'all_model_checkpoint_paths: "ckpt-2"\n')
    message = cli._stopped_training(cli.Training(TrainConfig(run_dir=str(run)), None))
    assert "after epoch 2 (step 44)" in message and "epoch 3" not in message, message
    (run / "backup" / "checkpoint").unlink()
    assert "before the first epoch ended" in cli._stopped_training(cli.Training(TrainConfig(run_dir=str(run)), None))
