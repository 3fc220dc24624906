"""Faults and bad input in training end in one clear line, with nothing lost (issue 13).

A locked run directory, a corrupt backup, a damaged history, a full disk, Ctrl-C, bad config
files, image folders with split folders, one class or a truncated JPEG.
"""

import errno
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

from conftest import message_lines
from keras_resnet_v2.plumbing.files import DirectoryLock
from keras_resnet_v2.training import callbacks as cb
from keras_resnet_v2.training import cli, data, resume

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


@pytest.fixture(autouse=True)
def _float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


def _args(run_dir, *extra, epochs="1"):
    # Batch 256: 5 steps an epoch on digits' 1,437 training images, so each run takes seconds.
    return ["--dataset", "digits", "--model", "resnet8", "--epochs", epochs, "--batch-size", "256",
            "--run-dir", str(run_dir), "--quiet", *extra]


# The resume tests train the stacked form (issue 12: --scan), whose UnitStack weights and their
# optimizer slots live in the same backups: ResNet-20, the shallowest net with a stack of 2 units.
STACKED = ("--model", "resnet20", "--scan")


def _train(run_dir, epochs, timeout=600):
    return subprocess.run([sys.executable, "-m", "keras_resnet_v2.training", *_args(run_dir, *STACKED, epochs=epochs)],
                          env=ENV, capture_output=True, text=True, timeout=timeout)


def test_a_second_run_into_a_locked_run_directory_is_refused_at_once(tmp_path, capsys):
    run_dir = tmp_path / "run"
    with DirectoryLock(str(run_dir), "a training run"):
        started = time.monotonic()
        assert cli.main(_args(run_dir)) == 2
        err = message_lines(capsys.readouterr().err)
    assert len(err) == 1 and f"in use by a training run (pid {os.getpid()}" in err[0], err
    assert time.monotonic() - started < 60 and not (run_dir / "history.csv").exists()


def test_a_run_dir_that_is_a_file_is_named(tmp_path, capsys):
    (tmp_path / "run").write_text("not a directory")
    assert cli.main(_args(tmp_path / "run")) == 2
    assert "`run_dir` must be a directory, but" in capsys.readouterr().err


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory):
    """A finished two-epoch run (backups ckpt-1 and ckpt-2), to copy and damage."""
    run_dir = tmp_path_factory.mktemp("faults") / "run"
    result = _train(run_dir, "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(n for n in os.listdir(run_dir / "backup") if n.endswith(".index")) == ["ckpt-1.index",
                                                                                           "ckpt-2.index"]
    return run_dir


def _copy(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def _truncate_backup(run_dir, number):
    for name in os.listdir(run_dir / "backup"):
        if name.startswith(f"ckpt-{number}.data"):
            path = run_dir / "backup" / name
            path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 3])


@pytest.mark.slow
def test_a_truncated_newest_backup_falls_back_to_the_previous_one(two_epoch_run, tmp_path):
    run_dir = _copy(two_epoch_run, tmp_path)
    _truncate_backup(run_dir, 2)
    result = _train(run_dir, "3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the newest backup is unreadable" in result.stdout and "resuming from the previous one" in result.stdout
    assert "after epoch 1" in result.stdout
    rows = cb.read_history(str(run_dir / "history.csv"))
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["step"] for r in rows] == [5, 10, 15]


