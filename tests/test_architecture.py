"""The networks match the paper: parameter counts, unit layouts (Fig. 4), the clean
path of Eqn. 4, the CIFAR and ImageNet layouts, names and dtypes. Figures cited from
the paper (Tables 1-3, Sec. 4 and the Appendix)."""

import keras
import numpy as np
import pytest

import keras_resnet_v2 as krv2
from conftest import branch_order, needs_bfloat16, producer, trainable_count

# Paper, Table 3 and Sec. 4: ResNet-110 1.7M, ResNet-164 1.7M, ResNet-1202 19.4M.
# (ResNet-1001's 10.2M is checked in test_deep.py with the other ResNet-1001 tests.)
PAPER_PARAMS = [
    (krv2.ResNet110, {}, 1.7e6),
    (krv2.ResNet164, {}, 1.7e6),
    pytest.param(krv2.ResNet1202, {"unit": "original"}, 19.4e6, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("constructor,kwargs,paper", PAPER_PARAMS, ids=lambda v: getattr(v, "__name__", None))
def test_trainable_parameters_within_3_percent_of_paper(constructor, kwargs, paper):
    count = trainable_count(constructor(**kwargs))
    assert abs(count - paper) / paper < 0.03, f"{constructor.__name__}: {count:,} vs paper {paper:,.0f}"


def test_imagenet_resnet50_matches_keras_applications_within_1_percent():
    ours = krv2.ResNet50().count_params()
    reference = keras.applications.ResNet50V2(weights=None).count_params()
    assert abs(ours - reference) / reference < 0.01, (ours, reference)


# Fig. 4, read off the paper for a basic unit (two 3x3 convs), in forward order.
FIGURE_4 = {
    "original": ["conv", "bn", "relu", "conv", "bn", "add", "relu"],
    "bn_after_addition": ["conv", "bn", "relu", "conv", "add", "bn", "relu"],
    "relu_before_addition": ["conv", "bn", "relu", "conv", "bn", "relu", "add"],
    "relu_only_preact": ["relu", "conv", "bn", "relu", "conv", "bn", "add"],
    "full_preact": ["bn", "relu", "conv", "bn", "relu", "conv", "add"],
}


@pytest.mark.parametrize("unit", sorted(FIGURE_4))
def test_unit_layer_order_follows_figure_4(unit):
    model = krv2.ResNet20(unit=unit)
    assert branch_order(model, "stage1_unit2") == FIGURE_4[unit]
    # The identity shortcut of that unit is the previous unit's output itself.
    add = model.get_layer("stage1_unit2_add")
    previous = [layer for layer in model.layers if layer.name.startswith("stage1_unit1_")][-1]
    assert producer(add.input[0]) is previous


def test_bottleneck_unit_order_and_authors_stride_on_first_1x1():
    model = krv2.ResNet164()
    assert branch_order(model, "stage2_unit1") == [
        "bn", "relu", "conv", "bn", "relu", "conv", "bn", "relu", "conv", "add"
    ]
    convs = [model.get_layer(f"stage2_unit1_{i}_conv") for i in (1, 2, 3)]
    assert [c.kernel_size for c in convs] == [(1, 1), (3, 3), (1, 1)]
    assert [c.strides for c in convs] == [(2, 2), (1, 1), (1, 1)]
    assert [c.filters for c in convs] == [32, 32, 128]  # inner width = output / 4


def test_preact_projection_reads_the_preactivated_input_and_has_no_bn():
    model = krv2.ResNet164()
    projection = model.get_layer("stage2_unit1_shortcut_conv")
    assert producer(projection.input).name == "stage2_unit1_preact_relu"
    assert projection.strides == (2, 2) and projection.kernel_size == (1, 1)
    assert "stage2_unit1_shortcut_bn" not in [layer.name for layer in model.layers]
    original = krv2.ResNet164(unit="original")
    assert producer(original.get_layer("stage2_unit1_shortcut_conv").input).name == "stage1_unit18_out_relu"
    assert isinstance(original.get_layer("stage2_unit1_shortcut_bn"), keras.layers.BatchNormalization)


@pytest.mark.parametrize("depth,stages,shape", [(20, 3, (8, 8, 64)), (164, 18, (8, 8, 256))])
def test_cifar_layout(depth, stages, shape):
    model = krv2.ResNet(depth, include_top=False, input_shape=(32, 32, 3))
    assert model.output_shape[1:] == shape
    # 3x3 stem with 16 filters, stride 1, no BN/ReLU after it in the pre-act net.
    stem = model.get_layer("stem_conv")
    assert (stem.filters, stem.kernel_size, stem.strides) == (16, (3, 3), (1, 1))
    assert producer(model.get_layer("stage1_unit1_preact_bn").input) is stem
    # Spatial size 32/16/8; the head ends in an extra BN-ReLU after the last addition.
    for stage, size in zip((1, 2, 3), (32, 16, 8), strict=True):
        assert model.get_layer(f"stage{stage}_unit{stages}_add").output.shape[1] == size
    assert f"stage3_unit{stages + 1}_add" not in [layer.name for layer in model.layers]
    assert producer(model.get_layer("post_bn").input).name == f"stage3_unit{stages}_add"


@pytest.mark.parametrize("unit", ["full_preact", "original"])
def test_clean_path_of_eqn_4(unit):
    """Paper Eqn. 4: x_L = x_l + sum F(x_i). With every residual branch's last conv
    zeroed, full pre-activation stage 1 passes its input through exactly; the original
    unit's ReLU after each addition clips it (x_{l+1} = ReLU(x_l))."""
    model = krv2.ResNet20(unit=unit)
    for layer in model.layers:
        if layer.name.endswith("_2_conv"):
            layer.kernel.assign(np.zeros(layer.kernel.shape, "float32"))
    stage_in = model.get_layer("stage1_unit1_add").input[0]
    stage_out = [layer for layer in model.layers if layer.name.startswith("stage1_unit3_")][-1].output
    stage = keras.Model(stage_in, stage_out)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 16)).astype("float32")
    y = np.asarray(stage(x, training=False))
    if unit == "full_preact":
        np.testing.assert_array_equal(y, x)
    else:
        np.testing.assert_array_equal(y, np.maximum(x, 0))
        assert not np.allclose(y, x)


