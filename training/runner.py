"""One training run, composed from the package's pieces: config -> data -> model -> loop
(backups and resume: resume.py; testing: evaluation.py; the export at the end: deploy.py).

`run(config)` is what `resnet-v2-train` calls. Everything that can be wrong with the input is
checked before anything is written to the run directory. The run directory holds:

    config.json        the effective configuration (recipe resolved to this run)
    history.csv        one row per epoch (epoch, step, loss, accuracy, lr, images_per_sec, val_*)
    curves.png         training loss and test error against iterations (paper Fig. 1 style)
    logs/              TensorBoard
    backup/            tf.train.Checkpoint of model + optimizer + epoch, for resume
    checkpoints/       best.keras (highest val_accuracy), last.keras
    model.keras        the final model (normalization layer in front: takes 0..255 pixels)

Rerunning the same command with the same run directory resumes from the last backup (written
at each epoch end, after history.csv), so at most the interrupted epoch is redone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import inspect
import json
import os
import shutil

import keras
import tensorflow as tf

import keras_resnet_v2
from keras_resnet_v2.plumbing import images as image_ops
from keras_resnet_v2.plumbing.files import DirectoryLock, atomic_write_text
from keras_resnet_v2.resnet import resolve_config
from keras_resnet_v2.training import callbacks as cb
from keras_resnet_v2.training import data as data_lib
from keras_resnet_v2.training import deploy, evaluation, finetune, optimizers, recipes, resume, runtime
from keras_resnet_v2.training.config import (
    TrainConfig,
    check_settings,
    parse_model,
)
from keras_resnet_v2.training.loop import Trainer


def check_config(config: TrainConfig) -> recipes.Recipe:
    """Validates everything that needs no data or devices; returns the effective recipe. A fine-tuning
    run (`init`) has its architecture and preprocessing from SOURCE by then (`finetune.prepare`)."""
    # The builder's own checks (depth, unit, shortcut, variant options), before any data is read;
    # then the settings' own (`config.check_settings`, which the command line runs first).
    resolved = resolve_config(parse_model(config.model), **model_arguments(config))
    config.scan = resolved.scan  # None -> the builder's choice for this depth, so config.json says which
    recipe = check_settings(config)
    if config.export_dir:
        deploy.check_formats(config.export_formats)
    return recipe


def build_model(config: TrainConfig, info: data_lib.DatasetInfo, image_size: int, mean, variance,
                source: finetune.Source | None = None) -> keras.Model:
    """The network with a normalization layer in front (raw 0..255 pixels in): the training split's
    statistics, or for a fine-tuning run SOURCE's front (`finetune.front_layer`, filled by `initialize`)."""
    shape = info.image_shape[:2] + (3,) if info.image_shape else (image_size, image_size, 3)
    inputs = keras.Input(shape=shape, name="images")
    front = finetune.front_layer(source) if source else data_lib.normalization_layer(mean, variance)
    x = front(inputs) if front is not None else inputs
    block = f"_{config.block}" if config.block else ""
    return keras_resnet_v2.ResNet(parse_model(config.model), input_tensor=x, classes=info.num_classes,
                                  name=f"{config.model}{block}_{config.unit}", **model_arguments(config))


# The run settings that are `ResNet` arguments of the same name (unit, shortcut, block, remat, scan, ...).
_RESNET_KEYWORDS = {name for name, parameter in inspect.signature(keras_resnet_v2.ResNet).parameters.items()
                    if parameter.kind is parameter.KEYWORD_ONLY}
RESNET_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name in _RESNET_KEYWORDS)


def model_arguments(config: TrainConfig) -> dict:
    """The `ResNet` arguments a run's settings choose (the rest: the builder's defaults, the data's)."""
    # channels_last whatever keras.config says: the input pipeline gives [N, H, W, C] batches.
    return dict({name: getattr(config, name) for name in RESNET_FIELDS}, data_format="channels_last",
                **config.variant_options)


