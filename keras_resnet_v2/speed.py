"""Faster ways to compute the same numbers: fused BatchNorm on TensorFlow, optimizer state built early.

Neither changes a model's config, weights or saved files. `ResNet(...)` fuses BatchNorm itself
under the TensorFlow backend (`fused_batchnorm=True`); JAX and PyTorch need nothing (XLA fuses).
"""

from __future__ import annotations

import contextlib

import keras


def fuse_batchnorm(model: keras.Model, enable: bool = True) -> int:
    """Trains `model`'s BatchNorm layers through TensorFlow's fused kernel; returns how many changed.

    Keras 3's BatchNormalization on TensorFlow computes moments, then normalizes, as separate ops,
    forward and backward: on a 2-core CPU that is over half of a ResNet-164 training step
    (benchmarks/RESULTS.md). This gives each eligible layer (4D NHWC input, centre and scale, not
    synchronized) a training-mode `call` through `FusedBatchNormV3` (oneDNN on CPU, cuDNN on GPU)
    with Keras' semantics: the biased batch variance, statistics in float32 under mixed precision,
    the same moving averages. Only these instances change: config, weights, files and the
    inference path (which exports trace) stay Keras'. `enable=False` gives the layers back
    Keras' own kernel. Either way, under a `tf.distribute` strategy with several replicas, the
    batch statistics are averaged over the replicas before the moving averages take them, every
    layer's (and `UnitStack`'s) in one packed all-reduce at the end of the model's training call,
    so every replica holds the same moving statistics after `model.fit` and in-process predictions
    equal the saved model's (issue 21). On other backends it does nothing and returns 0.

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

    return _kernels.fuse_batchnorm(model, enable)


def build_optimizer(model: keras.Model) -> keras.Model:
    """Creates the compiled optimizer's slot variables now, outside the first traced training step.

    Keras builds them inside the first `train_step` trace, where each of ResNet-164's ~500
    variables costs graph-building time (measured: first step 32 s -> 20 s on a 2-core CPU,
    benchmarks/RESULTS.md). Call after `model.compile(...)`, before `model.fit`. Returns `model`.

    Example:
        >>> model = keras_resnet_v2.ResNet20()
        >>> model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        >>> build_optimizer(model).optimizer.built
        True
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        raise ValueError(f"`model` must be compiled with an optimizer first: call model.compile(optimizer=...). "
                         f"Received: model={model.name!r} without an optimizer")
    if not optimizer.built:
        tensorflow = keras.backend.backend() == "tensorflow"  # variables belong in the model's strategy
        with model.distribute_strategy.scope() if tensorflow else contextlib.nullcontext():
            optimizer.build(model.trainable_variables)
    return model