@pytest.mark.parametrize("stride_in", ["first", "last"])
def test_imagenet_layout_and_stride_placement(stride_in):
    model = krv2.ResNet50(include_top=False, pooling="avg", stride_in=stride_in, input_shape=(224, 224, 3))
    assert model.output_shape == (None, 2048)
    stem = model.get_layer("stem_conv")
    assert (stem.filters, stem.kernel_size, stem.strides) == (64, (7, 7), (2, 2))
    assert model.get_layer("stem_pool").strides == (2, 2)
    assert model.get_layer("stage1_unit1_3_conv").output.shape[1:] == (56, 56, 256)
    if stride_in == "first":  # fb.resnet.torch: stride on the 3x3 of the first unit
        assert model.get_layer("stage2_unit1_2_conv").strides == (2, 2)
        assert model.get_layer("stage1_unit3_add").output.shape[1] == 56
    else:  # keras.applications: stride in the last unit, shortcut subsampled
        assert model.get_layer("stage1_unit3_2_conv").strides == (2, 2)
        assert model.get_layer("stage1_unit3_add").output.shape[1] == 28
        assert model.get_layer("stage1_unit3_shortcut_pool").strides == (2, 2)
    assert model.get_layer("stage4_unit3_add").output.shape[1:] == (7, 7, 2048)


def test_a_backbone_takes_any_size_and_a_classifier_its_familys_as_keras_applications():
    # Issue 39: ResNet50(include_top=False) was pinned to 224x224 and refused a 256x256 batch.
    backbone = krv2.ResNet50(include_top=False)
    assert backbone.input_shape == (None, None, None, 3) and backbone.output_shape == (None, None, None, 2048)
    images = np.random.default_rng(0).uniform(0, 255, (1, 256, 256, 3)).astype("float32")
    assert tuple(backbone(images).shape) == (1, 8, 8, 2048)
    assert tuple(backbone(images[:, :96, :160]).shape) == (1, 3, 5, 2048)
    assert krv2.ResNet20(include_top=False, pooling="avg").input_shape == (None, None, None, 3)
    assert krv2.ResNet50().input_shape == (None, 224, 224, 3)  # with the top: the family's size, as before
    assert krv2.ResNet20().input_shape == (None, 32, 32, 3)
    assert krv2.ResNet50(include_top=False, input_shape=(128, 96, 3)).input_shape == (None, 128, 96, 3)
    assert krv2.ResNet(8, include_top=False).resnet_config.input_shape == (None, None, 3)


