"""The small layers the networks need: the shortcut variants' (Fig. 2 (b)-(d)), `Standardize`,
`EdgePadding2D`, `Rematerialized` and a `Conv2D` whose bias TensorFlow adds right in channels_first.

Both are registered with Keras, so a model that uses them saves to `.keras` and
loads back with `keras.models.load_model(path, safe_mode=True)`: no `Lambda`.
They use `keras.ops` only, so they run under every Keras backend.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_resnet_v2.batchnorm import moving_average_updates
from keras_resnet_v2.names import DATA_FORMATS, check_choice

PACKAGE = "keras_resnet_v2"


def gated_sum(shortcut, residual, gate, exclusive: bool):
    """`(1 - g) * h + g * F` (exclusive gating, Fig. 2(c)) or `(1 - g) * h + F` (shortcut-only gating, 2(d))."""
    carried = (1 - gate) * shortcut
    return carried + (gate * residual if exclusive else residual)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConstantScale(keras.layers.Layer):
    """Multiplies its input by a fixed number: `lambda * x` (paper Sec. 3.1, Fig. 2(b)).

    Example:
        >>> layer = ConstantScale(0.5)
        >>> float(layer(keras.ops.ones((1, 1)))[0, 0])
        0.5
    """

    def __init__(self, scale: float, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, inputs):
        return inputs * ops.cast(self.scale, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


@keras.saving.register_keras_serializable(package=PACKAGE)
class GatedSum(keras.layers.Layer):
    """Combines shortcut `h`, residual `F` and gate `g` (paper Sec. 3.1, Fig. 2(c), 2(d)).

    Called on `[h, F, g]`:
    - `exclusive=True` (exclusive gating):   `(1 - g) * h + g * F`
    - `exclusive=False` (shortcut-only gating): `(1 - g) * h + F`

    Example:
        >>> h, f, g = (keras.ops.full((1, 1), v) for v in (2.0, 4.0, 0.25))
        >>> float(GatedSum(exclusive=True)([h, f, g])[0, 0])
        2.5
    """

    def __init__(self, exclusive: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.exclusive = bool(exclusive)

    def call(self, inputs):
        return gated_sum(*inputs, exclusive=self.exclusive)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "exclusive": self.exclusive}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` whose bias lands on the channel axis under every backend: the gate convolution
    of a channels_first network (Fig. 2(c), (d)).

    Keras 3.15's TensorFlow `ops.add(x, b)` turns a bias-shaped `b` into `tf.nn.bias_add` and takes NHWC
    whenever the last dimension of `x` equals the bias length, so a channels_first output whose width
    equals its channel count (16 channels of 16x16) got its bias added along the width
    (keras/src/backend/tensorflow/numpy.py, `add`); with the operands the other way round, Keras
    broadcasts. Named `Conv2D` (registered as `keras_resnet_v2>Conv2D`) because a `.weights.h5` file keys
    each layer by its class name: a channels_first network's file stays that of its channels_last twin.

    Example:
        >>> layer = Conv2D(16, 1, data_format="channels_first")
        >>> tuple(layer(keras.ops.ones((1, 16, 16, 16))).shape)
        (1, 16, 16, 16)
    """

    def call(self, inputs):
        outputs = self.convolution_op(inputs, self.kernel)
        if self.use_bias:
            shape = [1] * (self.rank + 2)
            shape[1 if self.data_format == "channels_first" else -1] = self.filters
            outputs = ops.add(ops.reshape(self.bias, shape), outputs)
        return outputs if self.activation is None else self.activation(outputs)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Standardize(keras.layers.Layer):
    """`(x - mean) / sqrt(variance)` with the statistics stored as non-trainable weights.

    The input normalization that training puts in front of a network (the paper's per-pixel
    mean subtraction: `mean` of shape [H, W, 3], variance 1; or per-channel standardization:
    shape [3]), so that a saved model takes raw 0..255 pixels. Unlike Keras' `Normalization`,
    the statistics are variables: they live in the weights file, and exporters (tf2onnx)
    freeze them like any other weight. Computes in float32. The config holds only their
    `shape`; give `mean` and `variance`, or `shape` and load weights.

    Example:
        >>> layer = Standardize(mean=[125.3, 123.0, 113.9], variance=[63.0**2, 62.1**2, 66.7**2])
        >>> round(float(layer(keras.ops.full((1, 1, 1, 3), 188.3))[0, 0, 0, 0]), 4)
        1.0
    """

    def __init__(self, mean=None, variance=None, shape=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mean is None or variance is None:
            if shape is None or mean is not None or variance is not None:
                raise ValueError("Give both `mean` and `variance`, or `shape` alone. Received: "
                                 f"mean={mean is not None}, variance={variance is not None}, shape={shape!r}")
            mean, variance = np.zeros(shape, "float32"), np.ones(shape, "float32")
        mean, variance = np.asarray(mean, "float32"), np.asarray(variance, "float32")
        if mean.shape != variance.shape:
            raise ValueError(f"`mean` and `variance` must have the same shape. Received: shapes "
                             f"{mean.shape} and {variance.shape}")
        if not (variance > 0).all():
            raise ValueError("`variance` must be positive everywhere. Received: a value <= 0")
        self.shape = tuple(int(d) for d in mean.shape)
        self.mean = self.add_weight(shape=self.shape, initializer=keras.initializers.Constant(mean),
                                    trainable=False, name="mean")
        self.variance = self.add_weight(shape=self.shape, initializer=keras.initializers.Constant(variance),
                                        trainable=False, name="variance")

    def call(self, inputs):
        return (ops.cast(inputs, "float32") - self.mean) * ops.rsqrt(self.variance)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "shape": list(self.shape)}


