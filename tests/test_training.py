"""The training package: recipes (the paper's Appendix), optimizer, data, callbacks, loop."""

import csv
import os
import signal
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_resnet_v2
from keras_resnet_v2.training import callbacks as cb
from keras_resnet_v2.training import data, optimizers, recipes, runtime
from keras_resnet_v2.training.loop import NonFiniteLossError, Trainer


@pytest.fixture(autouse=True)
def _float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


# ------------------------------------------------------------------ recipes and schedules
def test_paper_cifar_schedule_matches_the_paper():
    # Paper, Appendix: lr 0.1, warm-up 0.01 for 400 iterations, /10 at 32k and 48k, stop at 64k.
    s = recipes.resolve(recipes.RECIPES["paper_cifar"], 128, 391)
    assert s.total_steps == 64_000
    assert s.boundaries == (400, 32_000, 48_000)
    assert s.values == (0.01, 0.1, 0.01, 0.001)
    sched = optimizers.StepSchedule(s.boundaries, s.values)
    at = {step: float(sched(step)) for step in (0, 399, 400, 31_999, 32_000, 47_999, 48_000, 63_999)}
    assert at == pytest.approx({0: 0.01, 399: 0.01, 400: 0.1, 31_999: 0.1, 32_000: 0.01, 47_999: 0.01,
                                48_000: 0.001, 63_999: 0.001})


def test_linear_lr_scaling_and_imagenet_epochs():
    s = recipes.resolve(recipes.RECIPES["paper_cifar"], 256, 195)
    assert s.values == (0.02, 0.2, 0.02, 0.002)
    # ImageNet: /10 at epochs 30 and 60 of 90, batch 256, no warm-up.
    s = recipes.resolve(recipes.RECIPES["paper_imagenet"], 512, 2500)
    assert s.total_steps == 90 * 2500 and s.boundaries == (30 * 2500, 60 * 2500)
    assert s.values == pytest.approx((0.2, 0.02, 0.002))


def test_short_run_stretches_schedule():
    s = recipes.resolve(recipes.RECIPES["paper_cifar"], 64, 22, epochs=10)
    assert s.total_steps == 220
    assert s.boundaries == (11, 110, 165)  # warm-up capped at 5% of the run; decays at 50%, 75%
    assert s.values == (0.005, 0.05, 0.005, 0.0005)


def test_study_records_cite_the_paper_and_hold_the_recipe_they_name():
    # docs/study's run records are read by users without this project's notes: each recipe_values is the
    # recipe its run named, as training/recipes.py defines it (its note cites the paper's Appendix).
    import dataclasses
    import json
    import pathlib

    records = sorted((pathlib.Path(__file__).parents[1] / "docs" / "study").glob("*/*/config.json"))
    assert len(records) >= 45
    for path in records:
        saved = json.loads(path.read_text())
        expected = json.loads(json.dumps(dataclasses.asdict(recipes.RECIPES[saved["recipe"]])))
        # Fields added to Recipe since a run was recorded (`schedule`) are absent from its record.
        assert saved["recipe_values"] == {key: expected[key] for key in saved["recipe_values"]}, path
        assert saved["recipe_values"]["note"] == expected["note"], path
        assert "FACTS" not in path.read_text(), path


def test_schedule_and_optimizer_serialize():
    sched = optimizers.StepSchedule([3, 5], [1.0, 0.5, 0.25])
    opt = optimizers.SGD(sched, momentum=0.9, nesterov=True, weight_decay=1e-4, decay="all")
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(clone, optimizers.SGD) and clone.coupled_weight_decay == 1e-4 and clone.decay == "all"
    assert isinstance(clone.learning_rate, optimizers.StepSchedule) or callable(clone._learning_rate)
    assert [float(clone._learning_rate(i)) for i in (2, 3, 5)] == [1.0, 0.5, 0.25]


def test_bad_recipe_values_are_named():
    with pytest.raises(ValueError, match="recipe.*Received: recipe='nope'"):
        recipes.get_recipe("nope")
    with pytest.raises(ValueError, match="momentum"):
        recipes.get_recipe("paper_cifar", momentum=1.5)
    with pytest.raises(ValueError, match="decay"):
        recipes.get_recipe("paper_cifar", decay="bn")


