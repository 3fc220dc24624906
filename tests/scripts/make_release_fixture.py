"""Writes tests/data/release_0_1_*.keras and release_0_1.npz: networks saved by keras_resnet_v2 0.1.0
(commit d667aed), before models kept their `Config`, for the test that such files still load, describe
themselves and convert (tests/test_variants.py). Run from a checkout of that commit, its builders
first on the path (they need only Keras and a backend):

    git worktree add /tmp/release-0.1 d667aed
    PYTHONPATH=/tmp/release-0.1 KERAS_BACKEND=tensorflow python tests/scripts/make_release_fixture.py

Small on purpose (widths 4/8/16, a few kB): a plain ResNet-20 of original units with exclusive
gating (gate_bias -3) and stride_in="last"; a stacked ResNet-20 of full pre-activation units with
constant scaling (shortcut 0.7, residual not scaled), include_top=False with max pooling.
`release_0_1.npz` holds `images` and each file's outputs on them.
"""

import os

import keras
import numpy as np

import keras_resnet_v2

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data")
NETWORKS = {
    "release_0_1_plain_gating": dict(unit="original", shortcut="exclusive_gating", gate_bias=-3.0,
                                     stride_in="last", classes=5),
    "release_0_1_stacked_scaling": dict(shortcut="constant_scaling", shortcut_scale=0.7, scale_residual=False,
                                        scan=True, include_top=False, pooling="max"),
}

keras.utils.set_random_seed(7)
images = np.random.default_rng(7).normal(size=(4, 32, 32, 3)).astype("float32")
outputs = {"images": images}
for name, kwargs in NETWORKS.items():
    model = keras_resnet_v2.ResNet(20, widths=(4, 8, 16), name=name, **kwargs)
    for variable in model.non_trainable_variables:  # BatchNorm statistics that change the outputs
        variable.assign(np.random.default_rng(1).uniform(0.5, 1.5, variable.shape).astype("float32"))
    model.save(os.path.join(HERE, f"{name}.keras"))
    outputs[name] = model.predict(images, verbose=0)
np.savez(os.path.join(HERE, "release_0_1.npz"), **outputs)
print(keras_resnet_v2.__version__, sorted(outputs))
