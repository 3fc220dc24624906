"""Training for keras_resnet_v2 models: data, the paper's recipes, precision, strategies, a loop.

The pieces work on their own (and with `model.fit`); `resnet-v2-train` composes them.

Example (what `resnet-v2-train --dataset digits --model resnet20 --epochs 30` does):
    >>> from training import TrainConfig, run
    >>> result = run(TrainConfig(dataset="digits", model="resnet20", epochs=30, batch_size=64,
    ...                          run_dir="runs/digits"))
"""

from training.callbacks import AtomicModelCheckpoint, HistoryCSV, TrainingCurves
from training.data import DatasetError, load, normalization_layer, normalization_statistics, pipeline
from training.loop import NonFiniteLossError, Trainer
from training.recipes import RECIPES, SGD, Recipe, StepSchedule, get_recipe, make_optimizer, resolve
from training.run import TrainConfig, evaluate, run
from training.runtime import fuse_batchnorm, make_strategy, set_precision, sync_moving_statistics, wrap_optimizer

__all__ = [
    "RECIPES", "SGD", "AtomicModelCheckpoint", "DatasetError", "HistoryCSV", "NonFiniteLossError", "Recipe",
    "StepSchedule", "TrainConfig", "Trainer", "TrainingCurves", "evaluate", "get_recipe", "load",
    "fuse_batchnorm", "make_optimizer", "make_strategy", "normalization_layer", "normalization_statistics", "pipeline",
    "resolve", "run", "set_precision", "sync_moving_statistics", "wrap_optimizer",
]