def test_coupled_weight_decay_is_added_to_the_gradient_before_momentum():
    # Torch/Caffe: v <- m v + (g + wd w); w <- w - lr v  (plain momentum here)
    kernel = keras.Variable(np.full((2,), 2.0, "float32"), name="kernel")
    bias = keras.Variable(np.full((2,), 2.0, "float32"), name="bias")
    opt = optimizers.SGD(0.1, momentum=0.9, nesterov=False, weight_decay=0.01)
    grad = np.full((2,), 0.5, "float32")
    w, v = 2.0, 0.0
    for _ in range(2):
        opt.apply([grad, grad], [kernel, bias])
        v = 0.9 * v + (0.5 + 0.01 * w)
        w = w - 0.1 * v
    np.testing.assert_allclose(kernel.numpy(), w, rtol=1e-6)
    np.testing.assert_allclose(bias.numpy(), 2.0 - 0.1 * 0.5 - 0.1 * (0.9 * 0.5 + 0.5), rtol=1e-6)  # not decayed


# ------------------------------------------------------------------ data
def test_digits_split_is_fixed_and_real():
    a, b = data.load_digits(), data.load_digits()
    assert (a.info.train_examples, a.info.test_examples) == (1437, 360)
    assert a.info.image_shape == (32, 32, 3) and not a.info.flip
    xa, ya = next(iter(a.test.batch(360)))
    xb, yb = next(iter(b.test.batch(360)))
    np.testing.assert_array_equal(xa, xb)
    assert xa.dtype == tf.uint8 and int(tf.reduce_max(xa)) == 255
    assert sorted(np.bincount(ya.numpy()))[0] >= 35  # stratified: every digit in the test split


def test_random_crop_flip_takes_windows_of_the_padded_batch():
    images = tf.reshape(tf.range(2 * 4 * 4 * 3, dtype=tf.float32) + 1, (2, 4, 4, 3))
    out = data.random_crop_flip(images, 1, True, tf.constant([0, 7], tf.int64)).numpy()
    padded = np.pad(images.numpy(), ((0, 0), (1, 1), (1, 1), (0, 0)))
    for i in range(2):
        windows = [padded[i, y:y + 4, x:x + 4] for y in range(3) for x in range(3)]
        windows += [w[:, ::-1] for w in windows]
        assert any(np.array_equal(out[i], w) for w in windows)
    again = data.random_crop_flip(images, 1, True, tf.constant([0, 7], tf.int64)).numpy()
    np.testing.assert_array_equal(out, again)


def test_pipeline_is_deterministic_and_batches_globally():
    splits = data.load_digits()
    first = [next(iter(data.pipeline(splits.train, splits.info, 32, training=True, seed=3)))[0].numpy()
             for _ in range(2)]
    np.testing.assert_array_equal(*first)
    other = next(iter(data.pipeline(splits.train, splits.info, 32, training=True, seed=4)))[0].numpy()
    assert not np.array_equal(first[0], other)
    test = list(data.pipeline(splits.test, splits.info, 100, training=False))
    assert [len(y) for _, y in test] == [100, 100, 100, 60]  # every test example once