@pytest.mark.slow
def test_unreadable_backups_and_a_missing_config_are_one_line(two_epoch_run, tmp_path):
    run_dir = _copy(two_epoch_run, tmp_path)
    for number in (1, 2):
        _truncate_backup(run_dir, number)
    result = _train(run_dir, "3")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Cannot resume: no backup reads back" in lines[-1] and "ckpt-2" in lines[-1], lines[-1]

    os.remove(run_dir / "config.json")
    result = _train(run_dir, "3")
    assert result.returncode == 2 and "holds a backup but no config.json" in result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_resume_with_fewer_epochs_or_other_identity_settings_is_one_line(two_epoch_run, tmp_path, capsys):
    run_dir = _copy(two_epoch_run, tmp_path)
    before = (run_dir / "config.json").read_text()
    assert cli.main(_args(run_dir, *STACKED, epochs="1")) == 2  # trained nothing, said nothing, rewrote config
    err = message_lines(capsys.readouterr().err)
    assert len(err) == 1 and "trained for 2 epochs, more than the 1 asked for" in err[0], err
    for flag, value, said in (("--normalization", "per_channel", "normalization: 'per_pixel' -> 'per_channel'"),
                              ("--image-size", "24", "image_size: 32 -> 24"),
                              ("--recipe", "paper_imagenet", "recipe: 'paper_cifar' -> 'paper_imagenet'"),
                              ("--padding", "same", "padding: 'symmetric' -> 'same'")):
        # These read as "no backup reads back" with TensorFlow warnings, although the backups are fine.
        assert cli.main(_args(run_dir, *STACKED, flag, value, epochs="3")) == 2, flag
        err = message_lines(capsys.readouterr().err)
        assert len(err) == 1 and "holds a run with a different configuration" in err[0] and said in err[0], err
    assert (run_dir / "config.json").read_text() == before
    # Only history.csv deleted: the run resumes and says that the history and best.keras start again.
    os.remove(run_dir / "history.csv")
    assert cli.main(_args(run_dir, *STACKED, epochs="3")) == 0
    assert "history.csv is missing: the history restarts at epoch 3" in capsys.readouterr().out
    assert [r["epoch"] for r in cb.read_history(str(run_dir / "history.csv"))] == [3]


@pytest.mark.slow
def test_a_damaged_history_is_named(two_epoch_run, tmp_path, capsys):
    run_dir = _copy(two_epoch_run, tmp_path)
    with open(run_dir / "history.csv", "a") as f:
        f.write("3,6")  # a truncated row
    assert cli.main(_args(run_dir, *STACKED, epochs="3")) == 2
    err = capsys.readouterr().err
    assert "history.csv is damaged at line 4" in err and "Traceback" not in err


def test_a_full_disk_stops_in_one_line_and_leaves_no_debris(tmp_path, capsys, monkeypatch):
    def full_disk_save(manager, checkpoint_number=None, **kwargs):
        # What TensorFlow's saver leaves when the disk fills mid-write.
        os.makedirs(os.path.join(manager.directory, f"ckpt-{checkpoint_number}_temp", "part-0"), exist_ok=True)
        raise tf.errors.ResourceExhaustedError(None, None, "write failed: No space left on device")

    monkeypatch.setattr(tf.train.CheckpointManager, "save", full_disk_save)
    run_dir = tmp_path / "run"
    assert cli.main(_args(run_dir)) == 4
    err = message_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("error: no space left on device in"), err
    assert "rerun the same command to resume" in err[0]
    debris = [n for _, dirs, files in os.walk(run_dir) for n in dirs + files if "_temp" in n or n.startswith(".tmp")]
    assert debris == []


def test_a_full_disk_while_saving_a_checkpoint_removes_the_temporary(tmp_path, capsys, monkeypatch):
    real_save = keras.Model.save

    def full_disk(model, path, *args, **kwargs):
        real_save(model, path, *args, **kwargs)  # a partial file, then the error
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(keras.Model, "save", full_disk)
    run_dir = tmp_path / "run"
    assert cli.main(_args(run_dir)) == 4
    err = message_lines(capsys.readouterr().err)
    assert len(err) == 1 and "no space left on device" in err[0], err
    assert [n for _, _, files in os.walk(run_dir) for n in files if n.startswith(".tmp")] == []


@pytest.mark.slow
@pytest.mark.parametrize("signum, code, said", [(signal.SIGINT, 130, "interrupted"),
                                                 (signal.SIGTERM, 143, "stopped by SIGTERM")])
def test_ctrl_c_says_where_it_stopped_and_how_to_resume(tmp_path, signum, code, said):
    # SIGTERM is what containers and preemptible machines send. Keras imports JAX when it is
    # installed, and a KeyboardInterrupt raised inside JAX's garbage-collector callback is lost:
    # the loop raises it again at the next step (plumbing.interrupts), so the run always stops.
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "keras_resnet_v2.training", *_args(run_dir, epochs="200")],
                               env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None and not (run_dir / "backup" / "checkpoint").exists():
        time.sleep(0.2)
    assert process.poll() is None, process.stderr.read()[-2000:]
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last = err.strip().splitlines()[-1]
    # The epoch a rerun resumes from: the newest backup's (issue 50), whatever history.csv holds beyond it.
    epoch = resume.backup_epoch(str(run_dir))
    assert epoch is not None and epoch >= 1
    assert last.startswith(f"{said} after epoch {epoch} ") and f"resume from {run_dir / 'backup'}" in last, last


