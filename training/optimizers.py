"""The Keras side of a recipe: the step learning-rate schedule and SGD with the paper's weight decay.

`make_optimizer(recipe, schedule)` turns a `recipes.Recipe` resolved for a run
(`recipes.resolve`) into the optimizer. Kept apart from the recipes, which are plain data, so
the command line reads and checks them without importing Keras.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_resnet_v2.training.recipes import DECAY_TARGETS, Recipe, Schedule

PACKAGE = "keras_resnet_v2.training"  # registered names say the defining package


@keras.saving.register_keras_serializable(package=PACKAGE)
class StepSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Piecewise-constant learning rate: `values[i]` for `boundaries[i-1] <= step < boundaries[i]`.

    The paper's schedules (warm-up, then division by 10 at fixed iterations) are all of this
    form. Serializable, so optimizers saved in `.keras` files and backups carry it.

    Example:
        >>> sched = StepSchedule([400, 32000, 48000], [0.01, 0.1, 0.01, 0.001])
        >>> float(sched(399)), float(sched(400)), float(sched(48000))
        (0.01, 0.1, 0.001)
    """

    def __init__(self, boundaries, values):
        boundaries, values = [int(b) for b in boundaries], [float(v) for v in values]
        if len(values) != len(boundaries) + 1:
            raise ValueError(f"`values` must have one more entry than `boundaries`. Received: "
                             f"boundaries={boundaries}, values={values}")
        if boundaries != sorted(boundaries):
            raise ValueError(f"`boundaries` must be increasing. Received: boundaries={boundaries}")
        self.boundaries, self.values = boundaries, values

    def __call__(self, step):
        step = ops.cast(step, "int64")
        index = ops.sum(ops.cast(ops.greater_equal(step, ops.convert_to_tensor(self.boundaries or [2**62],
                                                                               "int64")), "int32"))
        table = ops.convert_to_tensor(self.values, "float32")
        return ops.take(table, index)

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SGD(keras.optimizers.SGD):
    """SGD with momentum and *coupled* weight decay: `g <- g + weight_decay * w` before momentum.

    That is the paper's (Torch/Caffe) weight decay. `decay="kernels"` decays variables named
    `kernel` only (conv and dense weights); `decay="all"` decays every trainable variable.

    Example:
        >>> opt = SGD(StepSchedule([400], [0.01, 0.1]), momentum=0.9, nesterov=True, weight_decay=1e-4)
    """

    def __init__(self, learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, decay="kernels",
                 name="sgd", **kwargs):
        if decay not in DECAY_TARGETS:
            raise ValueError(f"`decay` must be one of {DECAY_TARGETS}. Received: decay={decay!r}")
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov, name=name, **kwargs)
        self.coupled_weight_decay = float(weight_decay)
        self.decay = decay

    def decays(self, variable) -> bool:
        """Whether `variable` (a Keras variable) gets weight decay."""
        return self.coupled_weight_decay > 0 and (self.decay == "all" or variable.name == "kernel")

    def build(self, variables):
        super().build(variables)
        # The backend may hand update_step its own variable type; remember decayed ones by key.
        self._decayed_keys = {self._var_key(v) for v in variables if self.decays(v)}

    def update_step(self, gradient, variable, learning_rate):
        if self._var_key(variable) in self._decayed_keys:
            gradient = ops.add(gradient, ops.multiply(ops.cast(variable, gradient.dtype),
                                                      ops.cast(self.coupled_weight_decay, gradient.dtype)))
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "weight_decay": self.coupled_weight_decay, "decay": self.decay}


def make_optimizer(recipe: Recipe, schedule: Schedule) -> SGD:
    """The recipe's optimizer over the run's schedule."""
    return SGD(StepSchedule(schedule.boundaries, schedule.values), momentum=recipe.momentum,
               nesterov=recipe.nesterov, weight_decay=recipe.weight_decay, decay=recipe.decay)
