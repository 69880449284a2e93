"""tf.distribute strategies by name, and which process is the chief."""

from __future__ import annotations

import os

import tensorflow as tf

from lade_tf.train_config import STRATEGIES


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """The tf.distribute strategy for a name.

    "multi_worker" must be created before any other TensorFlow op of the program (TF configures
    collective ops at start-up), so create it first and pass it to `train_model`. The cluster
    comes from the TF_CONFIG environment variable. "tpu" resolves the TPU named by TPU_NAME (or
    the local one); it could not be tested on this project's machines.

    Args:
        name: "auto" (MirroredStrategy over all GPUs if there are several, else the default
            strategy), "mirrored" (all local GPUs, or the CPU), "multi_worker", "tpu" or "cpu"
            (one-device strategy on the CPU even when GPUs exist).

    Raises:
        ValueError: for an unknown name.
        RuntimeError: if the multi-worker or TPU strategy cannot be created (the message says why).
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy = {name!r}: expected one of {STRATEGIES}")
    if name == "auto":
        gpus = tf.config.list_physical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    if name == "multi_worker":
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except (RuntimeError, ValueError) as error:
            raise RuntimeError(
                f"cannot create MultiWorkerMirroredStrategy ({error}); create it with "
                "make_strategy('multi_worker') before any other TensorFlow op (datasets "
                "included), with TF_CONFIG set for this worker"
            ) from error
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=os.environ.get("TPU_NAME", "")
        )
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise RuntimeError(
            f"strategy 'tpu': no TPU could be resolved or initialised ({error}); "
            "set TPU_NAME or run on a TPU VM"
        ) from error
    return tf.distribute.TPUStrategy(resolver)


def uses_custom_loop(strategy: tf.distribute.Strategy) -> bool:
    """Whether `train_model` must use its custom loop rather than `model.fit`."""
    # Keras 3 fit fails under MultiWorkerMirroredStrategy (keras-team/keras#20585).
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes outputs: always, except on non-chief multi-worker workers."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )
