"""The documentation site (docs/, Sphinx with MyST-NB): every public name in the API reference, and, in the
slow tier, the whole site built as a user builds it (warnings as errors, offline), which runs every notebook
of examples/ in a Jupyter kernel and fails on an error cell."""

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("keras_resnet_v2", "keras_resnet_v2.training", "keras_resnet_v2.export")
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))


def _documented() -> set[str]:
    text = "\n".join(path.read_text() for path in (ROOT / "docs" / "api").glob("*.md"))
    return set(re.findall(r"^\.\. auto(?:function|class|data|module):: (\S+)$", text, re.M))


def test_every_public_name_has_an_entry_in_the_api_reference():
    documented = _documented()
    public = {f"{package}.{name}" for package in PACKAGES
              for name in importlib.import_module(package).__all__ if name != "__version__"}
    assert public - documented == set()
    assert documented - public == set()  # and nothing that is not public


def test_the_notebooks_are_committed_without_outputs_and_run_on_one_kernel():
    assert [path.stem for path in NOTEBOOKS] == ["deploy", "finetune", "gradient_flow", "notebook_flow"]
    for path in NOTEBOOKS:
        notebook = json.loads(path.read_text())
        code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
        assert code and all(not cell["outputs"] and cell["execution_count"] is None for cell in code), path.name
        assert notebook["metadata"]["kernelspec"]["name"] == "python3"
        # Each is a page of the site.
        assert f"examples/{path.stem}" in (ROOT / "docs" / "index.md").read_text()


@pytest.mark.slow
def test_the_site_builds_with_warnings_as_errors_and_runs_every_notebook(tmp_path):
    html = tmp_path / "html"
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-d", str(tmp_path / "doctrees"),
               "-D", "nb_execution_mode=force", str(ROOT / "docs"), str(html)]
    # Not from the repository's root: `python -m` puts the working folder first on sys.path, and there
    # keras_resnet_v2/ is the source tree, where `training` and `export` are not its subpackages (CI installs the
    # package, not in editable mode). The README's `sphinx-build` runs from the root and imports the installed one.
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    times = dict(re.findall(r"examples/(\w+)\.ipynb: Executed notebook in ([\d.]+) seconds", output))
    assert sorted(times) == [path.stem for path in NOTEBOOKS], output[-3000:]
    print("notebook run times (s):", times)
    for path in NOTEBOOKS:
        page = (html / "examples" / f"{path.stem}.html").read_text()
        assert "<img" in page and ".png" in page, f"{path.stem}: no plot on its page"
        assert "Traceback" not in page, f"{path.stem}: a traceback on its page"
    api = (html / "api" / "keras_resnet_v2.html").read_text()
    assert 'id="keras_resnet_v2.ResNet"' in api and 'id="keras_resnet_v2.UNIT_SPECS"' in api
    assert (html / "index.html").exists() and (html / "troubleshooting.html").exists()


def _prose(markdown: str) -> str:
    """A Markdown page's running text: no code blocks, tables, headings or link targets."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith(("|", "#"))]
        paragraphs.append(" ".join(lines))
    return re.sub(r"\]\([^)]*\)", "]", "\n".join(paragraphs))


def test_the_readme_is_a_front_door():
    # Issue 49: at most 2,000 words and no sentence over 40; the Quick start block stays what CI reads.
    readme = (ROOT / "README.md").read_text()
    assert len(readme.split()) <= 2000
    sentences = [s for paragraph in _prose(readme).splitlines()
                 for s in re.split(r"(?<=[.!?])\s+(?=[A-Z`(\[*])", paragraph) if s.strip()]
    assert len(sentences) > 30  # the splitter found the prose
    long = [s for s in sentences if len(s.split()) > 40]
    assert long == []
    assert "sphinx-build -W --keep-going -b html docs docs/_build/html" in readme  # the docs' one command
