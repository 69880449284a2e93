"""Training losses for long-tailed data: LADE, Balanced Softmax (LADE-CE) and logit adjustment.

Each loss exists twice, as in `keras.losses`: a function that holds the math (`lade_loss`,
`balanced_softmax_loss`, `logit_adjusted_loss`) and a `keras.losses.Loss` subclass for `compile()`.
All math is `keras.ops` in float32 (logits are cast, so `mixed_float16` models lose nothing), and
runs on the TensorFlow and JAX backends.

Reduction. The functions return one value per sample, `[batch]`. LADE is a batch-level loss: its
LADER term is built from batch statistics, not summed over samples. `lade_loss` therefore returns
l_i = LADE-CE_i + alpha * LADER, the batch's LADER repeated on every sample, so that the mean over
the batch is exactly the LADE value of docs/design.md section 1. Keras reduces that vector like any
other loss, and in particular scales it by 1 / replicas under `tf.distribute`, which a batch-level
scalar returned from `call` would bypass (`keras.losses.Loss` returns scalars unreduced and
unscaled). With `sample_weight` s_i the reductions give:

- `"sum_over_batch_size"` (default): mean_i s_i * CE_i + alpha * mean_i(s_i) * LADER
- `"mean_with_sample_weight"`: sum_i s_i * CE_i / sum_i s_i + alpha * LADER
- `"sum"`: sum_i s_i * CE_i + alpha * sum_i(s_i) * LADER;  `"none"`: the vector s_i * l_i

Sample weights never enter the LADER batch statistics (N_c, first_c, second_c): every sample of the
batch counts once there.

Labels. Integer labels must be class ids in [0, C). Where their values are at hand, that is for
NumPy (or list) inputs, eager TensorFlow tensors and concrete JAX arrays, a label outside the
range raises a ValueError that names it. Inside `tf.function` or `jax.jit` (how `model.fit`
runs unless `run_eagerly=True`) the labels are symbolic and nothing is checked: reading them
would cost a device-to-host copy every step. There, an out-of-range label gives what the backend's
kernels give: an error on TensorFlow's CPU kernels, but a silent 0 or NaN loss on GPU and on JAX.
Check the data (as `pipeline.prepare` does) or debug with `run_eagerly=True`.

Distribution. Under a `tf.distribute` strategy with more than one replica, the LADER statistics are
computed on the GLOBAL batch: logits and labels are gathered from all replicas with
`ReplicaContext.all_gather`, whose gradient sums the upstream gradients of all replicas, so one
training step equals single-device training on the global batch. The CE term stays per replica.
On JAX, `keras.distribution` shards one global array, so the loss already sees the global batch.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
from keras import ops

from lade_tf.priors import class_counts_config, source_prior

# Which loss takes which option, and each option's range, are decided in `lade_tf.train_config`;
# the names are part of this module's API as well.
from lade_tf.train_config import (
    IMPORTANCE_VARIANTS,
    LADER_CLASS_SETS,
    LOSS_NAMES,
    LOSS_OPTIONS,
    check_loss_option,
)

__all__ = [
    "IMPORTANCE_VARIANTS",
    "LADER_CLASS_SETS",
    "LOSS_NAMES",
    "LOSS_OPTIONS",
    "BalancedSoftmaxLoss",
    "LADELoss",
    "LogitAdjustedLoss",
    "balanced_softmax_loss",
    "lade_loss",
    "lader",
    "logit_adjusted_loss",
    "make_loss",
]
_REGISTER = keras.saving.register_keras_serializable(package="lade_tf")


def _log_source_prior(class_counts: Sequence[float]) -> np.ndarray:
    """log p_s as float32 [C]; validates the counts (errors name the bad class)."""
    return np.log(source_prior(class_counts)).astype(np.float32)


def _check_lader_options(remine_lambda: float, importance: str, lader_classes: str) -> None:
    """The checks of LADER's options, shared by `lader`, `lade_loss` and `LADELoss`."""
    check_loss_option("remine_lambda", remine_lambda)
    check_loss_option("importance", importance)
    check_loss_option("lader_classes", lader_classes)


def _check_lade_options(
    alpha: float, remine_lambda: float, importance: str, lader_classes: str
) -> None:
    """`_check_lader_options` and LADE's own alpha."""
    check_loss_option("alpha", alpha)
    _check_lader_options(remine_lambda, importance, lader_classes)


def known_values(tensor: Any) -> np.ndarray | None:
    """The NumPy values of `tensor` if they exist now, else None.

    NumPy or list inputs, eager TensorFlow tensors and concrete JAX (or torch) arrays have
    values. A symbolic tensor inside tf.function or jax.jit has them only when the step runs,
    so eager-only checks skip it (reading it would also cost a device-to-host copy per step).
    """
    if not ops.is_tensor(tensor):
        return np.asarray(tensor)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf  # only on the TensorFlow backend, where it is already loaded

        if tf.is_symbolic_tensor(tensor):
            return None
    elif backend == "jax":
        import jax  # only on the JAX backend; TensorFlow may be absent there

        if isinstance(tensor, jax.core.Tracer):
            return None
    return np.asarray(ops.convert_to_numpy(tensor))


def _check_label_range(labels: Any, num_classes: int) -> None:
    """ValueError naming the first label outside [0, num_classes), when the values are known."""
    values = known_values(labels)
    if values is None:
        return
    flat = values.reshape(-1)
    outside = np.flatnonzero(~((flat >= 0) & (flat < num_classes)))  # NaN is outside too
    if outside.size:
        index = int(outside[0])
        value = flat[index].item()  # Keras casts labels to float32: show 5.0 as 5
        shown = int(value) if isinstance(value, float) and value.is_integer() else value
        raise ValueError(
            f"y_true[{index}] = {shown!r}: expected a class id in [0, {num_classes}) "
            f"({num_classes} classes in class_counts); {outside.size} of {flat.size} labels are "
            "outside"
        )


def _integer_labels(y_true: Any, num_classes: int) -> Any:
    """Labels as int32 [batch] from integer labels [batch] / [batch, 1] or one-hot [batch, C].

    Integer labels outside [0, C) raise a ValueError when their values are known (see the
    module docstring: not inside tf.function or jax.jit).
    """
    y_true = ops.convert_to_tensor(y_true)
    shape = tuple(y_true.shape)
    if len(shape) == 2 and shape[-1] == num_classes:
        return ops.cast(ops.argmax(y_true, axis=-1), "int32")
    if len(shape) == 2 and shape[-1] == 1:
        y_true = ops.squeeze(y_true, axis=-1)
    elif len(shape) != 1:
        raise ValueError(
            f"y_true has shape {shape}: expected integer labels [batch] or [batch, 1], or one-hot "
            f"labels [batch, {num_classes}]"
        )
    _check_label_range(y_true, num_classes)
    return ops.cast(y_true, "int32")


def _checked_batch(y_true: Any, logits: Any, num_classes: int) -> tuple[Any, Any]:
    """(int32 labels [batch], float32 logits [batch, C]), shapes and known labels checked."""
    logits = _float32_logits(logits, num_classes)
    return _integer_labels(y_true, num_classes), logits


def _float32_logits(logits: Any, num_classes: int) -> Any:
    logits = ops.cast(ops.convert_to_tensor(logits), "float32")
    if len(logits.shape) != 2 or logits.shape[-1] not in (None, num_classes):
        raise ValueError(
            f"logits have shape {tuple(logits.shape)}: expected [batch, {num_classes}] "
            f"({num_classes} classes in class_counts)"
        )
    return logits


def _global_batch(logits: Any, labels: Any) -> tuple[Any, Any]:
    """Logits and labels of all replicas when called in a multi-replica tf.distribute context."""
    if keras.backend.backend() != "tensorflow":
        return logits, labels
    import tensorflow as tf  # only on the TensorFlow backend, where it is already loaded

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return logits, labels
    return context.all_gather(logits, axis=0), context.all_gather(labels, axis=0)