def _describe_schedule(schedule: recipes.Schedule) -> str:
    if schedule.kind == "cosine":
        warmup = f"warm-up from {schedule.warmup_lr} over {schedule.warmup_steps} steps, " * bool(schedule.warmup_steps)
        return f"lr {schedule.lr}: {warmup}cosine to 0 at step {schedule.total_steps}"
    return f"lr {schedule.values} at {schedule.boundaries}"


class DiskFullError(RuntimeError):
    """The disk filled up during a run; the message says where and how to resume."""


def _disk_full(error: BaseException) -> bool:
    return (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "No space left on device" in str(error)


def _say(message: str) -> None:
    """Start, resume and end lines; `verbose=0` silences only the progress bar."""
    print(message, flush=True)


def run(config: TrainConfig, source: finetune.Source | None = None) -> dict:
    """Trains (or resumes) one run; returns the final test metrics and paths.

    `source`: a fine-tuning run's SOURCE as `finetune.prepare(config)` returned it, for a caller that has
    it already (the command line, from its checks); None: prepared here when `config.init` is set.
    The run directory is locked for the run (`RUN_DIR/.lock`): a second run into it is refused at
    once, naming the first; the kernel releases the lock however the run ends, SIGKILL included.
    """
    with contextlib.ExitStack() as held:
        return _run(config, held, source)


@dataclasses.dataclass
class _Plan:
    """What a run will do, worked out from its settings and its data before its directory is touched."""

    recipe: recipes.Recipe
    strategy: tf.distribute.Strategy
    jit_compile: bool
    global_batch: int
    splits: data_lib.Splits
    image_size: int
    schedule: recipes.Schedule
    steps_per_epoch: int
    epochs: int
    effective: dict  # what config.json records: the settings, the recipe resolved, the data, the versions
    source: finetune.Source | None  # a fine-tuning run's SOURCE (`init`)
    sizing: image_ops.Preprocessing  # how test images of any size reach the network (and serve_image_bytes)

    def test_pipeline(self, dataset):
        """`dataset` batched for testing: images of any size sized as `sizing` says."""
        return data_lib.pipeline(dataset, self.splits.info, self.global_batch, training=False,
                                 image_size=self.image_size, resize_side=self.sizing.side(self.image_size),
                                 interpolation=self.sizing.interpolation)


def _plan(config: TrainConfig, source: finetune.Source | None) -> _Plan:
    source = source or finetune.prepare(config)  # SOURCE's architecture and preprocessing (a fine-tuning run)
    recipe = check_config(config)
    runtime.set_precision(config.precision)  # before any model is built
    strategy = runtime.make_strategy(config.strategy)
    jit_compile = runtime.resolve_jit_compile(config.jit_compile, strategy)  # refused before any work
    global_batch = config.batch_size or recipe.batch_size
    runtime.per_replica_batch(global_batch, strategy)
    # Image folders: resized to the input size (CIFAR-style), or kept at their own sizes for the
    # ImageNet-style scale augmentation. Digits: resized; TFDS: the dataset's own sizes.
    folder_size = None if recipe.scale_augmentation else (config.image_size or 32)
    splits = data_lib.load(config.dataset, data_dir=config.data_dir, image_size=folder_size,
                           skip_bad_images=config.skip_bad_images)
    info = splits.info
    image_size = config.image_size or (info.image_shape[0] if info.image_shape else 224)
    if config.eval_size is not None and info.image_shape is not None:
        raise ValueError(f"`eval_size` sets the test crop of variable-size (ImageNet-style) images; {info.name!r} "
                         f"images are all {info.image_shape[0]}x{info.image_shape[1]}. Received: "
                         f"eval_size={config.eval_size}")
    if source is not None and source.fixed_size and (info.image_shape or (None,))[0] != source.image_size:
        sizes = "of varying sizes" if info.image_shape is None else f"{info.image_shape[0]}x{info.image_shape[1]}"
        raise ValueError(f"--init subtracts a per-pixel mean image of {source.image_size}x{source.image_size}; "
                         f"{info.name!r} images are {sizes}. Received: dataset={config.dataset!r}")
    steps_per_epoch = recipes.steps_per_epoch(info.train_examples, global_batch)
    schedule = recipes.resolve(recipe, global_batch, steps_per_epoch, epochs=config.epochs, steps=config.steps)
    epochs = max(1, -(-schedule.total_steps // steps_per_epoch))
    if config.steps is not None:
        steps_per_epoch = min(steps_per_epoch, config.steps)
        epochs = -(-config.steps // steps_per_epoch)
    # How test images of any size reach the network: SOURCE's for a fine-tuning run (timm's bicubic 0.95 crop).
    mode = "resize" if info.image_shape is not None else "shorter_side_crop"
    sizing = image_ops.as_preprocessing(source.preprocessing if source and source.preprocessing["mode"] == mode
                                        else mode)
    effective = {**dataclasses.asdict(config), "recipe_values": dataclasses.asdict(recipe),
                 "schedule": dataclasses.asdict(schedule), "global_batch": global_batch,
                 "batch_size": global_batch, "replicas": strategy.num_replicas_in_sync,
                 "strategy_class": runtime.strategy_name(strategy), "epochs_run": epochs,
                 "steps_per_epoch": steps_per_epoch, "image_size": image_size,
                 "dataset_info": {k: v for k, v in dataclasses.asdict(info).items() if k != "class_names"},
                 "class_names": list(info.class_names),
                 # the input statistics' kind: part of the run's identity (a fine-tuning run: SOURCE's)
                 "normalization": source.normalization if source else recipe.normalization,
                 # how images of any size reach the network at test time (and in serve_image_bytes)
                 "preprocessing": mode if sizing == image_ops.Preprocessing(mode) else dataclasses.asdict(sizing),
                 "init_source": finetune.record(source) if source else None,
                 "keras_resnet_v2": keras_resnet_v2.__version__,
                 "tensorflow": tf.__version__, "keras": keras.__version__}
    return _Plan(recipe, strategy, jit_compile, global_batch, splits, image_size, schedule, steps_per_epoch, epochs,
                 effective, source, sizing)


def _restore(plan: _Plan, checkpoint, manager, run_dir: str, backup_dir: str, chief: bool) -> int:
    """Restores the newest readable backup of a run being resumed; returns the epochs it had completed."""
    restored = resume.restore_newest_readable(checkpoint, manager, backup_dir, _say)
    initial_epoch = int(checkpoint.completed_epochs.numpy())
    agreed = runtime.agreed_epoch(plan.strategy, initial_epoch)  # every worker resumes at the same epoch
    if agreed < initial_epoch:
        restored = resume.restore_epoch(checkpoint, manager, agreed, backup_dir)
        _say(f"another worker's newest backup holds epoch {agreed}: resuming from this worker's {restored}")
        initial_epoch = agreed
    if initial_epoch > plan.epochs:  # config.json would record a schedule the model was not trained with
        raise ValueError(f"Run directory {run_dir!r} holds a run trained for {initial_epoch} epochs, more than "
                         f"the {plan.epochs} asked for: nothing to train, and its record is kept. Give at least "
                         f"{initial_epoch} epochs (more to go on training), or use another --run-dir")
    _say(f"resuming {run_dir} after epoch {initial_epoch} ({restored})" if initial_epoch < plan.epochs else
         f"{run_dir} is already trained for its {plan.epochs} epochs ({restored}): nothing to train")
    if chief and not os.path.exists(os.path.join(run_dir, "history.csv")):
        _say(f"{os.path.join(run_dir, 'history.csv')} is missing: the history restarts at epoch "
             f"{initial_epoch + 1} and best.keras is chosen again from the epochs trained from here")
    return initial_epoch


class _Backup(keras.callbacks.Callback):
    """At each epoch end: the completed epochs counted, then a backup (every worker saves: a collective)."""

    def __init__(self, checkpoint, manager, backup_dir: str):
        super().__init__()
        self.checkpoint, self.manager, self.backup_dir = checkpoint, manager, backup_dir

    def on_epoch_end(self, epoch, logs=None):
        self.checkpoint.completed_epochs.assign(epoch + 1)
        try:
            self.manager.save(checkpoint_number=epoch + 1)
        except BaseException:
            resume.remove_partial_backups(self.backup_dir)
            raise


def _callbacks(config: TrainConfig, plan: _Plan, run_dir: str, chief: bool, best_previous, backup: _Backup) -> list:
    """At each epoch end, in this order: history.csv, curves, last/best `.keras` (the chief's), then the backup
    (so a resumed run finds its history), then TensorBoard (the chief's)."""
    history_path = os.path.join(run_dir, "history.csv")
    found = [
        cb.HistoryCSV(history_path, plan.steps_per_epoch, enabled=chief),
        cb.TrainingCurves(history_path, os.path.join(run_dir, "curves.png"),
                          f"{config.model} {config.unit} on {plan.splits.info.name}", enabled=chief),
        cb.AtomicModelCheckpoint(os.path.join(run_dir, "checkpoints", "last.keras"), enabled=chief),
        cb.AtomicModelCheckpoint(os.path.join(run_dir, "checkpoints", "best.keras"), monitor="val_accuracy",
                                 enabled=chief, initial_best=best_previous),
        backup,
    ]
    if chief:
        found.append(keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"), write_graph=False))
    return found


def _run(config: TrainConfig, held: contextlib.ExitStack, source: finetune.Source | None) -> dict:
    plan = _plan(config, source)
    strategy, info, global_batch = plan.strategy, plan.splits.info, plan.global_batch
    run_dir = os.path.abspath(config.run_dir)
    chief = runtime.is_chief(strategy)
    if chief:  # once the input is known good, before the run directory is read or written; other
        # workers of a multi-worker run write to their own scratch folders
        held.enter_context(DirectoryLock(run_dir, "a training run"))
    resuming = resume.check_resume(run_dir, plan.effective)
    # Non-chief workers of a multi-worker run write their copies to a scratch directory.
    write_dir = run_dir if chief else os.path.join(run_dir, ".workers", str(strategy.cluster_resolver.task_id))
    backup_dir = os.path.join(write_dir, "backup")

    _say(f"strategy {runtime.strategy_name(strategy)}, {strategy.num_replicas_in_sync} replica(s), "
         f"precision {config.precision}, XLA {'on' if plan.jit_compile else 'off'}, global batch {global_batch} "
         f"({global_batch // strategy.num_replicas_in_sync} per replica), {plan.steps_per_epoch} steps x "
         f"{plan.epochs} epochs, {_describe_schedule(plan.schedule)}")
    source = plan.source
    # A fine-tuning run standardizes as SOURCE did (its front layer); otherwise the training split's statistics.
    mean, variance = (None, None) if source else data_lib.normalization_statistics(plan.splits.train,
                                                                                   plan.recipe.normalization)
    with strategy.scope():
        model = build_model(config, info, plan.image_size, mean, variance, source)  # fused BatchNorm unless turned off
        if source is not None and not resuming:  # a resumed run has SOURCE's weights in its backup
            digest = plan.effective["init_source"]["sha256"] = finetune.initialize(model, source)
            _say(f"initialized from {source.spec} ({source.kind}, sha256 {digest[:12]}): all but the classifier")
        if source is not None:  # before the optimizer is built: frozen layers have no slots
            finetune.freeze(model, finetune.frozen_parts(config.freeze, source))
        optimizer = runtime.wrap_optimizer(optimizers.make_optimizer(plan.recipe, plan.schedule), config.precision)
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="completed_epochs")
    trainer = Trainer(model, optimizer, strategy, global_batch, jit_compile=plan.jit_compile,
                      steps_per_execution=config.steps_per_execution)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, completed_epochs=epoch_var)
    manager = tf.train.CheckpointManager(checkpoint, backup_dir, max_to_keep=2)
    resume.remove_partial_backups(backup_dir)
    # The Trainer built the optimizer: every variable is read now, so a bad file fails here.
    initial_epoch = _restore(plan, checkpoint, manager, run_dir, backup_dir, chief) if resuming else 0
    if chief:
        os.makedirs(run_dir, exist_ok=True)
        atomic_write_text(os.path.join(run_dir, "config.json"), json.dumps(plan.effective, indent=2, default=str))

    history_path = os.path.join(run_dir, "history.csv")
    best_previous = max((r.get("val_accuracy", 0.0) for r in cb.read_history(history_path)
                         if r["epoch"] <= initial_epoch), default=None) if resuming else None

    def last_good(epoch, step):
        latest = manager.latest_checkpoint
        return (f"Training stopped; the last good checkpoint is {latest} (epoch {int(epoch_var.numpy())}); "
                f"last.keras is {os.path.join(run_dir, 'checkpoints', 'last.keras')}." if latest
                else "No checkpoint was written before it.")

    callbacks = _callbacks(config, plan, run_dir, chief, best_previous, _Backup(checkpoint, manager, backup_dir))
    train_ds = data_lib.pipeline(plan.splits.train, info, global_batch, training=True, seed=config.seed,
                                 start_step=initial_epoch * plan.steps_per_epoch, image_size=plan.image_size)
    test_ds = plan.test_pipeline(plan.splits.test)
    try:
        trainer.fit(train_ds, epochs=plan.epochs, steps_per_epoch=plan.steps_per_epoch, validation_data=test_ds,
                    callbacks=callbacks, initial_epoch=initial_epoch, verbose=config.verbose,
                    on_non_finite=last_good)
        metrics = trainer.evaluate(test_ds)
    except (OSError, tf.errors.OpError) as error:
        lost = runtime.lost_worker(error, strategy)
        if lost is None and not _disk_full(error):
            raise
        latest = manager.latest_checkpoint  # ckpt-N holds epoch N; the epoch counter may be one ahead of it
        where = (f"the last backup is {latest} (after epoch {int(latest.rsplit('-', 1)[1])})" if latest
                 else "no backup was written yet")
        if lost is not None:  # TensorFlow aborted this worker's collectives: the run cannot go on without it
            raise runtime.WorkerLostError(
                f"{lost} of the multi-worker run stopped answering ({type(error).__name__}); {where}; start every "
                "worker again with the same command to resume from there") from None
        raise DiskFullError(f"no space left on device in {run_dir}; {where}; free some space and rerun the same "
                            "command to resume from there") from None
    return _finish(config, plan, model, metrics, run_dir, write_dir, chief)


def _finish(config: TrainConfig, plan: _Plan, model: keras.Model, metrics: dict, run_dir: str, write_dir: str,
            chief: bool) -> dict:
    """The final test (and at `eval_size`), `model.keras`, the last line, and the export of `--export-dir`."""
    result = {"run_dir": run_dir, **{f"test_{k}": v for k, v in metrics.items()}}
    if config.eval_size and config.eval_size != plan.image_size:
        at_size = evaluation.eval_at(model, plan.splits, config.eval_size, plan.global_batch, plan.strategy,
                                     interpolation=plan.sizing.interpolation)
        result.update({f"test_{config.eval_size}_{k}": v for k, v in at_size.items()})
    if not chief:
        shutil.rmtree(write_dir, ignore_errors=True)
        return result
    model_path = os.path.join(run_dir, "model.keras")
    cb.save_model(model, model_path)
    result["model"] = model_path
    key, error = f"test_{config.eval_size}_accuracy", evaluation.error_text
    at_size = f"; at {config.eval_size}x{config.eval_size}: {error(result[key])}" if key in result else ""
    _say(f"test error {error(result['test_accuracy'])} (top-5 {error(result['test_top5_accuracy'])}) "
         f"at {plan.image_size}x{plan.image_size}{at_size}; model {model_path}; "
         f"history {os.path.join(run_dir, 'history.csv')}")
    sample = deploy.write_sample(run_dir, plan.splits, plan.image_size, plan.sizing)
    if config.export_dir:
        result["export"] = deploy.export_run(model, config.export_dir, list(plan.splits.info.class_names),
                                             plan.effective, config.export_formats, sample)
    return result
