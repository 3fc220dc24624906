"""The training loop: one `tf.distribute` step for every strategy, driving Keras callbacks.

Why not `model.fit`: under MultiWorkerMirroredStrategy Keras 3's `fit` fails at its first step
(keras-team/keras issue 20585), and one loop for all strategies is simpler to trust than two.
The loop is what `fit` does, in the open: `strategy.run` a train step inside `tf.function`,
per-example losses averaged over the *global* batch (`tf.nn.compute_average_loss`), loss
scaling through the optimizer (`scale_loss`, then `apply` unscales), BatchNorm moving statistics
averaged over replicas (at each step by the builder's BatchNorm, and again at epoch ends for any
other), and Keras' `CallbackList` for the progress bar, history and checkpoints. As `fit`'s
`jit_compile` and `steps_per_execution`: each replica's step can be compiled by XLA, and N steps
can run in one `tf.function` call with one host sync, callbacks then called once per N steps.
The model is compiled with the same optimizer and loss, so a saved checkpoint continues with
`model.fit` too.
"""

from __future__ import annotations

import math
import time

import keras
import numpy as np
import tensorflow as tf

from keras_resnet_v2.batchnorm import sync_batchnorm_statistics
from keras_resnet_v2.plumbing.interrupts import raise_if_stopped


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or Inf loss."""


class Trainer:
    """Trains and evaluates a classifier under a strategy.

    Build the model and optimizer inside `strategy.scope()`, then:

        trainer = Trainer(model, optimizer, strategy, global_batch=128)
        trainer.fit(train_ds, epochs=10, steps_per_epoch=390, validation_data=test_ds, callbacks=[...])

    `train_ds` yields global batches forever (see `keras_resnet_v2.training.data.pipeline`); `validation_data`
    is finite. Logs per epoch: loss, accuracy, lr, images_per_sec, val_loss, val_accuracy,
    val_top5_accuracy. `jit_compile=True` compiles each replica's train step with XLA;
    `steps_per_execution=N` runs N steps per call (the last call of an epoch fewer), with one host
    sync and one `on_train_batch_begin`/`end` pair per call, the logs at its last step.
    """

    def __init__(self, model: keras.Model, optimizer, strategy: tf.distribute.Strategy, global_batch: int,
                 jit_compile: bool = False, steps_per_execution: int = 1):
        if not isinstance(jit_compile, bool):
            raise ValueError(f"`jit_compile` must be True or False. Received: jit_compile={jit_compile!r}")
        if not isinstance(steps_per_execution, int) or isinstance(steps_per_execution, bool) or steps_per_execution < 1:
            raise ValueError("`steps_per_execution` must be a positive integer. "
                             f"Received: steps_per_execution={steps_per_execution!r}")
        self.model, self.optimizer, self.strategy, self.global_batch = model, optimizer, strategy, global_batch
        self.steps_per_execution = steps_per_execution
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(reduction=None)
        with strategy.scope():
            model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(),
                          metrics=["accuracy"])
            optimizer.build(model.trainable_variables)
        sync_batchnorm_statistics(model)  # replicas average their BatchNorm statistics at every step
        self._replica_step = tf.function(self._train_replica, jit_compile=True) if jit_compile else self._train_replica
        self._train_steps = tf.function(self._distributed_train_steps)
        self._eval_step = tf.function(self._distributed_eval_step)

    # ------------------------------------------------------------------ steps
    def _train_replica(self, images, labels):
        with tf.GradientTape() as tape:
            probabilities = tf.cast(self.model(images, training=True), tf.float32)
            losses = self.loss_fn(labels, probabilities)
            loss = tf.nn.compute_average_loss(losses, global_batch_size=self.global_batch)
            scaled = self.optimizer.scale_loss(loss)
        variables = self.model.trainable_variables
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probabilities, -1), tf.cast(labels, tf.int64)),
                                        tf.float32))
        return loss, correct

    def _distributed_train_steps(self, iterator, steps):
        """`steps` train steps (a tensor: one trace for every count); each step's loss and correct count."""
        losses = tf.TensorArray(tf.float32, size=steps)
        corrects = tf.TensorArray(tf.float32, size=steps)
        for i in tf.range(steps):
            loss, correct = self.strategy.run(self._replica_step, args=next(iterator))
            losses = losses.write(i, self.strategy.reduce("SUM", loss, axis=None))
            corrects = corrects.write(i, self.strategy.reduce("SUM", correct, axis=None))
        return losses.stack(), corrects.stack()

    def _eval_replica(self, images, labels):
        probabilities = tf.cast(self.model(images, training=False), tf.float32)
        losses = self.loss_fn(labels, probabilities)
        labels = tf.cast(labels, tf.int64)
        top1 = tf.equal(tf.argmax(probabilities, -1), labels)
        top5 = tf.math.in_top_k(labels, probabilities, k=min(5, probabilities.shape[-1]))
        return (tf.reduce_sum(losses), tf.reduce_sum(tf.cast(top1, tf.float32)),
                tf.reduce_sum(tf.cast(top5, tf.float32)), tf.cast(tf.shape(labels)[0], tf.float32))

    def _distributed_eval_step(self, batch):
        results = self.strategy.run(self._eval_replica, args=batch)
        return [self.strategy.reduce("SUM", r, axis=None) for r in results]

    # ------------------------------------------------------------------ public
    def learning_rate(self) -> float:
        lr = self.optimizer.learning_rate
        return float(keras.ops.convert_to_numpy(lr))

    def evaluate(self, dataset: tf.data.Dataset) -> dict:
        """Loss, top-1 and top-5 accuracy over a finite dataset (every example counted once)."""
        totals = np.zeros(4)
        for batch in self.strategy.experimental_distribute_dataset(dataset):
            totals += [float(t) for t in self._eval_step(batch)]
        loss, top1, top5, count = totals
        if count == 0:
            raise ValueError("The evaluation dataset is empty.")
        return {"loss": loss / count, "accuracy": top1 / count, "top5_accuracy": top5 / count}

    def fit(self, train_ds: tf.data.Dataset, *, epochs: int, steps_per_epoch: int, validation_data=None,
            callbacks=(), initial_epoch: int = 0, verbose: int = 1, on_non_finite=None) -> keras.callbacks.History:
        """Runs epochs `initial_epoch..epochs-1` of `steps_per_epoch` steps each.

        `on_non_finite(epoch, step)` is called before `NonFiniteLossError` is raised, so the
        caller can name its last good checkpoint in the message.
        """
        callback_list = keras.callbacks.CallbackList(
            list(callbacks), add_history=True, add_progbar=verbose > 0, model=self.model, verbose=verbose,
            epochs=epochs, steps=steps_per_epoch)
        self.model.stop_training = False
        iterator = iter(self.strategy.experimental_distribute_dataset(train_ds))
        callback_list.on_train_begin()
        logs = {}
        for epoch in range(initial_epoch, epochs):
            callback_list.on_epoch_begin(epoch)
            loss_sum = correct_sum = 0.0
            start = None  # images/s counts from the end of the first call: it excludes tracing
            first = 0  # steps the first call ran
            for begin in range(0, steps_per_epoch, self.steps_per_execution):
                raise_if_stopped()  # a Ctrl-C or SIGTERM whose KeyboardInterrupt was swallowed (GC callbacks)
                count = min(self.steps_per_execution, steps_per_epoch - begin)
                callback_list.on_train_batch_begin(begin)
                losses, corrects = self._train_steps(iterator, tf.constant(count))
                for offset, (loss, correct) in enumerate(zip(losses.numpy().tolist(), corrects.numpy().tolist(),
                                                             strict=True)):
                    if not math.isfinite(loss):
                        step = begin + offset
                        message = f"Non-finite training loss ({loss}) at epoch {epoch + 1}, step {step + 1}."
                        if on_non_finite is not None:
                            message += " " + on_non_finite(epoch, step)
                        raise NonFiniteLossError(message)
                    loss_sum += loss
                    correct_sum += correct
                done = begin + count
                logs = {"loss": loss_sum / done, "accuracy": correct_sum / (done * self.global_batch)}
                if start is None:
                    start, first = time.perf_counter(), done
                else:
                    logs["images_per_sec"] = (done - first) * self.global_batch / (time.perf_counter() - start)
                callback_list.on_train_batch_end(done - 1, logs)
            logs = dict(logs, lr=self.learning_rate())
            if validation_data is not None:
                logs.update({"val_" + k: v for k, v in self.evaluate(validation_data).items()})
            callback_list.on_epoch_end(epoch, logs)
            if self.model.stop_training:
                break
        callback_list.on_train_end(logs)
        return self.model.history
