"""Light imports and quick command lines (issue 15): no backend until one is needed.

- `import keras_resnet_v2` (and `.training`, `.export`) imports no Keras, TensorFlow, JAX or
  PyTorch; names load on first use; Keras' registry knows our classes whatever the import order.
- `--help` and argument errors of every command line are answered before any backend is
  imported (exit codes and messages checked); the time is measured in benchmarks/startup.py.
- TensorFlow's start-up lines are captured while it starts and replayed only if starting fails.
- Imported before TensorFlow on x86, the package turns TensorFlow's oneDNN CPU kernels on unless the
  user chose (issue 35); imported after it, the first model built warns once when they are off.
"""

import json
import os
import subprocess
import sys
import textwrap
import types
import warnings

import keras
import numpy as np
import pytest

import keras_resnet_v2 as krv2
from conftest import tiered
from keras_resnet_v2.names import BLOCKS, SHORTCUT_NAMES, UNITS
from keras_resnet_v2.plumbing import startup
from keras_resnet_v2.variants import SHORTCUTS, UNIT_SPECS

BACKENDS = ("keras", "tensorflow", "jax", "torch")


def _python(code, env=None, timeout=300, drop=()):
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in drop}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_the_names_module_lists_the_variant_tables_keys():
    assert UNITS == tuple(UNIT_SPECS) and SHORTCUT_NAMES == tuple(SHORTCUTS)
    assert krv2.UNITS is UNITS and set(BLOCKS) == {"basic", "bottleneck", "single"}


def test_importing_the_packages_loads_no_backend_and_names_load_on_first_use():
    result = _python(f"""
        import json, sys
        import keras_resnet_v2, keras_resnet_v2.training, keras_resnet_v2.export
        before = [m for m in {BACKENDS!r} if m in sys.modules]
        names = sorted(set(keras_resnet_v2.__all__) - set(dir(keras_resnet_v2)))
        units = keras_resnet_v2.UNITS  # plain data: still no backend
        light = [m for m in {BACKENDS!r} if m in sys.modules]
        try:
            keras_resnet_v2.ResNet21
        except AttributeError as error:
            missing = str(error)
        model = keras_resnet_v2.ResNet20(input_shape=(16, 16, 3), classes=3)
        print(json.dumps({{"before": before, "light": light, "not_in_dir": names, "missing": missing,
                          "params": model.count_params(), "keras": "keras" in sys.modules,
                          "sgd": keras_resnet_v2.training.SGD.__module__}}))
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["before"] == [] and report["light"] == [] and report["not_in_dir"] == []
    assert report["missing"] == "module 'keras_resnet_v2' has no attribute 'ResNet21'"
    assert report["keras"] and report["params"] == krv2.ResNet20(input_shape=(16, 16, 3), classes=3).count_params()
    assert report["sgd"] == "keras_resnet_v2.training.optimizers"


@pytest.mark.slow
def test_public_names_stay_functions_when_their_modules_load_first():
    # Importing a module sets it as its package's attribute: a public name that is also a module's name
    # (`export.verify` was defined in verify.py) would turn into that module once anyone imported it
    # ("'module' object is not callable"). No public name is a module's name (plumbing.lazy refuses one),
    # so every module loading first changes nothing.
    result = _python("""
        import importlib, json
        import keras_resnet_v2.export.workflow, keras_resnet_v2.training.cli, keras_resnet_v2.training.runner
        from keras_resnet_v2 import export
        from keras_resnet_v2.training import run
        module = importlib.import_module("keras_resnet_v2.export.verification")
        print(json.dumps({"verify": type(export.verify).__name__, "same": export.verify is module.verify,
                          "run": type(run).__name__, "workflow": type(export.workflow).__name__}))
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"verify": "function", "same": True, "run": "function", "workflow": "module"}


