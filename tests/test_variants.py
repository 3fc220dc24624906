"""One unit, one description (issue 33): every Fig. 2 shortcut is one `variants.Shortcut` entry that both
forms of a network run (the functional builder's layers and `UnitStack`'s loop); a shortcut added in one
place builds, converts, saves and loads; the model keeps its `Config`; and files saved by release 0.1.0,
which keep none, still load, describe themselves and convert."""

import dataclasses
import os

import keras
import numpy as np
import pytest

import keras_resnet_v2 as krv2
from conftest import tiered
from keras_resnet_v2 import variants
from keras_resnet_v2.convert import network_config
from keras_resnet_v2.resnet import resolve_config

DATA = os.path.join(os.path.dirname(__file__), "data")
TINY = {"widths": (4, 8, 16), "input_shape": (8, 8, 3), "classes": 3}
SINGLE = {**TINY, "block": "single"}  # ResNet-11 of one-conv units: three units a stage, stacks of two


def _numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value), dtype="float64")


def _outputs_agree(plain, stacked, x, training: bool) -> float:
    a, b = _numpy(plain(x, training=training)), _numpy(stacked(x, training=training))
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


# The original unit has every step a plan can hold but the pre-activation (projection BN, BN-ReLU after the
# addition); the slow tier repeats it with full pre-activation units.
@pytest.mark.parametrize("unit", tiered(["original", "full_preact"], slow={"full_preact"}))
def test_every_shortcut_entry_runs_through_both_forms(unit, images):
    """Each entry of SHORTCUTS, nothing else, decides both forms: a plain net and its stacked conversion
    answer the same, in inference and (but for the shortcut that draws noise) in training."""
    x = images((4, 8, 8, 3))
    for name, shortcut in variants.SHORTCUTS.items():
        keras.utils.set_random_seed(1)
        plain = krv2.ResNet(11, unit=unit, shortcut=name, **SINGLE)
        stacked = krv2.to_stacked(plain)
        assert any(isinstance(layer, krv2.UnitStack) for layer in stacked.layers), name
        assert _outputs_agree(plain, stacked, x, training=False) <= 1e-6, name
        if not shortcut.noise:
            assert _outputs_agree(plain, stacked, x, training=True) <= 1e-5, name


def _subtract(h, f, g, noise, options):
    return h - f


def _subtract_layers(s, options, kw):
    return keras.layers.Subtract(name=f"{s.name}_add", **kw)([s.shortcut, s.residual])


def test_a_new_shortcut_is_one_entry(monkeypatch, tmp_path, images):
    """y = x - F(x), written once, here: the builder, UnitStack, conversion and saving take it as it is."""
    monkeypatch.setitem(variants.SHORTCUTS, "subtract", variants.Shortcut("test", _subtract, _subtract_layers))
    x = images((4, 8, 8, 3))
    keras.utils.set_random_seed(2)
    plain = krv2.ResNet(20, shortcut="subtract", **TINY)
    stacked = krv2.to_stacked(plain)
    assert stacked.get_layer("stage1_unit2_to_unit3").shortcut == "subtract"
    assert _outputs_agree(plain, stacked, x, training=False) <= 1e-6
    assert _outputs_agree(plain, stacked, x, training=True) <= 1e-5
    identity = krv2.ResNet(20, **TINY)
    krv2.copy_weights(plain, identity)  # the same weights: only the arithmetic differs
    assert np.abs(_numpy(identity(x)) - _numpy(plain(x))).max() > 1e-3
    stacked.save(tmp_path / "subtract.keras")
    again = keras.models.load_model(tmp_path / "subtract.keras")
    assert again.resnet_config.shortcut == "subtract" and isinstance(again, krv2.StackedModel)
    assert _outputs_agree(plain, krv2.to_plain(again), x, training=False) <= 1e-6


def test_the_model_keeps_its_config_through_files_and_clones(tmp_path):
    model = krv2.ResNet(20, unit="original", shortcut="exclusive_gating", gate_bias=-2.0, stride_in="last",
                        dtype="mixed_float16", name="kept", **TINY)
    config = model.resnet_config
    assert config.name == "kept" and config.unit == "original" and config.stride_in == "last"
    assert config.shortcut_options == {"gate_bias": -2.0} and config.dtype.name == "mixed_float16"
    model.save(tmp_path / "kept.keras")
    assert keras.models.load_model(tmp_path / "kept.keras").resnet_config == config
    # keras.models.clone_model builds the class anew from the graph and keeps no attribute: the Config is
    # then read back from the layers, the same.
    clone = keras.models.clone_model(model)
    assert clone.resnet_config is None and network_config(clone) == config
    # `ResNet(**arguments())` is the same network again; to_dict survives JSON.
    again = krv2.ResNet(**config.arguments())
    assert again.resnet_config == config and again.count_params() == model.count_params()
    assert type(config).from_dict(config.to_dict()) == config