@keras.saving.register_keras_serializable(package=PACKAGE)
class EdgePadding2D(keras.layers.Layer):
    """Pads height and width by `pad` on every side, repeating the border pixels.

    In front of a max pooling with padding="valid", this is the pooling of the authors' Torch code
    (`SpatialMaxPooling(3, 3, 2, 2, 1, 1)`, timm's `MaxPool2d(3, 2, padding=1)`), which pads with
    -inf: a repeated border pixel is already in its window, so it never changes a maximum, and no
    infinity enters the graph (or an exported ONNX file).

    Example:
        >>> x = keras.ops.reshape(keras.ops.arange(4.0), (1, 2, 2, 1))
        >>> keras.ops.convert_to_numpy(EdgePadding2D(1)(x))[0, :, :, 0].tolist()[0]
        [0.0, 0.0, 1.0, 1.0]
    """

    def __init__(self, pad: int = 1, data_format: str = "channels_last", **kwargs):
        super().__init__(**kwargs)
        check_choice("data_format", data_format, DATA_FORMATS)
        self.pad, self.data_format = int(pad), data_format

    def call(self, inputs):
        x, p = inputs, self.pad
        if self.data_format == "channels_first":  # [N, C, H, W]
            x = ops.concatenate([x[:, :, :1]] * p + [x] + [x[:, :, -1:]] * p, axis=2)  # height: rows
            return ops.concatenate([x[:, :, :, :1]] * p + [x] + [x[:, :, :, -1:]] * p, axis=3)  # width
        x = ops.concatenate([x[:, :1]] * p + [x] + [x[:, -1:]] * p, axis=1)  # height: rows
        return ops.concatenate([x[:, :, :1]] * p + [x] + [x[:, :, -1:]] * p, axis=2)  # width: columns

    def compute_output_shape(self, input_shape):
        grow = lambda d: None if d is None else d + 2 * self.pad  # noqa: E731
        shape = list(input_shape)
        for axis in ((2, 3) if self.data_format == "channels_first" else (1, 2)):
            shape[axis] = grow(shape[axis])
        return tuple(shape)

    def get_config(self):
        return {**super().get_config(), "pad": self.pad, "data_format": self.data_format}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Rematerialized(keras.layers.Layer):
    """Runs a block (a functional sub-model: consecutive residual units) with rematerialization.

    In training, only the block's input is kept for the backward pass; its activations are
    recomputed there (`keras.remat`: `tf.recompute_grad` on TensorFlow, `jax.checkpoint` on
    JAX), trading compute for memory. The block runs inside a `keras.StatelessScope`, so the
    BatchNorm moving statistics computed by the forward pass are assigned once, here, and not
    again by the recomputation (which would apply the momentum twice on TensorFlow). Inference
    calls the block directly. Random layers (dropout) would draw new masks when recomputed, so
    the builder refuses `remat=True` with them.

    Example:
        >>> inputs = keras.Input((4,))
        >>> block = keras.Model(inputs, keras.layers.Dense(2)(inputs))
        >>> tuple(Rematerialized(block)(keras.ops.ones((1, 4))).shape)
        (1, 2)
    """

    def __init__(self, block: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.block = block
        self.built = block.built  # a functional block is built; it owns every weight

    def call(self, inputs, training=None):
        if not training:
            return self.block(inputs, training=False)
        updated = self.block.non_trainable_variables  # the BatchNorm moving statistics

        def forward(x):
            # Read every variable inside the recomputed function (TensorFlow then differentiates
            # through the reads; under JAX this picks up the trainer's traced values).
            with keras.StatelessScope(state_mapping=[(v, v.value) for v in self.block.variables]) as scope:
                y = self.block(x, training=True)
            return [y] + [ops.stop_gradient(scope.get_current_value(v)) for v in updated]

        outputs = keras.remat(forward)(inputs)
        # The block's updates went to the scope unaveraged; averaged over replicas here, once.
        moving_average_updates([(variable, value, None) for variable, value in zip(updated, outputs[1:], strict=True)])
        return outputs[0]

    def compute_output_shape(self, input_shape):
        return self.block.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "block": keras.saving.serialize_keras_object(self.block)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["block"] = keras.saving.deserialize_keras_object(config["block"])
        return cls(**config)
