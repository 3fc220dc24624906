"""channels_first networks (issue 39): the same weights as channels_last, the same numbers on the transposed
input, in every unit, shortcut and form; `keras.config.image_data_format()` followed, or `data_format=`.

TensorFlow runs NCHW convolutions on CPUs through oneDNN (its x86 default), so the comparison runs here
in the fast tier; JAX and PyTorch run it in their own processes in the slow tier.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_resnet_v2 as krv2
from conftest import tiered
from keras_resnet_v2 import export

# key -> (depth, builder arguments, image size): every Fig. 4 unit and Fig. 2 shortcut, the stacked and
# rematerialized forms, the ImageNet family with both paddings and stride placements.
CASES = {
    "full_preact": (8, {}, 16),
    "original_exclusive_gating": (8, {"unit": "original", "shortcut": "exclusive_gating"}, 16),
    "bn_after_addition_shortcut_only_gating": (8, {"unit": "bn_after_addition",
                                                   "shortcut": "shortcut_only_gating"}, 16),
    "relu_before_addition_constant_scaling": (8, {"unit": "relu_before_addition",
                                                  "shortcut": "constant_scaling"}, 16),
    "relu_only_preact_conv1x1": (8, {"unit": "relu_only_preact", "shortcut": "conv1x1"}, 16),
    "dropout": (8, {"shortcut": "dropout"}, 16),
    "stacked_gating": (29, {"scan": True, "shortcut": "exclusive_gating", "widths": (4, 8, 8)}, 16),
    "rematerialized": (14, {"remat": True}, 16),
    "imagenet_last_same": (18, {"widths": (8, 8, 16, 16), "stride_in": "last", "padding": "same"}, 64),
    "imagenet_stacked": (50, {"widths": (4, 4, 8, 8), "scan": True}, 64),
}
FAST = ("full_preact", "original_exclusive_gating", "stacked_gating", "imagenet_last_same")


def pair(depth: int, arguments: dict, size: int, seed: int = 0):
    """The network in both formats with the same weights (BatchNorm statistics moved off 0 and 1)."""
    last = krv2.ResNet(depth, data_format="channels_last", input_shape=(size, size, 3), classes=5, **arguments)
    first = krv2.ResNet(depth, data_format="channels_first", input_shape=(3, size, size), classes=5, **arguments)
    rng = np.random.default_rng(seed)
    weights = [w + np.abs(rng.normal(0, 0.2, w.shape)).astype(w.dtype) if w.ndim == 1 else w
               for w in last.get_weights()]
    last.set_weights(weights)
    first.set_weights(weights)  # the same arrays in the same order: the formats share the weight layout
    images = rng.uniform(-1, 1, (2, size, size, 3)).astype("float32")
    return last, first, images


def relative_gap(got, expected) -> float:
    """The largest difference over the largest value: float32 rounding of other kernels stays near 1e-6 (the
    two formats run different convolution and BatchNorm kernels), a misplaced axis moves it to 1e-1."""
    got, expected = keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(expected)
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def largest_difference(last, first, images, training: bool) -> float:
    return relative_gap(first(np.transpose(images, (0, 3, 1, 2)), training=training),
                        last(images, training=training))


@pytest.mark.parametrize("key", tiered(list(CASES), slow=[k for k in CASES if k not in FAST]))
def test_channels_first_answers_as_channels_last_on_the_transposed_input(key):
    depth, arguments, size = CASES[key]
    last, first, images = pair(depth, arguments, size)
    assert first.input_shape == (None, 3, size, size) and first.resnet_config.data_format == "channels_first"
    assert largest_difference(last, first, images, training=False) < 1e-4
    if arguments.get("shortcut") != "dropout":  # dropout draws other masks in each call
        assert largest_difference(last, first, images, training=True) < 1e-4  # batch statistics per channel


BACKEND_SCRIPT = textwrap.dedent("""
    import json, sys
    import keras
    from test_data_format import CASES, largest_difference, pair
    assert keras.backend.backend() == sys.argv[1]
    report = {}
    for key, (depth, arguments, size) in CASES.items():
        last, first, images = pair(depth, arguments, size)
        report[key] = [largest_difference(last, first, images, training) for training in (False, True)]
    print(json.dumps(report))
