"""Precision and distribution helpers: what runs where, set before the model is built."""

from __future__ import annotations

import json
import os
import re

import keras
import tensorflow as tf

from keras_resnet_v2.batchnorm import fuse_batchnorm  # noqa: F401  (re-exported: training.fuse_batchnorm)
from keras_resnet_v2.training.config import PRECISIONS, STRATEGIES


def set_precision(precision: str) -> keras.DTypePolicy:
    """Sets Keras' global dtype policy; call it before building the model.

    Under `mixed_float16` and `mixed_bfloat16`, layers compute in 16 bits and keep float32
    variables; BatchNorm keeps its statistics in float32 (Keras does so), the classifier is
    float32 (the builder gives `predictions` the variable dtype) and the loss is computed in
    float32. `mixed_float16` also needs loss scaling: `wrap_optimizer` adds it.

    Example:
        >>> set_precision("mixed_bfloat16").name
        'mixed_bfloat16'
    """
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {PRECISIONS}. Received: precision={precision!r}")
    keras.mixed_precision.set_global_policy(precision)
    return keras.mixed_precision.global_policy()


def wrap_optimizer(optimizer: keras.optimizers.Optimizer, precision: str) -> keras.optimizers.Optimizer:
    """Adds dynamic loss scaling (Keras `LossScaleOptimizer`) under `mixed_float16`."""
    if precision == "mixed_float16" and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


# Issue 37: the workers of a multi-worker run wait this long for each other at the start. TensorFlow's own
# wait has no end where a worker never comes (the coordination leader waits forever); once training runs,
# TensorFlow's coordination service notices a worker that stops answering within about 10 s.
CLUSTER_START_TIMEOUT_S = 600
CLUSTER_TIMEOUT_ENV = "RESNET_V2_CLUSTER_TIMEOUT"  # seconds, to override it
WORKER_LOST_EXIT_CODE = 6


class WorkerLostError(RuntimeError):
    """A worker of a multi-worker run stopped answering (killed, crashed, its machine gone)."""


def cluster_start_timeout() -> float:
    """`CLUSTER_START_TIMEOUT_S`, or the seconds in the environment variable `RESNET_V2_CLUSTER_TIMEOUT`."""
    text = os.environ.get(CLUSTER_TIMEOUT_ENV)
    if text is None:
        return CLUSTER_START_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{CLUSTER_TIMEOUT_ENV} must be a positive number of seconds. Received: {text!r}")
    return seconds


def _multi_worker_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy; `WorkerLostError` when the cluster has not formed in time.

    The strategy configures TensorFlow's coordination service with no limit on the wait for the other
    workers; it is configured here as the strategy would (a standalone service led by the first worker,
    the `chief` and `worker` jobs), with every task registering at a barrier that times out.
    """
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    timeout = cluster_start_timeout()
    spec = tf.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec()
    jobs = [job for job in ("chief", "worker") if job in spec.jobs]
    if jobs:
        from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2

        context.context().configure_coordination_service(
            service_type="standalone", service_leader=multi_worker_util.coordination_leader(spec),
            coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name=job, num_tasks=spec.num_tasks(job))
                              for job in jobs],
            cluster_register_timeout_in_ms=int(timeout * 1000))
        # Without the barrier the first worker waits for the others without end, whatever the timeout says.
        context.context().coordination_service.cluster_register_with_barrier = True
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError) as error:
        raise WorkerLostError(
            f"the multi-worker cluster did not form within {timeout:g} s ({type(error).__name__}): not every "
            f"worker of TF_CONFIG's cluster {json.dumps(spec.as_dict())} started or answered (each machine runs "
            f"the same command with its own task index; {CLUSTER_TIMEOUT_ENV} sets the wait)") from None


def _cluster_resolver(strategy: tf.distribute.Strategy):
    """The cluster resolver of a multi-worker strategy (one with a cluster), else None."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver if resolver is not None and resolver.cluster_spec() else None


def agreed_epoch(strategy: tf.distribute.Strategy, epoch: int) -> int:
    """The fewest epochs any worker's backup holds (multi-worker; elsewhere `epoch`), exchanged through
    TensorFlow's coordination service. Backups are written by every worker at each epoch's end, so a
    worker killed between its peers' writes leaves them one backup apart: resumed as they are, the
    workers would run different steps and their collectives would not match ("Collective instance ...
    expected type 0 and data_type 1 but got ... 9", measured)."""
    resolver = _cluster_resolver(strategy)
    if resolver is None:
        return epoch
    from tensorflow.python.eager import context

    spec, key = resolver.cluster_spec(), "keras_resnet_v2/resumed_epoch"
    context.context().set_config_key_value(f"{key}/{resolver.task_type}/{resolver.task_id}", str(epoch))
    timeout = int(cluster_start_timeout() * 1000)
    return min(int(context.context().get_config_key_value(f"{key}/{job}/{task}", timeout))
               for job in spec.jobs for task in range(spec.num_tasks(job)))