def _prior_cross_entropy(labels: Any, logits: Any, log_prior_shift: np.ndarray) -> Any:
    """Per-sample CE(logits + shift, y) as float32 [batch]."""
    return ops.sparse_categorical_crossentropy(
        labels, logits + ops.convert_to_tensor(log_prior_shift), from_logits=True
    )


def _shifted_cross_entropy(
    y_true: Any, logits: Any, log_prior: np.ndarray, tau: float = 1.0
) -> Any:
    """CE(f + tau * log p_s, y) per sample with checked labels and logits, options unchecked."""
    labels, logits = _checked_batch(y_true, logits, log_prior.size)
    return _prior_cross_entropy(labels, logits, (tau * log_prior).astype(np.float32))


def balanced_softmax_loss(y_true: Any, logits: Any, class_counts: Sequence[float]) -> Any:
    """Balanced Softmax (LADE-CE) per sample: cross-entropy of the prior-shifted logits.

    Formula:
        L_i = -log( p_s(y_i) e^{f_i[y_i]} / sum_c p_s(c) e^{f_i[c]} ) = CE(f_i + log p_s, y_i)
        with p_s(c) = n_c / sum(n).

    Args:
        y_true: integer labels [batch] or [batch, 1], or one-hot [batch, C].
        logits: raw model outputs f [batch, C] (any float dtype; computed in float32).
        class_counts: training images per class n [C], all positive.

    Returns:
        float32 [batch].

    Raises:
        ValueError: a class count is not positive and finite (names the class), bad shapes, or
            a label outside [0, C) where the labels are known (eager and NumPy inputs; inside
            tf.function or jax.jit nothing is checked, see the module docstring).
    """
    return _shifted_cross_entropy(y_true, logits, _log_source_prior(class_counts))


def logit_adjusted_loss(
    y_true: Any, logits: Any, class_counts: Sequence[float], tau: float = 1.0
) -> Any:
    """Logit-adjusted cross-entropy per sample (Menon et al. 2021).

    Formula:
        L_i = CE(f_i + tau * log p_s, y_i); tau = 1 is Balanced Softmax.

    Args:
        y_true: integer labels [batch] or [batch, 1], or one-hot [batch, C].
        logits: raw model outputs f [batch, C] (computed in float32).
        class_counts: training images per class n [C], all positive.
        tau: temperature of the prior shift (finite, >= 0; 0 is plain cross-entropy).

    Returns:
        float32 [batch].

    Raises:
        ValueError: bad class count (names the class), negative or non-finite tau, bad shapes,
            or a label outside [0, C) where the labels are known (eager and NumPy inputs).
    """
    check_loss_option("tau", tau)
    return _shifted_cross_entropy(y_true, logits, _log_source_prior(class_counts), tau)


def lader(
    y_true: Any,
    logits: Any,
    class_counts: Sequence[float],
    remine_lambda: float = 0.1,
    importance: str = "class",
    lader_classes: str = "all",
) -> Any:
    """The LADER regulariser of a batch (a scalar), over the global batch under tf.distribute.

    Formula (batch of N samples, N_c of class c, p_u(c) = 1/C, p_s(c) = n_c / sum(n)):
        first_c  = (1/N_c) * sum_i 1[y_i=c] f_i[c]          (0 when N_c = 0)
        second_c = logsumexp_i( f_i[c] + log w_i(c) ) - log N
        L_c      = -first_c + second_c + remine_lambda * second_c^2
        LADER    = sum_{c in S} p_s(c) * L_c
        w_i(c)   = p_u(y_i) / p_s(y_i)   importance="sample" (the paper's equation)
        w_i(c)   = p_u(c) / p_s(c)       importance="class"  (the authors' code, hyperconnect/LADE)
        S        = every class           lader_classes="all" (the authors' code: an absent class
                                         still contributes its second_c terms)
        S        = classes with N_c > 0  lader_classes="present"

    Args:
        y_true: integer labels [batch] or [batch, 1], or one-hot [batch, C].
        logits: raw model outputs f [batch, C] (computed in float32).
        class_counts: training images per class n [C], all positive.
        remine_lambda: lambda of the ReMINE penalty (finite, >= 0).
        importance: "sample" or "class", see Formula.
        lader_classes: "all" or "present", see Formula.

    Returns:
        float32 scalar.
    """
    _check_lader_options(remine_lambda, importance, lader_classes)
    log_prior = _log_source_prior(class_counts)
    labels, logits = _checked_batch(y_true, logits, log_prior.size)
    return _lader_value(labels, logits, log_prior, remine_lambda, importance, lader_classes)


