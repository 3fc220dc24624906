"""TensorFlow kernels for the TensorFlow backend only: fused BatchNorm, BatchNorm statistics kept
equal across replicas, and the loop of `UnitStack`.

Imported only when `keras.backend.backend() == "tensorflow"`, so the builders keep running under
JAX and PyTorch without TensorFlow installed. Nothing here changes a model's config, weights or
saved files: these are faster ways to compute the same numbers.
"""

from __future__ import annotations

import functools
import threading
from typing import Optional

import keras
import tensorflow as tf
from keras.src.backend.common.stateless_scope import in_stateless_scope

from keras_resnet_v2.moving import assign_moving_averages
from keras_resnet_v2.plumbing import onednn

# Per replica thread (MirroredStrategy traces each replica in its own thread): the moving-statistics
# updates of the training call of a model in progress, or None outside one (`collect_updates`).
_pending = threading.local()


def fused_batchnorm_training(x, gamma, beta, epsilon: float):
    """Training-mode BatchNorm through `FusedBatchNormV3` (oneDNN on CPU, cuDNN on GPU).

    Returns `(y, batch_mean, batch_variance)` with Keras' semantics: normalization by the biased
    batch variance, and that biased variance (the kernel returns the unbiased one) in float32.
    """
    gamma, beta = tf.cast(gamma, tf.float32), tf.cast(beta, tf.float32)
    y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=gamma, offset=beta, mean=tf.zeros_like(gamma), variance=tf.ones_like(gamma),
        epsilon=epsilon, exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
    n = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), variance.dtype)
    return y, mean, variance * (n - 1) / n


def _several_replicas() -> bool:
    """True inside a replica context of a strategy with more than one replica."""
    context = tf.distribute.get_replica_context()
    return context is not None and context.num_replicas_in_sync > 1


def replica_mean(tensors: list) -> list:
    """Each tensor averaged over the replicas of a `tf.distribute` strategy, in one all-reduce; the
    tensors themselves with one replica or outside a replica context.

    Keras 3's BatchNormalization updates its moving statistics on each replica from that replica's
    batch, so under `MirroredStrategy` the copies drift apart, `model.predict` in the process mixes
    them, and the saved file holds replica 0's (issue 21). Averaging the batch statistics before the
    update keeps every copy equal to the mean of what the replicas would have held (the moving
    average is linear): tf.keras 2's MEAN aggregation, applied at each step.
    """
    if not tensors or not _several_replicas():
        return list(tensors)
    context = tf.distribute.get_replica_context()
    sizes = [t.shape.num_elements() for t in tensors]
    flat = tf.concat([tf.reshape(tf.stop_gradient(tf.cast(t, tf.float32)), [-1]) for t in tensors], 0)
    flat = context.all_reduce(tf.distribute.ReduceOp.MEAN, flat)
    return [tf.cast(tf.reshape(part, t.shape), t.dtype) for part, t in zip(tf.split(flat, sizes), tensors, strict=True)]


def update_moving_statistics(updates: list) -> None:
    """`batchnorm.moving_average_updates` under TensorFlow: each `(variable, batch, momentum)`'s batch
    averaged over the replicas of a strategy, then `variable <- variable * momentum + batch * (1 - momentum)`.

    Inside the training call of a model that collects (`collect_updates`, which `set_batchnorm_kernels`
    installs on the model) the updates wait for the end of that call, where every layer's are
    averaged in ONE all-reduce: one meeting point of the replicas per step instead of one per
    BatchNorm layer. Inside a `keras.StatelessScope` (the forward pass of a `Rematerialized` block,
    and its recomputation in the backward pass) they go to the scope as they are: the block averages
    what it then assigns. Elsewhere (one replica, a layer called on its own) they apply now.
    """
    pending = getattr(_pending, "updates", None)
    if in_stateless_scope():
        assign_moving_averages(updates)
    elif pending is not None:
        pending.extend(updates)
    else:
        batches = replica_mean([batch for _, batch, _ in updates])
        assign_moving_averages([(variable, batch, momentum) for (variable, _, momentum), batch
                        in zip(updates, batches, strict=True)])


def collect_updates(model: keras.Model):
    """`model`'s own `call`, its BatchNorm layers' moving-statistics updates applied at its end, in one
    all-reduce over the replicas (`update_moving_statistics`); plain `call` with one replica."""
    keras_call = type(model).call.__get__(model)

    @functools.wraps(keras_call)
    def call(*args, **kwargs):
        if not kwargs.get("training") or not _several_replicas() or getattr(_pending, "updates", None) is not None:
            return keras_call(*args, **kwargs)  # nothing to gather, or an enclosing model gathers
        _pending.updates = []
        try:
            outputs = keras_call(*args, **kwargs)
            updates = _pending.updates
        finally:
            _pending.updates = None
        if updates:
            update_moving_statistics(updates)
        return outputs

    return call


def _synced_call(layer: keras.layers.BatchNormalization):
    """Keras' own `call` for `layer`, its moving statistics then averaged over the replicas."""
    keras_call = type(layer).call.__get__(layer)

    def call(inputs, training=None, mask=None):
        y = keras_call(inputs, training=training, mask=mask)
        if training and layer.trainable and _several_replicas():
            update_moving_statistics([(layer.moving_mean, layer.moving_mean.value, None),
                                      (layer.moving_variance, layer.moving_variance.value, None)])
        return y

    return call


def _fused_call(layer: keras.layers.BatchNormalization):
    """A training-mode `call` for `layer` through the fused kernel; inference stays Keras'."""
    keras_call = type(layer).call.__get__(layer)

    def call(inputs, training=None, mask=None):
        if not training or not layer.trainable or mask is not None or inputs.shape.rank != 4:
            return keras_call(inputs, training=training, mask=mask)
        y, mean, variance = fused_batchnorm_training(inputs, layer.gamma.value, layer.beta.value, layer.epsilon)
        update_moving_statistics([(layer.moving_mean, mean, layer.momentum),
                                  (layer.moving_variance, variance, layer.momentum)])
        return y

    return call


def set_batchnorm_kernels(model: keras.Model, fused: Optional[bool] = True) -> int:
    """`batchnorm.fuse_batchnorm` under TensorFlow: gives `model`'s eligible BatchNorm layers the fused
    training kernel (`fused=True`), Keras' own (False) or keeps each one's (None); either way their moving
    statistics stay equal across replicas, averaged in one all-reduce at the end of `model`'s training
    call (`collect_updates`).

    Eligible: 4D NHWC input, centre and scale, not synchronized. Returns how many layers changed kernel.
    Warns once per process when TensorFlow runs without its oneDNN CPU kernels by accident
    (`plumbing.onednn.warn_if_off`).
    """
    onednn.warn_if_off()
    count = 0
    for layer in model._flatten_layers(include_self=False):
        if not (isinstance(layer, keras.layers.BatchNormalization) and layer.axis in (-1, 3) and layer.center
                and layer.scale and not layer.synchronized):
            continue
        was_fused = "call" in vars(layer) and getattr(layer, "_fused_for_training", False)
        use = was_fused if fused is None else fused
        count += use != was_fused
        layer.call = _fused_call(layer) if use else _synced_call(layer)
        layer._fused_for_training = use
    if "call" not in vars(model):  # the layers' updates gathered into one all-reduce per step
        model.call = collect_updates(model)
    return count


def while_scan(step, x, xs, length: int):
    """`jax.lax.scan` for TensorFlow: `x, ys = step(x, xs[i])` for i < length, in one `tf.while_loop`.

    Keras' `ops.scan` on TensorFlow needs each step's output shaped like the carry, and the
    BatchNorm statistics of a unit are not; here they go to TensorArrays of any shape. The first
    iteration runs before the loop, which gives the outputs' structure.
    """
    leaves = keras.tree.flatten(xs)
    pack = keras.tree.pack_sequence_as
    x, first = step(x, pack(xs, [a[0] for a in leaves]))
    first_leaves = keras.tree.flatten(first)
    if length == 1:
        return x, pack(first, [t[None] for t in first_leaves])
    inputs = [tf.TensorArray(a.dtype, size=length, element_shape=a.shape[1:]).unstack(a) for a in leaves]
    outputs = [tf.TensorArray(t.dtype, size=length, element_shape=t.shape).write(0, t) for t in first_leaves]

    def body(i, x, outputs):
        x, ys = step(x, pack(xs, [a.read(i) for a in inputs]))
        return i + 1, x, [o.write(i, y) for o, y in zip(outputs, keras.tree.flatten(ys), strict=True)]

    # maximum_iterations: XLA (`jit_compile=True`, Keras' default on one GPU) sizes the gradient's
    # accumulators of loop values from it; without it the backward loop does not compile.
    _, x, outputs = tf.while_loop(lambda i, *_: i < length, body, (tf.constant(1), x, outputs),
                                  maximum_iterations=length - 1)
    return x, pack(first, [o.stack() for o in outputs])


def _runs_here(probe, errors: tuple) -> bool:
    """True on a GPU; on the CPU, whether `probe()` runs without one of `errors`."""
    if tf.config.list_logical_devices("GPU"):
        return True
    try:
        with tf.device("/CPU:0"):
            probe()
    except errors:
        return False
    return True


@functools.cache
def bfloat16_convolutions_run() -> bool:
    """Whether TensorFlow trains a bfloat16 convolution here (forward and both gradients, in a graph as
    `model.fit` runs it): on a GPU, through Eigen, or through oneDNN where its kernels have bfloat16 (x86 CPUs
    with AVX-512; on AVX2 alone, or `ONEDNN_MAX_CPU_ISA=AVX2`, oneDNN cannot create the primitive and the
    first step aborts with a 20-line error). A 4x4 probe, about 0.1 s, once per process."""

    @tf.function
    def step(x, kernel):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            loss = tf.reduce_sum(tf.cast(tf.nn.conv2d(x, kernel, 1, "SAME"), tf.float32))
        return tape.gradient(loss, [x, kernel])

    return _runs_here(lambda: step(tf.ones((1, 4, 4, 8), tf.bfloat16), tf.ones((3, 3, 8, 8), tf.bfloat16)),
                      (tf.errors.AbortedError, tf.errors.UnimplementedError, tf.errors.InvalidArgumentError,
                       tf.errors.NotFoundError, tf.errors.InternalError))


def nchw_convolutions_run() -> bool:
    """Whether TensorFlow runs a channels_first (NCHW) convolution here: on a GPU, or on the CPU through
    oneDNN (TensorFlow's x86 default); its own CPU kernels refuse NCHW (TF_ENABLE_ONEDNN_OPTS=0)."""
    return _runs_here(
        lambda: tf.nn.conv2d(tf.zeros((1, 1, 2, 2)), tf.zeros((1, 1, 1, 1)), 1, "VALID", data_format="NCHW"),
        (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError))
