"""The two small layers the shortcut variants of the paper need (Fig. 2 (b)-(d)).

Both are registered with Keras, so a model that uses them saves to `.keras` and
loads back with `keras.models.load_model(path, safe_mode=True)`: no `Lambda`.
They use `keras.ops` only, so they run under every Keras backend.
"""

from __future__ import annotations

import keras
from keras import ops

PACKAGE = "keras_resnet_v2"


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
        shortcut, residual, gate = inputs
        carried = (1 - gate) * shortcut
        return carried + (gate * residual if self.exclusive else residual)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "exclusive": self.exclusive}
