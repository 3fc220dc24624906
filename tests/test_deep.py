"""ResNet-1001 (paper Table 3): builds on CPU, 10.2M parameters, and at initialization
its gradient reaches the stem finite and not vanishing (paper Eqn. 5)."""

import numpy as np
import pytest
import tensorflow as tf

import keras_resnet_v2 as krv2
from conftest import trainable_count

pytestmark = pytest.mark.slow  # ResNet-1001 builds: the slow tier


@pytest.fixture(scope="module")
def resnet1001():
    import keras

    keras.utils.set_random_seed(0)
    return krv2.ResNet1001()


def test_resnet1001_builds_with_333_units_and_paper_parameter_count(resnet1001):
    # The default form is stacked (issue 21): units 1 as layers, units 2..111 in one UnitStack a stage.
    names = [layer.name for layer in resnet1001.layers]
    stacked = sum(layer.units for layer in resnet1001.layers if isinstance(layer, krv2.UnitStack))
    assert sum(name.endswith("_add") for name in names) + stacked == 333  # 3 stages x 111 units
    count = trainable_count(resnet1001)
    assert abs(count - 10.2e6) / 10.2e6 < 0.03, count  # paper: 10.2M


def test_resnet1001_stem_gradient_is_finite_and_not_vanishing(resnet1001):
    """Measured here (seed 0, batch 8, training mode): the RMS gradient of the stem conv
    kernel is about 2.2e4 times that of the classifier kernel (full pre-activation), so
    the gradient reaches the first layer through 333 units without vanishing; the test
    asserts the ratio is finite and above 1e-2."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, 8)
    with tf.GradientTape() as tape:
        probabilities = resnet1001(x, training=True)
        loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, probabilities))
    stem = resnet1001.get_layer("stem_conv").kernel
    head = resnet1001.get_layer("predictions").kernel
    grads = tape.gradient(loss, [stem, head])
    rms = [float(tf.sqrt(tf.reduce_mean(tf.square(g)))) for g in grads]
    assert np.isfinite(float(loss)) and all(np.isfinite(rms)), (float(loss), rms)
    ratio = rms[0] / rms[1]
    assert ratio > 1e-2, f"stem/head gradient RMS ratio {ratio:.3g}"
