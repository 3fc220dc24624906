"""The builders use keras and keras.ops only, so they run under JAX and PyTorch as under TensorFlow.

For each backend, in its own process (a backend is fixed per process), every unit and every
shortcut variant is built from weights saved here under TensorFlow and must give TensorFlow's
outputs in inference and in training mode; then it trains one `fit` step and round-trips
through a safe-mode `.keras` file.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras_resnet_v2 as krv2
from conftest import tiered

# key -> (depth, builder keyword arguments). Every Fig. 4 unit and every Fig. 2 shortcut at least
# once (paired up, at ResNet-8 on 16x16 inputs), units of one conv (Table 3), a bottleneck net, and
# the ImageNet family with stride_in="last".
PAIRS = list(zip(krv2.UNITS, krv2.SHORTCUT_NAMES, strict=False)) + [("original", krv2.SHORTCUT_NAMES[-1])]
MODELS = {
    **{f"{unit}_{shortcut}": (8, {"unit": unit, "shortcut": shortcut}) for unit, shortcut in PAIRS},
    "single_11": (11, {"block": "single"}),
    "bottleneck_11": (11, {}),
    "imagenet18_last": (18, {"stride_in": "last", "input_shape": (32, 32, 3), "classes": 7}),
}
assert {m[1].get("unit") for m in MODELS.values()} >= set(krv2.UNITS)
assert {m[1].get("shortcut") for m in MODELS.values()} >= set(krv2.SHORTCUT_NAMES)
SMALL = {"input_shape": (16, 16, 3), "classes": 5}


def build(depth, kwargs, **extra):
    return krv2.ResNet(depth, **{**SMALL, **kwargs, **extra})


BACKEND_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import numpy as np, keras, keras_resnet_v2 as krv2
    from test_backends import MODELS, build
    backend, folder = sys.argv[1], sys.argv[2]
    assert keras.backend.backend() == backend, keras.backend.backend()
    report = {}
    for key, (depth, kwargs) in MODELS.items():
        model = build(depth, kwargs, weights=f"{folder}/{key}.weights.h5")
        x = np.load(f"{folder}/{key}_x.npy")
        np.save(f"{folder}/{key}_{backend}_infer.npy", keras.ops.convert_to_numpy(model(x, training=False)))
        np.save(f"{folder}/{key}_{backend}_train.npy", keras.ops.convert_to_numpy(model(x, training=True)))
        # One fit step moves the weights and gives a finite loss.
        before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
        # Not jitted: one step of nine small nets would spend a minute in XLA compiles under JAX
        # (test_remat trains under JAX with jit).
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", jit_compile=False)
        y = np.arange(len(x)) % model.output_shape[-1]
        loss = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0).history["loss"][0]
        moved = sum(not np.array_equal(b, keras.ops.convert_to_numpy(w))
                    for b, w in zip(before, model.trainable_weights))
        # The safe-mode .keras round trip gives the same inference outputs.
        path = f"{folder}/{key}_{backend}.keras"
        model.save(path)
        again = keras.models.load_model(path, safe_mode=True)
        a = keras.ops.convert_to_numpy(model(x, training=False))
        b = keras.ops.convert_to_numpy(again(x, training=False))
        report[key] = {"loss": float(loss), "moved": moved, "weights": len(before),
                       "roundtrip_max_diff": float(np.abs(a - b).max())}
    with open(f"{folder}/{backend}_report.json", "w") as f:
        json.dump(report, f)
""")


@pytest.fixture(scope="module")
def tensorflow_reference(tmp_path_factory):
    """Weights, inputs and TensorFlow's outputs (inference and training mode) for every model."""
    folder = tmp_path_factory.mktemp("backends")
    expected = {}
    for key, (depth, kwargs) in MODELS.items():
        model = build(depth, kwargs)
        model.save_weights(str(folder / f"{key}.weights.h5"))
        x = np.random.default_rng(0).uniform(0, 1, (4,) + tuple(model.input_shape[1:])).astype("float32")
        np.save(folder / f"{key}_x.npy", x)
        expected[key] = {"infer": np.asarray(model(x, training=False)), "train": np.asarray(model(x, training=True))}
    return folder, expected


# The fast tier runs PyTorch; JAX (a minute of XLA compiles) runs in the slow tier.
@pytest.mark.parametrize("backend", tiered(["jax", "torch"], slow={"jax"}))
def test_backend_matches_tensorflow_trains_and_round_trips(tensorflow_reference, backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install '.[test]' installs it)")
    folder, expected = tensorflow_reference
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", BACKEND_SCRIPT, backend, str(folder)], env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((folder / f"{backend}_report.json").read_text())
    assert set(report) == set(MODELS)
    for key, want in expected.items():
        for mode in ("infer", "train"):
            got = np.load(folder / f"{key}_{backend}_{mode}.npy")
            assert got.shape == want[mode].shape, (key, mode)
            if mode == "train" and "dropout" in key:
                # Each backend draws its own dropout masks; inference mode (above) is compared exactly.
                assert np.isfinite(got).all(), key
                continue
            # Training-mode BatchNorm normalizes by statistics of 4 images (1 pixel each in the last
            # ImageNet stage), which amplifies the backends' different float32 rounding.
            rtol, atol = (1e-4, 1e-5) if mode == "infer" else (1e-3, 1e-4)
            np.testing.assert_allclose(got, want[mode], rtol=rtol, atol=atol, err_msg=f"{key} {mode}")
        entry = report[key]
        assert np.isfinite(entry["loss"]), (key, entry)
        assert entry["moved"] == entry["weights"], (key, entry)  # every trainable weight took the step
        assert entry["roundtrip_max_diff"] <= 1e-6, (key, entry)