def test_per_pixel_and_per_channel_statistics():
    splits = data.load_digits()
    x = np.stack([im for im, _ in splits.train.as_numpy_iterator()]).astype("float64")
    mean, var = data.normalization_statistics(splits.train, "per_pixel")
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-5)
    assert (var == 1).all()
    mean, var = data.normalization_statistics(splits.train, "per_channel")
    np.testing.assert_allclose(mean, x.mean((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(var, x.var((0, 1, 2)), rtol=1e-4)


def _png(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = tf.fill((10, 12, 3), tf.constant(value, tf.uint8))
    tf.io.write_file(path, tf.io.encode_png(image))


def test_image_folder_dataset(tmp_path):
    for cls, value in (("cat", 10), ("dog", 200)):
        for i in range(8):
            _png(str(tmp_path / "train" / cls / f"{i}.png"), value)
        _png(str(tmp_path / "test" / cls / "0.png"), value)
    splits = data.load(str(tmp_path), image_size=16)
    assert splits.info.class_names == ("cat", "dog") and splits.info.num_classes == 2
    assert (splits.info.train_examples, splits.info.test_examples) == (16, 2)
    images, labels = next(iter(splits.test.batch(2)))
    assert images.shape == (2, 16, 16, 3)
    assert labels.numpy().tolist() == [0, 1] and images.numpy()[1].min() == 200
    native = data.load(str(tmp_path), image_size=None)  # ImageNet-style: own sizes, cropped later
    assert native.info.image_shape is None and next(iter(native.test))[0].shape == (10, 12, 3)


def test_bad_image_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DatasetError, match="no class subfolders"):
        data.load(str(tmp_path / "empty"))
    (tmp_path / "noimages" / "a").mkdir(parents=True)
    (tmp_path / "noimages" / "b").mkdir(parents=True)
    with pytest.raises(data.DatasetError, match="holds no images"):
        data.load(str(tmp_path / "noimages"))
    bad = tmp_path / "bad" / "a"
    bad.mkdir(parents=True)
    (tmp_path / "bad" / "b").mkdir()
    (bad / "x.jpg").write_bytes(b"not an image at all")
    with pytest.raises(data.DatasetError, match="x.jpg.*is not a JPEG"):
        data.load(str(tmp_path / "bad"))


def test_tfds_cifar10_through_mock_data(monkeypatch):
    import tensorflow_datasets as tfds

    # mock_data stands in for download_and_prepare; let the offline probe say "reachable".
    monkeypatch.setattr(data, "_network_reachable", lambda url: True)
    with tfds.testing.mock_data(num_examples=32):
        splits = data.load("cifar10")
        batch = next(iter(data.pipeline(splits.train, splits.info, 16, training=True)))
    assert splits.info.num_classes == 10 and splits.info.image_shape == (32, 32, 3)
    assert batch[0].shape == (16, 32, 32, 3) and batch[0].dtype == tf.float32


def test_tfds_missing_offline_fails_fast_with_instructions(tmp_path):
    import time

    start = time.monotonic()
    with pytest.raises(data.DatasetError, match="tfds build cifar10"):
        data.load("cifar10", data_dir=str(tmp_path))
    assert time.monotonic() - start < 30
    with pytest.raises(data.DatasetError, match="Unknown dataset 'no_such_set'"):
        data.load("no_such_set")


# ------------------------------------------------------------------ loop and callbacks
def _tiny_model(classes=3):
    return keras_resnet_v2.ResNet(8, input_shape=(8, 8, 3), classes=classes)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_loss_stops_with_the_checkpoint_named(value):
    # The NaN or Inf enters at the per-example losses, after every op whose NaN handling differs
    # between CPUs: NaN images are no test, since oneDNN's ReLU maps NaN to 0 on AVX-512 CPUs (the
    # loss stays finite there), and softmax and the loss's clip use max/min. A positive loss times
    # NaN or Inf is NaN or Inf under IEEE 754 on any CPU; the step's mean and the strategy's sum keep it.
    strategy = tf.distribute.get_strategy()
    trainer = Trainer(_tiny_model(), optimizers.SGD(0.1), strategy, 4)
    cross_entropy = trainer.loss_fn
    trainer.loss_fn = lambda labels, probabilities: cross_entropy(labels, probabilities) * float(value)
    images = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensors((images, np.zeros(4, "int64"))).repeat()
    with pytest.raises(NonFiniteLossError, match=rf"loss \({value}\) at epoch 1, step 1.*last good: ckpt-7"):
        trainer.fit(ds, epochs=1, steps_per_epoch=2, verbose=0, on_non_finite=lambda e, s: "last good: ckpt-7")


def test_steps_per_execution_trains_the_same_steps_with_fewer_calls():
    # Issue 21: N steps per tf.function call (one host sync) give the same losses and weights as one per
    # call; callbacks see one batch per call, at its last step; a NaN is named at its own step.
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (20, 8, 8, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((images, np.arange(20) % 3)).repeat().batch(4)
    results = {}
    for n in (1, 3):
        keras.utils.set_random_seed(0)
        trainer = Trainer(_tiny_model(), optimizers.SGD(0.1), tf.distribute.get_strategy(), 4,
                          steps_per_execution=n)
        ends = []
        seen = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs, ends=ends: ends.append(batch))
        history = trainer.fit(ds, epochs=2, steps_per_epoch=5, verbose=0, callbacks=[seen])
        results[n] = (history.history["loss"], trainer.model.get_weights(), ends,
                      int(trainer.optimizer.iterations.numpy()))
    np.testing.assert_allclose(results[3][0], results[1][0], rtol=1e-6)
    for a, b in zip(results[3][1], results[1][1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert results[1][2] == [0, 1, 2, 3, 4] * 2 and results[3][2] == [2, 4] * 2
    assert results[1][3] == results[3][3] == 10
    trainer = Trainer(_tiny_model(), optimizers.SGD(0.1), tf.distribute.get_strategy(), 4, steps_per_execution=4)
    cross_entropy = trainer.loss_fn
    scale = tf.Variable(1.0, trainable=False)  # NaN from the third step on
    trainer.loss_fn = lambda labels, probabilities: cross_entropy(labels, probabilities) * scale
    original = trainer.optimizer.apply

    def apply(grads, variables):
        scale.assign(tf.where(trainer.optimizer.iterations >= 1, float("nan"), 1.0))
        return original(grads, variables)

    trainer.optimizer.apply = apply
    with pytest.raises(NonFiniteLossError, match=r"at epoch 1, step 3\."):
        trainer.fit(ds, epochs=1, steps_per_epoch=5, verbose=0)
    with pytest.raises(ValueError, match="`steps_per_execution` must be a positive integer. Received: "
                                         "steps_per_execution=0"):
        Trainer(_tiny_model(), optimizers.SGD(0.1), tf.distribute.get_strategy(), 4, steps_per_execution=0)


def test_jit_compile_auto_is_xla_with_one_replica_on_a_gpu_and_true_refuses_several():
    from types import SimpleNamespace

    one, two = SimpleNamespace(num_replicas_in_sync=1), SimpleNamespace(num_replicas_in_sync=2)
    assert runtime.resolve_jit_compile("true", one) is True and runtime.resolve_jit_compile("false", one) is False
    assert runtime.resolve_jit_compile("auto", one) is bool(tf.config.list_logical_devices("GPU"))
    assert runtime.resolve_jit_compile("auto", two) is False
    with pytest.raises(ValueError, match="`jit_compile` true needs one replica.*Received: jit_compile='true' with 2"):
        runtime.resolve_jit_compile("true", two)


def test_a_signal_during_a_garbage_collector_callback_is_recorded_without_a_traceback(capfd):
    # JAX registers a gc callback; a KeyboardInterrupt raised inside one is printed as "Exception
    # ignored in ... Traceback" and lost (a CI run's SIGTERM test saw exactly that). The signal is
    # recorded instead, and the next raise_if_stopped() raises it.
    import gc

    from keras_resnet_v2.plumbing import interrupts

    def callback(phase, info):
        if phase == "start":
            signal.raise_signal(signal.SIGTERM)

    with interrupts.stop_on_signals():
        gc.callbacks.append(callback)
        try:
            gc.collect()
        finally:
            gc.callbacks.remove(callback)
        assert interrupts.received() == signal.SIGTERM and interrupts.exit_code() == 143
        with pytest.raises(KeyboardInterrupt):
            interrupts.raise_if_stopped()
    assert "Traceback" not in capfd.readouterr().err


class _SignalsWhenCollected:
    def __init__(self, signum):
        self.signum = signum

    def __del__(self):
        signal.raise_signal(self.signum)


@pytest.mark.parametrize("where", ["weakref_callback", "__del__", "unraisable_elsewhere"])
def test_a_signal_where_python_cannot_raise_it_is_quiet_and_stops_the_next_step(where, monkeypatch):
    """Issue 37: weakref callbacks and `__del__` methods, like gc callbacks, hand a KeyboardInterrupt to
    sys.unraisablehook (by default "Exception ignored in ... Traceback"); inside stop_on_signals() it is
    recorded without a word and raised by the next raise_if_stopped(). Other unraisable errors still reach
    the hook that was there before, which is in place again after the block."""
    import gc
    import weakref

    from keras_resnet_v2.plumbing import interrupts

    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    with interrupts.stop_on_signals():
        if where == "weakref_callback":
            class Target:
                pass

            target = Target()
            keep = weakref.ref(target, lambda _: signal.raise_signal(signal.SIGINT))  # noqa: F841
            del target
        elif where == "__del__":
            _SignalsWhenCollected(signal.SIGTERM)  # freed at once: its __del__ runs here
        else:
            class Broken:
                def __del__(self):
                    raise RuntimeError("a real error in __del__")

            Broken()
        gc.collect()
        if where == "unraisable_elsewhere":
            assert [type(u.exc_value) for u in reported] == [RuntimeError] and interrupts.received() is None
        else:
            assert reported == []
            assert interrupts.received() == (signal.SIGINT if where == "weakref_callback" else signal.SIGTERM)
            with pytest.raises(KeyboardInterrupt):
                interrupts.raise_if_stopped()
    assert sys.unraisablehook == reported.append


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_whose_keyboard_interrupt_was_swallowed_stops_the_next_step(signum, code):
    from keras_resnet_v2.plumbing import interrupts

    trainer = Trainer(_tiny_model(), optimizers.SGD(0.1), tf.distribute.get_strategy(), 4)
    images = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensors((images, np.zeros(4, "int64"))).repeat()
    with interrupts.stop_on_signals():
        try:
            signal.raise_signal(signum)
        except KeyboardInterrupt:
            pass  # lost, as in a garbage-collector callback
        with pytest.raises(KeyboardInterrupt):
            trainer.fit(ds, epochs=1, steps_per_epoch=3, verbose=0)
        assert trainer.optimizer.iterations.numpy() == 0 and interrupts.exit_code() == code
    assert interrupts.received() is None  # outside the block nothing is remembered: training runs
    assert len(trainer.fit(ds, epochs=1, steps_per_epoch=2, verbose=0).history["loss"]) == 1
    assert trainer.optimizer.iterations.numpy() == 2


def test_callbacks_work_in_model_fit(tmp_path):
    """The pieces in plain `model.fit`: recipe optimizer, pipeline, history, curves, checkpoints."""
    splits = data.load_digits(image_size=8)
    model = keras_resnet_v2.ResNet(8, input_shape=(8, 8, 3), classes=10)
    recipe = recipes.get_recipe("paper_cifar")  # lr 0.1 at batch 128; resolve scales it to 64
    schedule = recipes.resolve(recipe, 64, 22, epochs=2)
    model.compile(optimizer=optimizers.make_optimizer(recipe, schedule), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history_path, png = str(tmp_path / "history.csv"), str(tmp_path / "curves.png")
    model.fit(data.pipeline(splits.train, splits.info, 64, training=True), epochs=2, steps_per_epoch=22,
              validation_data=data.pipeline(splits.test, splits.info, 64, training=False), verbose=0,
              callbacks=[cb.HistoryCSV(history_path), cb.TrainingCurves(history_path, png),
                         cb.AtomicModelCheckpoint(str(tmp_path / "best.keras"), monitor="val_accuracy")])
    with open(history_path) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and [int(r["step"]) for r in rows] == [22, 44]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(rows[0])
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # Checkpoints hold the architecture and weights, not the training state (backup/ does).
    best = keras.models.load_model(str(tmp_path / "best.keras"))
    assert not best.compiled and [layer.name for layer in best.layers] == [layer.name for layer in model.layers]
    assert best.count_params() == model.count_params()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]


def test_history_drops_redone_epochs_on_resume(tmp_path):
    path = str(tmp_path / "history.csv")
    history = cb.HistoryCSV(path, steps_per_epoch=10)
    history.set_model(keras.Sequential())
    history.on_train_begin()
    for epoch in range(3):
        history.on_epoch_begin(epoch)
        history.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1)})
    resumed = cb.HistoryCSV(path, steps_per_epoch=10)
    resumed.set_model(keras.Sequential())
    resumed.on_train_begin()
    resumed.on_epoch_begin(2)  # backup was after epoch 2: epoch index 2 (the third) is redone
    resumed.on_epoch_end(2, {"loss": 0.25})
    rows = cb.read_history(path)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["loss"] == 0.25


def test_precision_and_strategy_names_are_checked():
    with pytest.raises(ValueError, match="precision.*Received: precision='float8'"):
        runtime.set_precision("float8")
    with pytest.raises(ValueError, match="strategy.*Received: strategy='horovod'"):
        runtime.make_strategy("horovod")
    with pytest.raises(ValueError, match=r"\(3, the global batch\) must be divisible by the 2 replicas"):
        runtime.per_replica_batch(3, _FakeStrategy(2))
    assert runtime.per_replica_batch(8, _FakeStrategy(2)) == 4
    assert runtime.set_precision("mixed_bfloat16").compute_dtype == "bfloat16"
    opt = runtime.wrap_optimizer(optimizers.SGD(0.1), "mixed_float16")
    assert isinstance(opt, keras.optimizers.LossScaleOptimizer)


class _FakeStrategy:
    def __init__(self, replicas):
        self.num_replicas_in_sync = replicas


def test_imagenet_style_pipeline_for_images_of_different_sizes():
    # Paper, Appendix: scale augmentation (shorter side in [256, 480], 224 crop, flip); test: centre crop.
    sizes = [(300, 400), (260, 260), (500, 280)]
    ds = tf.data.Dataset.from_generator(
        lambda: ((np.full((h, w, 3), 7, "uint8"), np.int64(i)) for i, (h, w) in enumerate(sizes)),
        output_signature=(tf.TensorSpec((None, None, 3), tf.uint8), tf.TensorSpec((), tf.int64)))
    info = data.DatasetInfo("var", 3, 3, 3, None)
    images, labels = next(iter(data.pipeline(ds, info, 2, training=True, seed=1)))
    assert images.shape == (2, 224, 224, 3) and images.dtype == tf.float32
    np.testing.assert_allclose(images.numpy(), 7, atol=1e-3)  # a constant image stays constant
    test = list(data.pipeline(ds, info, 2, training=False, image_size=320))
    assert [tuple(x.shape) for x, _ in test] == [(2, 320, 320, 3), (1, 320, 320, 3)]
    assert [int(v) for _, y in test for v in y] == [0, 1, 2]


def test_with_input_size_copies_weights_and_refuses_a_mean_image():
    from keras_resnet_v2.training.evaluation import with_input_size

    inputs = keras.Input((32, 32, 3), name="images")
    x = keras_resnet_v2.Standardize(mean=[120.0, 115.0, 100.0], variance=[4e3, 4e3, 4e3])(inputs)
    model = keras_resnet_v2.ResNet(8, input_tensor=x, classes=5, name="r8")
    for w in model.weights:  # non-trivial BN moving statistics, so inference output depends on them
        w.assign(np.random.default_rng(len(w.path)).uniform(0.5, 1.5, w.shape).astype("float32")
                 if "variance" in w.path else w)
    big = with_input_size(model, 48)
    assert big.input_shape == (None, 48, 48, 3) and big.name == "r8"
    assert all(a.path == b.path for a, b in zip(model.weights, big.weights, strict=True))
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    back = with_input_size(big, 32)  # 48 -> 32: the same function as the original
    np.testing.assert_allclose(back.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-6)
    assert big.predict(np.zeros((1, 48, 48, 3)), verbose=0).shape == (1, 5)

    per_pixel = keras_resnet_v2.ResNet(8, input_tensor=keras_resnet_v2.Standardize(shape=(32, 32, 3))(inputs),
                                       classes=5)
    with pytest.raises(ValueError, match=r"per-pixel mean image of shape \(32, 32, 3\).*eval_size=48"):
        with_input_size(per_pixel, 48)


def test_statistics_of_variable_size_images_and_the_imagenet_test_split(monkeypatch):
    import tensorflow_datasets as tfds

    images = [np.full((h, w, 3), v, "uint8") for (h, w), v in [((4, 6), 10), ((8, 2), 40)]]
    ds = tf.data.Dataset.from_generator(lambda: ((x, 0) for x in images), output_signature=(
        tf.TensorSpec((None, None, 3), tf.uint8), tf.TensorSpec((), tf.int32)))
    mean, variance = data.normalization_statistics(ds, "per_channel")
    # Pixel-weighted: 24 pixels of 10 and 16 of 40.
    np.testing.assert_allclose(mean, [22.0] * 3, rtol=1e-6)
    np.testing.assert_allclose(variance, [(24 * 100 + 16 * 1600) / 40 - 22.0**2] * 3, rtol=1e-5)
    with pytest.raises(ValueError, match="per_pixel.*vary in size.*per_channel"):
        data.normalization_statistics(ds, "per_pixel")

    # imagenet2012's "test" split has no labels: evaluation uses the 50k "validation" images.
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    read = []
    original = tfds.core.DatasetBuilder.as_dataset
    monkeypatch.setattr(tfds.core.DatasetBuilder, "as_dataset",
                        lambda self, split, **kw: read.append(split) or original(self, split=split, **kw))
    with tfds.testing.mock_data(num_examples=3):
        splits = data.load("imagenet2012")
    assert read == ["train", "validation"] and splits.info.image_shape is None and splits.info.num_classes == 1000


def test_a_finite_training_pipeline_for_model_fit_without_steps():
    # docs/training.md's plain model.fit example: repeat=False is one epoch of full batches, reshuffled.
    splits = data.load_digits(image_size=8)
    steps = recipes.steps_per_epoch(splits.info.train_examples, 64)
    finite = data.pipeline(splits.train, splits.info, 64, training=True, repeat=False)
    first = [labels.numpy() for _, labels in finite]
    second = [labels.numpy() for _, labels in finite]
    assert len(first) == len(second) == steps == 22 and all(len(b) == 64 for b in first)
    assert not all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))  # reshuffled each pass
    model = keras_resnet_v2.ResNet(8, input_shape=(8, 8, 3), classes=10)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy")
    history = model.fit(finite, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and int(model.optimizer.iterations.numpy()) == 2 * steps


def test_a_run_saved_before_the_padding_setting_resumes_only_with_padding_same(tmp_path):
    # Issue 23 made padding="symmetric" the default; a run directory from before it has no `padding`
    # in config.json and was built with Keras' "same": resuming it with the new default would load its
    # weights into other arithmetic, so it is refused, naming the setting, and --padding same resumes.
    import dataclasses
    import json

    from keras_resnet_v2.training.config import TrainConfig
    from keras_resnet_v2.training.resume import check_resume

    effective = {**dataclasses.asdict(TrainConfig()), "normalization": None}
    old = {k: v for k, v in effective.items() if k != "padding"}
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "checkpoint").write_text("")
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert effective["padding"] == "symmetric"
    with pytest.raises(ValueError, match="different configuration.*padding: 'same' -> 'symmetric'"):
        check_resume(str(tmp_path), effective)
    assert check_resume(str(tmp_path), {**effective, "padding": "same"}) is True


def test_curves_are_drawn_without_touching_the_callers_matplotlib(tmp_path):
    # A notebook's inline backend survived `run()` only once the curves stopped switching pyplot to Agg: the
    # docs build found the fine-tuning and deploying notebooks' plots missing from their pages.
    import matplotlib

    history = tmp_path / "history.csv"
    history.write_text("epoch,step,loss,accuracy,val_accuracy\n1,22,2.1,0.3,0.4\n2,44,1.2,0.6,0.7\n")
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a backend of the caller's that is not Agg
    try:
        cb.plot_curves(str(history), str(tmp_path / "curves.png"), title="digits")
        assert matplotlib.get_backend() == "svg"
        assert "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()
    finally:
        matplotlib.use(before)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
