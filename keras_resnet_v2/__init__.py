"""keras_resnet_v2: the residual networks of He et al., "Identity Mappings in Deep
Residual Networks" (ECCV 2016), as Keras 3 functional models.

Example:
    >>> import keras_resnet_v2
    >>> model = keras_resnet_v2.ResNet1001()   # CIFAR pre-activation ResNet-1001
    >>> model = keras_resnet_v2.ResNet(110, unit="original", shortcut="exclusive_gating")

Uses `keras` and `keras.ops` only, so the builders run under the TensorFlow, JAX and
PyTorch backends (`pip install keras_resnet_v2` installs only Keras and numpy).

Input: the builders contain no preprocessing; they expect standardized images (about zero
mean and unit variance per channel), as the paper trains them. To feed raw 0..255 pixels, put
`keras_resnet_v2.Standardize(mean, variance)` in front with your training set's statistics
(per channel, or a per-pixel mean image), which is what `resnet-v2-train` does:

    >>> inputs = keras.Input((32, 32, 3))
    >>> x = keras_resnet_v2.Standardize(mean=[125.3, 123.0, 113.9], variance=[3970.0, 3880.0, 4460.0])(inputs)
    >>> model = keras_resnet_v2.ResNet20(input_tensor=x)

More, with the `train` and `export` extras:
- `keras_resnet_v2.training`: data (`data.load("digits")`, an offline demo set; TFDS names; image
  folders), the paper's recipes (`recipes.get_recipe("paper_cifar")`), a distributed loop, and the
  `resnet-v2-train` command (train, evaluate, sweep a paper table).
- `keras_resnet_v2.export`: verified SavedModel (TF Serving) and ONNX exports, `resnet-v2-export`.
- `python -m keras_resnet_v2 DEPTH` describes a network.
"""

from keras_resnet_v2.convert import copy_weights, to_plain, to_stacked  # noqa: I001  (after resnet)
from keras_resnet_v2.layers import ConstantScale, GatedSum, Rematerialized, Standardize
from keras_resnet_v2.resnet import (
    BLOCKS,
    FAMILIES,
    IMAGENET_DEPTHS,
    POOLINGS,
    SHORTCUT_NAMES,
    STRIDE_IN,
    UNITS,
    ResNet,
    ResNet18,
    ResNet20,
    ResNet32,
    ResNet34,
    ResNet44,
    ResNet50,
    ResNet56,
    ResNet101,
    ResNet110,
    ResNet152,
    ResNet164,
    ResNet200,
    ResNet1001,
    ResNet1202,
    ensure_recursion_limit,
)
from keras_resnet_v2.speed import build_optimizer, fuse_batchnorm
from keras_resnet_v2.stack import UnitStack
from keras_resnet_v2.variants import SHORTCUTS, UNIT_SPECS

__version__ = "0.1.0"

# Saved ResNet-1202s load with `keras.models.load_model` once this package is imported.
ensure_recursion_limit()

__all__ = [
    "BLOCKS", "FAMILIES", "IMAGENET_DEPTHS", "POOLINGS", "SHORTCUTS", "SHORTCUT_NAMES",
    "STRIDE_IN", "UNITS", "UNIT_SPECS", "ConstantScale", "GatedSum", "Rematerialized", "ResNet", "Standardize",
    "ResNet18", "ResNet20", "ResNet32", "ResNet34", "ResNet44", "ResNet50", "ResNet56",
    "ResNet101", "ResNet110", "ResNet152", "ResNet164", "ResNet200", "ResNet1001",
    "ResNet1202", "UnitStack", "__version__", "build_optimizer", "copy_weights", "fuse_batchnorm", "to_plain",
    "to_stacked",
]