def test_stages_are_named_values_with_their_strides():
    first = resolve_config(20)
    assert [stage.name for stage in first.stages] == ["stage1", "stage2", "stage3"]
    assert [[unit.stride for unit in stage.units] for stage in first.stages] == [[1, 1, 1], [2, 1, 1], [2, 1, 1]]
    last = resolve_config(20, stride_in="last")
    assert [[unit.stride for unit in stage.units] for stage in last.stages] == [[1, 1, 2], [1, 1, 2], [1, 1, 1]]
    assert [stage.stride for stage in first.stages] == [1, 2, 2] and [s.stride for s in last.stages] == [2, 2, 1]
    assert [unit.name for unit in last.units][:4] == ["stage1_unit1", "stage1_unit2", "stage1_unit3", "stage2_unit1"]
    assert (resolve_config(20).form, resolve_config(20, scan=True).form, resolve_config(20, remat=True).form) == (
        "plain", "stacked", "rematerialized")


def test_resolve_config_takes_resnets_defaults_and_refuses_a_misfit_in_one_line():
    assert resolve_config(164) == resolve_config(164, unit="full_preact", shortcut="identity", scan=None)
    with pytest.raises(ValueError, match=r"Unknown option `gate_bias` for shortcut='identity'"):
        resolve_config(20, gate_bias=-6.0)
    with pytest.raises(ValueError, match=r"`unit` must be one of .* Received: unit='preact'"):
        resolve_config(20, unit="preact")


RELEASE = {
    "release_0_1_plain_gating": dict(unit="original", shortcut="exclusive_gating", gate_bias=-3.0,
                                     stride_in="last", classes=5, scan=False, include_top=True),
    "release_0_1_stacked_scaling": dict(unit="full_preact", shortcut="constant_scaling", shortcut_scale=0.7,
                                        scale_residual=False, scan=True, include_top=False, pooling="max"),
}


@pytest.mark.parametrize("name", sorted(RELEASE))
def test_files_of_release_0_1_load_describe_themselves_and_convert(name):
    """Saved before models kept their Config (tests/scripts/make_release_fixture.py): the arguments are
    read back from the layers, and both conversions give the file's own outputs."""
    data = np.load(os.path.join(DATA, "release_0_1.npz"))
    model = keras.models.load_model(os.path.join(DATA, f"{name}.keras"))
    assert getattr(model, "resnet_config", None) is None  # nothing kept: the fallback is what is tested
    np.testing.assert_allclose(_numpy(model(data["images"])), data[name], rtol=1e-5, atol=1e-6)
    config = network_config(model)
    want = dict(RELEASE[name])
    options = {key: want.pop(key) for key in ("gate_bias", "shortcut_scale", "scale_residual") if key in want}
    assert config.shortcut_options == {**variants.SHORTCUTS[want["shortcut"]].options, **options}
    assert {key: getattr(config, key) for key in want} == want
    assert (config.depth, config.widths, config.name) == (20, (4, 8, 16), name)
    for converted in (krv2.to_plain(model), krv2.to_stacked(model)):
        assert converted.resnet_config == dataclasses.replace(config, scan=converted.resnet_config.scan)
        np.testing.assert_allclose(_numpy(converted(data["images"])), data[name], rtol=1e-5, atol=1e-6)


def test_resnets_signature_and_configs_fields_are_one_list():
    # Issue 51: ResNet's signature spells the arguments once; Config holds the same list (less what it works
    # out or spreads), and everything else derives from its fields (Config.arguments, check_arguments).
    import dataclasses
    import inspect

    from keras_resnet_v2.config import Config

    parameters = set(inspect.signature(krv2.ResNet).parameters)
    fields = {field.name for field in dataclasses.fields(Config)}
    assert parameters - fields == {"input_tensor", "variant_options"}
    assert fields - parameters == {"units_per_stage", "shortcut_options"}
    cfg = resolve_config(110, unit="original", shortcut="exclusive_gating", gate_bias=-3.0, stride_in="last",
                         widths=(8, 16, 32), dtype="mixed_float16", include_top=False, pooling="max")
    again = resolve_config(**cfg.arguments())
    assert again.to_dict() == cfg.to_dict() and again.shortcut_options == {"gate_bias": -3.0}
