"""The paper's training recipes as data, and the schedule each resolves to for one run.

Sources (the paper's Appendix and the authors' code, resnet-pre-act.lua in fb.resnet.torch):
- CIFAR: SGD momentum 0.9 (Nesterov in the authors' code), batch 128, weight decay 1e-4,
  lr 0.1 (warm-up at 0.01 for the first 400 iterations), divided by 10 at 32k and 48k
  iterations, stop at 64k.
- ImageNet: batch 256, lr 0.1, divided by 10 at epochs 30 and 60, 90 epochs, no warm-up.

`finetune` is not the paper's: it starts from a trained network (`resnet-v2-train --init`). SGD with
Nesterov momentum 0.9 as above, at a tenth of the paper's learning rate (0.01 at batch 256, 0.0025
at its batch of 64), a linear warm-up from 1e-5 (timm's train.py `--warmup-lr`) over the first 5%
of the run (at most 500 iterations), then cosine decay to 0 (timm's `--sched cosine`, `--min-lr 0`),
weight decay 2e-5 on kernels only (timm's train.py default `--weight-decay`, coupled as in
torch.optim.SGD and as here; timm's optimizer factory leaves BatchNorm and biases undecayed too),
10 epochs. keras-hub's ImageClassifier fine-tunes
with Adam at 5e-5 and no weight decay by default; SGD keeps the optimizer of the paper (and of this
package) and its coupled weight decay.

The learning rate scales linearly with the global batch (lr x batch / recipe batch). A run
shorter or longer than the recipe (`--epochs`/`--steps`) stretches the schedule to its length:
every boundary keeps its fraction of the run (32k/64k = 50%, 48k/64k = 75%); the warm-up keeps
its length in iterations but never more than 5% of the run. `resolve` returns the effective
numbers, which the CLI writes to config.json.

Weight decay in the paper's frameworks adds `weight_decay * w` to the gradient before the
momentum update (an L2 penalty of weight_decay / 2 * ||w||^2). `optimizers.SGD` does exactly that
(Keras' own `SGD(weight_decay=...)` is decoupled and differs under momentum). By default it
decays convolution and dense kernels only, not BatchNorm's gamma/beta nor biases: every conv
is followed by BN, so decaying a kernel only rescales it and raises its effective learning rate,
whereas decaying gamma/beta changes the function the network computes. The authors' Torch code
decays every parameter; `decay="all"` does that.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

DECAY_TARGETS = ("kernels", "all")
SCHEDULES = ("step", "cosine")  # the paper's divisions by 10 (warm-up held flat), or linear warm-up + cosine


@dataclass(frozen=True)
class Recipe:
    """One training recipe. Iteration counts refer to `batch_size` examples per iteration."""

    batch_size: int
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    decay: str
    warmup_steps: int
    warmup_lr: float
    total_steps: int | None  # None: counted in epochs
    epochs: int | None
    boundaries: tuple  # iterations (total_steps set) or epochs
    lr_factor: float
    normalization: str
    scale_augmentation: bool  # image folders kept at native size, ImageNet-style pipeline (else resized)
    schedule: str = "step"  # SCHEDULES; "cosine" ignores boundaries and lr_factor
    note: str = ""


#: The training recipes by name: `paper_cifar` and `paper_imagenet` (the paper's Appendix) and `finetune`.
RECIPES: dict[str, Recipe] = {
    "paper_cifar": Recipe(batch_size=128, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4,
                          decay="kernels", warmup_steps=400, warmup_lr=0.01, total_steps=64_000,
                          epochs=None, boundaries=(32_000, 48_000), lr_factor=0.1,
                          normalization="per_pixel", scale_augmentation=False, note="He et al. 2016, Appendix: CIFAR"),
    "paper_imagenet": Recipe(batch_size=256, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4,
                             decay="kernels", warmup_steps=0, warmup_lr=0.0, total_steps=None,
                             epochs=90, boundaries=(30, 60), lr_factor=0.1,
                             normalization="per_channel", scale_augmentation=True,
                             note="He et al. 2016, Appendix: ImageNet"),
    "finetune": Recipe(batch_size=64, lr=0.0025, momentum=0.9, nesterov=True, weight_decay=2e-5,
                       decay="kernels", warmup_steps=500, warmup_lr=1e-5, total_steps=None, epochs=10,
                       boundaries=(), lr_factor=1.0, normalization="per_channel", scale_augmentation=False,
                       schedule="cosine", note="fine-tuning a trained network: timm's train.py warm-up, cosine "
                                               "and weight decay at a tenth of the paper's lr"),
}
RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(Recipe) if f.name != "note")


def get_recipe(name: str, **overrides) -> Recipe:
    """A recipe by name with fields replaced, each checked. Example: `get_recipe("paper_cifar", lr=0.05)`."""
    if name not in RECIPES:
        raise ValueError(f"`recipe` must be one of {tuple(RECIPES)}. Received: recipe={name!r}")
    unknown = set(overrides) - set(RECIPE_FIELDS)
    if unknown:
        raise ValueError(f"Unknown recipe fields {sorted(unknown)}; allowed: {RECIPE_FIELDS}.")
    recipe = dataclasses.replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})
    _check_recipe(recipe)
    return recipe


def _check_recipe(r: Recipe) -> None:
    def need(ok, name, what):
        if not ok:
            raise ValueError(f"Recipe field `{name}` must be {what}. Received: {name}={getattr(r, name)!r}")

    need(isinstance(r.batch_size, int) and r.batch_size > 0, "batch_size", "a positive integer")
    for name in ("lr", "warmup_lr", "weight_decay", "momentum"):
        need(isinstance(getattr(r, name), (int, float)) and getattr(r, name) >= 0, name, "a number >= 0")
    need(r.lr > 0, "lr", "> 0")
    need(r.momentum < 1, "momentum", "in [0, 1)")
    need(0 < r.lr_factor <= 1, "lr_factor", "in (0, 1]")
    need(r.decay in DECAY_TARGETS, "decay", f"one of {DECAY_TARGETS}")
    need(isinstance(r.warmup_steps, int) and r.warmup_steps >= 0, "warmup_steps", "an integer >= 0")
    need((r.total_steps is None) != (r.epochs is None), "total_steps", "set exactly when `epochs` is not")
    need(list(r.boundaries) == sorted(r.boundaries) and all(b > 0 for b in r.boundaries), "boundaries",
         "increasing positive numbers")
    need(r.normalization in ("per_pixel", "per_channel"), "normalization", "'per_pixel' or 'per_channel'")
    need(isinstance(r.scale_augmentation, bool), "scale_augmentation", "true or false")
    need(r.schedule in SCHEDULES, "schedule", f"one of {SCHEDULES}")


@dataclass(frozen=True)
class Schedule:
    """Effective schedule for one run, in iterations of the run's global batch.

    "step": `values[i]` from `boundaries[i-1]`; "cosine": from `warmup_lr` up to `lr` over `warmup_steps`
    (boundaries `(warmup_steps,)`, values `(warmup_lr, lr)`), then cosine decay to 0 at `total_steps`."""

    total_steps: int
    lr: float
    warmup_steps: int
    warmup_lr: float
    boundaries: tuple
    values: tuple
    kind: str = "step"


def resolve(recipe: Recipe, global_batch: int, steps_per_epoch: int, *, epochs: int | None = None,
            steps: int | None = None) -> Schedule:
    """Scales the recipe to a run: linear lr scaling, schedule stretched to the run's length.

    Example (the paper's CIFAR run at batch 128, 391 iterations an epoch):
        >>> s = resolve(RECIPES["paper_cifar"], 128, 391)
        >>> s.total_steps, s.boundaries, s.values
        (64000, (400, 32000, 48000), (0.01, 0.1, 0.01, 0.001))
    """
    scale = global_batch / recipe.batch_size
    if recipe.total_steps is not None:
        recipe_steps = recipe.total_steps
        fractions = [b / recipe.total_steps for b in recipe.boundaries]
    else:
        recipe_steps = recipe.epochs * steps_per_epoch
        fractions = [b / recipe.epochs for b in recipe.boundaries]
    total = steps if steps is not None else (epochs * steps_per_epoch if epochs is not None else recipe_steps)
    if total == recipe_steps:
        decay_at = [round(f * recipe_steps) for f in fractions]
    else:
        decay_at = [max(1, round(f * total)) for f in fractions]
    lr = recipe.lr * scale
    values = [lr * recipe.lr_factor**i for i in range(len(decay_at) + 1)]
    warmup = min(recipe.warmup_steps, int(0.05 * total)) if total != recipe_steps else recipe.warmup_steps
    if recipe.schedule == "cosine":  # fine-tuning: warm-up never past 5% of the run, whatever its length
        warmup = min(recipe.warmup_steps, int(0.05 * total))
        lr_6g, warmup_lr = float(f"{lr:.6g}"), float(f"{recipe.warmup_lr * scale:.6g}") if warmup else 0.0
        return Schedule(total, lr_6g, warmup, warmup_lr, (warmup,) if warmup else (),
                        (warmup_lr, lr_6g) if warmup else (lr_6g,), kind="cosine")
    if warmup and recipe.warmup_lr > 0:
        decay_at = [warmup] + decay_at
        values = [recipe.warmup_lr * scale] + values
    else:
        warmup = 0
    rounded = tuple(float(f"{v:.6g}") for v in values)
    return Schedule(total, float(f"{lr:.6g}"), warmup, recipe.warmup_lr * scale if warmup else 0.0,
                    tuple(decay_at), rounded)


def steps_per_epoch(train_examples: int, global_batch: int) -> int:
    """Full batches per pass over the training split (at least 1)."""
    return max(1, math.floor(train_examples / global_batch))
