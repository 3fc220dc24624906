"""Float16 convolutions on power-of-two rescaled operands (keras_resnet_v2/scaled.py, issue 21).

ResNet-1001 under mixed_float16 went NaN with a float32 stream alone (benchmarks/RESULTS.md, "Mixed
precision at depth"): the first SGD steps grow the branch weights ~1e3-fold and a branch convolution
passes float16's 65,504. These tests build that state on purpose (every kernel x 1e5) on small nets.
"""

import keras
import numpy as np
import pytest

import keras_resnet_v2 as krv2
from keras_resnet_v2.scaled import HEADROOM, ScaledConv2D, scaled_conv


def _numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value), dtype="float64")


def _reference(x, kernel):
    """A float64 "same" convolution, stride 1."""
    kh, kw = kernel.shape[:2]
    padded = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nhwc,co->nhwo", padded[:, i:i + x.shape[1], j:j + x.shape[2]], kernel[i, j])
    return out


@pytest.mark.parametrize("magnitude", [1e-3, 1.0, 1e3])
def test_scaled_conv_is_a_float16_convolution_of_any_magnitude(magnitude):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(2, 6, 6, 8)) * magnitude).astype("float32")
    kernel = (rng.normal(size=(3, 3, 8, 4)) * magnitude * 10).astype("float32")
    y, scale = scaled_conv(x, kernel, "float16", padding="same")
    assert keras.backend.standardize_dtype(y.dtype) == "float16" and np.abs(_numpy(y)).max() <= 2.0 ** HEADROOM
    exponent = np.log2(float(_numpy(scale)))
    assert exponent == round(exponent)  # a power of two: the rescale changes exponents only
    want = _reference(x.astype("float64"), kernel.astype("float64"))
    # magnitude 1e3: outputs ~1e8, far past float16's 65,504; float16 operands: ~3 significant digits.
    np.testing.assert_allclose(_numpy(y) * float(_numpy(scale)), want, rtol=0, atol=5e-3 * np.abs(want).max())


def test_scaled_conv2d_keeps_float32_outside_and_its_config():
    layer = ScaledConv2D(4, 3, padding="same", use_bias=False, dtype="float32", name="conv")
    x = np.random.default_rng(0).uniform(0, 1e5, (1, 5, 5, 8)).astype("float32")  # inputs past float16's range
    y = layer(x)
    assert keras.backend.standardize_dtype(y.dtype) == "float32" and np.abs(_numpy(y)).max() > 65504
    want = _reference(x.astype("float64"), _numpy(layer.kernel))
    np.testing.assert_allclose(_numpy(y), want, rtol=0, atol=5e-3 * np.abs(want).max())
    again = ScaledConv2D.from_config(layer.get_config())
    assert again.inner_dtype == "float16" and again.compute_dtype == "float32"


def _grown(model, factor=1e5):
    """Every convolution kernel x `factor`: in float32 the same function (each BatchNorm, and the head's,
    undoes a common scale of the stream), but the stream and every convolution's output `factor`
    times larger, past float16's range, as after ResNet-1001's first large steps."""
    for layer in model.layers:
        for variable in layer.trainable_variables:
            if variable.path.endswith("kernel") and layer.name != "predictions":
                variable.assign(variable * factor)
    return model


def _resnet(scan, depth=20, **kwargs):
    keras.utils.set_random_seed(0)
    policy = keras.config.dtype_policy()
    try:
        return krv2.ResNet(depth, input_shape=(8, 8, 3), classes=3, scan=scan, **kwargs)
    finally:
        keras.config.set_dtype_policy(policy)


@pytest.mark.parametrize("scan", [False, True], ids=["per_unit", "stacked"])
def test_grown_weights_stay_finite_under_mixed_float16_with_a_float32_stream(scan):
    images = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 3)).astype("float32")
    mixed = _grown(_resnet(scan, dtype="mixed_float16", stream_dtype="float32"))
    full = _grown(_resnet(scan))
    conv = mixed.get_layer("stage2_unit1_1_conv")
    assert isinstance(conv, ScaledConv2D) and conv.compute_dtype == "float32" and conv.inner_dtype == "float16"
    assert mixed.get_layer("stage2_unit1_1_bn").compute_dtype == "float32"
    # The float32 net's branch convolutions do leave float16's range.
    probe = keras.Model(full.inputs, full.get_layer("stage2_unit1_1_conv").output)
    assert np.abs(_numpy(probe(images, training=True))).max() > 65504
    got, want = _numpy(mixed(images, training=True)), _numpy(full(images, training=True))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-2)  # probabilities; float16 convolutions


@pytest.mark.slow
def test_a_deep_mixed_float16_net_with_grown_weights_trains_finite():
    # CI's witness (slow tier) of the 1000-layer runs (benchmarks/mixed_float16_depth.py): a stacked
    # ResNet-56 in the grown state, SGD at lr 0.1 under Keras' dynamic loss scaling, fixed seed.
    images = np.random.default_rng(1).uniform(0, 1, (16, 8, 8, 3)).astype("float32")
    labels = np.arange(16) % 3
    model = _grown(_resnet(True, depth=56, dtype="mixed_float16", stream_dtype="float32"))
    before = _numpy(model.get_layer("stage2_unit2_to_unit9").get_weight("2_conv_kernel"))
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy")
    history = model.fit(images, labels, batch_size=2, epochs=2, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert all(np.isfinite(_numpy(v)).all() for v in model.weights)
    after = _numpy(model.get_layer("stage2_unit2_to_unit9").get_weight("2_conv_kernel"))
    assert np.abs(after - before).max() > 0  # steps were applied, not all skipped by the loss scale