def lost_worker(error: BaseException, strategy: tf.distribute.Strategy) -> str | None:
    """The worker that `error` says stopped answering in a multi-worker run (`"a worker"` where it names
    none but this one), or None when `error` is not a collective's failure of a multi-worker run."""
    resolver = _cluster_resolver(strategy)
    if resolver is None or not isinstance(error, tf.errors.OpError):
        return None
    message = str(error)
    if not (isinstance(error, tf.errors.UnavailableError) or "Collective ops is aborted" in message
            or "unhealthy" in message):
        return None
    own = (resolver.task_type, int(resolver.task_id))
    others = [f"/job:{job}/replica:0/task:{task}"
              for job, task in re.findall(r"/job:(\w+)/(?:replica:\d+/)?task:(\d+)", message)
              if (job, int(task)) != own]
    return others[0] if others else "a worker"


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """A `tf.distribute` strategy by name.

    auto: MirroredStrategy over all visible GPUs when there are two or more, else the default
    strategy. mirrored: MirroredStrategy over the visible GPUs (or the logical CPUs when there
    is no GPU, which is how the tests run it). multi_worker: MultiWorkerMirroredStrategy from
    the `TF_CONFIG` environment variable (one process per machine); a cluster that has not formed
    after `cluster_start_timeout()` seconds raises `WorkerLostError` (the CLI: one line, exit code 6).
    tpu: TPUStrategy on the TPU the environment names.
    """
    if name not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: strategy={name!r}")
    # MultiWorkerMirroredStrategy configures collectives, which TF allows only before anything
    # else touches the runtime, so it comes before the device listing below.
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("`strategy='multi_worker'` needs the TF_CONFIG environment variable "
                             '(for example {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                             '"task": {"type": "worker", "index": 0}}). Received: no TF_CONFIG.')
        try:
            json.loads(os.environ["TF_CONFIG"])
        except ValueError as e:
            raise ValueError(f"TF_CONFIG is not valid JSON. Received: TF_CONFIG={os.environ['TF_CONFIG']!r}") from e
        return _multi_worker_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


# tf.distribute classes by the names `--strategy` takes (the default one's class is private).
_STRATEGY_NAMES = {"_DefaultDistributionStrategy": "default", "DefaultDistributionStrategy": "default",
                   "OneDeviceStrategy": "one_device", "MirroredStrategy": "mirrored",
                   "MultiWorkerMirroredStrategy": "multi_worker", "CollectiveAllReduceStrategy": "multi_worker",
                   "TPUStrategy": "tpu"}


def resolve_jit_compile(setting: str, strategy: tf.distribute.Strategy) -> bool:
    """`--jit-compile` as a bool: "auto" is XLA with one replica on a GPU (Keras' `fit` default on
    one GPU); "true" needs one replica. Under MirroredStrategy XLA cannot compile a step whose
    variables live on several devices (TensorFlow's known issue "tf.Variable on a different
    device"), so several replicas train without it; a TPU compiles with XLA anyway.
    """
    replicas = strategy.num_replicas_in_sync
    if setting == "true" and replicas > 1:
        raise ValueError(f"`jit_compile` true needs one replica: XLA cannot compile a step whose variables are "
                         f"mirrored over {replicas} devices. Use jit_compile auto or false, or strategy default. "
                         f"Received: jit_compile='true' with {replicas} replicas")
    if setting == "auto":
        return replicas == 1 and bool(tf.config.list_logical_devices("GPU")) and not isinstance(
            strategy, tf.distribute.TPUStrategy)
    return setting == "true"


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The strategy as `--strategy` names it ("default", "mirrored", ...)."""
    return _STRATEGY_NAMES.get(type(strategy).__name__, type(strategy).__name__)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the process that writes files (worker 0, or the only process)."""
    resolver = _cluster_resolver(strategy)
    if resolver is None:
        return True
    return resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


def per_replica_batch(global_batch: int, strategy: tf.distribute.Strategy) -> int:
    """Checks that `global_batch` splits evenly over the strategy's replicas."""
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise ValueError(f"`batch_size` ({global_batch}, the global batch) must be divisible by the "
                         f"{replicas} replicas of {strategy_name(strategy)}. Received: batch_size={global_batch}")
    return global_batch // replicas
