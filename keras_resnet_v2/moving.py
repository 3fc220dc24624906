"""The one update formula of BatchNorm's moving statistics, for every BatchNorm of the package.

`variable <- variable * momentum + batch * (1 - momentum)`, as Keras' BatchNormalization and the
authors' Torch code (momentum 0.1 there is 0.9 here). Fused and Keras BatchNorm layers, `UnitStack`
and `Rematerialized` blocks all end here, after `batchnorm.moving_average_updates` has averaged the
batches over the replicas of a strategy where there are several.
"""

from __future__ import annotations

from keras import ops


def assign_moving_averages(updates: list) -> None:
    """`variable <- variable * momentum + batch * (1 - momentum)` for each `(variable, batch, momentum)`;
    `momentum=None` assigns `batch`. The batch is a constant to the gradient, in the variable's dtype.

    Example:
        >>> mean = keras.Variable([0.0, 10.0], trainable=False)
        >>> assign_moving_averages([(mean, keras.ops.array([1.0, 0.0]), 0.9)])
        >>> [round(float(v), 3) for v in keras.ops.convert_to_numpy(mean)]
        [0.1, 9.0]
    """
    for variable, batch, momentum in updates:
        batch = ops.cast(ops.stop_gradient(batch), variable.dtype)
        variable.assign(batch if momentum is None else variable * momentum + batch * (1.0 - momentum))
