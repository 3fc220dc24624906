"""Packaging for keras_resnet_v2: one namespace, a light core and extras.

The repository keeps `training/` and `export/` beside `keras_resnet_v2/`; they install as
`keras_resnet_v2.training` and `keras_resnet_v2.export` (`package_dir`), so nothing generic
such as `training` or `export` lands in site-packages.

    pip install .                # the builders: Keras, numpy, wrapt (bring a backend: jax, torch or tensorflow)
    pip install ".[train]"       # keras_resnet_v2.training, resnet-v2-train (TensorFlow, TFDS, ...)
    pip install ".[export]"      # keras_resnet_v2.export, resnet-v2-export (TensorFlow, tf2onnx, ONNX Runtime)
    pip install ".[deploy]"      # + the LiteRT and OpenVINO runtimes for those export formats
    pip install ".[all]"         # train + export + deploy
    pip install ".[docs]"        # all + Sphinx, MyST-NB, furo, ipykernel: the docs site (docs/conf.py)
    pip install ".[test]"        # all + docs + pytest, ruff, JAX and PyTorch (CPU) for the backend tests
    pip install ".[and-cuda]"    # TensorFlow's CUDA wheels for GPUs
"""

import re
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "keras_resnet_v2" / "__init__.py").read_text(), re.M
).group(1)

TENSORFLOW = "tensorflow>=2.18"
TRAIN = [
    TENSORFLOW,
    "tensorflow-datasets>=4.9",
    "importlib_resources",  # tensorflow-datasets' downloader imports it without requiring it
    "scikit-learn",  # the offline digits data
    "matplotlib",  # curves.png
    "pyyaml",  # --config FILE.yaml
    "tensorboard",
]
# tensorflow-serving-api: the protos of the warmup records, models.config and the stand-in server.
EXPORT = [TENSORFLOW, "tf2onnx>=1.16", "onnxruntime>=1.17", "tensorflow-serving-api>=2.18"]
# The runtimes of the LiteRT and OpenVINO formats (~240 MB): an extra of their own, so `export` stays lean.
DEPLOY = EXPORT + ["ai-edge-litert>=2.0", "openvino>=2025.0"]
ALL = sorted(set(TRAIN + DEPLOY))
# The documentation site (docs/conf.py): Sphinx, MyST-NB (Markdown pages, notebooks run in a Jupyter kernel), a theme.
DOCS = ["sphinx>=7", "myst-nb>=1.1", "furo", "ipykernel"]

setup(
    name="keras_resnet_v2",
    version=VERSION,
    description=(
        "Keras 3 ResNets of He et al., 'Identity Mappings in Deep Residual Networks' "
        "(ECCV 2016): every unit and shortcut variant of the paper."
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=["keras_resnet_v2", "keras_resnet_v2.plumbing", "keras_resnet_v2.training", "keras_resnet_v2.export"],
    package_dir={"keras_resnet_v2": "keras_resnet_v2", "keras_resnet_v2.training": "training",
                 "keras_resnet_v2.export": "export"},
    package_data={"keras_resnet_v2": ["imagenet_classes.json"]},  # decode_predictions' class names
    # wrapt: a post-import hook registers our Keras classes when Keras loads, so the package itself
    # imports lazily (keras_resnet_v2.plumbing.lazy) and the command lines start in a fraction of a second.
    install_requires=["keras>=3.8", "numpy", "wrapt>=1.14"],
    extras_require={
        "train": TRAIN,
        "export": EXPORT,
        "deploy": DEPLOY,
        "all": ALL,
        # The notebooks train, export and deploy: the docs build needs every extra.
        "docs": ALL + DOCS,
        # The backend tests run the builders under JAX and PyTorch (torch 2.13.0: a CPU wheel here;
        # elsewhere see docs/install.md for PyTorch's CPU index).
        "test": ALL + DOCS + ["pytest>=8", "ruff", "jax[cpu]", "torch==2.13.0"],
        "and-cuda": ["tensorflow[and-cuda]>=2.18"],
    },
    entry_points={"console_scripts": [
        "keras-resnet-v2=keras_resnet_v2.__main__:main",
        "resnet-v2-train=keras_resnet_v2.training.cli:main",
        "resnet-v2-export=keras_resnet_v2.export.__main__:main",
    ]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
