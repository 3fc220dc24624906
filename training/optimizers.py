"""The Keras side of a recipe: the learning-rate schedules and SGD with the paper's weight decay.

`make_optimizer(recipe, schedule)` turns a `recipes.Recipe` resolved for a run
(`recipes.resolve`) into the optimizer. Kept apart from the recipes, which are plain data, so
the command line reads and checks them without importing Keras.
"""

from __future__ import annotations

import math

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
        >>> [round(float(sched(step)), 6) for step in (399, 400, 48000)]
        [0.01, 0.1, 0.001]
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
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from `warmup_lr` to `lr` over `warmup_steps`, then cosine decay to 0 at `total_steps`
    (the `finetune` recipe; timm's `--sched cosine` with `--min-lr 0`). Serializable, as `StepSchedule`.

    Example:
        >>> sched = WarmupCosine(lr=0.01, total_steps=100, warmup_steps=10, warmup_lr=1e-5)
        >>> [round(float(sched(step)), 6) for step in (0, 10, 55, 100)]
        [1e-05, 0.01, 0.005, 0.0]
    """

    def __init__(self, lr: float, total_steps: int, warmup_steps: int = 0, warmup_lr: float = 0.0):
        lr, warmup_lr, total_steps, warmup_steps = float(lr), float(warmup_lr), int(total_steps), int(warmup_steps)
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"`warmup_steps` must be in [0, total_steps). Received: warmup_steps={warmup_steps}, "
                             f"total_steps={total_steps}")
        self.lr, self.total_steps, self.warmup_steps, self.warmup_lr = lr, total_steps, warmup_steps, warmup_lr

    def __call__(self, step):
        step = ops.cast(step, "float32")
        ramp = self.warmup_lr + (self.lr - self.warmup_lr) * step / max(self.warmup_steps, 1)
        progress = ops.clip((step - self.warmup_steps) / (self.total_steps - self.warmup_steps), 0.0, 1.0)
        cosine = 0.5 * self.lr * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < self.warmup_steps, ramp, cosine)

    def get_config(self):
        return {"lr": self.lr, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "warmup_lr": self.warmup_lr}


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


def make_schedule(schedule: Schedule) -> keras.optimizers.schedules.LearningRateSchedule:
    """The Keras schedule of a run's `recipes.Schedule` (its `kind`: "step" or "cosine")."""
    if schedule.kind == "cosine":
        return WarmupCosine(schedule.lr, schedule.total_steps, schedule.warmup_steps, schedule.warmup_lr)
    return StepSchedule(schedule.boundaries, schedule.values)


def make_optimizer(recipe: Recipe, schedule: Schedule) -> SGD:
    """The recipe's optimizer over the run's schedule."""
    return SGD(make_schedule(schedule), momentum=recipe.momentum,
               nesterov=recipe.nesterov, weight_decay=recipe.weight_decay, decay=recipe.decay)
