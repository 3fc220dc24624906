"""One training run, composed from the package's pieces: config -> data -> model -> loop.

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
import glob
import json
import os
import shutil

import keras
import tensorflow as tf

import keras_resnet_v2
from keras_resnet_v2.plumbing.files import DirectoryLock, atomic_write_text, read_json_object
from keras_resnet_v2.resnet import resolve_config
from keras_resnet_v2.training import callbacks as cb
from keras_resnet_v2.training import data as data_lib
from keras_resnet_v2.training import optimizers, recipes, runtime
from keras_resnet_v2.training.config import (
    IDENTITY_FIELDS,
    TrainConfig,
    changed_settings,
    check_settings,
    parse_model,
)
from keras_resnet_v2.training.loop import Trainer


def check_config(config: TrainConfig) -> recipes.Recipe:
    """Validates everything that needs no data or devices; returns the effective recipe."""
    # The builder's own checks (depth, unit, shortcut, variant options), before any data is read;
    # then the settings' own (`config.check_settings`, which the command line runs first).
    resolved = resolve_config(
        parse_model(config.model), unit=config.unit, shortcut=config.shortcut, family=None, block=config.block,
        stride_in="first", input_shape=None, input_tensor=None, include_top=True, pooling=None, classes=None,
        classifier_activation="softmax", weights=None, dtype=None, name=None,
        variant_options=config.variant_options, remat=config.remat, scan=config.scan, padding=config.padding)
    config.scan = resolved.scan  # None -> the builder's choice for this depth, so config.json says which
    return check_settings(config)


def build_model(config: TrainConfig, info: data_lib.DatasetInfo, image_size: int, mean, variance) -> keras.Model:
    """The network with a normalization layer in front (raw 0..255 pixels in)."""
    shape = info.image_shape[:2] + (3,) if info.image_shape else (image_size, image_size, 3)
    inputs = keras.Input(shape=shape, name="images")
    x = data_lib.normalization_layer(mean, variance)(inputs)
    block = f"_{config.block}" if config.block else ""
    return keras_resnet_v2.ResNet(parse_model(config.model), unit=config.unit, shortcut=config.shortcut,
                                  block=config.block, input_tensor=x, classes=info.num_classes, remat=config.remat,
                                  scan=config.scan, fused_batchnorm=config.fused_batchnorm, padding=config.padding,
                                  name=f"{config.model}{block}_{config.unit}", **config.variant_options)


def with_input_size(model: keras.Model, size: int) -> keras.Model:
    """A copy of `model` that takes `size` x `size` images, sharing nothing, with the same weights.

    The networks are fully convolutional up to global pooling, so a model trained on 224 crops
    can be tested on 320 crops (the paper's Table 5). A per-pixel mean image fixes the size.
    """
    if model.input_shape[1:3] == (size, size):
        return model
    for layer in model.layers:
        if isinstance(layer, keras_resnet_v2.Standardize) and len(layer.shape) == 3:
            raise ValueError(f"The model subtracts a per-pixel mean image of shape {layer.shape}, so it only takes "
                             f"{layer.shape[0]}x{layer.shape[1]} images; train with normalization='per_channel' to "
                             f"test at another size. Received: eval_size={size}")
    inputs = keras.Input((size, size, model.input_shape[-1]), name=model.inputs[0].name)
    copy = keras.models.clone_model(model, input_tensors=inputs)
    copy.set_weights(model.get_weights())
    return copy


def _eval_at(model: keras.Model, splits: data_lib.Splits, size: int, batch_size: int, strategy=None,
             side: int | None = None, interpolation: str = "bilinear") -> dict:
    """Top-1/top-5 on the test split at a `size` centre crop of images whose shorter side is resized to
    `side` (default `size`: the paper's 320 test, FACTS.md)."""
    with (strategy or tf.distribute.get_strategy()).scope():
        resized = with_input_size(model, size)
    test = data_lib.pipeline(splits.test, splits.info, batch_size, training=False, image_size=size,
                             resize_side=side or size, interpolation=interpolation)
    return Trainer(resized, keras.optimizers.SGD(), strategy or tf.distribute.get_strategy(), batch_size).evaluate(test)


def _check_resume(run_dir: str, effective: dict) -> bool:
    """True if run_dir holds a run to resume; refuses one made by a different configuration."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(os.path.join(run_dir, "backup", "checkpoint")):
        return False
    try:
        previous = read_json_object(path)
    except FileNotFoundError:
        raise ValueError(f"Run directory {run_dir!r} holds a backup but no config.json, so it cannot be resumed "
                         "safely; move its backup/ aside to start over, or use another --run-dir.") from None
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # runs saved before a field existed
    defaults["normalization"] = (previous.get("recipe_values") or {}).get("normalization")
    defaults["padding"] = "same"  # runs saved before the field existed were built with Keras' "same"
    previous = {k: previous.get(k, defaults.get(k)) for k in IDENTITY_FIELDS}
    changed = changed_settings(previous, effective, IDENTITY_FIELDS)
    if changed:
        raise ValueError(f"Run directory {run_dir!r} holds a run with a different configuration ({changed}); "
                         "use another --run-dir.")
    return True


def _remove_partial_backups(backup_dir: str) -> None:
    """TensorFlow writes a backup as `ckpt-N_temp/` and renames it: a kill or full disk leaves that."""
    for leftover in glob.glob(os.path.join(backup_dir, "ckpt-*_temp*")):
        if os.path.isdir(leftover):
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            os.remove(leftover)


def _restore_newest_readable(checkpoint, manager, backup_dir: str, log) -> str:
    """Restores the newest backup that reads back whole (two are kept); returns its path.

    A truncated or corrupt newest backup falls back to the previous one, saying so; if none reads,
    a ValueError names the files.
    """
    failures = []
    for path in reversed(manager.checkpoints):
        try:
            checkpoint.restore(path).expect_partial()  # reads every built variable now
        except Exception as error:  # noqa: BLE001 - a damaged file fails in many ways (DataLossError, IndexError, ...)
            failures.append(f"{path}: {str(error).strip().splitlines()[0][:200]}")
            continue
        if failures:
            log(f"warning: the newest backup is unreadable ({failures[0]}); resuming from the previous one, {path}")
        return path
    raise ValueError(f"Cannot resume: no backup reads back ({'; '.join(failures) or 'none listed'}). "
                     f"Move {backup_dir} aside to start over.")


class DiskFullError(RuntimeError):
    """The disk filled up during a run; the message says where and how to resume."""


def _disk_full(error: BaseException) -> bool:
    return (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "No space left on device" in str(error)


def _log(config, message: str) -> None:
    """Start, resume and end lines; `verbose=0` silences only the progress bar."""
    print(message, flush=True)


def run(config: TrainConfig) -> dict:
    """Trains (or resumes) one run; returns the final test metrics and paths.

    The run directory is locked for the run (`RUN_DIR/.lock`): a second run into it is refused at
    once, naming the first; the kernel releases the lock however the run ends, SIGKILL included.
    """
    with contextlib.ExitStack() as held:
        return _run(config, held)


def _run(config: TrainConfig, held: contextlib.ExitStack) -> dict:
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
    steps_per_epoch = recipes.steps_per_epoch(info.train_examples, global_batch)
    schedule = recipes.resolve(recipe, global_batch, steps_per_epoch, epochs=config.epochs, steps=config.steps)
    epochs = max(1, -(-schedule.total_steps // steps_per_epoch))
    if config.steps is not None:
        steps_per_epoch = min(steps_per_epoch, config.steps)
        epochs = -(-config.steps // steps_per_epoch)

    effective = {**dataclasses.asdict(config), "recipe_values": dataclasses.asdict(recipe),
                 "schedule": dataclasses.asdict(schedule), "global_batch": global_batch,
                 "batch_size": global_batch, "replicas": strategy.num_replicas_in_sync,
                 "strategy_class": runtime.strategy_name(strategy), "epochs_run": epochs,
                 "steps_per_epoch": steps_per_epoch, "image_size": image_size,
                 "dataset_info": {k: v for k, v in dataclasses.asdict(info).items() if k != "class_names"},
                 "class_names": list(info.class_names),
                 "normalization": recipe.normalization,  # the input statistics' kind: part of the run's identity
                 # how images of any size reach the network at test time (and in serve_image_bytes)
                 "preprocessing": "resize" if info.image_shape is not None else "shorter_side_crop",
                 "keras_resnet_v2": keras_resnet_v2.__version__,
                 "tensorflow": tf.__version__, "keras": keras.__version__}
    run_dir = os.path.abspath(config.run_dir)
    chief = runtime.is_chief(strategy)
    if chief:  # once the input is known good, before the run directory is read or written; other
        # workers of a multi-worker run write to their own scratch folders
        held.enter_context(DirectoryLock(run_dir, "a training run"))
    resuming = _check_resume(run_dir, effective)
    # Non-chief workers of a multi-worker run write their copies to a scratch directory.
    write_dir = run_dir if chief else os.path.join(run_dir, ".workers", str(strategy.cluster_resolver.task_id))

    _log(config, f"strategy {runtime.strategy_name(strategy)}, {strategy.num_replicas_in_sync} replica(s), "
                 f"precision {config.precision}, XLA {'on' if jit_compile else 'off'}, global batch {global_batch} "
                 f"({global_batch // strategy.num_replicas_in_sync} per replica), {steps_per_epoch} steps x "
                 f"{epochs} epochs, lr {schedule.values} at {schedule.boundaries}")
    mean, variance = data_lib.normalization_statistics(splits.train, recipe.normalization)
    with strategy.scope():
        model = build_model(config, info, image_size, mean, variance)  # fused BatchNorm unless turned off
        optimizer = runtime.wrap_optimizer(optimizers.make_optimizer(recipe, schedule), config.precision)
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="completed_epochs")
    trainer = Trainer(model, optimizer, strategy, global_batch,
                      jit_compile=jit_compile,
                      steps_per_execution=config.steps_per_execution)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, completed_epochs=epoch_var)
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(write_dir, "backup"), max_to_keep=2)
    initial_epoch = 0
    _remove_partial_backups(os.path.join(write_dir, "backup"))
    if resuming:  # the Trainer built the optimizer: every variable is read now, so a bad file fails here
        restored = _restore_newest_readable(checkpoint, manager, os.path.join(write_dir, "backup"),
                                            lambda message: _log(config, message))
        initial_epoch = int(epoch_var.numpy())
        if initial_epoch > epochs:  # config.json would record a schedule the model was not trained with
            raise ValueError(f"Run directory {run_dir!r} holds a run trained for {initial_epoch} epochs, more than "
                             f"the {epochs} asked for: nothing to train, and its record is kept. Give at least "
                             f"{initial_epoch} epochs (more to go on training), or use another --run-dir")
        _log(config, f"resuming {run_dir} after epoch {initial_epoch} ({restored})" if initial_epoch < epochs else
             f"{run_dir} is already trained for its {epochs} epochs ({restored}): nothing to train")
        if chief and not os.path.exists(os.path.join(run_dir, "history.csv")):
            _log(config, f"{os.path.join(run_dir, 'history.csv')} is missing: the history restarts at epoch "
                         f"{initial_epoch + 1} and best.keras is chosen again from the epochs trained from here")
    if chief:
        os.makedirs(run_dir, exist_ok=True)
        atomic_write_text(os.path.join(run_dir, "config.json"), json.dumps(effective, indent=2, default=str))

    history_path = os.path.join(run_dir, "history.csv")
    best_previous = max((r.get("val_accuracy", 0.0) for r in cb.read_history(history_path)
                         if r["epoch"] <= initial_epoch), default=None) if resuming else None

    class Backup(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            epoch_var.assign(epoch + 1)
            try:
                manager.save(checkpoint_number=epoch + 1)  # every worker saves (collective); chief's is real
            except BaseException:
                _remove_partial_backups(os.path.join(write_dir, "backup"))
                raise

    def last_good(epoch, step):
        latest = manager.latest_checkpoint
        return (f"Training stopped; the last good checkpoint is {latest} (epoch {int(epoch_var.numpy())}); "
                f"last.keras is {os.path.join(run_dir, 'checkpoints', 'last.keras')}." if latest
                else "No checkpoint was written before it.")

    callbacks = [
        cb.HistoryCSV(history_path, steps_per_epoch, enabled=chief),
        cb.TrainingCurves(history_path, os.path.join(run_dir, "curves.png"),
                          f"{config.model} {config.unit} on {info.name}", enabled=chief),
        cb.AtomicModelCheckpoint(os.path.join(run_dir, "checkpoints", "last.keras"), enabled=chief),
        cb.AtomicModelCheckpoint(os.path.join(run_dir, "checkpoints", "best.keras"), monitor="val_accuracy",
                                 enabled=chief, initial_best=best_previous),
        Backup(),
    ]
    if chief:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"), write_graph=False))
    train_ds = data_lib.pipeline(splits.train, info, global_batch, training=True, seed=config.seed,
                                 start_step=initial_epoch * steps_per_epoch, image_size=image_size)
    test_ds = data_lib.pipeline(splits.test, info, global_batch, training=False, image_size=image_size)
    try:
        trainer.fit(train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch, validation_data=test_ds,
                    callbacks=callbacks, initial_epoch=initial_epoch, verbose=config.verbose,
                    on_non_finite=last_good)
    except (OSError, tf.errors.OpError) as error:
        if not _disk_full(error):
            raise
        latest = manager.latest_checkpoint  # ckpt-N holds epoch N; the epoch counter may be one ahead of it
        where = (f"the last backup is {latest} (after epoch {int(latest.rsplit('-', 1)[1])})" if latest
                 else "no backup was written yet")
        raise DiskFullError(f"no space left on device in {run_dir}; {where}; free some space and rerun the same "
                            "command to resume from there") from None

    result = {"run_dir": run_dir, **{f"test_{k}": v for k, v in trainer.evaluate(test_ds).items()}}
    if config.eval_size and config.eval_size != image_size:
        at_size = _eval_at(model, splits, config.eval_size, global_batch, strategy)
        result.update({f"test_{config.eval_size}_{k}": v for k, v in at_size.items()})
    if chief:
        model_path = os.path.join(run_dir, "model.keras")
        cb.save_model(model, model_path)
        result["model"] = model_path
        key = f"test_{config.eval_size}_accuracy"
        at_size = f"; at {config.eval_size}x{config.eval_size}: {_error(result[key])}" if key in result else ""
        _log(config, f"test error {_error(result['test_accuracy'])} (top-5 {_error(result['test_top5_accuracy'])}) "
                     f"at {image_size}x{image_size}{at_size}; model {model_path}; history {history_path}")
    else:
        shutil.rmtree(write_dir, ignore_errors=True)
    if config.export_dir and chief:
        result["export"] = export_run(model, config.export_dir, list(info.class_names), effective)
    return result


def _error(accuracy: float) -> str:
    """Printed results are errors in percent, two decimals, as the paper reports them."""
    return f"{100 * (1 - accuracy):.2f}%"


def export_run(model: keras.Model, export_dir: str, labels, effective: dict) -> dict:
    """SavedModel (next version under export_dir/savedmodel) + ONNX, each verified."""
    from keras_resnet_v2 import export

    result = export.export_and_verify(model, os.path.join(export_dir, "savedmodel"),
                                      os.path.join(export_dir, "model.onnx"), labels=labels,
                                      extra_metadata=export.training_metadata(effective),
                                      preprocessing=export.serving_preprocessing(effective))
    report = result["report"]
    print(f"exported {result['savedmodel']} and {result['onnx']}; verification passed "
          f"(max relative error SavedModel {report['savedmodel']['max_rel_error']:.1e}, "
          f"ONNX {report['onnx']['max_rel_error']:.1e}); report {result['report_path']}", flush=True)
    return {"savedmodel": result["savedmodel"], "onnx": result["onnx"], "report": result["report_path"]}


def evaluate(model_path: str, dataset: str, data_dir: str | None = None, batch_size: int = 256,
             eval_size: int | None = None, crop_fraction: float | None = None,
             interpolation: str | None = None) -> dict:
    """Top-1 and top-5 error (percent: `top1_error_percent`, `top5_error_percent`) of a saved model on the
    dataset's test split.

    Variable-size (ImageNet-style) images are resized on their shorter side and centre-cropped to
    the model's input size: side = crop x 256 / 224 with bilinear resizing, or, for a model
    `from_timm` converted, timm's floor(crop / 0.95) with bicubic resizing
    (`keras_resnet_v2.TIMM_SERVING`); `crop_fraction` and `interpolation` override these.
    `eval_size` tests at that centre crop of images whose shorter side is resized to it (the
    paper's 320 test; side = eval_size / crop_fraction with a `crop_fraction`).

    Example:
        >>> evaluate("resnet50_timm.keras", "imagenet2012", data_dir="~/tensorflow_datasets")["top1_error_percent"]
    """
    from keras_resnet_v2 import export, pretrained
    from keras_resnet_v2.plumbing import images as image_ops

    if eval_size is not None and (not isinstance(eval_size, int) or isinstance(eval_size, bool) or eval_size < 1):
        raise ValueError(f"`eval_size` must be a positive integer. Received: eval_size={eval_size!r}")
    image_ops.Preprocessing("shorter_side_crop", crop_fraction, interpolation or "bilinear")  # checks both
    model = export.load_model(model_path)
    sizing = image_ops.as_preprocessing(pretrained.serving_preprocessing(model) or "shorter_side_crop").overridden(
        crop_fraction=crop_fraction, interpolation=interpolation)
    height = model.input_shape[1] or 224
    # Image folders are kept at their own sizes (and centre-cropped) for a run trained that way,
    # as in its own test; otherwise resized to the model's input.
    run_config = os.path.join(model_path, "config.json")
    native = eval_size is not None or (os.path.isfile(run_config) and bool(
        (read_json_object(run_config).get("recipe_values") or {}).get("scale_augmentation", False)))
    splits = data_lib.load(dataset, data_dir=data_dir, image_size=None if native else height)
    if splits.info.num_classes != model.output_shape[-1]:
        raise ValueError(f"The model has {model.output_shape[-1]} classes, dataset {dataset!r} has "
                         f"{splits.info.num_classes}.")
    for name, value in (("eval_size", eval_size), ("crop_fraction", crop_fraction), ("interpolation", interpolation)):
        if value is not None and splits.info.image_shape is not None:
            raise ValueError(f"`{name}` sets the test crop of variable-size (ImageNet-style) images; {dataset!r} "
                             f"images are all {splits.info.image_shape[0]}x{splits.info.image_shape[1]}. Received: "
                             f"{name}={value!r}")
    if eval_size is not None:
        metrics = _eval_at(model, splits, eval_size, batch_size, side=sizing.side(eval_size) if crop_fraction else None,
                           interpolation=sizing.interpolation)
    else:
        test = data_lib.pipeline(splits.test, splits.info, batch_size, training=False, image_size=height,
                                 resize_side=sizing.side(height), interpolation=sizing.interpolation)
        metrics = Trainer(model, keras.optimizers.SGD(), tf.distribute.get_strategy(), batch_size).evaluate(test)
    return {"model": model_path, "dataset": dataset, "examples": splits.info.test_examples,
            "image_size": eval_size or height,
            "top1_error_percent": 100 * (1 - metrics["accuracy"]),
            "top5_error_percent": 100 * (1 - metrics["top5_accuracy"]), "loss": metrics["loss"]}
