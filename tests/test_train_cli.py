"""resnet-v2-train end to end on the real digits: kill and resume, export, evaluate, bad input."""

import json
import os
import subprocess
import sys
import time

import keras
import pytest

from conftest import kill_after_first_epoch
from keras_resnet_v2.training import callbacks as cb
from keras_resnet_v2.training import cli


@pytest.fixture(autouse=True)
def _float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


def _train_command(run_dir, *extra):
    return [sys.executable, "-m", "keras_resnet_v2.training", "--dataset", "digits", "--model", "resnet8",
            "--epochs", "4", "--batch-size", "64", "--run-dir", str(run_dir), "--quiet", *extra]


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


# Slow tier (28 s here): the fast tier keeps resume's pieces (test_training: redone history rows, the
# padding setting on resume; test_checked_inputs: the stop message's epoch), the slow tier the kills.
@pytest.mark.slow
def test_sigkill_then_rerun_resumes_and_keeps_history(tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(_train_command(run_dir), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    kill_after_first_epoch(process, run_dir)
    killed_rows = cb.read_history(str(run_dir / "history.csv"))
    assert 1 <= len(killed_rows) < 4

    export_dir = tmp_path / "export"
    result = subprocess.run(_train_command(run_dir, "--export-dir", str(export_dir)), env=_env(),
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" in result.stdout
    rows = cb.read_history(str(run_dir / "history.csv"))
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]  # continuous: the interrupted epoch once
    assert [r["step"] for r in rows] == [22, 44, 66, 88]  # the optimizer's iterations were restored
    for name in ("config.json", "curves.png", "model.keras", "checkpoints/best.keras", "checkpoints/last.keras"):
        assert (run_dir / name).is_file(), name
    leftovers = [n for _, _, files in os.walk(tmp_path) for n in files if n.startswith(".tmp")]
    assert not leftovers
    config = json.loads((run_dir / "config.json").read_text())
    assert config["schedule"]["total_steps"] == 88 and config["global_batch"] == 64
    # Linear scaling against the recipe's batch 128 (paper Appendix: lr 0.1, warm-up 0.01): half at batch 64.
    assert config["recipe_values"]["batch_size"] == 128
    assert config["schedule"]["values"] == pytest.approx([0.005, 0.05, 0.005, 0.0005])

    # The export the run asked for: verified, with the run's metadata.
    report = json.loads((export_dir / "savedmodel" / "1.verification.json").read_text())
    assert report["passed"] and report["onnx"]["max_rel_error"] <= 1e-4
    meta = json.loads((export_dir / "savedmodel" / "1" / "assets" / "metadata.json").read_text())
    assert meta["training"]["unit"] == "full_preact" and meta["normalization"] == "per_pixel"

    # evaluate reproduces the last epoch's test accuracy from the saved model.
    from keras_resnet_v2.training.evaluation import evaluate

    scores = evaluate(str(run_dir), "digits")
    assert scores["examples"] == 360
    assert scores["top1_error_percent"] == pytest.approx(100 * (1 - rows[-1]["val_accuracy"]), abs=1e-6)
    assert scores["top5_error_percent"] <= scores["top1_error_percent"]


@pytest.mark.parametrize("args, message", [
    (["--dataset", "no_such_set"], "Unknown dataset 'no_such_set'"),
    (["--precision", "fp8"], "--precision: invalid choice: 'fp8'"),  # argparse's choices: usage, exit 2
    (["--strategy", "horovod"], "--strategy: invalid choice: 'horovod'"),
    (["--model", "vgg16"], "model.*Received: model='vgg16'"),
    (["--epochs", "0"], "epochs.*positive integer"),
    (["--lr", "-1"], "lr"),
])
def test_bad_input_is_named_and_writes_nothing(tmp_path, capsys, args, message):
    run_dir = tmp_path / "run"
    try:
        code = cli.main(["--dataset", "digits", "--model", "resnet8", "--epochs", "1", "--run-dir", str(run_dir)]
                        + args)
    except SystemExit as stop:
        code = stop.code
    assert code == 2
    assert pytest.importorskip("re").search(message, capsys.readouterr().err)
    assert not run_dir.exists()


def test_empty_image_folder_and_offline_tfds_write_nothing(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    for dataset, message in ((str(tmp_path / "images"), "no class subfolders"), ("cifar10", "tfds build cifar10")):
        run_dir = tmp_path / "run"
        code = cli.main(["--dataset", dataset, "--data-dir", str(tmp_path / "tfds"), "--model", "resnet8",
                         "--run-dir", str(run_dir)])
        assert code == 2 and message in capsys.readouterr().err
        assert not run_dir.exists()


def test_config_file_then_flags_override_the_recipe(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: resnet14\nlr: 0.05\nwarmup_steps: 0\nboundaries: [10, 20]\nepochs: 3\n")
    config = cli.config_from_args(["--config", str(path), "--lr", "0.2", "--option", "gate_bias=-6",
                                   "--shortcut", "shortcut_only_gating", "--steps", "7"])
    assert config.model == "resnet14" and config.shortcut == "shortcut_only_gating"
    assert config.recipe_overrides == {"lr": 0.2, "warmup_steps": 0, "boundaries": (10, 20)}
    assert config.variant_options == {"gate_bias": -6} and config.steps == 7 and config.epochs is None
    with pytest.raises(ValueError, match="Unknown keys.*'learning_rate'"):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"learning_rate": 0.1}))
        cli.config_from_args(["--config", str(bad)])


def test_rerun_with_another_model_in_the_same_run_dir_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "backup").mkdir(parents=True)
    (run_dir / "backup" / "checkpoint").write_text("")
    (run_dir / "config.json").write_text(json.dumps({"model": "resnet20", "dataset": "digits"}))
    code = cli.main(["--dataset", "digits", "--model", "resnet8", "--epochs", "1", "--run-dir", str(run_dir)])
    assert code == 2 and "different configuration" in capsys.readouterr().err


