"""`keras_resnet_v2.fuse_batchnorm` (issue 5; the default of `ResNet(...)` under TensorFlow since issue 12):
BatchNorm trained through TensorFlow's fused kernel is the same computation as Keras' BatchNormalization,
and the model's config and files do not change."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_resnet_v2 as krv2
from conftest import needs_bfloat16
from keras_resnet_v2.training import runtime


def _pair(**kwargs):
    keras.utils.set_random_seed(0)
    plain = krv2.ResNet(11, input_shape=(16, 16, 3), fused_batchnorm=False, **kwargs)
    fused = krv2.ResNet(11, input_shape=(16, 16, 3), fused_batchnorm=False, **kwargs)
    fused.set_weights(plain.get_weights())
    assert runtime.fuse_batchnorm(fused) == 10  # 3 bottleneck units x 3 + the final BN
    return plain, fused


def _gradients(model, x, y):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, model(x, training=True)))
    grads = tape.gradient(loss, model.trainable_weights)
    return {v.path: g.numpy() for v, g in zip(model.trainable_weights, grads, strict=True)}


def _fit(model, x, y, epochs):
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy())
    return model.fit(x, y, batch_size=len(x), epochs=epochs, shuffle=False, verbose=0).history["loss"]


@pytest.mark.parametrize("remat", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["plain", "remat"])
def test_fused_training_matches_keras_batchnorm(remat, images):
    plain, fused = _pair(remat=remat)
    x = images((8, 16, 16, 3)) * 255
    y = np.arange(8) % 10
    # Training-mode outputs (batch statistics) agree before any update.
    np.testing.assert_allclose(np.asarray(fused(x, training=True)), np.asarray(plain(x, training=True)),
                               rtol=1e-4, atol=1e-6)
    plain.set_weights(fused.get_weights())  # undo the moving-statistics updates of those calls
    want, got = _gradients(plain, x, y), _gradients(fused, x, y)
    for path, gradient in want.items():
        scale = np.abs(gradient).max()
        assert np.abs(got[path] - gradient).max() <= 1e-3 * scale, path  # float32 rounding: seen 3e-6
    # One SGD step (more steps at lr 0.1 on 8 images amplify rounding): the same weights and the
    # same moving statistics (Keras keeps the biased batch variance; the kernel returns unbiased).
    plain.set_weights(fused.get_weights())
    np.testing.assert_allclose(_fit(fused, x, y, epochs=1), _fit(plain, x, y, epochs=1), rtol=1e-5)
    by_path = {w.path: w.numpy() for w in plain.weights}
    for weight in fused.weights:
        np.testing.assert_allclose(weight.numpy(), by_path[weight.path], rtol=1e-4, atol=1e-6,
                                   err_msg=weight.path)
    assert not np.allclose(fused.get_layer("post_bn").moving_variance.numpy(), 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["mixed_float16", pytest.param("mixed_bfloat16", marks=needs_bfloat16)])
def test_fused_training_under_mixed_precision(precision, images):
    try:
        runtime.set_precision(precision)
        plain, fused = _pair()
        assert fused.get_layer("post_bn").compute_dtype == precision.split("_")[1]
        x = images((8, 16, 16, 3)) * 255
        y = np.arange(8) % 10
        fused_loss, plain_loss = _fit(fused, x, y, epochs=1), _fit(plain, x, y, epochs=1)
        assert np.isfinite(fused_loss).all()
        np.testing.assert_allclose(fused_loss, plain_loss, rtol=0.05)
        # The statistics stay float32 and move like Keras' (to 16-bit rounding).
        for name in ("stage1_unit1_preact_bn", "post_bn"):
            got, want = fused.get_layer(name), plain.get_layer(name)
            assert got.moving_mean.dtype == "float32"
            np.testing.assert_allclose(got.moving_mean.numpy(), want.moving_mean.numpy(), rtol=0.05, atol=0.05)
    finally:
        runtime.set_precision("float32")


def test_fusing_changes_neither_config_nor_saved_model(tmp_path, images):
    model = krv2.ResNet(11, input_shape=(16, 16, 3))  # fused by default under TensorFlow
    config = model.get_config()
    unfused = krv2.ResNet(11, input_shape=(16, 16, 3), fused_batchnorm=False).get_config()
    # The same but for the model's name (made unique in the session), which its stored Config repeats.
    assert config == unfused | {"name": config["name"], "resnet_config": unfused["resnet_config"] | {
        "name": config["name"]}}
    assert runtime.fuse_batchnorm(model) == 0  # already fused; idempotent
    assert krv2.fuse_batchnorm(model, enable=False) == 10 and krv2.fuse_batchnorm(model, enable=False) == 0
    assert not model.get_layer("post_bn")._fused_for_training  # Keras' own kernel again
    assert krv2.fuse_batchnorm(model) == 10
    x = images((2, 16, 16, 3))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert type(loaded.get_layer("post_bn")) is keras.layers.BatchNormalization
    np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), np.asarray(model(x, training=False)))
