"""Packaging for keras_resnet_v2 (the model builders), `training` and `export`.
`pip install .` installs them; `pip install ".[test]"` adds the test tools;
`pip install ".[and-cuda]"` pulls TensorFlow's CUDA wheels for GPUs."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "keras_resnet_v2" / "__init__.py").read_text(), re.M
).group(1)

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
    packages=find_packages(include=["keras_resnet_v2", "keras_resnet_v2.*", "training", "training.*",
                                    "export", "export.*"]),
    install_requires=[
        "keras>=3.8",
        "tensorflow>=2.18",
        "numpy",
        "h5py",
        "tf2onnx>=1.16",
        "onnxruntime>=1.17",
        # training: datasets, the offline digits set, curves, YAML configs, TensorBoard logs.
        "tensorflow-datasets>=4.9",
        "importlib_resources",  # tensorflow-datasets' downloader imports it without requiring it
        "scikit-learn",
        "matplotlib",
        "pyyaml",
        "tensorboard",
    ],
    extras_require={
        # JAX runs the builders under KERAS_BACKEND=jax in the tests.
        "test": ["pytest>=8", "ruff", "jax[cpu]"],
        "and-cuda": ["tensorflow[and-cuda]>=2.18"],
    },
    entry_points={"console_scripts": [
        "keras-resnet-v2=keras_resnet_v2.__main__:main",
        "resnet-v2-train=training.cli:main",
        "resnet-v2-export=export.__main__:main",
    ]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
