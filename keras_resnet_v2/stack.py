"""`UnitStack`: a run of identical residual units as ONE layer that loops over stacked weights.

In a stage, every unit after the first keeps the width and the resolution, so units 2..n are the
same function with different weights. `ResNet(..., scan=True)` builds each such run as one
`UnitStack`, which holds every weight of the run on a leading axis of length `units` and applies
one unit's equations (variants.py, Fig. 4 x Fig. 2) in a loop that is traced and compiled once:
`jax.lax.scan` on JAX, a `tf.while_loop` on TensorFlow (with TensorFlow's fused BatchNorm kernel),
a Python loop on PyTorch. A 1000-layer network then traces about 12 units instead of 333.

Same numbers as the per-unit layers (tests/test_stack.py): the same convolution, the same
BatchNorm as Keras' (statistics in float32, biased batch variance, the same moving averages,
assigned once per unit after the loop), the same shortcut arithmetic, and the same initial
distribution (each unit's kernel drawn with its own fan-out, as `variants.kernel_initializer`).
`keras_resnet_v2.to_plain` / `to_stacked` convert between the two forms with the same weights.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import keras
import numpy as np
from keras import ops

from keras_resnet_v2.layers import PACKAGE, moving_average_updates
from keras_resnet_v2.names import BLOCKS, SHORTCUT_NAMES, UNIT_NAME, UNITS, check_choice
from keras_resnet_v2.scaled import rescales, scaled_conv
from keras_resnet_v2.variants import SHORTCUTS, UNIT_SPECS, resolve_shortcut_options

BN_FIELDS = ("gamma", "beta", "moving_mean", "moving_variance")


def branch_layout(block: str, filters: int) -> list[tuple[int, int]]:
    """(width, kernel) of each convolution of F: one 3x3, two 3x3, or 1x1-3x3-1x1 (x4 out)."""
    if block == "single":  # Table 3's 1-layer skip
        return [(filters, 3)]
    if block == "basic":
        return [(filters, 3), (filters, 3)]
    return [(filters, 1), (filters, 3), (4 * filters, 1)]


def _bn_ops(ops_: tuple[str, ...], key: str) -> list[tuple[str, str]]:
    return [(op, f"{key}_{op}") for op in ops_]


class _UnitPlan:
    """One unit's operations in order, keyed like the per-unit layers (`{unit}_{key}`)."""

    def __init__(self, unit: str, shortcut: str, block: str, filters: int):
        spec = UNIT_SPECS[unit]
        layout = branch_layout(block, filters)
        self.out_width = layout[-1][0]
        self.preact = _bn_ops(spec.preact, "preact")
        self.convs = []  # (conv key, kernel, in width, out width, the ops after it)
        width = self.out_width
        for i, (out, kernel) in enumerate(layout, start=1):
            after = ("bn", "relu") if i < len(layout) else spec.post
            self.convs.append((f"{i}_conv", kernel, width, out, _bn_ops(after, str(i))))
            width = out
        self.project = SHORTCUTS[shortcut].always_project  # Fig. 2(e): 1x1 conv on every unit
        self.project_bn = self.project and spec.projection_bn
        self.gate = shortcut in ("exclusive_gating", "shortcut_only_gating")
        self.after_add = _bn_ops(spec.after_add, "out")

    def batchnorms(self) -> list[tuple[str, int]]:
        """(key, width) of every BatchNorm of the unit, in order."""
        keys = [(k, self.out_width) for op, k in self.preact if op == "bn"]
        for _, _, _, out, after in self.convs:
            keys += [(k, out) for op, k in after if op == "bn"]
        if self.project_bn:
            keys.append(("shortcut_bn", self.out_width))
        return keys + [(k, self.out_width) for op, k in self.after_add if op == "bn"]

    def kernels(self) -> list[tuple[str, int, int, int]]:
        """(key, kernel, in width, out width) of every convolution of the unit."""
        found = [(key, k, cin, cout) for key, k, cin, cout, _ in self.convs]
        if self.project:
            found.append(("shortcut_conv", 1, self.out_width, self.out_width))
        if self.gate:
            found.append(("gate_conv", 1, self.out_width, self.out_width))
        return found


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
        >>> stack(keras.ops.ones((2, 8, 8, 16))).shape
        (2, 8, 8, 16)
        >>> stack.get_weight("1_conv_kernel").shape
        (4, 3, 3, 16, 16)
    """

    def __init__(self, units: int, filters: int, block: str = "basic", unit: str = "full_preact",
                 shortcut: str = "identity", shortcut_options: Optional[dict] = None, unroll: int = 1,
                 remat: bool = False, momentum: float = 0.9, epsilon: float = 1e-5,
                 stream_dtype: Optional[str] = None, **kwargs: Any):
        kwargs.setdefault("autocast", False)  # BatchNorm weights stay float32 (as Keras' BN)
        super().__init__(**kwargs)
        for arg, value in (("units", units), ("filters", filters), ("unroll", unroll)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{arg}` must be a positive integer. Received: {arg}={value!r}")
        check_choice("block", block, BLOCKS)
        check_choice("unit", unit, UNITS)
        check_choice("shortcut", shortcut, SHORTCUT_NAMES)
        if stream_dtype not in (None, "float32"):
            raise ValueError(f"`stream_dtype` must be None or 'float32'. Received: stream_dtype={stream_dtype!r}")
        if remat and shortcut == "dropout":
            raise ValueError("`remat=True` would draw new dropout masks when recomputing: not with "
                             f"shortcut='dropout'. Received: remat={remat!r}")
        self.units, self.filters, self.block = units, filters, block
        self.unit, self.shortcut, self.unroll, self.remat = unit, shortcut, unroll, bool(remat)
        self.shortcut_options = resolve_shortcut_options(shortcut, dict(shortcut_options or {}))
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.stream_dtype = stream_dtype
        self.plan = _UnitPlan(unit, shortcut, block, filters)
        if shortcut == "dropout":
            self.seed_generator = keras.random.SeedGenerator(name="dropout_seed")

    # ------------------------------------------------------------------ weights

    def build(self, input_shape):
        if input_shape[-1] != self.plan.out_width:
            raise ValueError(f"UnitStack of {self.block} units of {self.filters} filters takes "
                             f"{self.plan.out_width} channels. Received: input_shape={input_shape}")
        # Initial values are drawn on the host with NumPy (seeded by keras.utils.set_random_seed):
        # every stacked shape is new to the backend, and JAX compiles a kernel for each shape it draws
        # or fills (a stacked ResNet-1001's cold build under JAX on a 2-core CPU: 20 s -> 8 s).
        rng = np.random.default_rng(np.random.randint(2**31))
        n = self.units
        for key, k, cin, cout in self.plan.kernels():
            # He normal over the unit conv's own fan-out k*k*cout (FACTS.md "Init"), drawn per element.
            self.add_weight(shape=(n, k, k, cin, cout), initializer=_normal(rng, math.sqrt(2.0 / (k * k * cout))),
                            name=f"{key}_kernel")
            if key == "gate_conv":
                self.add_weight(shape=(n, cout), initializer=_constant(self.shortcut_options["gate_bias"]),
                                name=f"{key}_bias")
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

    def _batchnorm(self, x, w, key: str, training: bool, stats: dict, dtype: Optional[str] = None):
        gamma, beta = w[f"{key}_gamma"], w[f"{key}_beta"]
        if training and keras.backend.backend() == "tensorflow":
            from keras_resnet_v2._kernels import fused_batchnorm_training

            y, mean, variance = fused_batchnorm_training(x, gamma, beta, self.epsilon)
            stats[key] = (mean, variance)
            return ops.cast(y, dtype or self.compute_dtype)
        x32 = ops.cast(x, "float32")  # as Keras' BatchNormalization: statistics in float32
        if training:
            mean, variance = ops.moments(x32, axes=[0, 1, 2])
            stats[key] = (mean, variance)
        else:
            mean, variance = w[f"{key}_moving_mean"], w[f"{key}_moving_variance"]
        y = ops.batch_normalization(x32, mean, variance, axis=-1, offset=beta, scale=gamma, epsilon=self.epsilon)
        return ops.cast(y, dtype or self.compute_dtype)

    def _apply(self, x, todo, w, training, stats, dtype: Optional[str] = None):
        """BN / ReLU in order; BatchNorm outputs `dtype` (default: the policy's compute dtype)."""
        for op, key in todo:
            x = self._batchnorm(x, w, key, training, stats, dtype) if op == "bn" else ops.relu(x)
        return x

    @property
    def _scaled(self) -> bool:
        """A float32 stream under float16: the branch convolutions read rescaled operands (scaled.py)."""
        return rescales(self.stream_dtype, self.compute_dtype)

    def _conv(self, x, w, key: str, dtype: Optional[str] = None):
        dtype, kernel, scale = dtype or self.compute_dtype, w[f"{key}_kernel"], None
        if self._scaled and dtype == "float16":
            y, scale = scaled_conv(x, kernel, dtype, strides=1, padding="same")
        else:
            y = ops.conv(ops.cast(x, dtype), ops.cast(kernel, dtype), strides=1, padding="same")
        if keras.backend.backend() == "jax":  # what the loop keeps for the backward pass (`_saving`)
            from jax.ad_checkpoint import checkpoint_name

            y = checkpoint_name(y, "unit_conv")  # float16 where scaled: rescaled in float32 where read
        return y if scale is None else ops.cast(y, "float32") * scale

    def _unit(self, x, w, noise, training: bool):
        """x_{l+1} = f(h(x_l) + F(x_l)) for one unit's weights `w` (variants.py, Eqn. 1-2)."""
        plan, opts, stats, stream = self.plan, self.shortcut_options, {}, self._stream
        inner = stream if self._scaled else None  # the branch's BN-ReLU: float32 between scaled convolutions
        activated = self._apply(x, plan.preact, w, training, stats, stream)  # reads x_l: the stream's dtype
        residual = activated
        for key, _, _, _, after in plan.convs:
            residual = self._apply(self._conv(residual, w, key), after, w, training, stats, inner)
        h = x
        if plan.project:
            h = self._conv(activated, w, "shortcut_conv")
            if plan.project_bn:
                h = self._batchnorm(h, w, "shortcut_bn", training, stats, inner)
        h, residual = ops.cast(h, stream), ops.cast(residual, stream)  # the addition in the stream's dtype
        if self.shortcut == "constant_scaling":
            scale = opts["shortcut_scale"]
            h = h * ops.cast(scale, h.dtype)
            if opts["scale_residual"]:
                residual = residual * ops.cast(1.0 - scale, residual.dtype)
            y = h + residual
        elif plan.gate:
            gate = ops.sigmoid(self._conv(activated, w, "gate_conv", stream)
                               + ops.cast(w["gate_conv_bias"], stream))
            carried = (1 - gate) * h
            y = carried + (gate * residual if self.shortcut == "exclusive_gating" else residual)
        elif noise is not None:  # Fig. 2(f): dropout on the shortcut, a fresh mask per unit
            rate = opts["dropout_rate"]
            h = ops.where(noise >= rate, h / ops.cast(1.0 - rate, h.dtype), ops.zeros_like(h))
            y = h + residual
        else:
            y = h + residual
        return self._apply(y, plan.after_add, w, training, stats, stream), stats

    # ------------------------------------------------------------------ the loop

    def call(self, inputs, training=None):
        training = bool(training)
        inputs = ops.cast(inputs, self._stream)
        weights = {v.name: v.value for v in self.weights}
        xs = {"weights": weights}
        if self.shortcut == "dropout" and training:  # one uniform draw per unit and per step
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
                "stream_dtype": self.stream_dtype}