@pytest.mark.parametrize("constructor,units", [
    (krv2.ResNet18, (2, 2, 2, 2)), (krv2.ResNet34, (3, 4, 6, 3)), (krv2.ResNet101, (3, 4, 23, 3)),
])
def test_imagenet_units_per_stage(constructor, units):
    model = constructor(include_top=False, input_shape=(64, 64, 3))
    names = {layer.name.rsplit("_", 1)[0] for layer in model.layers if layer.name.endswith("_add")}
    assert tuple(sum(n.startswith(f"stage{s}_") for n in names) for s in (1, 2, 3, 4)) == units


def test_named_constructors_fix_depth_family_and_block():
    assert krv2.ResNet56().get_layer("stage1_unit9_2_conv").kernel_size == (3, 3)
    assert "stage1_unit10_add" not in [layer.name for layer in krv2.ResNet56().layers]
    # 110 is 6n+2 and 9n+2: the paper's ResNet-110 is basic; block= picks the other form.
    assert "stage1_unit18_add" in [layer.name for layer in krv2.ResNet110().layers]
    assert "stage1_unit12_3_conv" in [layer.name for layer in krv2.ResNet(110, block="bottleneck").layers]
    # A CIFAR network at an ImageNet depth, when asked for.
    assert krv2.ResNet(50, family="cifar").output_shape == (None, 10)
    assert krv2.ResNet50().output_shape == (None, 1000)


def test_layer_names_are_deterministic_and_models_coexist(images):
    a, b = krv2.ResNet20(), krv2.ResNet20()
    assert [layer.name for layer in a.layers] == [layer.name for layer in b.layers]
    assert a.name != b.name
    inputs = keras.Input((32, 32, 3))
    ensemble = keras.Model(inputs, keras.layers.Average()([a(inputs), b(inputs)]))
    x = images()
    expected = (np.asarray(a(x)) + np.asarray(b(x))) / 2
    np.testing.assert_allclose(np.asarray(ensemble(x)), expected, rtol=1e-5, atol=1e-6)
    assert krv2.ResNet20(name="mine").name == "mine"


def test_conv_init_biases_and_batchnorm():
    model = krv2.ResNet(56, unit="original")
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert all(not conv.use_bias for conv in convs)
    kernel = np.asarray(model.get_layer("stage3_unit5_1_conv").kernel)  # 3x3, 64 -> 64
    # He normal over fan-out: std = sqrt(2 / (3 * 3 * 64)) (authors' code).
    assert abs(kernel.std() / np.sqrt(2 / (9 * 64)) - 1) < 0.05
    bn = model.get_layer("stage3_unit5_1_bn")
    assert np.all(np.asarray(bn.gamma) == 1) and np.all(np.asarray(bn.beta) == 0)


@pytest.mark.parametrize("policy", ["mixed_float16", pytest.param("mixed_bfloat16", marks=needs_bfloat16)])
def test_mixed_precision_argument_and_global_policy(policy, images):
    compute = policy.split("_")[1]
    model = krv2.ResNet20(dtype=policy)
    assert model.get_layer("stage2_unit1_1_conv").compute_dtype == compute
    assert model.get_layer("stage2_unit1_1_conv").kernel.dtype == "float32"
    assert model.get_layer("predictions").compute_dtype == "float32"
    assert str(model(images(), training=True).dtype) in ("float32", "<dtype: 'float32'>")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        follows = krv2.ResNet20(include_top=False)
    finally:
        keras.config.set_dtype_policy(previous)
    assert follows.get_layer("stage1_unit1_1_conv").compute_dtype == compute
    assert krv2.ResNet20().get_layer("stage1_unit1_1_conv").compute_dtype == "float32"


def test_input_tensor_pooling_and_logits(images):
    inputs = keras.Input((48, 48, 1), name="gray")
    model = krv2.ResNet20(input_tensor=inputs, include_top=False, pooling="max")
    assert model.inputs[0] is inputs and model.output_shape == (None, 64)
    logits = krv2.ResNet20(classes=3, classifier_activation=None)
    assert logits.get_layer("predictions").activation is keras.activations.linear
    probabilities = np.asarray(krv2.ResNet20(classes=3)(images(), training=True))
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)
    flexible = krv2.ResNet20(include_top=False, input_shape=(None, None, 3))
    assert np.asarray(flexible(images((1, 40, 24, 3)))).shape == (1, 10, 6, 64)


