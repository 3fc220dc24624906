"""keras_resnet_v2.training: data, the paper's recipes, precision, strategies and a training loop.

The pieces work on their own (and with `model.fit`); `resnet-v2-train` composes them.

Example (what `resnet-v2-train --dataset digits --model resnet20 --epochs 30` does):
    >>> from keras_resnet_v2.training import TrainConfig, run
    >>> result = run(TrainConfig(dataset="digits", model="resnet20", epochs=30, batch_size=64,
    ...                          run_dir="runs/digits"))

Needs the `train` extra: `pip install "keras_resnet_v2[train]"` (TensorFlow, TFDS, scikit-learn,
matplotlib, PyYAML, TensorBoard).
"""

from keras_resnet_v2._extras import check_import_name, require

check_import_name(__name__, "keras_resnet_v2.training")
require("train", __name__)

from keras_resnet_v2.training.callbacks import AtomicModelCheckpoint, HistoryCSV, TrainingCurves
from keras_resnet_v2.training.data import DatasetError, load, normalization_layer, normalization_statistics, pipeline
from keras_resnet_v2.training.loop import NonFiniteLossError, Trainer
from keras_resnet_v2.training.recipes import RECIPES, SGD, Recipe, StepSchedule, get_recipe, make_optimizer, resolve
from keras_resnet_v2.training.run import TrainConfig, evaluate, run
from keras_resnet_v2.training.runtime import (
    fuse_batchnorm,
    make_strategy,
    set_precision,
    sync_moving_statistics,
    wrap_optimizer,
)

__all__ = [
    "RECIPES", "SGD", "AtomicModelCheckpoint", "DatasetError", "HistoryCSV", "NonFiniteLossError", "Recipe",
    "StepSchedule", "TrainConfig", "Trainer", "TrainingCurves", "evaluate", "get_recipe", "load",
    "fuse_batchnorm", "make_optimizer", "make_strategy", "normalization_layer", "normalization_statistics", "pipeline",
    "resolve", "run", "set_precision", "sync_moving_statistics", "wrap_optimizer",
]
