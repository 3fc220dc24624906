"""Packaging (issue 14): one namespace, files the package writes load anywhere, a light core install.

- `resnet-v2-train`, `resnet-v2-export` and `python -m keras_resnet_v2.training` run from a
  directory that holds a user's own `training/` package and an `export/` folder.
- Every `.keras` file a run writes (model, best, last) loads in a fresh process that imports only
  `keras_resnet_v2`; `resnet-v2-export` and `resnet-v2-train evaluate` take run directories and
  checkpoints.
- Only `keras_resnet_v2` is importable: no top-level `training` or `export`.
- A fresh virtualenv with the core install and JAX builds and trains ResNet-20 without TensorFlow,
  and importing the training or export code there fails with one line naming the install.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_resnet_v2 as krv2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
# As a user runs the commands: no log level of their own, so TensorFlow's start-up lines are ours to hide.
USER_ENV = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
# Lines TensorFlow's C++ logging writes (absl's notice, "I0000 ...", "E0000 ... cuInit").
TF_LOG_LINE = re.compile(r"^(WARNING: All log messages before absl|[IWE]\d{4} |To enable the following instructions)")


def _ours_first(result, command):
    """The command's own line comes first and no TensorFlow start-up line is shown."""
    lines = (result.stderr + result.stdout).splitlines()
    assert lines and lines[0].startswith(command + ": "), lines[:5]
    noise = [line for line in result.stderr.splitlines() if TF_LOG_LINE.match(line)]
    assert noise == [], noise


def _script(name):
    path = shutil.which(name, path=BIN)
    if path is None:
        pytest.skip(f"console script {name} is not installed beside {sys.executable}")
    return path


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    """A user's project: its own `training` package (which must never be imported) and `export/` images."""
    folder = tmp_path_factory.mktemp("user_project")
    (folder / "training").mkdir()
    (folder / "training" / "__init__.py").write_text("raise RuntimeError('the user package was imported')\n")
    (folder / "training" / "data.py").write_text("raise RuntimeError('the user module was imported')\n")
    (folder / "export").mkdir()
    (folder / "export" / "notes.txt").write_text("exported images go here\n")
    return folder


@pytest.fixture(scope="module")
def trained_run(user_folder):
    """A short resnet-v2-train run (compiled with the package's SGD), run from the user's folder."""
    run_dir = user_folder / "runs" / "r8"
    result = subprocess.run([_script("resnet-v2-train"), "--dataset", "digits", "--model", "resnet8", "--steps", "6",
                             "--batch-size", "64", "--run-dir", str(run_dir), "--quiet"],
                            cwd=user_folder, env=USER_ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    _ours_first(result, "resnet-v2-train")
    return run_dir


LOAD_SCRIPT = textwrap.dedent("""
    import json, sys
    import keras, numpy as np
    import keras_resnet_v2
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    loaded = {}
    for path in sys.argv[1:]:
        model = keras.models.load_model(path)
        loaded[path] = {"probabilities": np.asarray(model.predict(x, verbose=0)).tolist(),
                        "compiled": model.compiled}
    training = any(m.startswith("keras_resnet_v2.training") for m in sys.modules)
    print(json.dumps({"loaded": loaded, "training_imported": training}))
""")


def test_every_keras_file_of_a_run_loads_after_importing_only_the_model_package(trained_run, user_folder):
    names = ("model.keras", "checkpoints/best.keras", "checkpoints/last.keras")
    result = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, *(str(trained_run / n) for n in names)],
                            cwd=user_folder, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["training_imported"] is False  # only keras_resnet_v2 was imported, and sufficed
    outputs = {}
    for name in names:
        loaded = report["loaded"][str(trained_run / name)]
        assert loaded["compiled"] is False, name
        outputs[name] = np.array(loaded["probabilities"])
        assert outputs[name].shape == (3, 10)
        np.testing.assert_allclose(outputs[name].sum(-1), 1.0, rtol=1e-5)
    # The final model is the last epoch's.
    np.testing.assert_allclose(outputs["model.keras"], outputs["checkpoints/last.keras"], rtol=1e-6)


# Slow tier (18 s here): the fast tier keeps the run's files loading after the model package alone, and every
# CI run's Quick start exports and verifies a run.
@pytest.mark.slow
def test_export_and_evaluate_take_the_files_of_a_run(trained_run, user_folder, tmp_path):
    # The run directory (its model.keras, labels and preprocessing) to both formats, verified.
    exported = subprocess.run([_script("resnet-v2-export"), str(trained_run), "--savedmodel", str(tmp_path / "serving"),
                               "--onnx", str(tmp_path / "m.onnx")],
                              cwd=user_folder, env=USER_ENV, capture_output=True, text=True, timeout=600)
    assert exported.returncode == 0, exported.stderr[-3000:]
    _ours_first(exported, "resnet-v2-export")
    assert "verification passed" in exported.stdout
    # One report, beside the SavedModel version (it covers the ONNX file too).
    assert json.loads((tmp_path / "serving" / "1.verification.json").read_text())["passed"] is True
    assert (tmp_path / "serving" / "1" / "saved_model.pb").is_file() and (tmp_path / "m.onnx").is_file()
    # A checkpoint file, evaluated by the console script.
    evaluated = subprocess.run([_script("resnet-v2-train"), "evaluate", "--model",
                                str(trained_run / "checkpoints" / "best.keras"), "--dataset", "digits"],
                               cwd=user_folder, env=USER_ENV, capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    _ours_first(evaluated, "resnet-v2-train evaluate")
    report = json.loads(evaluated.stdout)  # stdout holds only the result
    assert report["examples"] == 360 and 0 <= report["top1_error_percent"] <= 100


def test_registered_names_say_the_defining_package():
    from keras_resnet_v2.training import SGD, StepSchedule

    assert keras.saving.get_registered_name(SGD) == "keras_resnet_v2.training>SGD"
    assert keras.saving.get_registered_name(StepSchedule) == "keras_resnet_v2.training>StepSchedule"
    assert keras.saving.get_registered_name(krv2.GatedSum) == "keras_resnet_v2>GatedSum"


def test_only_the_keras_resnet_v2_namespace_is_importable(tmp_path):
    for name in ("training", "export"):
        result = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path, env=ENV,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 1 and f"No module named '{name}'" in result.stderr, result.stderr[-2000:]
    # The checkout's folders refuse to be imported under their bare names (no module twice).
    guarded = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {ROOT!r}); import training"],
                             cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert guarded.returncode == 1
    assert "import it under that name" in guarded.stderr and "'keras_resnet_v2.training'" in guarded.stderr


