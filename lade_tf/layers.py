"""The inference rule: logits of a trained model adjusted to a target label prior (PC Softmax).

`PriorCorrection` is the Keras layer a served model uses; `adjust_logits_numpy` is its NumPy twin
for the evaluator. Both take the rule from `correction_offset` (docs/design.md section 1):

    trained with "ce":                          f - log p_s + log p_t              (PC Softmax)
    trained with "lade" / "balanced_softmax":   f + log p_t
    trained with "logit_adjusted" (tau):        f + (tau - 1) log p_s + log p_t

The logit-adjusted loss is CE(f + tau log p_s), so softmax(f + tau log p_s) models p_s(y|x) and f
itself still carries (1 - tau) log p_s; only at tau = 1 is f prior-free. With p_t = p_s the rule
gives the model's posterior under the training prior for every loss (the input of prior
estimation).

p_t is normalised to sum to 1. A class with p_t(c) = 0 gets the adjusted logit ZERO_PRIOR_LOGIT
(-1e9, the value Keras's masked softmax uses), a finite number whose softmax probability is exactly
0 in float32 and float64 whenever the other logits are above -1e9 + 104: outputs stay finite (JSON
safe), gradients stay free of NaN, and argmax never picks that class.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
from keras import ops

from lade_tf.checks import check_prior
from lade_tf.losses import known_values
from lade_tf.priors import class_counts_config, source_prior
from lade_tf.train_config import inference_tau

#: Adjusted logit given to classes whose target prior is 0.
ZERO_PRIOR_LOGIT = -1e9


def correction_offset(
    class_counts: Sequence[float], train_loss: str, tau: float = 1.0
) -> np.ndarray:
    """The per-class offset b of the inference rule, adjusted = f + b + log p_t, float64 [C].

    Formula:
        ce:                         b = -log p_s
        lade, balanced_softmax:     b = 0
        logit_adjusted (tau):       b = (tau - 1) * log p_s   (0 at tau = 1)

    Args:
        class_counts: training images per class [C] (defines p_s).
        train_loss: the loss the model was trained with, one of LOSS_NAMES.
        tau: the logit-adjusted loss's temperature; must be 1.0 for the other losses.

    Returns:
        float64 [C].

    Raises:
        ValueError: bad train_loss, counts, or a tau that is negative, not finite, or given for a
            loss other than "logit_adjusted".

    Examples:
        >>> correction_offset([3, 1], "logit_adjusted", tau=2.0).round(4).tolist()
        [-0.2877, -1.3863]
    """
    tau = inference_tau(train_loss, tau)
    log_source = np.log(source_prior(class_counts))
    if train_loss == "ce":
        return -log_source
    if train_loss == "logit_adjusted":
        return (tau - 1.0) * log_source
    return np.zeros_like(log_source)


def _checked_prior(prior: np.ndarray, num_classes: int) -> np.ndarray:
    """The target prior [C] or [batch, C], normalised per row (eager check, NumPy values)."""
    return check_prior(prior, "target_prior", num_classes=num_classes, batched=True)


def adjust_logits_numpy(
    logits: np.ndarray,
    class_counts: Sequence[float],
    train_loss: str,
    target_prior: np.ndarray | Sequence[float] | None,
    *,
    tau: float = 1.0,
) -> np.ndarray:
    """NumPy twin of `PriorCorrection`: logits adjusted to `target_prior`, float64 [N, C].

    Formula:
        adjusted = f + b + log p_t with b = `correction_offset(class_counts, train_loss, tau)`:
        ce: f - log p_s + log p_t;  lade / balanced_softmax: f + log p_t;
        logit_adjusted: f + (tau - 1) log p_s + log p_t.
        p_t normalised to sum to 1; p_t(c) = 0 gives ZERO_PRIOR_LOGIT (probability exactly 0).

    Args:
        logits: raw model logits f [N, C].
        class_counts: training images per class [C] (defines p_s).
        train_loss: the loss the model was trained with, one of LOSS_NAMES.
        target_prior: p_t [C] or [N, C], non-negative (normalised here); None = no correction,
            the plain model output (plain Softmax for a CE model).
        tau: the logit-adjusted loss's temperature (1.0 for every other loss).

    Returns:
        float64 [N, C] adjusted logits.

    Raises:
        ValueError: bad train_loss, tau, class counts, logits shape, or target prior (negative,
            non-finite, all zero, wrong length); the message names the value.
    """
    offset = correction_offset(class_counts, train_loss, tau)
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] != offset.size:
        raise ValueError(f"logits have shape {logits.shape}: expected [N, {offset.size}]")
    if target_prior is None:
        return logits.copy()
    prior = _checked_prior(np.asarray(target_prior, dtype=np.float64), offset.size)
    if prior.ndim == 2 and prior.shape[0] != logits.shape[0]:
        raise ValueError(
            f"target_prior has {prior.shape[0]} rows for {logits.shape[0]} logits "
            "rows: expected one prior per example, or a single [C] prior"
        )
    with np.errstate(divide="ignore"):
        adjusted = logits + offset + np.log(prior)
    return np.where(prior > 0, adjusted, ZERO_PRIOR_LOGIT)


def _static_rank(tensor: Any) -> int | None:
    """Rank of `tensor`, or None while tracing a TensorFlow graph with an unknown-rank input."""
    try:
        return len(tensor.shape)
    except ValueError:  # tf.TensorShape(None) has no length
        return None


@keras.saving.register_keras_serializable(package="lade_tf")
class PriorCorrection(keras.layers.Layer):
    """Adjusts logits to a target label prior with the inference rule of the training loss.

    Formula:
        adjusted = f + b + log p_t, b = `correction_offset(class_counts, train_loss, tau)`:
        ce:                      f - log p_s + log p_t              (PC Softmax)
        lade, balanced_softmax:  f + log p_t
        logit_adjusted (tau):    f + (tau - 1) log p_s + log p_t
        p_t = target_prior / sum(target_prior) (per row); p_t(c) = 0 gives ZERO_PRIOR_LOGIT, so
        softmax(adjusted)[c] is exactly 0.

    Called as `layer(logits, target_prior)` with logits [batch, C] and target_prior [C] or
    [batch, C]; returns float32 [batch, C] (math in float32, also under mixed precision).

    Invalid priors (negative, NaN/inf, all zero in a row, wrong length) raise ValueError naming the
    value when the prior is a concrete value (eager call, NumPy input); inside a TensorFlow graph
    (tf.function, SavedModel) `tf.debugging` assertions fail with InvalidArgumentError instead.
    Under a traced JAX function no check can run; invalid priors then give NaN outputs, never a
    silent answer.

    Args:
        class_counts: training images per class [C] (defines p_s).
        train_loss: the loss the model was trained with, one of LOSS_NAMES (default "ce").
        tau: the logit-adjusted loss's temperature (default 1.0; must be 1.0 for other losses).
        **kwargs: standard Layer arguments (name, ...); dtype defaults to "float32".

    Examples:
        >>> layer = PriorCorrection([3, 1], train_loss="balanced_softmax")
        >>> ops.convert_to_numpy(layer(np.zeros((1, 2), "float32"), np.array([1.0, 0.0]))).tolist()
        [[0.0, -1000000000.0]]
    """

    def __init__(
        self, class_counts: Sequence[float], train_loss: str = "ce", tau: float = 1.0, **kwargs: Any
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.class_counts = class_counts_config(class_counts)
        self._logit_shift = correction_offset(self.class_counts, train_loss, tau).astype(np.float32)
        self.num_classes = len(self.class_counts)
        self.train_loss = train_loss
        self.tau = float(tau)

    def call(self, logits: Any, target_prior: Any) -> Any:
        logits = ops.cast(logits, "float32")
        concrete = known_values(target_prior)
        if concrete is not None:
            concrete = _checked_prior(concrete.astype(np.float64), self.num_classes)
            rows = logits.shape[0]
            if concrete.ndim == 2 and rows is not None and concrete.shape[0] != rows:
                raise ValueError(
                    f"target_prior has {concrete.shape[0]} rows for {rows} logits "
                    "rows: expected one prior per example, or a single [C] prior"
                )
        prior = ops.cast(ops.convert_to_tensor(target_prior), "float32")
        rank = _static_rank(prior)
        if rank is not None and (
            rank not in (1, 2) or prior.shape[-1] not in (None, self.num_classes)
        ):
            raise ValueError(
                f"target_prior has shape {tuple(prior.shape)}: expected "
                f"[{self.num_classes}] or [batch, {self.num_classes}]"
            )
        if concrete is None and keras.backend.backend() == "tensorflow":
            prior = self._graph_checked(prior)
        prior = prior / ops.sum(prior, axis=-1, keepdims=True)
        is_zero = ops.equal(prior, 0.0)
        # log of a placeholder 1 where p_t = 0 keeps -inf (and its NaN gradient) out of the graph;
        # negative entries still give NaN, so a prior that escaped the checks is never silent.
        log_prior = ops.log(ops.where(is_zero, 1.0, prior))
        adjusted = logits + ops.convert_to_tensor(self._logit_shift) + log_prior
        return ops.where(is_zero, ZERO_PRIOR_LOGIT, adjusted)

    def _graph_checked(self, prior: Any) -> Any:
        """`prior` behind tf.debugging assertions (graph-mode counterpart of the eager checks)."""
        import tensorflow as tf  # only on the TensorFlow backend, where it is already loaded

        # Chained, so a prior breaking several rules reports the first one, as the eager check does.
        checks = [
            lambda: tf.debugging.assert_equal(
                tf.shape(prior)[-1],
                self.num_classes,
                message=f"target_prior must have {self.num_classes} entries per row",
            ),
            lambda: tf.debugging.assert_all_finite(
                prior, message="target_prior has NaN or infinite entries"
            ),
            lambda: tf.debugging.assert_non_negative(
                prior, message="target_prior has negative entries"
            ),
            lambda: tf.debugging.assert_positive(
                tf.reduce_sum(prior, axis=-1), message="target_prior sums to 0 (in some row)"
            ),
        ]
        for check in checks:
            with tf.control_dependencies([check()]):
                prior = tf.identity(prior)
        return prior

    def compute_output_shape(self, logits_shape: tuple, target_prior_shape: tuple) -> tuple:
        return tuple(logits_shape)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "class_counts": self.class_counts,
            "train_loss": self.train_loss,
            "tau": self.tau,
        }
