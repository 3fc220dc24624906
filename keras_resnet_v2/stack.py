"""`UnitStack`: a run of identical residual units as ONE layer that loops over stacked weights.

In a stage, every unit after the first keeps the width and the resolution, so units 2..n are the
same function with different weights. `ResNet(..., scan=True)` builds each such run as one
`UnitStack`, which holds every weight of the run on a leading axis of length `units` and runs the
steps of one unit (`variants.unit_plan`, the same plan the functional builder turns into layers, and
the shortcut's own `combine`) in a loop that is traced and compiled once:
`jax.lax.scan` on JAX, a `tf.while_loop` on TensorFlow (with TensorFlow's fused BatchNorm kernel),
a Python loop on PyTorch. A 1000-layer network then traces about 12 units instead of 333.

Same numbers as the per-unit layers (tests/test_stack.py): the same convolution, the same
BatchNorm as Keras' (statistics in float32, biased batch variance, the same moving averages,
assigned once per unit after the loop), the same shortcut arithmetic (one `variants.Shortcut` entry
serves both), and the same initial distribution (each unit's kernel drawn with `variants.he_stddev`
of its own fan-out, as `variants.kernel_initializer` draws a Conv2D's).
`keras_resnet_v2.to_plain` / `to_stacked` convert between the two forms with the same weights.
"""

from __future__ import annotations

from typing import Any, Optional

import keras
import numpy as np
from keras import ops

from keras_resnet_v2.batchnorm import moving_average_updates
from keras_resnet_v2.layers import PACKAGE
from keras_resnet_v2.names import BLOCKS, DATA_FORMATS, UNITS, check_choice
from keras_resnet_v2.scaled import rescales, scaled_conv
from keras_resnet_v2.variants import SHORTCUTS, he_stddev, resolve_shortcut_options, unit_plan


def _normal(rng: np.random.Generator, stddev: float):
    return lambda shape, dtype=None: rng.normal(0.0, stddev, shape).astype(dtype or "float32")


def _constant(value: float):
    return lambda shape, dtype=None: np.full(shape, value, dtype or "float32")


