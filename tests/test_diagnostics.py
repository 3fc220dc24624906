"""Gradient-flow diagnostic (issue 6, paper Eqn. 5): ||dL/dx_l|| at every unit input."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_resnet_v2 as krv2
from keras_resnet_v2.training import diagnostics


@pytest.mark.parametrize("unit", ["full_preact", "original"])
def test_unit_gradient_norms(unit, images, tmp_path):
    model = krv2.ResNet(20, unit=unit, input_shape=(16, 16, 3))
    x, y = images((4, 16, 16, 3)), np.array([0, 1, 2, 3])
    statistics = [v.numpy() for v in model.non_trainable_variables]
    norms = diagnostics.unit_gradient_norms(model, x, y)
    assert [name for name, _ in norms] == ["input"] + [f"stage{s}_unit{u}" for s in (1, 2, 3) for u in (1, 2, 3)]
    assert all(np.isfinite(v) and v > 0 for _, v in norms)
    for before, after in zip(statistics, model.non_trainable_variables, strict=True):
        np.testing.assert_array_equal(before, after.numpy())  # the probe does not move BN statistics
    # The input's entry is the plain gradient of the same loss with respect to the images.
    images_t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(images_t)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, model(images_t, training=True)))
    assert norms[0][1] == pytest.approx(float(tf.norm(tape.gradient(loss, images_t))), rel=1e-4)
    diagnostics.plot_gradient_norms({unit: norms}, str(tmp_path / "g.png"))
    assert (tmp_path / "g.png").stat().st_size > 5_000


def test_stacked_and_remat_models_are_measured_on_their_per_unit_copy(images):
    with pytest.raises(ValueError, match="pass keras_resnet_v2.to_plain"):
        diagnostics.unit_inputs(krv2.ResNet(20, remat=True))
    plain = krv2.ResNet(20, input_shape=(16, 16, 3))
    stacked = krv2.to_stacked(plain, remat=True)
    x, y = images((4, 16, 16, 3)), np.array([0, 1, 2, 3])
    want, got = diagnostics.unit_gradient_norms(plain, x, y), diagnostics.unit_gradient_norms(stacked, x, y)
    assert [name for name, _ in got] == [name for name, _ in want] and len(got) == 10
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-5)


def test_train_steps_records_each_steps_loss_before_its_update(images, tmp_path):
    model = krv2.ResNet(8, unit="original", input_shape=(16, 16, 3), classes=4)
    x, y = images((8, 16, 16, 3)), np.array([0, 1, 2, 3] * 2)
    dataset = tf.data.Dataset.from_tensors((x, y))
    kernel = model.get_layer("predictions").kernel.numpy()
    # Keras' own loss on that batch in training mode, before any update, equals the first entry.
    expected = float(keras.losses.sparse_categorical_crossentropy(y, model(x, training=True)).numpy().mean())
    losses = diagnostics.train_steps(model, dataset, steps=5)
    assert len(losses) == 5 and all(np.isfinite(losses))
    assert losses[0] == pytest.approx(expected, rel=1e-4)
    assert losses[-1] < losses[0]  # five steps on one batch: the loss goes down
    assert not np.allclose(kernel, model.get_layer("predictions").kernel.numpy())
    diagnostics.plot_training_loss({"original": losses}, str(tmp_path / "loss.png"))
    assert (tmp_path / "loss.png").stat().st_size > 5_000
    with pytest.raises(ValueError, match="steps=0"):
        diagnostics.train_steps(model, dataset, steps=0)
