"""keras_resnet_v2: the residual networks of He et al., "Identity Mappings in Deep
Residual Networks" (ECCV 2016), as Keras 3 functional models.

Example:
    >>> import keras_resnet_v2
    >>> model = keras_resnet_v2.ResNet1001()   # CIFAR pre-activation ResNet-1001
    >>> model = keras_resnet_v2.ResNet(110, unit="original", shortcut="exclusive_gating")
    >>> model = keras_resnet_v2.from_timm("resnetv2_50.a1h_in1k")  # timm's ImageNet weights  # doctest: +SKIP
    >>> features = keras_resnet_v2.pyramid_outputs(model)          # {"P2": ..., "P5": ...}  # doctest: +SKIP

Uses `keras` and `keras.ops` only, so the builders run under the TensorFlow, JAX and
PyTorch backends (`pip install keras_resnet_v2` installs only Keras, numpy and wrapt). Importing
the package loads no backend: each name is imported on first use. On x86 it sets
TF_ENABLE_ONEDNN_OPTS=1 unless you set it or TensorFlow is already imported: TensorFlow's oneDNN CPU
kernels, which it leaves off on AVX2 CPUs, train 1.5-1.9x faster there (keras_resnet_v2.plumbing.onednn).

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
- `python -m keras_resnet_v2 DEPTH` (or `keras-resnet-v2 DEPTH`) describes a network.
"""

from keras_resnet_v2.plumbing.lazy import lazy_package
from keras_resnet_v2.plumbing.onednn import prefer_onednn

# TensorFlow's oneDNN CPU kernels on every x86 CPU, when TensorFlow is not imported yet and the user
# has not chosen (TF_ENABLE_ONEDNN_OPTS): on AVX2 CPUs TensorFlow's default leaves them off and trains
# 1.5-1.9x slower (keras_resnet_v2.plumbing.onednn).
prefer_onednn()

__version__ = "0.2.0"

# Public names by the module that defines them; each module is imported on first use, so
# `import keras_resnet_v2` is instant and loads no backend (keras_resnet_v2.plumbing.lazy).
EXPORTS = {
    "batchnorm": ("fuse_batchnorm",),
    "convert": ("copy_weights", "to_plain", "to_stacked"),
    "depths": ("IMAGENET_DEPTHS", "resolve_depth"),
    "features": ("pyramid_outputs",),
    "imagenet": ("decode_predictions", "imagenet_classes", "preprocess_input"),
    "layers": ("ConstantScale", "EdgePadding2D", "GatedSum", "Rematerialized", "Standardize"),
    "models": ("ResNetModel", "StackedModel"),
    "names": ("BLOCKS", "FAMILIES", "PADDINGS", "POOLINGS", "SHORTCUT_NAMES", "STRIDE_IN", "UNITS"),
    "pretrained": ("TIMM_MODELS", "TIMM_SERVING"),
    "resnet": ("ResNet", "ResNet18", "ResNet20", "ResNet32", "ResNet34", "ResNet44", "ResNet50",
               "ResNet56", "ResNet101", "ResNet110", "ResNet152", "ResNet164", "ResNet200", "ResNet1001", "ResNet1202",
               "ensure_recursion_limit"),
    "scaled": ("ScaledConv2D",),
    "speed": ("build_optimizer",),
    "stack": ("UnitStack",),
    "timm_model": ("from_timm",),
    "variants": ("SHORTCUTS", "UNIT_SPECS"),
}


def _keras_loaded() -> None:
    # Saved ResNet-1202s load with `keras.models.load_model` once this package is imported.
    from keras_resnet_v2.builder import ensure_recursion_limit

    ensure_recursion_limit()


# When Keras is imported (before or after this package), the modules defining our layers run, so
# `keras.models.load_model` finds them (resnet imports layers, stack and models).
__getattr__, __dir__, _names = lazy_package(__name__, EXPORTS, register=("resnet",), on_register=_keras_loaded,
                                            public_subpackages=("export", "training"))
__all__ = ["__version__", *_names]