def _lader_value(
    labels: Any,
    logits: Any,
    log_prior: np.ndarray,
    remine_lambda: float,
    importance: str,
    lader_classes: str,
) -> Any:
    logits, labels = _global_batch(logits, labels)
    num_classes = log_prior.size
    log_uniform = -np.log(num_classes).astype(np.float32)
    log_prior_t = ops.convert_to_tensor(log_prior)
    members = ops.one_hot(labels, num_classes, dtype="float32")  # [N, C]
    class_sizes = ops.sum(members, axis=0)  # N_c
    present = class_sizes > 0
    first = ops.where(
        present, ops.sum(members * logits, axis=0) / ops.where(present, class_sizes, 1.0), 0.0
    )
    if importance == "sample":
        log_weights = ops.expand_dims(log_uniform - ops.take(log_prior_t, labels), axis=-1)
    else:
        log_weights = ops.expand_dims(log_uniform - log_prior_t, axis=0)
    batch_size = ops.cast(ops.shape(logits)[0], "float32")
    second = ops.logsumexp(logits + log_weights, axis=0) - ops.log(batch_size)
    per_class = -first + second + remine_lambda * ops.square(second)
    class_weights = ops.exp(log_prior_t)
    if lader_classes == "present":
        class_weights = class_weights * ops.cast(present, "float32")
    return ops.sum(class_weights * per_class)


def lade_loss(
    y_true: Any,
    logits: Any,
    class_counts: Sequence[float],
    alpha: float = 0.1,
    remine_lambda: float = 0.1,
    importance: str = "class",
    lader_classes: str = "all",
) -> Any:
    """LADE loss of a batch, returned per sample so that its batch mean is the LADE value.

    Formula (docs/design.md section 1; `lader` gives the LADER term and its variants):
        l_i  = CE(f_i + log p_s, y_i) + alpha * LADER
        LADE = mean_i l_i = mean_i LADE-CE_i + alpha * sum_{c in S} p_s(c) * L_c
        The authors' code (hyperconnect/LADE) uses importance="class", lader_classes="all", the
        defaults; importance="sample" is the paper's equation (see the README's Results for why
        "class" is the default).

    Args:
        y_true: integer labels [batch] or [batch, 1], or one-hot [batch, C].
        logits: raw model outputs f [batch, C] (computed in float32).
        class_counts: training images per class n [C], all positive.
        alpha: weight of LADER (finite, >= 0). Reference: 0.1 CIFAR-100-LT, 0.05 ImageNet-LT.
        remine_lambda: lambda of the ReMINE penalty (finite, >= 0), 0.01..0.5 in the paper.
        importance: "sample" (paper) or "class" (authors' code) importance weights.
        lader_classes: "all" (authors' code) or "present" (classes in the batch only).

    Returns:
        float32 [batch]; every entry carries the same batch-level LADER term (see module docstring
        for how Keras reductions and sample weights act on it). Under tf.distribute LADER covers the
        global batch.

    Raises:
        ValueError: a class count is not positive and finite (names the class), a bad option
            value, or a label outside [0, C) where the labels are known (eager and NumPy inputs;
            inside tf.function or jax.jit nothing is checked, see the module docstring).
    """
    _check_lade_options(alpha, remine_lambda, importance, lader_classes)
    return _lade_value(
        y_true,
        logits,
        _log_source_prior(class_counts),
        alpha,
        remine_lambda,
        importance,
        lader_classes,
    )


