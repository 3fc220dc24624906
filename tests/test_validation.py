"""Bad input fails before any layer is built, with a ValueError naming the argument,
the received value and what is allowed."""

import keras
import numpy as np
import pytest

import keras_resnet_v2 as krv2

CASES = [
    # (arguments, fragments the message must contain)
    ({"depth": 165}, ["`depth`", "165", "164 or 173", "164 or 170", "6n+2", "9n+2"]),
    ({"depth": 165, "block": "bottleneck"}, ["9n+2", "164 or 173", "Received: depth=165"]),
    ({"depth": 21, "block": "basic"}, ["6n+2", "20 or 26"]),
    ({"depth": 51, "family": "imagenet"}, ["family='imagenet'", "18, 34, 50, 101, 152, 200", "depth=51"]),
    ({"depth": 0}, ["positive integer", "depth=0"]),
    ({"depth": "110"}, ["positive integer", "depth='110'"]),
    ({"depth": 10**9 + 1}, ["at most 2,000", "Received: depth=1000000001"]),
    ({"depth": 50, "family": "imagenet", "block": "basic"}, ["'bottleneck'", "block='basic'"]),
    ({"depth": 20, "family": "svhn"}, ["`family`", "'cifar', 'imagenet'", "family='svhn'"]),
    ({"depth": 20, "block": "wide"}, ["`block`", "'basic', 'bottleneck'", "block='wide'"]),
    ({"depth": 20, "unit": "preact"}, ["`unit`", "'full_preact'", "'original'", "unit='preact'"]),
    ({"depth": 20, "shortcut": "gating"}, ["`shortcut`", "'exclusive_gating'", "shortcut='gating'"]),
    ({"depth": 20, "classes": 0}, ["`classes`", ">= 1", "classes=0"]),
    ({"depth": 20, "classes": 2.5}, ["`classes`", "classes=2.5"]),
    ({"depth": 20, "pooling": "avg"}, ["`pooling`", "include_top=False", "pooling='avg'"]),
    ({"depth": 20, "include_top": False, "pooling": "mean"}, ["`pooling`", "'avg', 'max'", "pooling='mean'"]),
    ({"depth": 20, "input_shape": (3, 3, 3)}, ["too small", "at least 4", "input_shape=(3, 3, 3)"]),
    ({"depth": 50, "input_shape": (16, 16, 3)}, ["too small", "at least 32", "input_shape=(16, 16, 3)"]),
    ({"depth": 20, "input_shape": (32, 32)}, ["(height, width, channels)", "input_shape=(32, 32)"]),
    ({"depth": 20, "input_shape": (32, 32, None)}, ["channel count", "input_shape=(32, 32, None)"]),
    ({"depth": 20, "stride_in": "middle"}, ["`stride_in`", "'first', 'last'", "stride_in='middle'"]),
    ({"depth": 20, "classifier_activation": "softmaxx"}, ["`classifier_activation`", "'softmaxx'"]),
    ({"depth": 20, "dtype": "float17"}, ["`dtype`", "mixed_float16", "dtype='float17'"]),
    ({"depth": 20, "weights": "imagenet"}, ["weights='imagenet' exists for", "ResNet50", "depth=20"]),
    ({"depth": 20, "weights": "imagenet.h5"}, ["`weights`", ".weights.h5", "weights='imagenet.h5'"]),
    ({"depth": 20, "weights": "/nonexistent/m.weights.h5"}, ["does not exist", "/nonexistent/m.weights.h5"]),
    ({"depth": 20, "name": ""}, ["`name`", "name=''"]),
    ({"depth": 20, "include_top": "yes"}, ["`include_top`", "include_top='yes'"]),
    ({"depth": 20, "gate_bias": -6.0}, ["`gate_bias`", "shortcut='identity'", "none"]),
    ({"depth": 20, "shortcut": "exclusive_gating", "dropout_rate": 0.5}, ["`dropout_rate`", "gate_bias"]),
    ({"depth": 20, "shortcut": "exclusive_gating", "gate_bias": "low"}, ["`gate_bias`", "finite number", "'low'"]),
    ({"depth": 20, "shortcut": "constant_scaling", "shortcut_scale": 1.5}, ["[0, 1]", "shortcut_scale=1.5"]),
    ({"depth": 20, "shortcut": "constant_scaling", "scale_residual": 1}, ["True or False", "scale_residual=1"]),
    ({"depth": 20, "shortcut": "dropout", "dropout_rate": 1.0}, ["[0, 1)", "dropout_rate=1.0"]),
    # A huge value (an expanded YAML alias) is quoted in 80 characters, not in megabytes.
    ({"depth": 20, "shortcut": "exclusive_gating", "gate_bias": [[0] * 1000] * 1000},
     ["`gate_bias`", "gate_bias=[[0, 0, 0,", "..."]),
    ({"depth": 20, "unit": "x" * 100_000}, ["`unit`", "unit='xxxxxxxx", "..."]),
]


@pytest.mark.parametrize("kwargs,fragments", CASES, ids=[str(c[0]) for c in CASES])
def test_bad_argument_raises_clear_error_before_building(kwargs, fragments, monkeypatch):
    built = []
    original_init = keras.layers.Layer.__init__

    def spy(self, *args, **kw):
        built.append(type(self).__name__)
        original_init(self, *args, **kw)

    monkeypatch.setattr(keras.layers.Layer, "__init__", spy)
    kwargs = dict(kwargs)
    with pytest.raises(ValueError) as info:
        krv2.ResNet(kwargs.pop("depth"), **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "Received" in message and len(message) < 500, len(message)
    assert built == [], f"layers were built before the error: {built[:5]}"


def test_input_tensor_must_be_a_keras_tensor_and_agree_with_input_shape():
    with pytest.raises(ValueError, match="`input_tensor` must be a Keras tensor"):
        krv2.ResNet20(input_tensor=np.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match=r"does not match the shape of `input_tensor`"):
        krv2.ResNet20(input_tensor=keras.Input((32, 32, 3)), input_shape=(64, 64, 3))


def test_named_constructor_rejects_a_depth():
    with pytest.raises(ValueError, match="ResNet164 fixes depth=164.*Received: depth=110"):
        krv2.ResNet164(depth=110)


def test_a_weights_file_from_another_architecture_is_refused(tmp_path):
    path = str(tmp_path / "r20.weights.h5")
    krv2.ResNet20().save_weights(path)
    with pytest.raises(ValueError, match=r"does not fit this architecture.*Received: weights="):
        krv2.ResNet32(weights=path)
    with pytest.raises(ValueError, match=r"does not fit this architecture"):
        krv2.ResNet20(unit="original", weights=path)
    broken = tmp_path / "broken.weights.h5"
    broken.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match="not a readable Keras weights file"):
        krv2.ResNet20(weights=str(broken))
