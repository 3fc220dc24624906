"""The builders use keras and keras.ops only: the same weights give the same outputs
under the JAX backend as under TensorFlow (run in a subprocess: a backend is fixed per
process)."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras_resnet_v2 as krv2

MODELS = {
    "r20_gated": (20, {"unit": "original", "shortcut": "exclusive_gating"}),
    "r11_scaled": (11, {"shortcut": "constant_scaling", "input_shape": (16, 16, 3)}),
    "r18_last": (18, {"stride_in": "last", "input_shape": (64, 64, 3), "classes": 7}),
}

JAX_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, keras, keras_resnet_v2 as krv2
    from test_backends import MODELS
    assert keras.backend.backend() == "jax", keras.backend.backend()
    folder = sys.argv[1]
    for key, (depth, kwargs) in MODELS.items():
        model = krv2.ResNet(depth, weights=f"{folder}/{key}.weights.h5", **kwargs)
        x = np.load(f"{folder}/{key}_x.npy")
        np.save(f"{folder}/{key}_jax.npy", np.asarray(model(x, training=False)))
""")


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_jax_backend_matches_tensorflow(tmp_path):
    expected = {}
    for key, (depth, kwargs) in MODELS.items():
        model = krv2.ResNet(depth, **kwargs)
        model.save_weights(str(tmp_path / f"{key}.weights.h5"))
        shape = (2,) + tuple(model.input_shape[1:])
        x = np.random.default_rng(0).uniform(0, 1, shape).astype("float32")
        np.save(tmp_path / f"{key}_x.npy", x)
        expected[key] = np.asarray(model(x, training=False))
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", JAX_SCRIPT, str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for key, want in expected.items():
        got = np.load(tmp_path / f"{key}_jax.npy")
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=key)