def _imports(path) -> set[str]:
    """Every module a source file imports, at its top or inside a function (absolute imports)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"  # every import names its package
            found.update([node.module] + [f"{node.module}.{alias.name}" for alias in node.names])
    return found


def test_imports_point_one_way():
    """The model imports no training or export code, export no training code; the plumbing imports only itself."""
    import importlib.util
    import pathlib

    def folder(name: str) -> pathlib.Path:
        # Where the import system finds the subpackage: inside the package after `pip install .`, the
        # checkout's training/ and export/ in an editable install (`pip install -e .`, package_dir).
        return pathlib.Path(*importlib.util.find_spec(name).submodule_search_locations)

    rooms = {room: sorted(folder(name).glob("*.py")) for room, name in (
        ("model", "keras_resnet_v2"), ("plumbing", "keras_resnet_v2.plumbing"),
        ("training", "keras_resnet_v2.training"), ("export", "keras_resnet_v2.export"))}
    assert all(rooms.values()), {room: len(files) for room, files in rooms.items()}
    forbidden = {"model": ("keras_resnet_v2.training", "keras_resnet_v2.export"),
                 "export": ("keras_resnet_v2.training",), "training": ()}

    def allowed(room: str, name: str) -> bool:
        if name != "keras_resnet_v2" and not name.startswith("keras_resnet_v2."):
            return True  # the standard library and third-party packages
        if room == "plumbing":
            return name.startswith("keras_resnet_v2.plumbing")
        return not name.startswith(forbidden[room])

    wrong = [f"{room}: {path.name} imports {name}" for room, files in rooms.items() for path in files
             for name in sorted(_imports(path)) if not allowed(room, name)]
    assert wrong == []
    # The rule can fail: plumbing importing the builder, or export importing training, is refused.
    assert not allowed("plumbing", "keras_resnet_v2.resnet") and not allowed("plumbing", "keras_resnet_v2")
    assert not allowed("export", "keras_resnet_v2.training.data") and allowed("training", "keras_resnet_v2.export")


CORE_SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys
    assert importlib.util.find_spec("tensorflow") is None, "TensorFlow is installed"
    # pip install put nothing generic into site-packages (this runs outside any checkout)
    assert importlib.util.find_spec("training") is None and importlib.util.find_spec("export") is None
    import numpy as np, keras, keras_resnet_v2
    assert keras.backend.backend() == "jax"
    model = keras_resnet_v2.ResNet20()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).uniform(0, 1, (8, 32, 32, 3)).astype("float32")
    before = np.asarray(model.get_layer("stem_conv").kernel).copy()
    loss = model.train_on_batch(x, np.arange(8) % 10)
    moved = float(np.abs(np.asarray(model.get_layer("stem_conv").kernel) - before).max())
    # The class names ship in the wheel (package data), and decode_predictions takes a JAX array.
    decoded = keras_resnet_v2.decode_predictions(keras.ops.one_hot(keras.ops.array([2]), 1000), top=1)
    errors = {"decoded": decoded[0][0][:2]}
    for name in ("keras_resnet_v2.training", "keras_resnet_v2.export"):
        try:
            __import__(name)
        except ImportError as error:
            errors[name] = [type(error).__name__, str(error)]
    print(json.dumps({"loss": float(loss), "moved": moved, "params": model.count_params(), "errors": errors}))
""")


@pytest.mark.slow
def test_core_install_with_jax_trains_without_tensorflow(tmp_path):
    # A copy of the sources, so the build leaves nothing in the checkout.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info", "build", "runs",
                                                                "__pycache__", ".*cache", "docs", "benchmarks"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "-q", str(source), "jax[cpu]"],
                             capture_output=True, text=True, timeout=1200)
    assert install.returncode == 0, install.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    result = subprocess.run([python, "-c", CORE_SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert np.isfinite(report["loss"]) and report["moved"] > 0
    assert report["params"] == krv2.ResNet20().count_params()  # the same network as under TensorFlow
    assert report["errors"]["decoded"] == ["n01484850", "great_white_shark"]
    for name, extra in (("keras_resnet_v2.training", "train"), ("keras_resnet_v2.export", "export")):
        kind, message = report["errors"][name]
        assert kind == "MissingExtraError" and "\n" not in message
        assert f'pip install "keras_resnet_v2[{extra}]"' in message and "tensorflow" in message
    # The console scripts and `python -m` say the same in one line, without a traceback.
    for command, extra in (([str(venv / "bin" / "resnet-v2-train"), "--help"], "train"),
                           ([str(venv / "bin" / "resnet-v2-export"), "m.keras", "--onnx", "m.onnx"], "export"),
                           ([python, "-m", "keras_resnet_v2.training", "--help"], "train")):
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, (command, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert f'pip install "keras_resnet_v2[{extra}]"' in done.stderr