@keras.saving.register_keras_serializable(package=PACKAGE)
class UnitStack(keras.layers.Layer):
    """`units` consecutive stride-1 residual units of one width, computed as one loop.

    Args:
        units: how many units (>= 1).
        filters: the unit's width (a bottleneck's inner width; its output is 4x).
        block: "single", "basic" or "bottleneck".
        unit: a Fig. 4 unit variant (`keras_resnet_v2.UNITS`).
        shortcut: a Fig. 2 shortcut variant; `shortcut_options` its options.
        unroll: loop iterations unrolled by `jax.lax.scan` (JAX only; more compiles longer, runs
            faster: benchmarks/RESULTS.md).
        remat: recompute each unit's activations in the backward pass, keeping only the unit
            inputs (not with shortcut="dropout").
        stream_dtype: None (the policy's compute dtype) or "float32": the loop's carry x_l, the
            additions, gates and scaling, and the BN-ReLU that reads x_l in float32, the branch
            convolutions in the policy's (as `ResNet(stream_dtype=...)`'s per-unit layers). Under
            float16 the convolutions read operands rescaled by powers of two (`scaled_conv`) and
            the branch's BN-ReLU is float32 too.

    Weights are named `{key}_{field}` after the per-unit layers they stack: `1_conv_kernel` holds
    `stage1_unit{u}_1_conv/kernel` of every unit of the run, `preact_bn_gamma` their
    `stage1_unit{u}_preact_bn/gamma`, and so on.

    Example:
        >>> stack = UnitStack(units=4, filters=16)
        >>> tuple(stack(keras.ops.ones((2, 8, 8, 16))).shape)
        (2, 8, 8, 16)
        >>> tuple(stack.get_weight("1_conv_kernel").shape)
        (4, 3, 3, 16, 16)
    """

    def __init__(self, units: int, filters: int, block: str = "basic", unit: str = "full_preact",
                 shortcut: str = "identity", shortcut_options: Optional[dict] = None, unroll: int = 1,
                 remat: bool = False, momentum: float = 0.9, epsilon: float = 1e-5,
                 stream_dtype: Optional[str] = None, data_format: str = "channels_last", **kwargs: Any):
        kwargs.setdefault("autocast", False)  # BatchNorm weights stay float32 (as Keras' BN)
        super().__init__(**kwargs)
        for arg, value in (("units", units), ("filters", filters), ("unroll", unroll)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{arg}` must be a positive integer. Received: {arg}={value!r}")
        check_choice("block", block, BLOCKS)
        check_choice("unit", unit, UNITS)
        check_choice("shortcut", shortcut, tuple(SHORTCUTS))
        if stream_dtype not in (None, "float32"):
            raise ValueError(f"`stream_dtype` must be None or 'float32'. Received: stream_dtype={stream_dtype!r}")
        if remat and SHORTCUTS[shortcut].noise:
            raise ValueError("`remat=True` would draw new random numbers when recomputing: not with "
                             f"shortcut={shortcut!r}. Received: remat={remat!r}")
        self.units, self.filters, self.block = units, filters, block
        self.unit, self.shortcut, self.unroll, self.remat = unit, shortcut, unroll, bool(remat)
        self.shortcut_options = resolve_shortcut_options(shortcut, dict(shortcut_options or {}))
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.stream_dtype = stream_dtype
        check_choice("data_format", data_format, DATA_FORMATS)
        self.data_format = data_format
        self._channels = 1 if data_format == "channels_first" else -1  # the channel axis of a batch
        self.plan = unit_plan(unit, shortcut, block, filters)  # the steps of one unit (variants.py)
        if self.plan.shortcut.noise:
            self.seed_generator = keras.random.SeedGenerator(name="dropout_seed")

    # ------------------------------------------------------------------ weights

    def build(self, input_shape):
        if input_shape[self._channels] != self.plan.out_width:
            raise ValueError(f"UnitStack of {self.block} units of {self.filters} filters takes "
                             f"{self.plan.out_width} channels. Received: input_shape={input_shape}")
        # Initial values are drawn on the host with NumPy (seeded by keras.utils.set_random_seed):
        # every stacked shape is new to the backend, and JAX compiles a kernel for each shape it draws
        # or fills (a stacked ResNet-1001's cold build under JAX on a 2-core CPU: 20 s -> 8 s).
        rng = np.random.default_rng(np.random.randint(2**31))
        n = self.units
        for conv in self.plan.kernels():
            k, cin, cout = conv.kernel, conv.cin, conv.cout  # each unit's kernel with its own fan-out
            self.add_weight(shape=(n, k, k, cin, cout), initializer=_normal(rng, he_stddev(k, cout)),
                            name=f"{conv.key}_kernel")
            if conv is self.plan.gate:  # b_g, initialised to gate_bias (Fig. 2(c), (d))
                self.add_weight(shape=(n, cout), initializer=_constant(self.shortcut_options["gate_bias"]),
                                name=f"{conv.key}_bias")
        for key, width in self.plan.batchnorms():
            for field, value, trainable in (("gamma", 1.0, True), ("beta", 0.0, True),
                                            ("moving_mean", 0.0, False), ("moving_variance", 1.0, False)):
                self.add_weight(shape=(n, width), initializer=_constant(value), trainable=trainable,
                                name=f"{key}_{field}", autocast=False)

    def get_weight(self, name: str):
        """The stacked variable `name` (e.g. "1_conv_kernel", "preact_bn_gamma")."""
        for variable in self.weights:
            if variable.name == name:
                return variable
        raise ValueError(f"UnitStack {self.name!r} has no weight {name!r}. "
                         f"Its weights: {', '.join(v.name for v in self.weights)}")

    # ------------------------------------------------------------------ one unit

    @property
    def _stream(self) -> str:
        """The dtype of x_l: float32 with stream_dtype="float32", else the policy's compute dtype."""
        return self.stream_dtype or self.compute_dtype

    @property
    def _scaled(self) -> bool:
        """A float32 stream under float16: the branch convolutions read rescaled operands (scaled.py)."""
        return rescales(self.stream_dtype, self.compute_dtype)

    def _unit(self, x, w, noise, training: bool):
        """x_{l+1} = f(h(x_l) + F(x_l)) for one unit's weights `w`: the steps of `variants.unit_plan`, read
        as `builder.residual_unit` reads them, each a function of the stacked weights (`OneUnit`)."""
        plan, unit = self.plan, OneUnit(self, w, training)
        activated = unit.apply(x, plan.preact, unit.stream)  # reads x_l: the stream's dtype
        residual = activated
        for conv in plan.convs:
            residual = unit.step(residual, conv)
        h = unit.step(activated, plan.projection) if plan.projection else x
        gate = unit.gate(activated, plan.gate) if plan.gate else None
        h, residual = ops.cast(h, unit.stream), ops.cast(residual, unit.stream)  # the addition in the stream's dtype
        y = plan.shortcut.combine(h, residual, gate, noise, self.shortcut_options)
        return unit.apply(y, plan.after_add, unit.stream), unit.stats

    # ------------------------------------------------------------------ the loop

    def call(self, inputs, training=None):
        training = bool(training) and self.trainable  # frozen (trainable=False): inference mode, as Keras' BatchNorm
        inputs = ops.cast(inputs, self._stream)
        weights = {v.name: v.value for v in self.weights}
        xs = {"weights": weights}
        if self.plan.shortcut.noise and training:  # one uniform draw per unit and per step
            shape = (self.units,) + tuple(ops.shape(inputs))
            xs["noise"] = keras.random.uniform(shape, seed=self.seed_generator, dtype=self.compute_dtype)

        def step(x, per_unit):
            return self._unit(x, per_unit["weights"], per_unit.get("noise"), training)

        if training:
            step = _saving(step, self.remat)
        y, stats = _loop(step, inputs, xs, self.units, self.unroll)
        # (units, width) each: assigned once per unit, averaged over the replicas of a strategy
        moving_average_updates([(self.get_weight(f"{key}_{field}"), batch, self.momentum) for key, pair in stats.items()
                                for field, batch in zip(("moving_mean", "moving_variance"), pair, strict=True)])
        return y

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "units": self.units, "filters": self.filters, "block": self.block,
                "unit": self.unit, "shortcut": self.shortcut, "shortcut_options": dict(self.shortcut_options),
                "unroll": self.unroll, "remat": self.remat, "momentum": self.momentum, "epsilon": self.epsilon,
                "stream_dtype": self.stream_dtype, "data_format": self.data_format}


class OneUnit:
    """The steps of one unit of a `UnitStack` (conv, bn, relu, step, gate: the plain builder's names) as
    functions of that unit's weights `w` (`{key}_{field}`, one row of each stacked weight), not as layers.

    Each computes what the per-unit layer of the same key computes: `conv` is a bias-free stride-1 "same"
    `Conv2D`, `bn` Keras' `BatchNormalization` (statistics in float32, the batch's in training, recorded
    in `stats` for the moving averages the stack assigns after its loop; TensorFlow's fused kernel where
    it applies), `gate` the gating shortcuts' sigmoid 1x1 convolution with its bias (Fig. 2(c), (d)).
    """

    def __init__(self, stack: UnitStack, w: dict, training: bool):
        self.stack, self.w, self.training = stack, w, training
        self.stats: dict = {}  # bn key -> (batch mean, batch variance), in training
        self.stream = stack._stream  # the dtype of x_l, of the additions and of the BN-ReLU that reads x_l
        self.inner = self.stream if stack._scaled else None  # the branch's BN-ReLU: float32 between scaled convs

    def conv(self, x, key: str, dtype: Optional[str] = None):
        stack = self.stack
        dtype, kernel, scale = dtype or stack.compute_dtype, self.w[f"{key}_kernel"], None
        if stack._scaled and dtype == "float16":
            y, scale = scaled_conv(x, kernel, dtype, strides=1, padding="same", data_format=stack.data_format)
        else:
            y = ops.conv(ops.cast(x, dtype), ops.cast(kernel, dtype), strides=1, padding="same",
                         data_format=stack.data_format)
        if keras.backend.backend() == "jax":  # what the loop keeps for the backward pass (`_saving`)
            from jax.ad_checkpoint import checkpoint_name

            y = checkpoint_name(y, "unit_conv")  # float16 where scaled: rescaled in float32 where read
        return y if scale is None else ops.cast(y, "float32") * scale

    def bn(self, x, key: str, dtype: Optional[str] = None):
        """BatchNorm; its output in `dtype` (default: the policy's compute dtype)."""
        stack, w = self.stack, self.w
        gamma, beta = w[f"{key}_gamma"], w[f"{key}_beta"]
        if self.training and keras.backend.backend() == "tensorflow" and stack._channels == -1:
            from keras_resnet_v2._kernels import fused_batchnorm_training  # an NHWC kernel

            y, mean, variance = fused_batchnorm_training(x, gamma, beta, stack.epsilon)
            self.stats[key] = (mean, variance)
            return ops.cast(y, dtype or stack.compute_dtype)
        x32 = ops.cast(x, "float32")  # as Keras' BatchNormalization: statistics in float32
        if self.training:
            mean, variance = ops.moments(x32, axes=[0, 1, 2] if stack._channels == -1 else [0, 2, 3])
            self.stats[key] = (mean, variance)
        else:
            mean, variance = w[f"{key}_moving_mean"], w[f"{key}_moving_variance"]
        y = ops.batch_normalization(x32, mean, variance, axis=stack._channels, offset=beta, scale=gamma,
                                    epsilon=stack.epsilon)
        return ops.cast(y, dtype or stack.compute_dtype)

    def relu(self, x, key: str, dtype: Optional[str] = None):
        return ops.relu(x)

    def apply(self, x, todo, dtype: Optional[str] = None):
        """Runs ("bn" | "relu", key) steps in order; BatchNorm outputs `dtype`."""
        for op, key in todo:
            x = getattr(self, op)(x, key, dtype)
        return x

    def step(self, x, conv):
        """One convolution of the unit's plan and the BN/ReLU after it."""
        return self.apply(self.conv(x, conv.key), conv.after, self.inner)

    def gate(self, x, conv):
        """g(x) = sigmoid(W_g x + b_g) in the stream's dtype."""
        bias = ops.cast(self.w[f"{conv.key}_bias"], self.stream)
        bias = bias if self.stack._channels == -1 else ops.reshape(bias, (-1, 1, 1))  # per channel
        return ops.sigmoid(self.conv(x, conv.key, self.stream) + bias)


def _saving(step, remat: bool):
    """What one loop iteration keeps for the backward pass. remat: only its input (the carry).

    Otherwise, on JAX, only the convolution outputs: the loop would keep every intermediate of a
    unit (about 3x the plain network's activation memory, measured), and BatchNorm and ReLU are
    cheap to recompute from the conv outputs (benchmarks/RESULTS.md, "Deep networks").
    """
    if keras.backend.backend() == "jax":
        import jax

        policies = jax.checkpoint_policies
        return jax.checkpoint(step, policy=policies.nothing_saveable if remat
                              else policies.save_only_these_names("unit_conv"))
    return keras.remat(step) if remat else step


def _loop(step, x, xs, length: int, unroll: int):
    """`carry, ys = scan(step, x, xs)` on the active backend; `xs` leaves have a leading `length`."""
    backend = keras.backend.backend()
    if backend == "jax":
        return ops.scan(step, x, xs, unroll=min(unroll, length))
    if backend == "tensorflow":
        from keras_resnet_v2._kernels import while_scan

        return while_scan(step, x, xs, length)
    ys = []
    for i in range(length):
        x, y = step(x, keras.tree.map_structure(lambda a, i=i: a[i], xs))
        ys.append(y)
    return x, keras.tree.map_structure(lambda *a: ops.stack(a), *ys)
