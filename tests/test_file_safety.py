"""No file outside ours is ever written through a link someone planted (issue 22, item 1).

Lock files (`RUN_DIR/.lock`, `BASE/.lock`, `.NAME.onnx.lock`) are opened with O_NOFOLLOW and must be
regular files; reports and configs are written to fresh `mkstemp` files and renamed into place. Each
path is tried with a symbolic link to a victim file, which must keep its contents.
"""

import os

import pytest

import keras_resnet_v2 as krv2
from conftest import message_lines
from keras_resnet_v2.plumbing.files import DirectoryLock, UnsafePathError, atomic_write_text

VICTIM_TEXT = "a file of someone else's\n"


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim.txt"
    path.write_text(VICTIM_TEXT)
    return path


def _unharmed(victim):
    assert victim.read_text() == VICTIM_TEXT and not victim.is_symlink()


@pytest.mark.parametrize("lock_name", [".lock", ".model.onnx.lock"])
def test_a_lock_file_that_is_a_link_is_refused_and_its_target_kept(tmp_path, victim, lock_name):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / lock_name).symlink_to(victim)
    with pytest.raises(UnsafePathError, match=f"{lock_name} is a symbolic link; it is not written through"):
        with DirectoryLock(str(folder), "a training run", lock_name=lock_name):
            pass
    _unharmed(victim)
    # A directory or a FIFO at the lock's name is refused too (never opened for writing, never blocks).
    (folder / lock_name).unlink()
    os.mkfifo(folder / lock_name)
    with pytest.raises(UnsafePathError, match="is not a regular file"):
        with DirectoryLock(str(folder), "a training run", lock_name=lock_name):
            pass
    # An ordinary lock file left by an earlier run is taken over.
    (folder / lock_name).unlink()
    (folder / lock_name).write_text('{"purpose": "an earlier run"}')
    with DirectoryLock(str(folder), "a training run", lock_name=lock_name):
        assert f'"pid": {os.getpid()}' in (folder / lock_name).read_text()


def test_atomic_write_replaces_a_link_at_the_target_instead_of_writing_through_it(tmp_path, victim):
    target = tmp_path / "config.json"
    target.symlink_to(victim)
    atomic_write_text(str(target), "{}")
    assert not target.is_symlink() and target.read_text() == "{}"
    _unharmed(victim)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "victim.txt"]  # no temporary left


def test_training_into_a_run_dir_with_a_planted_lock_link_is_one_line(tmp_path, victim, capsys):
    from keras_resnet_v2.training import cli

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").symlink_to(victim)
    code = cli.main(["--dataset", "digits", "--model", "resnet8", "--steps", "1", "--run-dir", str(run_dir),
                     "--quiet"])
    err = message_lines(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and "is a symbolic link" in err[0], (code, err)
    _unharmed(victim)
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # nothing was trained or written


def test_exports_never_write_through_planted_links(tmp_path, victim):
    from keras_resnet_v2 import export

    model = krv2.ResNet(8, input_shape=(16, 16, 3), classes=3)
    base, onnx_path = tmp_path / "serving", tmp_path / "onnx" / "model.onnx"
    base.mkdir()
    onnx_path.parent.mkdir()
    (base / ".lock").symlink_to(victim)
    with pytest.raises(UnsafePathError, match=r"serving/\.lock is a symbolic link"):
        export.export_and_verify(model, savedmodel=str(base))
    (base / ".lock").unlink()
    (onnx_path.parent / ".model.onnx.lock").symlink_to(victim)
    with pytest.raises(UnsafePathError, match=r"\.model\.onnx\.lock is a symbolic link"):
        export.export_and_verify(model, onnx=str(onnx_path))
    assert not os.path.exists(onnx_path) and not any(p.name.isdigit() for p in base.iterdir())
    # The verification report: links at the old temporary's name and at the report itself.
    (base / f"1.verification.json.tmp-{os.getpid()}").symlink_to(victim)
    (base / "1.verification.json").symlink_to(victim)
    result = export.export_and_verify(model, savedmodel=str(base))
    report = base / "1.verification.json"
    assert result["report"]["passed"] and result["report_path"] == str(report)
    assert not report.is_symlink() and '"passed": true' in report.read_text()
    _unharmed(victim)
