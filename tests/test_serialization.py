"""Every unit and shortcut variant survives a safe-mode `.keras` round trip with identical
outputs, and `weights=` loads `.keras` and `.weights.h5` files."""

import keras
import numpy as np
import pytest

import keras_resnet_v2 as krv2

VARIANTS = [{"unit": unit} for unit in krv2.UNITS] + [
    {"unit": unit, "shortcut": shortcut}
    for shortcut in krv2.SHORTCUT_NAMES[1:]
    for unit in ("original", "full_preact")
] + [{"unit": "full_preact", "shortcut": "constant_scaling", "scale_residual": False, "shortcut_scale": 0.3}]


def _small(**kwargs):
    # Depth 11: one bottleneck unit a stage, so every stage has a projection unit.
    return krv2.ResNet(11, input_shape=(16, 16, 3), **kwargs)


def _perturb_batchnorm(model, seed=0):
    """Non-trivial BN statistics, so the round trip has to carry them."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            for var in (layer.moving_mean, layer.moving_variance, layer.beta):
                var.assign(np.abs(rng.normal(size=var.shape)).astype("float32") + 0.5)


@pytest.mark.parametrize("kwargs", VARIANTS, ids=[str(v) for v in VARIANTS])
def test_safe_mode_keras_round_trip_is_exact(kwargs, tmp_path, images):
    model = _small(**kwargs)
    _perturb_batchnorm(model)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    x = images((3, 16, 16, 3))
    np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), np.asarray(model(x, training=False)))
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]


@pytest.mark.parametrize("shortcut", ["exclusive_gating", "dropout"])
@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_weights_argument_loads_a_saved_architecture(suffix, shortcut, tmp_path, images):
    model = krv2.ResNet20(shortcut=shortcut)
    _perturb_batchnorm(model, seed=3)
    path = str(tmp_path / f"r20{suffix}")
    model.save_weights(path) if suffix == ".weights.h5" else model.save(path)
    rebuilt = krv2.ResNet20(shortcut=shortcut, weights=path)
    x = images()
    np.testing.assert_array_equal(np.asarray(rebuilt(x)), np.asarray(model(x)))
    fresh = krv2.ResNet20(shortcut=shortcut)
    assert not np.allclose(np.asarray(fresh(x)), np.asarray(model(x)))