# Issue 37: a signal at any moment of a run: while TensorFlow starts, while the first step is built and
# traced, while the export at the end is written. Each ends the run with one line and no traceback.
MOMENTS = {
    "start-up": lambda tmp, out, err: "starting TensorFlow" in err.read_text(),
    "first-trace": lambda tmp, out, err: "strategy " in out.read_text(),
    "export": lambda tmp, out, err: (tmp / "export").exists(),
}


@pytest.mark.slow
@pytest.mark.parametrize("moment", sorted(MOMENTS))
def test_a_signal_at_any_moment_ends_the_run_in_one_line(tmp_path, moment):
    run_dir, out, err = tmp_path / "run", tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "keras_resnet_v2.training",
                                    *_args(run_dir, "--export-dir", str(tmp_path / "export"), epochs="2")],
                                   env=ENV, stdout=stdout, stderr=stderr)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None and not MOMENTS[moment](tmp_path, out, err):
            time.sleep(0.05)
        assert process.poll() is None, err.read_text()[-2000:]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 130, err.read_text()[-2000:]
    finally:
        process.kill()
    text = err.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text and "Exception ignored" not in text, text
    assert text.strip().splitlines()[-1].startswith("interrupted"), text[-500:]


@pytest.mark.slow
def test_sigterm_stops_a_sweep_in_one_line_saying_how_to_go_on(tmp_path):
    run_dir = tmp_path / "sweep"
    process = subprocess.Popen([sys.executable, "-m", "keras_resnet_v2.training", "sweep", "--table", "3",
                                "--dataset", "digits", "--model", "resnet8", "--epochs", "200", "--batch-size", "256",
                                "--run-dir", str(run_dir), "--quiet"],
                               env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first_row = run_dir / "table3_original_seed0" / "history.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None and not first_row.exists():
        time.sleep(0.2)
    assert process.poll() is None, process.stderr.read()[-2000:]
    process.send_signal(signal.SIGTERM)  # was: exit 143 and no line
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143 and "Traceback" not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last == (f"stopped by SIGTERM; finished rows are kept in {run_dir}: rerun the same command to go on "
                    "with the interrupted row"), last


@pytest.mark.parametrize("name, text, message", [
    ("bad.yaml", "model: [resnet20\n", r"bad.yaml' is not valid plain YAML at line \d"),
    ("tag.yaml", "model: !!python/object/apply:os.system ['true']\n", "tag.yaml' is not valid plain YAML"),
    ("keys.yaml", "1: resnet20\n", "must be setting names .*key 1"),
    ("list.yaml", "- model\n- resnet20\n", "must hold a mapping of settings. Received: list"),
    ("path.yaml", "run_dir: 5\n", r"`run_dir` in `config` file .*path.yaml' must be a string. Received: run_dir=5"),
    ("epochs.json", '{"epochs": "ten"}', r"`epochs` in .*epochs.json' must be an integer or null"),
    ("options.json", '{"variant_options": [1]}', "`variant_options` .* must be a mapping"),
    ("lr.json", '{"lr": "fast"}', "`lr` .* must be a number"),
    ("broken.json", '{"model": ', r"broken.json' is not valid JSON"),
    # Nested aliases expand to gigabytes; a huge value would make a huge message.
    ("alias.yaml", "a: &x [1, 2]\nvariant_options: {k: *x}\n", r"alias.yaml' uses a YAML alias \(\*x\) at line 2"),
    ("laughs.yaml", "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n", r"uses a YAML alias \(\*a\)"),
    ("long.json", '{"epochs": "' + "9" * 100_000 + '"}', r"Received: epochs='9{60,}\.\.\. \(str\)$"),
    ("huge.json", " " * (1 << 20) + "{}", r"huge.json' is 1,048,578 bytes; a settings file is at most 1,048,576"),
])
def test_config_file_errors_name_the_file_and_the_key(tmp_path, capsys, name, text, message):
    (tmp_path / name).write_text(text)
    assert cli.main(["--config", str(tmp_path / name)]) == 2
    err = message_lines(capsys.readouterr().err)
    assert len(err) == 1 and pytest.importorskip("re").search(message, err[0]), err


def _png(path, value, size=(10, 12)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(str(path), tf.io.encode_png(tf.fill((*size, 3), tf.constant(value, tf.uint8))))


@pytest.mark.parametrize("test_split", ["val", "validation", "test"])
def test_image_folder_split_names_are_splits_not_classes(tmp_path, test_split):
    for cls, value in (("cat", 10), ("dog", 200)):
        for i in range(3):
            _png(tmp_path / "train" / cls / f"{i}.png", value)
        _png(tmp_path / test_split / cls / "0.png", value)
    splits = data.load(str(tmp_path), image_size=8)
    assert splits.info.class_names == ("cat", "dog")
    assert (splits.info.train_examples, splits.info.test_examples) == (6, 2)


def test_image_folders_with_one_class_or_mixed_layouts_are_refused(tmp_path):
    for i in range(12):
        _png(tmp_path / "one" / "cat" / f"{i}.png", 10)
    with pytest.raises(data.DatasetError, match="has 1 class \\(cat\\); a classifier needs at least 2"):
        data.load(str(tmp_path / "one"))
    for folder in ("train/cat", "train/dog", "dog"):
        _png(tmp_path / "mixed" / folder / "0.png", 10)
    with pytest.raises(data.DatasetError, match="mixes split folders \\(train\\) with other subfolders \\(dog\\)"):
        data.load(str(tmp_path / "mixed"))
    # A class whose only image falls into the test split would train on nothing, silently.
    import hashlib

    lone = next(f"{i}.png" for i in range(1000)  # a name the stable split puts in the test 10%
                if int.from_bytes(hashlib.sha1(f"owl/{i}.png".encode()).digest()[:4], "big") < 0.1 * 2**32)
    for cls in ("cat", "dog"):
        for i in range(12):
            _png(tmp_path / "lone" / cls / f"{i}.png", 10)
    _png(tmp_path / "lone" / "owl" / lone, 10)
    with pytest.raises(data.DatasetError, match="class 'owl' has no training image \\(every one of its images fell "
                                                "into the 10% test split"):
        data.load(str(tmp_path / "lone"))


def test_a_truncated_jpeg_is_named_before_training_or_skipped(tmp_path, capsys):
    for cls in ("cat", "dog"):
        for i in range(10):
            path = tmp_path / "images" / cls / f"{i}.jpg"
            os.makedirs(path.parent, exist_ok=True)
            image = np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)
            path.write_bytes(tf.io.encode_jpeg(image).numpy())
    broken = tmp_path / "images" / "dog" / "3.jpg"
    broken.write_bytes(broken.read_bytes()[:200])  # a valid header, then nothing
    with pytest.raises(data.DatasetError, match=r"1 image\(s\) .* do not decode .*dog/3.jpg.*--skip-bad-images"):
        data.load(str(tmp_path / "images"))
    splits = data.load(str(tmp_path / "images"), skip_bad_images=True)
    assert splits.info.train_examples + splits.info.test_examples == 19
    assert "leaving out 1 image(s)" in capsys.readouterr().out
    assert sum(1 for _ in splits.train) + sum(1 for _ in splits.test) == 19  # every kept image decodes
    run_dir = tmp_path / "run"
    assert cli.main(["--dataset", str(tmp_path / "images"), "--model", "resnet8", "--run-dir", str(run_dir)]) == 2
    assert "dog/3.jpg" in capsys.readouterr().err and not run_dir.exists()


@pytest.mark.slow
def test_a_failed_export_verification_after_training_is_one_line(tmp_path, capsys, monkeypatch):
    from keras_resnet_v2 import export

    def failing_verify(*args, **kwargs):
        raise export.VerificationError("Export parity failed for onnx (injected)")

    monkeypatch.setattr(export.workflow, "verify", failing_verify)
    run_dir, export_dir = tmp_path / "run", tmp_path / "export"
    assert cli.main(_args(run_dir, "--export-dir", str(export_dir))) == 5
    err = message_lines(capsys.readouterr().err)
    assert len(err) == 1 and "parity failed for onnx (injected)" in err[0]
    assert (run_dir / "model.keras").is_file()  # the trained model is kept
    assert [n for n in os.listdir(export_dir / "savedmodel") if not n.startswith(".")] == []  # nothing published
    assert not (export_dir / "model.onnx").exists()