@keras.saving.register_keras_serializable(package=PACKAGE)
class StackedModel(keras.Model):
    """A functional model with `UnitStack`s (`ResNet(scan=True)`): a unit's layers are rows of a stack.

    The same `keras.Model` in every other respect. `get_layer` of a per-unit layer that lives inside a
    stack (`stage1_unit5_1_conv`) says which stack holds it, its row, and how to get per-unit layers,
    where Keras would list every layer name.

    Example:
        >>> model = keras_resnet_v2.ResNet(20, scan=True)
        >>> model.get_layer("stage1_unit2_to_unit3").units
        2
        >>> model.get_layer("stage1_unit3_1_conv")
        Traceback (most recent call last):
        ValueError: No layer 'stage1_unit3_1_conv': its unit is row 1 of the UnitStack 'stage1_unit2_to_unit3', ...
    """

    def get_layer(self, name: Optional[str] = None, index: Optional[int] = None) -> keras.layers.Layer:
        try:
            return super().get_layer(name=name, index=index)
        except ValueError:
            held = _stack_row(self, name) if index is None and isinstance(name, str) else None
            if held is None:
                raise
        stack, row = held
        raise ValueError(
            f"No layer {name!r}: its unit is row {row} of the UnitStack {stack.name!r}, whose weights hold "
            f"one row per unit (model.get_layer({stack.name!r}).get_weight('1_conv_kernel')[{row}]). "
            "keras_resnet_v2.to_plain(model) gives the same network with one layer per unit, "
            "as does building it with scan=False."
        ) from None


def functional_like(model: keras.Model, inputs, outputs, name: Optional[str]) -> keras.Model:
    """A functional model `inputs` -> `outputs` of `model`'s kind (a `StackedModel` stays one) and dtype
    policy (which `compile` reads to add loss scaling), for a network rewired to new inputs."""
    view = (StackedModel if isinstance(model, StackedModel) else keras.Model)(inputs, outputs, name=name)
    view.dtype_policy = model.dtype_policy
    return view


def _stack_row(model: keras.Model, name: str) -> Optional[tuple[UnitStack, int]]:
    """The `UnitStack` of `model` holding the unit a per-unit layer name (`stage1_unit5_add`) names, and its row."""
    unit = UNIT_NAME.match(name)
    for layer in model.layers if unit and not unit.group(3) else ():
        held = UNIT_NAME.match(layer.name) if isinstance(layer, UnitStack) else None
        if held and held.group(1) == unit.group(1) and int(held.group(2)) <= int(unit.group(2)) <= int(held.group(3)):
            return layer, int(unit.group(2)) - int(held.group(2))
    return None


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
