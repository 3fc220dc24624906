"""Every `>>>` example in the docstrings of keras_resnet_v2, keras_resnet_v2.training and keras_resnet_v2.export
runs as a doctest, in a fresh folder, and prints what it shows. An example that needs a network, a dataset
or minutes of training is marked `# doctest: +SKIP` where it stands, so a reader sees it is not run here."""

import doctest
import importlib
import pkgutil

import keras
import numpy as np
import pytest

import keras_resnet_v2

PACKAGES = ("keras_resnet_v2", "keras_resnet_v2.training", "keras_resnet_v2.export")
NOT_MODULES = {"keras_resnet_v2.__main__", "keras_resnet_v2.training.__main__", "keras_resnet_v2.export.__main__"}


def _module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package)
        names += [info.name for info in pkgutil.walk_packages(importlib.import_module(package).__path__,
                                                               prefix=f"{package}.")]
    return sorted(set(names) - NOT_MODULES)


def _examples(module_name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [test for test in finder.find(module, module_name) if test.examples]


MODULES = [name for name in _module_names() if _examples(name)]


def test_the_docstring_examples_are_found_in_every_package():
    # The collection itself: each package has examples, so a broken finder cannot pass by finding none.
    for package in PACKAGES:
        assert any(name == package or name.startswith(package + ".") for name in MODULES), package
    assert sum(len(test.examples) for name in MODULES for test in _examples(name)) > 100


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    keras.config.set_dtype_policy("float32")
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    failures = []
    for test in _examples(module_name):
        test.globs.update({"keras": keras, "keras_resnet_v2": keras_resnet_v2, "np": np})
        report = []
        result = runner.run(test, out=report.append, clear_globs=True)
        if result.failed:
            failures.append("".join(report))
    keras.config.set_dtype_policy("float32")
    assert not failures, "\n".join(failures)
