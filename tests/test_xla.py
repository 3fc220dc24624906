"""Keras' XLA path under TensorFlow (issue 21): `model.fit` compiles the train step with XLA by default
on one GPU (`jit_compile="auto"`), so the code a GPU user runs is the same network compiled by XLA:
fused BatchNorm, `UnitStack`'s `tf.while_loop`, remat's `tf.recompute_grad`, mixed precision.
Each form trains two steps with `jit_compile=True` and with `jit_compile=False` from the same weights
and data; the losses, the weights after the steps and the predictions must agree.

Tolerances: float32, where XLA reorders and fuses reductions (BatchNorm moments, the convolutions'
sums), measured about 1e-6 relative here; asserted 1e-4 on the losses and 1e-3 on the predictions
after two SGD steps at lr 0.1 (each step's differences pass through the next). mixed_bfloat16 keeps 8
bits of mantissa: XLA rounding bfloat16 at other points of a fused kernel moves outputs by up to a
few 1e-2, asserted 5e-2 relative on the loss and 0.1 absolute on the probabilities.
"""

import keras
import numpy as np
import pytest

import keras_resnet_v2 as krv2
from conftest import needs_bfloat16, tiered

FORMS = {  # ResNet-20 (3 units a stage: a UnitStack loops over 2); the fast tier's plain net is ResNet-8
    "plain": {"depth": 8},
    "stacked": {"scan": True},
    "remat": {"remat": True},
    "mixed_bfloat16": {"dtype": "mixed_bfloat16"},
    "stacked_remat": {"scan": True, "remat": True},
}


def _train(kwargs, jit_compile, images, labels):
    keras.utils.set_random_seed(0)  # the same initial weights for both
    kwargs = dict(kwargs)
    model = krv2.ResNet(kwargs.pop("depth", 20), input_shape=(16, 16, 3), classes=4, widths=(4, 8, 16), **kwargs)
    initial = [np.asarray(w, "float32") for w in model.get_weights()]
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy",
                  jit_compile=jit_compile)
    history = model.fit(images, labels, batch_size=8, epochs=1, steps_per_epoch=2, shuffle=False, verbose=0)
    predictions = model.predict(images, batch_size=8, verbose=0)
    return history.history["loss"][0], predictions, [np.asarray(w, "float32") for w in model.get_weights()], initial


# The fast tier keeps the plain net (the notebook default below 100 units), at its smallest depth (XLA's
# compile time grows with the graph); the loop forms in the slow tier.
SLOW_FORMS = {"remat", "mixed_bfloat16", "stacked", "stacked_remat"}
FORM_PARAMS = [pytest.param(*p.values, marks=[*p.marks, needs_bfloat16])
               if getattr(p, "values", ()) == ("mixed_bfloat16",) else p for p in tiered(list(FORMS), slow=SLOW_FORMS)]


@pytest.mark.parametrize("form", FORM_PARAMS)
def test_xla_training_equals_the_graph(form):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (16, 16, 16, 3)).astype("float32") / 64.0
    labels = rng.integers(0, 4, 16)
    graph = _train(FORMS[form], False, images, labels)
    xla = _train(FORMS[form], True, images, labels)
    mixed = "dtype" in FORMS[form]
    assert np.isfinite(graph[0]) and np.isfinite(xla[0])
    assert abs(xla[0] - graph[0]) <= (5e-2 if mixed else 1e-4) * abs(graph[0]), (xla[0], graph[0])
    np.testing.assert_allclose(xla[1], graph[1], rtol=0, atol=0.1 if mixed else 1e-3)
    # Both trained (the stem kernel moved), from the same start, to the same weights.
    assert all(np.array_equal(a, b) for a, b in zip(graph[3], xla[3], strict=True))
    assert np.abs(xla[2][0] - xla[3][0]).max() > 1e-3
    if not mixed:
        for graph_weight, xla_weight in zip(graph[2], xla[2], strict=True):
            assert np.abs(xla_weight - graph_weight).max() <= 1e-3 * max(np.abs(graph_weight).max(), 1e-3)