def _lade_value(
    y_true: Any,
    logits: Any,
    log_prior: np.ndarray,
    alpha: float,
    remine_lambda: float,
    importance: str,
    lader_classes: str,
) -> Any:
    """`lade_loss` with checked labels and logits; the options are checked by the caller."""
    labels, logits = _checked_batch(y_true, logits, log_prior.size)
    cross_entropy = _prior_cross_entropy(labels, logits, log_prior)
    regulariser = _lader_value(labels, logits, log_prior, remine_lambda, importance, lader_classes)
    return cross_entropy + alpha * regulariser


@_REGISTER
class BalancedSoftmaxLoss(keras.losses.Loss):
    """Balanced Softmax (LADE-CE): cross-entropy of logits shifted by the log training prior.

    Formula:
        L_i = CE(f_i + log p_s, y_i),  p_s(c) = n_c / sum(n);  reduced over the batch by Keras.

    Args:
        class_counts: training images per class n [C], all positive.
        reduction: Keras reduction, default "sum_over_batch_size" (the batch mean).
        name: loss name.

    Examples:
        >>> loss = BalancedSoftmaxLoss([3, 1])
        >>> round(float(loss([0], [[0.0, 0.0]])), 4)  # -log(3/4)
        0.2877
    """

    def __init__(
        self,
        class_counts: Sequence[float],
        reduction: str = "sum_over_batch_size",
        name: str = "balanced_softmax_loss",
    ):
        super().__init__(name=name, reduction=reduction, dtype="float32")
        self.class_counts = class_counts_config(class_counts)
        self._log_prior = _log_source_prior(self.class_counts)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return _shifted_cross_entropy(y_true, y_pred, self._log_prior)

    def get_config(self) -> dict:
        return {**super().get_config(), "class_counts": self.class_counts}


@_REGISTER
class LogitAdjustedLoss(keras.losses.Loss):
    """Logit-adjusted cross-entropy (Menon et al. 2021).

    Formula:
        L_i = CE(f_i + tau * log p_s, y_i);  reduced over the batch by Keras.

    Args:
        class_counts: training images per class n [C], all positive.
        tau: prior temperature (>= 0), default 1.0 (then equal to Balanced Softmax).
        reduction: Keras reduction, default "sum_over_batch_size" (the batch mean).
        name: loss name.

    Examples:
        >>> loss = LogitAdjustedLoss([3, 1], tau=2.0)
        >>> round(float(loss([0], [[0.0, 0.0]])), 4)  # -log(9/10)
        0.1054
    """

    def __init__(
        self,
        class_counts: Sequence[float],
        tau: float = 1.0,
        reduction: str = "sum_over_batch_size",
        name: str = "logit_adjusted_loss",
    ):
        super().__init__(name=name, reduction=reduction, dtype="float32")
        self.tau = check_loss_option("tau", tau)
        self.class_counts = class_counts_config(class_counts)
        self._log_prior = _log_source_prior(self.class_counts)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return _shifted_cross_entropy(y_true, y_pred, self._log_prior, self.tau)

    def get_config(self) -> dict:
        return {**super().get_config(), "class_counts": self.class_counts, "tau": self.tau}


