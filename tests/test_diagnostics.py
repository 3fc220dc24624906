"""Gradient-flow diagnostic (issue 6, paper Eqn. 5): ||dL/dx_l|| at every unit input."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_resnet_v2 as krv2
from keras_resnet_v2.training import diagnostics


@pytest.mark.parametrize("unit", ["full_preact", "original"])
def test_unit_gradient_norms(unit, images, tmp_path):
    model = krv2.ResNet(20, unit=unit, input_shape=(16, 16, 3))
    x, y = images((4, 16, 16, 3)), np.array([0, 1, 2, 3])
    statistics = [v.numpy() for v in model.non_trainable_variables]
    norms = diagnostics.unit_gradient_norms(model, x, y)
    assert [name for name, _ in norms] == ["input"] + [f"stage{s}_unit{u}" for s in (1, 2, 3) for u in (1, 2, 3)]
    assert all(np.isfinite(v) and v > 0 for _, v in norms)
    for before, after in zip(statistics, model.non_trainable_variables, strict=True):
        np.testing.assert_array_equal(before, after.numpy())  # the probe does not move BN statistics
    # The input's entry is the plain gradient of the same loss with respect to the images.
    images_t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(images_t)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, model(images_t, training=True)))
    assert norms[0][1] == pytest.approx(float(tf.norm(tape.gradient(loss, images_t))), rel=1e-4)
    diagnostics.plot_gradient_norms({unit: norms}, str(tmp_path / "g.png"))
    assert (tmp_path / "g.png").stat().st_size > 5_000


def test_stacked_and_remat_models_are_measured_on_their_per_unit_copy(images):
    with pytest.raises(ValueError, match="pass keras_resnet_v2.to_plain"):
        diagnostics.unit_inputs(krv2.ResNet(20, remat=True))
    plain = krv2.ResNet(20, input_shape=(16, 16, 3))
    stacked = krv2.to_stacked(plain, remat=True)
    x, y = images((4, 16, 16, 3)), np.array([0, 1, 2, 3])
    want, got = diagnostics.unit_gradient_norms(plain, x, y), diagnostics.unit_gradient_norms(stacked, x, y)
    assert [name for name, _ in got] == [name for name, _ in want] and len(got) == 10
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-5)


def test_train_steps_records_each_steps_loss_before_its_update(images, tmp_path):
    model = krv2.ResNet(8, unit="original", input_shape=(16, 16, 3), classes=4)
    x, y = images((8, 16, 16, 3)), np.array([0, 1, 2, 3] * 2)
    dataset = tf.data.Dataset.from_tensors((x, y))
    kernel = model.get_layer("predictions").kernel.numpy()
    # Keras' own loss on that batch in training mode, before any update, equals the first entry.
    expected = float(keras.losses.sparse_categorical_crossentropy(y, model(x, training=True)).numpy().mean())
    losses = diagnostics.train_steps(model, dataset, steps=5)
    assert len(losses) == 5 and all(np.isfinite(losses))
    assert losses[0] == pytest.approx(expected, rel=1e-4)
    assert losses[-1] < losses[0]  # five steps on one batch: the loss goes down
    assert not np.allclose(kernel, model.get_layer("predictions").kernel.numpy())
    diagnostics.plot_training_loss({"original": losses}, str(tmp_path / "loss.png"))
    assert (tmp_path / "loss.png").stat().st_size > 5_000
    with pytest.raises(ValueError, match="steps=0"):
        diagnostics.train_steps(model, dataset, steps=0)


def test_unit_forward_ranges_name_the_first_unit_whose_float16_stream_overflows():
    # Issue 21: under mixed_float16 the residual stream is float16 (largest finite 65,504). One unit's
    # branch made 1e6x larger pushes the stream past it: the next unit's input is the first non-finite
    # one, the units before stay finite and below the limit; the unscaled net is finite throughout.
    keras.utils.set_random_seed(0)
    policy = keras.config.dtype_policy()
    try:
        model = krv2.ResNet(20, input_shape=(8, 8, 3), classes=3, dtype="mixed_float16")
    finally:
        keras.config.set_dtype_policy(policy)
    images = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 3)).astype("float32")
    ranges = diagnostics.unit_forward_ranges(model, images)
    assert [name for name, _, _ in ranges][:3] == ["stage1_unit1", "stage1_unit2", "stage1_unit3"]
    assert ranges[-1][0] == "output" and len(ranges) == 10
    assert diagnostics.first_non_finite(ranges) is None and all(0 < r < 65504 for _, r, _ in ranges)
    assert {dtype for _, _, dtype in ranges[:-1]} == {"float16"}
    kernel = model.get_layer("stage2_unit1_2_conv").kernel
    kernel.assign(kernel * 1e6)
    ranges = diagnostics.unit_forward_ranges(model, images)
    assert diagnostics.first_non_finite(ranges) == "stage2_unit2"
    assert all(0 < r < 65504 for _, r, _ in ranges[:4])  # stage1_unit1..3, stage2_unit1


def _resnet20_8px(**kwargs):
    keras.utils.set_random_seed(0)
    policy = keras.config.dtype_policy()
    try:
        return krv2.ResNet(20, input_shape=(8, 8, 3), classes=3, **kwargs)
    finally:
        keras.config.set_dtype_policy(policy)


def test_a_float32_stream_stays_finite_where_the_float16_stream_overflows():
    # Issue 21: every unit's last conv kernel x 1e4 gives branch outputs up to ~41,000 (inside float16's
    # 65,504) whose sum on the stream reaches ~79,000 at stage2_unit1 (measured on the float32 net).
    # All-float16 stream: Inf there; stream_dtype="float32": finite, and close to the float32 network.
    images = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 3)).astype("float32")
    nets = {"float16": _resnet20_8px(dtype="mixed_float16"),
            "float32 stream": _resnet20_8px(dtype="mixed_float16", stream_dtype="float32"),
            "float32": _resnet20_8px()}
    for model in nets.values():
        for layer in model.layers:
            if layer.name.endswith("_2_conv"):
                layer.kernel.assign(layer.kernel * 1e4)
    stream = nets["float32 stream"]
    assert stream.get_layer("stage2_unit1_add").compute_dtype == "float32"
    assert stream.get_layer("stage2_unit2_preact_bn").compute_dtype == "float32"
    # Under float16 every layer is float32 and each convolution computes in float16 inside (scaled.py).
    assert stream.get_layer("stage2_unit2_1_conv").inner_dtype == "float16"
    assert stream.get_layer("stage2_unit2_1_bn").compute_dtype == "float32"
    ranges = {name: diagnostics.unit_forward_ranges(model, images) for name, model in nets.items()}
    assert max(r for _, r, _ in ranges["float32"]) > 65504  # the stream does leave float16's range
    assert diagnostics.first_non_finite(ranges["float16"]) == "stage2_unit1"
    assert diagnostics.first_non_finite(ranges["float32 stream"]) is None
    # The stream from the stem conv's output on is float32.
    assert [dtype for _, _, dtype in ranges["float32 stream"][:-1]] == ["float32"] * 9
    for (_, got, _), (_, want, _) in zip(ranges["float32 stream"], ranges["float32"], strict=True):
        assert abs(got - want) <= 2e-2 * want  # float16 branches: about 3 significant digits
    from keras_resnet_v2.convert import resnet_arguments

    assert resnet_arguments(stream)["stream_dtype"] == "float32"
    assert resnet_arguments(nets["float16"])["stream_dtype"] == "compute"
    assert resnet_arguments(nets["float32"])["stream_dtype"] is None
    with pytest.raises(ValueError, match="`stream_dtype` must be None .*, 'float32' or 'compute' .* "
                                         "Received: stream_dtype='bf16'"):
        krv2.ResNet20(stream_dtype="bf16")

    # The stacked form: the loop carries x_l in float32 (UnitStack(stream_dtype="float32")), the same
    # numbers as the per-unit layers; with a float16 carry the stack's output is not finite.
    def stack_output(model):
        stacked = krv2.to_stacked(model)
        stack = stacked.get_layer("stage1_unit2_to_unit3")  # its output is stage2_unit1's input
        probe = keras.Model(stacked.inputs, [stack.output, stacked.outputs[0]])
        return stack, [keras.ops.convert_to_numpy(v) for v in probe(images, training=True)]

    stack, (carry, logits) = stack_output(stream)
    assert stack.stream_dtype == "float32" and stack.compute_dtype == "float16"
    assert carry.dtype == np.float32 and np.isfinite(carry).all() and np.abs(carry).max() > 65504
    np.testing.assert_allclose(logits, keras.ops.convert_to_numpy(stream(images, training=True)), rtol=0, atol=1e-3)
    stack16, (carry16, _) = stack_output(nets["float16"])
    assert stack16.stream_dtype is None and carry16.dtype == np.float16 and not np.isfinite(carry16).all()


def test_a_float32_stream_model_trains_saves_and_converts(tmp_path):
    images = np.random.default_rng(1).uniform(0, 1, (8, 8, 8, 3)).astype("float32")
    labels = np.arange(8) % 3
    model = _resnet20_8px(dtype="mixed_float16", stream_dtype="float32")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    history = model.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("stage3_unit3_add").compute_dtype == "float32"
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(images)), keras.ops.convert_to_numpy(model(images)))
    remat = krv2.to_plain(model, remat=True)  # the same network in rematerialized segments
    np.testing.assert_allclose(keras.ops.convert_to_numpy(remat(images)), keras.ops.convert_to_numpy(model(images)),
                               rtol=0, atol=1e-6)
