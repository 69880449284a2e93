"""Learning-rate schedules: a linear warm-up, then cosine, step or constant decay."""

from __future__ import annotations

import math
from typing import Any, Sequence

import keras
from keras import ops

from lade_tf.train_config import SCHEDULES, TrainConfig

#: Step decay of the reference schedule: fractions of training where the rate is multiplied.
STEP_MILESTONES = (0.6, 0.8)
STEP_DECAY_FACTOR = 0.01


@keras.saving.register_keras_serializable(package="lade_tf")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to a peak rate, then cosine, step or constant decay (per optimizer step).

    Formula (step s counted from 0, T total steps, W warm-up steps, peak rate r):
        s <  W:  r * (s + 1) / W
        s >= W:  cosine:   r * 0.5 * (1 + cos(pi * min(1, (s - W) / (T - W))))
                 step:     r * factor ** #{m in milestones : s >= m * T}
                 constant: r

    Args:
        peak_learning_rate: r (> 0).
        total_steps: T (>= 1).
        warmup_steps: W (0 <= W < T).
        decay: "cosine", "step" or "constant".
        milestones: fractions of T where the step decay multiplies by `factor`.
        factor: step decay factor.
    """

    def __init__(
        self,
        peak_learning_rate: float,
        total_steps: int,
        warmup_steps: int,
        decay: str = "cosine",
        milestones: Sequence[float] = STEP_MILESTONES,
        factor: float = STEP_DECAY_FACTOR,
    ):
        if decay not in SCHEDULES:
            raise ValueError(f"decay = {decay!r}: expected one of {SCHEDULES}")
        if int(total_steps) < 1 or not 0 <= int(warmup_steps) < int(total_steps):
            raise ValueError(
                f"total_steps = {total_steps!r}, warmup_steps = {warmup_steps!r}: "
                "expected total_steps >= 1 and 0 <= warmup_steps < total_steps"
            )
        self.peak_learning_rate = float(peak_learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.decay = decay
        self.milestones = [float(m) for m in milestones]
        self.factor = float(factor)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak = self.peak_learning_rate
        if self.decay == "cosine":
            progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
            progress = ops.clip(progress, 0.0, 1.0)
            decayed = peak * 0.5 * (1.0 + ops.cos(math.pi * progress))
        elif self.decay == "step":
            passed = (
                sum(ops.cast(step >= m * self.total_steps, "float32") for m in self.milestones)
                if self.milestones
                else 0.0
            )
            decayed = peak * ops.power(self.factor, passed)
        else:
            decayed = ops.convert_to_tensor(peak, "float32")
        if self.warmup_steps == 0:
            return decayed
        warm = peak * (step + 1.0) / self.warmup_steps
        return ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "decay": self.decay,
            "milestones": self.milestones,
            "factor": self.factor,
        }


def warmup_schedule(config: TrainConfig, steps_per_epoch: int) -> WarmupSchedule:
    """The learning-rate schedule of a config: warm-up, then `config.schedule` decay.

    The warm-up lasts `config.warmup_epochs` epochs but at most half of training, so a two-epoch
    quick run still reaches the peak rate.

    Raises:
        ValueError: if steps_per_epoch < 1.
    """
    if steps_per_epoch < 1:
        raise ValueError(
            f"steps_per_epoch = {steps_per_epoch!r}: expected >= 1 (is the training "
            "set smaller than one batch?)"
        )
    total = config.epochs * steps_per_epoch
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total // 2)
    return WarmupSchedule(config.learning_rate, total, warmup, config.schedule)
