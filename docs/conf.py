"""Sphinx configuration of the keras_resnet_v2 documentation.

Build it (offline, warnings as errors; the notebooks under examples/ run in a Jupyter kernel):

    pip install -e ".[docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html

`-D nb_execution_mode=off` renders the notebooks without running them (a quick look at the pages).
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).parent / "_ext"))  # api_coverage

import keras_resnet_v2  # noqa: E402

# The notebooks live in examples/ (one folder for users to open); the site renders copies in docs/examples/
# (not in git), refreshed when a notebook changes, so their links and paths are the site's own.
HERE = Path(__file__).parent
(HERE / "examples").mkdir(exist_ok=True)
for notebook in sorted((HERE.parent / "examples").glob("*.ipynb")):
    copy = HERE / "examples" / notebook.name
    if not copy.exists() or copy.read_bytes() != notebook.read_bytes():
        copy.write_bytes(notebook.read_bytes())

project = "keras_resnet_v2"
author = "the keras_resnet_v2 authors"
copyright = "2026, the keras_resnet_v2 authors"
release = version = keras_resnet_v2.__version__

extensions = [
    "myst_nb",  # Markdown pages and the notebooks, executed at build time
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the docstrings' "Args:" / "Returns:" / "Example:" sections
    "api_coverage",  # docs/_ext: a public name missing from the API reference fails the build
]

# Pages are Markdown (MyST) and notebooks.
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "study", "**/.ipynb_checkpoints"]
myst_heading_anchors = 4  # [text](page.md#a-heading) links, checked at build time
myst_enable_extensions = ["colon_fence"]

# Notebooks: run in a Jupyter kernel (nbclient, ipykernel), cached by their code under _build; an error
# cell fails the build.
nb_execution_mode = "cache"
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
nb_output_stderr = "remove"  # TensorFlow's start-up lines and warnings: in the kernel's log, not on the page

# API reference: the signature's hints in the text; Google-style sections (napoleon).
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
default_role = "code"  # `name` in a docstring is code, as in Markdown

# The packages whose public names (`__all__`) the API reference must hold (api_coverage).
api_coverage_packages = ["keras_resnet_v2", "keras_resnet_v2.training", "keras_resnet_v2.export"]

html_theme = "furo"
html_title = f"keras_resnet_v2 {release}"
html_static_path = []
