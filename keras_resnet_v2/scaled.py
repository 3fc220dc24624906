"""Float16 convolutions that cannot overflow: operands rescaled by powers of two, result in float32.

At 1000 layers the first SGD steps are large (ResNet-1001's gradients at initialization reach 8e3,
benchmarks/RESULTS.md, "Mixed precision at depth"): after one step at lr 0.1 a stem kernel holds
1.9e3 and a BatchNorm scale 1.7e3, so a branch convolution's output passes float16's 65,504 although
the BatchNorm after it would have normalized it away. In float32 the same net trains. So under
mixed_float16 with a float32 residual stream (`ResNet(stream_dtype="float32")`) every convolution
reads its operands scaled into float16's range:

    x' = x * 2^-a,  W' = W * 2^(14 - b),  y = conv(x', W') * 2^(a + b - 14)

with a = ceil(log2 max|x|) and b = ceil(log2 max_o sum|W[..., o]|), so that every partial sum of y'
stays within 2^14 (a quarter of float16's range) and no element of x' or W' exceeds it. Powers of two
change exponents only: where nothing overflows, y' rounds as the unscaled float16 convolution would.
The convolution runs in float16 (tensor cores on a GPU); the scales are two reductions and two
multiplies, which XLA fuses into the neighbouring BatchNorm-ReLU and cast.

Example:
    >>> x = keras.ops.full((1, 4, 4, 8), 300.0)
    >>> kernel = keras.ops.full((3, 3, 8, 2), 100.0)    # y = 72 * 300 * 100 = 2.16e6: inf in float16
    >>> y, scale = scaled_conv(x, kernel, "float16", padding="same")
    >>> round(float(keras.ops.cast(y, "float32")[0, 1, 1, 0] * scale), -4)  # float16 rounding: 2.16e6 to 3 digits
    2160000.0
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_resnet_v2.layers import PACKAGE

HEADROOM = 14  # |y'| <= 2^14: float16 reaches 65,504 (just under 2^16)


def rescales(stream_dtype, compute_dtype: str) -> bool:
    """Whether a network's convolutions go through `scaled_conv`: a float32 stream under float16."""
    return stream_dtype == "float32" and compute_dtype == "float16"


def _exponent(magnitude):
    """ceil(log2(magnitude)) as float32, in [-60, 60], without a gradient (0 and inf stay finite)."""
    magnitude = ops.maximum(ops.stop_gradient(ops.cast(magnitude, "float32")), 2.0 ** -60)
    return ops.clip(ops.ceil(ops.log2(magnitude)), -60.0, 60.0)


def scaled_conv(x, kernel, dtype: str, **conv_kw: Any):
    """`ops.conv(x, kernel, **conv_kw)` in `dtype` on rescaled operands: (y', scale), y = y' * scale.

    y' is in `dtype` (float16) and within 2^14; `scale` is a float32 scalar, a power of two. Keeping
    y' in float16 lets a caller store it (the backward pass) at half the bytes and rescale in float32
    where it reads it.
    """
    x32, kernel32 = ops.cast(x, "float32"), ops.cast(kernel, "float32")
    a = _exponent(ops.max(ops.abs(x32)))
    b = _exponent(ops.max(ops.sum(ops.abs(kernel32), axis=tuple(range(kernel.ndim - 1)))))
    y = ops.conv(ops.cast(x32 * ops.power(2.0, -a), dtype),
                 ops.cast(kernel32 * ops.power(2.0, HEADROOM - b), dtype), **conv_kw)
    return y, ops.power(2.0, a + b - HEADROOM)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ScaledConv2D(keras.layers.Conv2D):
    """A `Conv2D` in float32 whose convolution runs in `inner_dtype` (float16) through `scaled_conv`.

    Its weights, inputs and outputs are float32 (build it with dtype="float32"); only the
    convolution is float16, on operands rescaled so that it cannot overflow. `ResNet(...,
    stream_dtype="float32")` under mixed_float16 builds its convolutions so.

    Example:
        >>> layer = ScaledConv2D(2, 3, padding="same", use_bias=False, dtype="float32")
        >>> keras.backend.standardize_dtype(layer(keras.ops.full((1, 4, 4, 8), 1e4)).dtype)
        'float32'
    """

    def __init__(self, *args: Any, inner_dtype: str = "float16", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.inner_dtype = inner_dtype

    def convolution_op(self, inputs, kernel):
        y, scale = scaled_conv(inputs, kernel, self.inner_dtype, strides=list(self.strides), padding=self.padding,
                               dilation_rate=self.dilation_rate, data_format=self.data_format)
        return ops.cast(y, self.compute_dtype) * ops.cast(scale, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "inner_dtype": self.inner_dtype}
