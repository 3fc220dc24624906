"""`remat=True` (issue 5): each residual unit recomputed in the backward pass. The same network:
same outputs, same gradients, BatchNorm moving statistics updated once, under TensorFlow and JAX."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_resnet_v2 as krv2

CASES = [
    {"depth": 11, "input_shape": (16, 16, 3)},  # bottleneck, a projection unit in every stage
    {"depth": 8, "unit": "original", "shortcut": "exclusive_gating", "input_shape": (16, 16, 3)},
]


def _pair(case):
    plain = krv2.ResNet(**case)
    remat = krv2.ResNet(**case, remat=True)
    remat.set_weights(plain.get_weights())
    return plain, remat


def _train_step(model, x, y):
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy())
    model.fit(x, y, batch_size=len(x), epochs=2, shuffle=False, verbose=0)


@pytest.mark.parametrize("case", [CASES[0], pytest.param(CASES[1], marks=pytest.mark.slow)],
                         ids=["preact_bottleneck", "original_gated"])
def test_remat_model_is_the_same_network(case, images):
    plain, remat = _pair(case)
    # Three units: segments of round(sqrt(3)) = 2 units.
    segments = [layer for layer in remat.layers if isinstance(layer, krv2.Rematerialized)]
    assert [s.name for s in segments] == ["stage1_unit1_to_stage2_unit1", "stage3_unit1"]
    assert remat.count_params() == plain.count_params()
    # Weight paths are the flat model's (the unit's layers keep their names inside the block).
    assert sorted(w.path for w in remat.weights) == sorted(w.path for w in plain.weights)
    x = images((6, 16, 16, 3))
    np.testing.assert_allclose(np.asarray(remat(x, training=False)), np.asarray(plain(x, training=False)),
                               rtol=1e-6, atol=1e-7)
    y = np.arange(6) % 10
    _train_step(plain, x, y)
    _train_step(remat, x, y)
    by_path = {w.path: w.numpy() for w in plain.weights}
    moved = 0
    for weight in remat.weights:
        # Two SGD steps give the same weights; the moving statistics moved exactly as much
        # (updated once a step: the recomputation does not apply the momentum again).
        np.testing.assert_allclose(weight.numpy(), by_path[weight.path], rtol=1e-4, atol=2e-6,
                                   err_msg=weight.path)
        moved += "moving_mean" in weight.path and not np.allclose(weight.numpy(), 0)
    assert moved > 0  # the statistics did change


def test_remat_model_round_trips_through_keras_file(tmp_path, images):
    model = krv2.ResNet(11, input_shape=(16, 16, 3), remat=True)
    path = str(tmp_path / "remat.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("stage3_unit1"), krv2.Rematerialized)
    x = images((2, 16, 16, 3))
    np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), np.asarray(model(x, training=False)))


def test_remat_segments_are_about_sqrt_of_the_units():
    model = krv2.ResNet(164, remat=True)  # 54 units: segments of 7
    segments = [layer for layer in model.layers if isinstance(layer, krv2.Rematerialized)]
    assert len(segments) == 8 and segments[0].name == "stage1_unit1_to_stage1_unit7"
    assert segments[2].name == "stage1_unit15_to_stage2_unit3"  # a segment may span stages
    assert sum(len(s.block.layers) for s in segments) > 500


def test_remat_arguments_are_checked():
    with pytest.raises(ValueError, match=r"`remat` must be True or False. Received: remat='yes'"):
        krv2.ResNet(20, remat="yes")
    with pytest.raises(ValueError, match=r"new dropout masks.*Received: remat=True, shortcut='dropout'"):
        krv2.ResNet(20, remat=True, shortcut="dropout")


JAX_SCRIPT = textwrap.dedent("""
    import numpy as np, keras, keras_resnet_v2 as krv2
    assert keras.backend.backend() == "jax"
    plain = krv2.ResNet(11, input_shape=(16, 16, 3))
    remat = krv2.ResNet(11, input_shape=(16, 16, 3), remat=True)
    remat.set_weights(plain.get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    y = np.arange(4)
    for model in (plain, remat):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy())
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    by_path = {w.path: np.asarray(w) for w in plain.weights}
    worst = max(float(np.abs(np.asarray(w) - by_path[w.path]).max()) for w in remat.weights)
    print("max difference", worst)
    assert worst < 1e-4, worst
""")


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
@pytest.mark.slow
def test_remat_trains_the_same_under_jax():
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", JAX_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max difference" in result.stdout


def test_training_remat_flag_reaches_the_builder_checks():
    from keras_resnet_v2.training.cli import config_from_args
    from keras_resnet_v2.training.runner import check_config

    assert config_from_args(["--model", "resnet20"]).remat is False
    config = config_from_args(["--model", "resnet20", "--remat", "--shortcut", "dropout"])
    assert config.remat is True
    with pytest.raises(ValueError, match="cannot be combined with shortcut='dropout'"):
        check_config(config)


def test_remat_model_exports_verified(tmp_path):
    from keras_resnet_v2 import export

    model = krv2.ResNet(11, input_shape=(16, 16, 3), classes=3, remat=True)
    result = export.export_and_verify(model, str(tmp_path / "serving"), str(tmp_path / "m.onnx"))
    report = result["report"]
    assert report["passed"] and report["savedmodel"]["max_rel_error"] < 1e-6
    assert report["onnx"]["max_rel_error"] < 1e-4