@pytest.fixture(scope="module")
def saved_files(tmp_path_factory):
    """A stacked ResNet with a Standardize front, and a compiled one (the training package's SGD)."""
    from keras_resnet_v2.training import optimizers

    folder = tmp_path_factory.mktemp("saved")
    inputs = keras.Input((16, 16, 3))
    x = krv2.Standardize(mean=[120.0, 110.0, 100.0], variance=[3000.0, 3000.0, 3000.0])(inputs)
    model = krv2.ResNet20(input_tensor=x, classes=3, scan=True)
    model.save(folder / "stacked.keras")
    model.compile(optimizer=optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    model.save(folder / "compiled.keras")
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    return folder, np.asarray(model(x, training=False))


# Ways a user might import before `keras.models.load_model`: the package, then Keras; a submodule
# that imports Keras from its first lines (registration then waits for it to finish); the training
# package (its SGD). Keras first, then the package: tests/test_packaging.py's LOAD_SCRIPT.
ORDERS = {
    "package_then_keras": "import keras_resnet_v2\nimport keras",
    "layers_module_first": "from keras_resnet_v2.layers import Standardize\nimport keras",
    "tensorflow_kernels_first": "import keras_resnet_v2._kernels\nimport keras",
    "training_then_keras": "import keras_resnet_v2.training\nimport keras",
}


@pytest.mark.parametrize("order", tiered(sorted(ORDERS), slow=set(ORDERS) - {"package_then_keras"}))
def test_saved_models_load_whatever_the_import_order(saved_files, order):
    folder, expected = saved_files
    name = "compiled.keras" if order.startswith("training") else "stacked.keras"
    result = _python(ORDERS[order] + textwrap.dedent(f"""
        import json, numpy as np
        model = keras.models.load_model({str(folder / name)!r})
        x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
        print(json.dumps({{"y": np.asarray(model(x, training=False)).tolist(),
                          "layers": sorted({{type(layer).__name__ for layer in model.layers}}),
                          "optimizer": type(model.optimizer).__module__ if getattr(model, "optimizer", None)
                                       else None}}))
    """), env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"Standardize", "UnitStack"} <= set(report["layers"])
    np.testing.assert_allclose(report["y"], expected, rtol=1e-5, atol=1e-6)
    if order.startswith("training"):
        assert report["optimizer"] == "keras_resnet_v2.training.optimizers"


# (command-line module, argv, exit code, what the output must hold): parsed and refused, or
# answered, before any backend is imported.
FAST = {
    "train_help": ("keras_resnet_v2.training.cli", ["--help"], 0, "resnet-v2-train evaluate"),
    "train_no_arguments": ("keras_resnet_v2.training.cli", [], 2, "the following arguments are required"),
    "train_bad_unit": ("keras_resnet_v2.training.cli", ["--dataset", "digits", "--model", "resnet20", "--run-dir",
                                                        "r", "--unit", "preact"], 2, "invalid choice: 'preact'"),
    "train_bad_model": ("keras_resnet_v2.training.cli", ["--dataset", "digits", "--model", "vgg16", "--run-dir", "r"],
                        2, "`model` must be 'resnet' followed by a depth"),
    "train_bad_depth": ("keras_resnet_v2.training.cli", ["--dataset", "digits", "--model", "resnet21", "--run-dir",
                                                         "r"], 2, "`depth` 21 is not a CIFAR ResNet depth"),
    "describe_bad_depth": ("keras_resnet_v2.__main__", ["165"], 2, "nearest: 164 or 173"),
    "train_zero_epochs": ("keras_resnet_v2.training.cli", ["--dataset", "digits", "--model", "resnet20", "--run-dir",
                                                           "r", "--epochs", "0"], 2, "Received: epochs=0"),
    "train_bad_precision": ("keras_resnet_v2.training.cli", ["--dataset", "digits", "--model", "resnet20",
                                                             "--run-dir", "r", "--precision", "fp16"], 2,
                            "invalid choice: 'fp16'"),
    "train_missing_init": ("keras_resnet_v2.training.cli", ["--dataset", "digits", "--init", "nothing.safetensors",
                                                            "--run-dir", "r"], 2, "`init` file does not exist"),
    "evaluate_help": ("keras_resnet_v2.training.cli", ["evaluate", "--help"], 0, "--eval-size"),
    "evaluate_missing_model": ("keras_resnet_v2.training.cli", ["evaluate", "--model", "nothing.keras", "--dataset",
                                                                "digits"], 2, "MODEL must be a .keras file"),
    "sweep_bad_table": ("keras_resnet_v2.training.cli", ["sweep", "--table", "4", "--run-dir", "r"], 2,
                        "invalid choice: 4"),
    "export_help": ("keras_resnet_v2.export.__main__", ["--help"], 0, "--savedmodel"),
    "export_verify_help": ("keras_resnet_v2.export.__main__", ["verify", "--help"], 0, "VERSION_DIR"),
    "export_missing_model": ("keras_resnet_v2.export.__main__", ["nothing.keras", "--onnx", "m.onnx"], 1,
                             "MODEL must be a .keras file"),
    "describe_help": ("keras_resnet_v2.__main__", ["--help"], 0, "--shortcut"),
    "describe_bad_shortcut": ("keras_resnet_v2.__main__", ["110", "--shortcut", "gate"], 2, "invalid choice: 'gate'"),
}


@pytest.mark.parametrize("case", sorted(FAST))
def test_help_and_argument_errors_come_before_any_backend(case, tmp_path):
    module, argv, code, expected = FAST[case]
    result = _python(f"""
        import contextlib, io, json, sys
        from {module} import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                code = main({argv!r})
            except SystemExit as stop:
                code = stop.code
        print(json.dumps({{"code": code, "out": out.getvalue(),
                          "backends": [m for m in {BACKENDS!r} if m in sys.modules]}}))
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["code"] == code and expected in report["out"], report
    assert report["backends"] == [], f"{case} imported {report['backends']}"
    if code:  # one line saying what is wrong (argparse adds its usage lines before it)
        assert report["out"].strip().splitlines()[-1].startswith(("error: ", "resnet-v2-train: error:",
                                                                  "resnet-v2-train sweep: error:",
                                                                  "python -m keras_resnet_v2: error:"))


def test_captured_start_up_lines_are_hidden_and_replayed_on_failure():
    result = _python("""
        import os, sys
        from keras_resnet_v2.plumbing.startup import _stderr_captured
        with _stderr_captured():
            os.write(2, b"hidden start-up line\\n")
        try:
            with _stderr_captured():
                os.write(2, b"the reason it failed\\n")
                raise ImportError("backend missing")
        except ImportError:
            pass
        os.write(2, b"after\\n")
    """)
    assert result.returncode == 0
    assert result.stderr == "the reason it failed\nafter\n"


def test_start_backend_quiets_tensorflow_unless_verbose_or_set_by_the_user(monkeypatch):
    levels = []  # TF_CPP_MIN_LOG_LEVEL as the backend would see it when it starts
    monkeypatch.setattr(startup, "_start", lambda: levels.append(os.environ.get("TF_CPP_MIN_LOG_LEVEL")))
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    startup.start_backend(verbose=True)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    startup.start_backend()
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    startup.start_backend()
    assert levels == [None, startup.QUIET_LEVEL, "0"] and startup.QUIET_LEVEL == "2"


def test_a_public_name_that_is_also_a_module_name_is_refused(tmp_path, monkeypatch):
    from keras_resnet_v2.plumbing.lazy import lazy_package

    (tmp_path / "verify.py").write_text("def verify():\n    return 1\n")
    package = types.ModuleType("clashing_package")
    package.__path__ = [str(tmp_path)]
    monkeypatch.setitem(sys.modules, "clashing_package", package)
    with pytest.raises(ImportError, match=r"public names \['verify'\] are also names of its modules"):
        lazy_package("clashing_package", {"verify": ("verify",)})
    getattr_, _, names = lazy_package("clashing_package", {"verify": ("check",)})  # no clash: accepted
    assert names == ["check"]


def test_onednn_is_chosen_only_where_nobody_chose_and_tensorflow_is_not_imported(monkeypatch):
    from keras_resnet_v2.plumbing import onednn

    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)  # as if TensorFlow were not imported yet
    monkeypatch.setattr(onednn.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv(onednn.VARIABLE, raising=False)
    assert onednn.prefer_onednn() and os.environ[onednn.VARIABLE] == "1"
    monkeypatch.setenv(onednn.VARIABLE, "0")  # the user's choice is kept
    assert not onednn.prefer_onednn() and os.environ[onednn.VARIABLE] == "0"
    monkeypatch.delenv(onednn.VARIABLE)
    monkeypatch.setattr(onednn.platform, "machine", lambda: "aarch64")  # TensorFlow's ARM builds choose their own
    assert not onednn.prefer_onednn() and onednn.VARIABLE not in os.environ
    monkeypatch.setattr(onednn.platform, "machine", lambda: "x86_64")
    monkeypatch.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))  # too late: it read the variable
    assert not onednn.prefer_onednn() and onednn.VARIABLE not in os.environ


X86_ONLY = pytest.mark.skipif(__import__("platform").machine().lower() not in ("x86_64", "amd64"), reason="x86 only")


@X86_ONLY
def test_this_process_runs_tensorflow_with_onednn_unless_the_user_said_no():
    from keras_resnet_v2.plumbing import onednn

    # conftest imported keras_resnet_v2 before keras, as a notebook should
    assert onednn.onednn_enabled() is (os.environ.get(onednn.VARIABLE) != "0")


def test_a_model_built_with_onednn_off_by_accident_warns_once_in_one_line(monkeypatch):
    from keras_resnet_v2.plumbing import onednn

    monkeypatch.setattr(onednn, "onednn_enabled", lambda: False)  # as after `import tensorflow` on an AVX2 CPU
    monkeypatch.setattr(onednn, "_x86", lambda: True)
    monkeypatch.setattr(onednn, "_warned", [])
    monkeypatch.setenv(onednn.VARIABLE, "0")  # the user's choice: silent
    with warnings.catch_warnings(record=True) as chosen:
        warnings.simplefilter("always")
        krv2.ResNet20()
    monkeypatch.delenv(onednn.VARIABLE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        krv2.ResNet20()
        krv2.ResNet20()
    ours = [str(w.message) for w in caught if "keras_resnet_v2" in str(w.message)]
    assert not [w for w in chosen if "oneDNN" in str(w.message)]
    assert len(ours) == 1 and "\n" not in ours[0] and f"{onednn.VARIABLE}=1" in ours[0]


@pytest.mark.slow
@X86_ONLY
def test_tensorflow_runs_onednn_after_the_package_and_warns_once_when_imported_first():
    probe = """
        import os, warnings
        {first}
        from tensorflow.python.util import _pywrap_util_port
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            keras_resnet_v2.ResNet20(); keras_resnet_v2.ResNet20()
        print(os.environ.get("TF_ENABLE_ONEDNN_OPTS"), _pywrap_util_port.IsMklEnabled(),
              [str(w.message) for w in caught if "oneDNN" in str(w.message)])
    """
    package_first = _python(probe.format(first="import keras_resnet_v2, keras"), drop=("TF_ENABLE_ONEDNN_OPTS",))
    assert package_first.returncode == 0, package_first.stderr[-2000:]
    assert package_first.stdout.split()[:3] == ["1", "True", "[]"]
    # TensorFlow imported first, on a CPU where its default is off (made so here by the variable, removed
    # before the package is imported): the package cannot choose any more, and says so once.
    tensorflow_first = _python(probe.format(first="os.environ['TF_ENABLE_ONEDNN_OPTS'] = '0'; import keras; "
                                                  "del os.environ['TF_ENABLE_ONEDNN_OPTS']; import keras_resnet_v2"),
                               drop=("TF_ENABLE_ONEDNN_OPTS",))
    assert tensorflow_first.returncode == 0, tensorflow_first.stderr[-2000:]
    enabled, warnings_text = tensorflow_first.stdout.split(" ", 2)[1:]
    assert enabled == "False" and warnings_text.count("imported before keras_resnet_v2") == 1
    assert "TF_ENABLE_ONEDNN_OPTS=1" in warnings_text