@_REGISTER
class LADELoss(keras.losses.Loss):
    """LADE: Balanced Softmax plus alpha times the LADER regulariser (Hong et al., CVPR 2021).

    Formula (N samples in the batch, N_c of class c, p_u(c) = 1/C, p_s(c) = n_c / sum(n)):
        first_c  = (1/N_c) * sum_i 1[y_i=c] f_i[c]                      (0 when N_c = 0)
        second_c = log( (1/N) * sum_i w_i(c) e^{f_i[c]} )              (via logsumexp)
        L_c      = -first_c + second_c + remine_lambda * second_c^2
        LADE     = mean_i CE(f_i + log p_s, y_i) + alpha * sum_{c in S} p_s(c) * L_c
        importance="sample": w_i(c) = p_u(y_i) / p_s(y_i)  (the paper's equation)
        importance="class":  w_i(c) = p_u(c) / p_s(c)      (the authors' code)
        lader_classes="all": S = all C classes              (the authors' code)
        lader_classes="present": S = classes in the batch
        The authors' code (hyperconnect/LADE, loss/LADELoss.py) is importance="class",
        lader_classes="all". Under tf.distribute the batch is the global batch.

    `call` returns l_i = CE_i + alpha * LADER per sample; the default reduction
    ("sum_over_batch_size") gives exactly LADE. Sample weights scale l_i (so the LADER term by the
    mean weight; use reduction="mean_with_sample_weight" to keep it unscaled) and never enter the
    LADER statistics; see the `lade_tf.losses` module docstring.

    Args:
        class_counts: training images per class n [C], all positive.
        alpha: weight of LADER (>= 0), default 0.1 (CIFAR-100-LT; ImageNet-LT used 0.05).
        remine_lambda: ReMINE penalty lambda (>= 0), default 0.1.
        importance: "class" (default, the authors' code; better on CIFAR-10-LT, see the README's
            Results) or "sample" (the paper's equation).
        lader_classes: "all" (default, authors' code) or "present".
        reduction: Keras reduction, default "sum_over_batch_size".
        name: loss name.

    Examples:
        >>> loss = LADELoss([3, 1], alpha=0.0)  # alpha 0: Balanced Softmax
        >>> round(float(loss([0], [[0.0, 0.0]])), 4)
        0.2877
    """

    def __init__(
        self,
        class_counts: Sequence[float],
        alpha: float = 0.1,
        remine_lambda: float = 0.1,
        importance: str = "class",
        lader_classes: str = "all",
        reduction: str = "sum_over_batch_size",
        name: str = "lade_loss",
    ):
        super().__init__(name=name, reduction=reduction, dtype="float32")
        _check_lade_options(alpha, remine_lambda, importance, lader_classes)
        self.class_counts = class_counts_config(class_counts)
        self._log_prior = _log_source_prior(self.class_counts)
        self.alpha = float(alpha)
        self.remine_lambda = float(remine_lambda)
        self.importance = importance
        self.lader_classes = lader_classes

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return _lade_value(
            y_true,
            y_pred,
            self._log_prior,
            self.alpha,
            self.remine_lambda,
            self.importance,
            self.lader_classes,
        )

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "class_counts": self.class_counts,
            "alpha": self.alpha,
            "remine_lambda": self.remine_lambda,
            "importance": self.importance,
            "lader_classes": self.lader_classes,
        }


def make_loss(name: str, class_counts: Sequence[float] | None, **options: Any) -> keras.losses.Loss:
    """The training loss called `name` (one of LOSS_NAMES) for a data set with `class_counts`.

    Args:
        name: "ce" (keras SparseCategoricalCrossentropy on logits), "lade", "balanced_softmax"
            or "logit_adjusted".
        class_counts: training images per class [C]; may be None for "ce" only.
        **options: the loss's own options ("lade": alpha, remine_lambda, importance,
            lader_classes; "logit_adjusted": tau; none for the others).

    Returns:
        A `keras.losses.Loss` taking (labels, logits).

    Raises:
        ValueError: unknown name (lists LOSS_NAMES), an option the loss does not take (lists the
            ones it takes), or invalid class counts.
    """
    if name not in LOSS_OPTIONS:
        raise ValueError(f"loss name {name!r} is unknown: expected one of {LOSS_NAMES}")
    unknown = sorted(set(options) - set(LOSS_OPTIONS[name]))
    if unknown:
        raise ValueError(
            f"loss {name!r} takes no option(s) {unknown}: it accepts "
            f"{list(LOSS_OPTIONS[name]) or 'none'}"
        )
    if name == "ce":
        if class_counts is not None:
            source_prior(class_counts)
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if class_counts is None:
        raise ValueError(f"loss {name!r} needs class_counts (training images per class), got None")
    if name == "lade":
        return LADELoss(class_counts, **options)
    if name == "balanced_softmax":
        return BalancedSoftmaxLoss(class_counts)
    return LogitAdjustedLoss(class_counts, **options)
