"""Runs a few Trainer steps (or plain `model.fit`) under a strategy and saves every replica's variables.

    python distributed_steps.py mirrored PRECISION OUT.npz [scan]   (two logical CPU devices)
    python distributed_steps.py mirrored PRECISION OUT.npz fit fused|keras|scan|remat
    TF_CONFIG=... python distributed_steps.py multi_worker float32 OUT.npz

`fit`: the notebook flow, `model.compile` + `model.fit` (Keras' own loop, no epoch-end sync), then
`model.predict` in the process and of the saved `.keras` reloaded, both saved as `predicted`/`reloaded`.
"""

import sys

import tensorflow as tf

strategy_name, precision, out = sys.argv[1:4]
if strategy_name == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_resnet_v2  # noqa: E402
from keras_resnet_v2.training import optimizers, recipes, runtime  # noqa: E402
from keras_resnet_v2.training.loop import Trainer  # noqa: E402

runtime.set_precision(precision)
strategy = runtime.make_strategy(strategy_name)
global_batch = 8
runtime.per_replica_batch(global_batch, strategy)
keras.utils.set_random_seed(0)
rng = np.random.default_rng(1)
images = rng.uniform(0, 1, (64, 16, 16, 3)).astype("float32")
labels = rng.integers(0, 4, 64)
if sys.argv[4:5] == ["fit"]:
    form = sys.argv[5]
    from keras_resnet_v2 import _kernels

    averaging, reductions = _kernels.replica_mean, []

    def counted(tensors):  # the all-reduces of moving statistics in the traced steps, per replica
        reductions.append(len(tensors) if tensors and _kernels._several_replicas() else 0)
        return averaging(tensors)

    _kernels.replica_mean = counted
    with strategy.scope():
        model = keras_resnet_v2.ResNet(20, input_shape=(16, 16, 3), classes=4, scan=form == "scan",
                                       remat=form == "remat", fused_batchnorm=form != "keras")
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy")
    history = model.fit(images, labels, batch_size=global_batch, epochs=1, steps_per_epoch=5, verbose=0)
    arrays = {"loss": np.array(history.history["loss"][-1]), "replicas": np.array(strategy.num_replicas_in_sync),
              "reductions": np.array([n for n in reductions if n]),
              "predicted": model.predict(images[:16], batch_size=global_batch, verbose=0)}
    for v in model.variables:
        for i, value in enumerate(strategy.experimental_local_results(v.value)):
            arrays[f"{v.path}#{i}"] = np.asarray(value, dtype="float32")
    path = out + ".keras"
    model.save(path)
    arrays["reloaded"] = keras.models.load_model(path).predict(images[:16], batch_size=global_batch, verbose=0)
    np.savez(out, **arrays)
    print("done", strategy.num_replicas_in_sync)
    sys.exit(0)
with strategy.scope():
    if sys.argv[4:] == ["scan"]:  # units 2..3 of each stage as one UnitStack loop
        model = keras_resnet_v2.ResNet(20, input_shape=(16, 16, 3), classes=4, scan=True)
    else:
        model = keras_resnet_v2.ResNet(8, input_shape=(16, 16, 3), classes=4)
    assert runtime.fuse_batchnorm(model) == 0  # ResNet() trains BatchNorm fused under TensorFlow already
    recipe = recipes.get_recipe("paper_cifar", batch_size=global_batch)
    schedule = recipes.resolve(recipe, global_batch, 2, steps=3)
    optimizer = runtime.wrap_optimizer(optimizers.make_optimizer(recipe, schedule), precision)
trainer = Trainer(model, optimizer, strategy, global_batch)
data = tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(global_batch)
history = trainer.fit(data, epochs=1, steps_per_epoch=3, verbose=0)
loss = history.history["loss"][-1]
arrays = {"loss": np.array(loss), "replicas": np.array(strategy.num_replicas_in_sync)}
for v in model.variables:
    values = strategy.experimental_local_results(v.value)
    for i, value in enumerate(values):
        arrays[f"{v.path}#{i}"] = np.asarray(value, dtype="float32")
np.savez(out, **arrays)
print("done", strategy.num_replicas_in_sync, loss)