""")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_channels_first_answers_as_channels_last_under_jax_and_pytorch(backend):
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", BACKEND_SCRIPT, backend], capture_output=True, text=True,
                          env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for key, (inference, training) in report.items():
        assert inference < 1e-4, (backend, key, inference)
        assert key == "dropout" or training < 1e-4, (backend, key, training)


def test_the_format_follows_keras_config_or_the_argument(tmp_path):
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        followed = krv2.ResNet50(include_top=False)
        assert followed.input_shape == (None, 3, None, None) and followed.output_shape == (None, 2048, None, None)
        assert krv2.ResNet20().input_shape == (None, 3, 32, 32)
        assert krv2.ResNet20(data_format="channels_last").input_shape == (None, 32, 32, 3)
        pooled = krv2.ResNet50(include_top=False, pooling="avg", input_shape=(3, 96, 64))
        assert pooled.output_shape == (None, 2048)
        features = krv2.pyramid_outputs(followed)
        assert [tuple(t.shape)[1] for t in features.values()] == [256, 512, 1024, 2048]
    finally:
        keras.config.set_image_data_format(previous)
    with pytest.raises(ValueError, match=r"`data_format`.*'channels_last', 'channels_first'.*Received: "
                                         r"data_format='NCHW'") as caught:
        krv2.ResNet20(data_format="NCHW")
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match=r"channel count.*\(channels, height, width\).*input_shape=\(None, 32, 32\)"):
        krv2.ResNet20(data_format="channels_first", input_shape=(None, 32, 32))


def test_weight_files_and_forms_move_between_the_formats(tmp_path):
    last, first, images = pair(8, {"shortcut": "exclusive_gating"}, 16)
    transposed = np.transpose(images, (0, 3, 1, 2))
    expected = keras.ops.convert_to_numpy(last(images, training=False))
    last.save(tmp_path / "last.keras")
    last.save_weights(tmp_path / "last.weights.h5")
    for weights in ("last.keras", "last.weights.h5"):
        loaded = krv2.ResNet(8, shortcut="exclusive_gating", data_format="channels_first", input_shape=(3, 16, 16),
                             classes=5, weights=str(tmp_path / weights))
        assert relative_gap(loaded(transposed, training=False), expected) < 1e-4
    first.save(tmp_path / "first.keras")
    reloaded = keras.models.load_model(tmp_path / "first.keras")
    assert reloaded.resnet_config.data_format == "channels_first" and reloaded.input_shape == (None, 3, 16, 16)
    stacked = krv2.to_stacked(reloaded)
    assert stacked.resnet_config.data_format == "channels_first"
    plain = krv2.to_plain(stacked)
    for model in (reloaded, stacked, plain):
        assert relative_gap(model(transposed, training=False), expected) < 1e-4


def test_from_timm_builds_either_format():
    path = os.path.join(os.path.dirname(__file__), "data", "timm_resnetv2_18_tiny.safetensors")
    last = krv2.from_timm(path, input_shape=(64, 64, 3))
    first = krv2.from_timm(path, input_shape=(3, 64, 64), data_format="channels_first")
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    assert largest_difference(last, first, images, training=False) < 1e-4


def test_export_refuses_a_channels_first_model_in_one_line(tmp_path):
    _, first, _ = pair(8, {}, 16)
    with pytest.raises(ValueError, match=r"channels_last.*data_format='channels_last'.*Received: a channels_first "
                                         r"model") as caught:
        export.export_and_verify(first, str(tmp_path / "serving"), str(tmp_path / "m.onnx"))
    assert "\n" not in str(caught.value) and not os.listdir(tmp_path)


def test_without_onednn_tensorflow_refuses_channels_first_in_one_line():
    # TensorFlow's own CPU kernels refuse NCHW convolutions: said at build time, not at the first call.
    script = ("import keras_resnet_v2 as krv2\n"
              "try:\n    krv2.ResNet20(data_format='channels_first')\n"
              "except ValueError as error:\n    print('refused:', error)\n"
              "print(krv2.ResNet20(data_format='channels_last').input_shape)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", CUDA_VISIBLE_DEVICES=""))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("refused: TensorFlow runs no channels_first convolution on this machine")
    assert "data_format='channels_last'" in lines[0] and lines[1] == "(None, 32, 32, 3)"


def test_training_builds_channels_last_whatever_keras_config_says():
    # Its input pipeline gives [N, H, W, C] batches; a channels_first keras.json must not turn them around.
    from keras_resnet_v2.training import runner
    from keras_resnet_v2.training.config import TrainConfig
    from keras_resnet_v2.training.data import DatasetInfo

    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        info = DatasetInfo("digits", 10, 1437, 360, (32, 32, 3))
        model = runner.build_model(TrainConfig(model="resnet8"), info, 32, np.full(3, 8.0), np.full(3, 30.0))
    finally:
        keras.config.set_image_data_format(previous)
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 10)
    assert model.get_layer("stem_conv").data_format == "channels_last"
