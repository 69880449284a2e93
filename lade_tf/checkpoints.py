"""Per-epoch checkpoints and history: resume an interrupted training where it stopped.

`tf.train.Checkpoint` (model, optimizer with its step count and momenta, epoch) after every epoch
in the checkpoint directory (the last `CHECKPOINTS_KEPT` are kept), plus `history.json` with one
row of metrics per epoch.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import keras
import tensorflow as tf

from lade_tf.schedules import WarmupSchedule

#: Checkpoints kept in checkpoint_dir (older ones are deleted as new epochs are saved).
CHECKPOINTS_KEPT = 3
HISTORY_FILE = "history.json"


class EpochState:
    """Checkpoint (model, optimizer, epoch) and history.json of one checkpoint directory."""

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike | None,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        *,
        write: bool = True,
        worker_dir: str | None = None,
    ):
        self.directory = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.write = write
        self.history: list[dict[str, float]] = []
        self._manager = None
        self._worker_dir = worker_dir
        if self.directory is None:
            return
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=self.epoch)
        self._manager = tf.train.CheckpointManager(
            checkpoint, self.directory if write else worker_dir, max_to_keep=CHECKPOINTS_KEPT
        )
        latest = tf.train.latest_checkpoint(self.directory)
        if latest:
            optimizer.build(model.trainable_variables)
            checkpoint.restore(latest).assert_existing_objects_matched()
            self.history = read_history(self.directory)[: int(self.epoch.numpy())]

    def end_epoch(self, epoch: int, logs: Mapping[str, Any]) -> None:
        """Records the epoch's metrics and saves the checkpoint (every worker must call it)."""
        self.history.append({"epoch": epoch, **{k: float(v) for k, v in logs.items()}})
        self.epoch.assign(epoch + 1)
        if self._manager is None:
            return
        self._manager.save(checkpoint_number=epoch + 1)
        if self.write:
            with tf.io.gfile.GFile(os.path.join(self.directory, HISTORY_FILE), "w") as handle:
                json.dump(self.history, handle, indent=1)
        elif self._worker_dir:
            tf.io.gfile.rmtree(self._worker_dir)


class CheckpointCallback(keras.callbacks.Callback):
    """Adds learning rate and epoch time to the logs, then checkpoints (fit path)."""

    def __init__(self, state: EpochState, schedule: WarmupSchedule):
        super().__init__()
        self._state = state
        self._schedule = schedule
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self._schedule(self.model.optimizer.iterations - 1))
            logs["epoch_seconds"] = time.perf_counter() - self._started
        self._state.end_epoch(epoch, logs or {})


def read_history(checkpoint_dir: str | os.PathLike) -> list[dict[str, float]]:
    """The per-epoch metrics `train_model` wrote to checkpoint_dir/history.json ([] if none)."""
    path = os.path.join(os.fspath(checkpoint_dir), HISTORY_FILE)
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as handle:
        return json.load(handle)
