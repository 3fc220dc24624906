"""BatchNorm on every backend: moving statistics kept equal across replicas, and TensorFlow's fused kernel.

Every BatchNorm of the package (Keras' layers, `UnitStack`'s, those inside `Rematerialized` blocks)
updates its moving statistics through `moving_average_updates`: under TensorFlow the batch
statistics are first averaged over the replicas of a `tf.distribute` strategy, in one packed
all-reduce per training step (`_kernels`), then `moving.assign_moving_averages` applies the one
formula. JAX and PyTorch assign them as they are. `fuse_batchnorm` gives Keras' BatchNorm layers of a
model TensorFlow's fused training kernel; neither changes a model's config, weights or saved files.
"""

from __future__ import annotations

import keras

from keras_resnet_v2.moving import assign_moving_averages


def moving_average_updates(updates: list) -> None:
    """`variable <- variable * momentum + batch * (1 - momentum)` for each `(variable, batch, momentum)`
    (`momentum=None` assigns `batch`). Under TensorFlow the batches are averaged over the replicas of a
    strategy first (`_kernels.update_moving_statistics`); other backends assign them as they are."""
    if keras.backend.backend() == "tensorflow":
        from keras_resnet_v2._kernels import update_moving_statistics

        update_moving_statistics(updates)
        return
    assign_moving_averages(updates)


def fuse_batchnorm(model: keras.Model, enable: bool = True) -> int:
    """Trains `model`'s BatchNorm layers through TensorFlow's fused kernel; returns how many changed.

    Keras 3's BatchNormalization on TensorFlow computes moments, then normalizes, as separate ops,
    forward and backward: on a 2-core CPU that is over half of a ResNet-164 training step
    (benchmarks/RESULTS.md). This gives each eligible layer (4D NHWC input, centre and scale, not
    synchronized) a training-mode `call` through `FusedBatchNormV3` (oneDNN on CPU, cuDNN on GPU)
    with Keras' semantics: the biased batch variance, statistics in float32 under mixed precision,
    the same moving averages. Only these instances change: config, weights, files and the
    inference path (which exports trace) stay Keras'. `enable=False` gives the layers back Keras'
    own kernel.

    Either way (this is correctness, not speed, so `enable` does not switch it), the model's
    BatchNorm statistics are then averaged over the replicas of a `tf.distribute` strategy with
    several, every layer's (and `UnitStack`'s) in one packed all-reduce at the end of the model's
    training call, so every replica holds the same moving statistics after `model.fit` and
    in-process predictions equal the saved model's. On other backends it does nothing and returns 0.

    Models built by `keras_resnet_v2.ResNet` and loaded by `keras_resnet_v2.load_model` under
    TensorFlow are already fused; `keras.models.load_model` gives Keras' BatchNorm until this is called.

    Example:
        >>> model = keras_resnet_v2.ResNet164(fused_batchnorm=False)
        >>> fuse_batchnorm(model)  # 54 units x 3 + the final BN
        163
    """
    if keras.backend.backend() != "tensorflow":
        return 0
    from keras_resnet_v2 import _kernels

    return _kernels.set_batchnorm_kernels(model, fused=enable)


def sync_batchnorm_statistics(model: keras.Model) -> None:
    """Keeps `model`'s BatchNorm moving statistics equal across the replicas of a strategy (the per-step
    packed all-reduce of `fuse_batchnorm`), leaving each layer's kernel as it is: for a model that
    neither `ResNet` nor `fuse_batchnorm` prepared (training's `Trainer` calls it on the model it gets).
    TensorFlow only; other backends have nothing to do.

    Example:
        >>> sync_batchnorm_statistics(keras.applications.ResNet50V2(weights=None))
    """
    if keras.backend.backend() == "tensorflow":
        from keras_resnet_v2 import _kernels

        _kernels.set_batchnorm_kernels(model, fused=None)