@pytest.mark.slow
def test_imagenet_style_run_trains_at_224_style_crops_and_tests_at_eval_size(tmp_path, monkeypatch, capsys):
    # Paper, Appendix and Sec. 5: ImageNet scale augmentation, test at 320x320 on images resized to 320.
    # Scaled down here: train crops 64, test crop 96, on TFDS' mock imagenet2012 (variable-size images).
    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)  # mock_data prepares it
    run_dir = tmp_path / "run"
    args = ["--dataset", "imagenet2012", "--model", "resnet18", "--recipe", "paper_imagenet", "--image-size", "64",
            "--eval-size", "96", "--steps", "2", "--batch-size", "4", "--run-dir", str(run_dir), "--quiet"]
    with tfds.testing.mock_data(num_examples=6):
        assert cli.main(args) == 0
        out = capsys.readouterr().out
        result = json.loads(out[out.index("\n{") + 1:])  # after the log lines
        assert cli.main(["evaluate", "--model", str(run_dir), "--dataset", "imagenet2012", "--eval-size", "96",
                         "--batch-size", "4"]) == 0
    evaluation = json.loads(capsys.readouterr().out)
    config = json.load(open(run_dir / "config.json"))
    assert config["image_size"] == 64 and config["eval_size"] == 96 and config["recipe_values"]["normalization"] == \
        "per_channel"
    model = keras.saving.load_model(run_dir / "model.keras")
    assert model.input_shape == (None, 64, 64, 3) and model.output_shape == (None, 1000)
    assert model.get_layer("normalization").shape == (3,)  # per-channel statistics: any image size
    assert evaluation["image_size"] == 96 and evaluation["examples"] == 6
    assert evaluation["top1_error_percent"] == pytest.approx(100 * (1 - result["test_96_accuracy"]))
    assert evaluation["loss"] == pytest.approx(result["test_96_loss"], rel=1e-5)


def test_no_arguments_print_usage_and_exit_2(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main([])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.startswith("usage: resnet-v2-train")
    assert "required: --dataset, --model, --run-dir" in err


def test_help_names_the_subcommands_and_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "resnet-v2-train evaluate" in out and "resnet-v2-train sweep" in out
    assert "default paper_cifar" in out and "default float32" in out and "sqrt(units)" in out
    from keras_resnet_v2.export.__main__ import main as export_main

    with pytest.raises(SystemExit):
        export_main(["verify", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: resnet-v2-export verify") and "VERSION_DIR" in out and "--opset" not in out


def test_images_per_second_excludes_the_first_step():

    import numpy as np

    from keras_resnet_v2.training import loop, runtime

    model = __import__("keras_resnet_v2").ResNet(8, input_shape=(8, 8, 3), classes=2)
    trainer = loop.Trainer(model, keras.optimizers.SGD(0.01), runtime.make_strategy("default"), 4)
    x = np.zeros((4, 8, 8, 3), "float32")
    ds = loop.tf.data.Dataset.from_tensors((x, np.zeros(4, "int64"))).repeat()
    seen, ends = [], []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if not ends:  # the start of the first step
                ends.append(time.perf_counter())

        def on_train_batch_end(self, batch, logs=None):
            seen.append(dict(logs))
            ends.append(time.perf_counter())

    trainer.fit(ds, epochs=1, steps_per_epoch=6, callbacks=[Spy()], verbose=0)
    assert "images_per_sec" not in seen[0]  # the first step traces the graph: no rate yet
    # From the end of the first step to the end of the last: 5 steps of 4 images.
    steady = 5 * 4 / (ends[-1] - ends[1])
    with_tracing = 6 * 4 / (ends[-1] - ends[0])
    assert seen[-1]["images_per_sec"] == pytest.approx(steady, rel=0.2)
    assert seen[-1]["images_per_sec"] > 1.5 * with_tracing
    assert runtime.strategy_name(runtime.make_strategy("default")) == "default"