@pytest.mark.parametrize("shortcut,layer,kind", [
    ("constant_scaling", "stage1_unit2_shortcut_scale", krv2.ConstantScale),
    ("exclusive_gating", "stage1_unit2_gated_sum", krv2.GatedSum),
    ("shortcut_only_gating", "stage1_unit2_gated_sum", krv2.GatedSum),
    ("conv1x1", "stage1_unit2_shortcut_conv", keras.layers.Conv2D),
    ("dropout", "stage1_unit2_shortcut_dropout", keras.layers.Dropout),
])
def test_shortcut_variants_build_their_fig_2_layers(shortcut, layer, kind):
    model = krv2.ResNet20(unit="original", shortcut=shortcut)
    assert isinstance(model.get_layer(layer), kind)


def test_shortcut_options_reach_the_layers(images):
    gated = krv2.ResNet20(unit="original", shortcut="exclusive_gating", gate_bias=-4.0)
    gate = gated.get_layer("stage2_unit1_gate_conv")
    assert np.all(np.asarray(gate.bias) == -4.0) and gate.strides == (2, 2) and gate.filters == 32
    assert krv2.ResNet20(shortcut="exclusive_gating").get_layer("stage1_unit1_gate_conv").bias.numpy()[0] == -6.0
    assert gated.get_layer("stage1_unit1_gated_sum").exclusive
    assert not krv2.ResNet20(shortcut="shortcut_only_gating").get_layer("stage1_unit1_gated_sum").exclusive
    scaled = krv2.ResNet20(shortcut="constant_scaling", shortcut_scale=0.25, scale_residual=False)
    assert scaled.get_layer("stage1_unit1_shortcut_scale").scale == 0.25
    assert "stage1_unit1_residual_scale" not in [layer.name for layer in scaled.layers]
    both = krv2.ResNet20(shortcut="constant_scaling")
    assert both.get_layer("stage1_unit1_residual_scale").scale == 0.5
    dropped = krv2.ResNet20(shortcut="dropout", dropout_rate=0.3)
    assert dropped.get_layer("stage1_unit1_shortcut_dropout").rate == 0.3
    x = images()  # dropout is active in training only
    np.testing.assert_array_equal(np.asarray(dropped(x)), np.asarray(dropped(x)))


def test_gated_sum_and_constant_scale_compute_the_paper_formulas():
    rng = np.random.default_rng(1)
    h, f = rng.normal(size=(2, 4, 4, 3)).astype("float32"), rng.normal(size=(2, 4, 4, 3)).astype("float32")
    g = rng.uniform(size=(2, 4, 4, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(krv2.GatedSum(True)([h, f, g])), (1 - g) * h + g * f, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(krv2.GatedSum(False)([h, f, g])), (1 - g) * h + f, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(krv2.ConstantScale(0.5)(h)), 0.5 * h, rtol=1e-6)


def test_option_constants_list_every_variant():
    assert krv2.UNITS == (
        "original", "bn_after_addition", "relu_before_addition", "relu_only_preact", "full_preact"
    )
    assert krv2.SHORTCUT_NAMES == (
        "identity", "constant_scaling", "exclusive_gating", "shortcut_only_gating", "conv1x1", "dropout"
    )
    assert [krv2.UNIT_SPECS[u].figure for u in krv2.UNITS] == ["4(a)", "4(b)", "4(c)", "4(d)", "4(e)"]
    assert [krv2.SHORTCUTS[s].figure for s in krv2.SHORTCUT_NAMES] == [
        "2(a)", "2(b)", "2(c)", "2(d)", "2(e)", "2(f)"
    ]
    assert isinstance(krv2.__version__, str) and krv2.__version__.count(".") == 2


@pytest.mark.slow
def test_one_layer_skip_units_of_table3():
    # Paper, Table 3, "ResNet-110 (1-layer skip)": 36 units of one 3x3 conv per stage, 1.7M parameters.
    for unit in krv2.UNITS:
        model = krv2.ResNet(110, block="single", unit=unit)
        convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
        assert len(convs) == 1 + 108 + 2  # stem, one conv a unit, the two projections
        assert 1.65e6 < trainable_count(model) < 1.75e6, (unit, trainable_count(model))
        assert model.get_layer("stage3_unit36_1_conv").kernel.shape == (3, 3, 64, 64)
    assert branch_order(krv2.ResNet(110, block="single"), "stage2_unit2") == ["bn", "relu", "conv", "add"]
    assert branch_order(krv2.ResNet(110, block="single", unit="original"), "stage2_unit2") == [
        "conv", "bn", "add", "relu"]
    assert krv2.ResNet110(block="single").count_params() == krv2.ResNet(110, block="single").count_params()
    with pytest.raises(ValueError, match="single units need 3n\\+2 \\(nearest: 23 or 26\\)"):
        krv2.ResNet(24, block="single")
