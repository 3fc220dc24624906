"""keras_resnet_v2.training: data, the paper's recipes, precision, strategies and a training loop.

The pieces work on their own (and with `model.fit`); `resnet-v2-train` composes them.

Example (what `resnet-v2-train --dataset digits --model resnet20 --epochs 30` does):
    >>> from keras_resnet_v2.training import TrainConfig, run
    >>> result = run(TrainConfig(dataset="digits", model="resnet20", epochs=30, batch_size=64,  # doctest: +SKIP
    ...                          run_dir="runs/digits"))
    >>> # fine-tune:
    >>> run(TrainConfig(init="runs/digits", dataset="my_images/", freeze="backbone",  # doctest: +SKIP
    ...                 run_dir="runs/mine"))

Needs the `train` extra: `pip install "keras_resnet_v2[train]"` (TensorFlow, TFDS, scikit-learn,
matplotlib, PyYAML, TensorBoard).
"""

from keras_resnet_v2.plumbing.extras import check_import_name, require

check_import_name(__name__, "keras_resnet_v2.training")
require("train", __name__)

from keras_resnet_v2.plumbing.lazy import lazy_package  # noqa: E402  (after the extra is known to be installed)

# Public names by defining module, imported on first use (keras_resnet_v2.plumbing.lazy): the command
# line parses and checks its arguments before TensorFlow is imported.
EXPORTS = {
    "callbacks": ("AtomicModelCheckpoint", "HistoryCSV", "TrainingCurves"),
    "config": ("TrainConfig", "check_settings"),
    "data": ("DatasetError", "load", "normalization_layer", "normalization_statistics", "pipeline"),
    "loop": ("NonFiniteLossError", "Trainer"),
    "optimizers": ("SGD", "StepSchedule", "WarmupCosine", "make_optimizer"),
    "recipes": ("RECIPES", "Recipe", "get_recipe", "resolve"),
    "evaluation": ("evaluate",),
    "runner": ("run",),
    "runtime": ("fuse_batchnorm", "make_strategy", "set_precision", "wrap_optimizer"),
}

# The optimizer and schedule are registered Keras classes: their module runs when Keras loads.
__getattr__, __dir__, __all__ = lazy_package(__name__, EXPORTS, register=("optimizers",))
