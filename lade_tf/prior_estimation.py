"""Target-prior estimation from a trained model's raw logits, in one object (docs/design.md 7).

`TargetPriorEstimator` is the one entry point that the shift evaluation, the benchmark, the
ShiftEvaluator and the export (as the `estimate_prior` graph) share:

1. Source posteriors by the inference rule with p_t = p_r (`lade_tf.layers.correction_offset`):
       z = f + b + log p_r
   so softmax(z) = p_r(y|x): softmax(f) for CE, softmax(f + log p_r) for LADE / Balanced Softmax,
   softmax(f + tau log p_s) at p_r = p_s for the logit-adjusted loss. The reference prior p_r is
   the label distribution of the validation split when a calibration is fitted there (so the
   calibrated posteriors are posteriors for that split), else the training prior p_s.
2. Calibration fitted on the validation split (`lade_tf.calibration.Calibrator`), a linear map
   of log-probabilities:
       z_cal = log_softmax(z) @ M^T + beta    (Dirichlet calibration by default: M fitted;
                                               BCTS / temperature: M = I / T; "none": identity)
3. EM on softmax(z_cal) with p_r as the source prior, as a MAP estimate under a Dirichlet prior
   centred on the training prior p_s with `prior_strength` pseudo-images
   (`lade_tf.label_shift.estimate_target_prior`), or BBSE.

Steps 1 and 2 together are z_cal = log_softmax(f + c) @ M^T + beta with c = b + log p_r: the
three constants the serving graph bakes in (`posterior_map`). NumPy only.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from lade_tf.calibration import (
    CALIBRATIONS,
    DEFAULT_CALIBRATION,
    Calibrator,
    log_softmax,
    softmax,
)
from lade_tf.checks import check_choice, check_labels, check_logits
from lade_tf.label_shift import (
    DEFAULT_PRIOR_STRENGTH,
    EM_MAX_ITERATIONS,
    EM_TOLERANCE,
    ESTIMATION_METHODS,
    check_prior_strength,
    estimate_target_prior,
)
from lade_tf.layers import correction_offset
from lade_tf.priors import source_prior

#: Version tag of `TargetPriorEstimator.to_config` documents.
CONFIG_FORMAT = "lade_tf.prior_estimation/2"
#: Earlier formats `from_config` still reads (the same keys; affine calibrations only).
READABLE_FORMATS = ("lade_tf.prior_estimation/1", CONFIG_FORMAT)


class TargetPriorEstimator:
    """Estimates the target label prior p_t of a batch from a trained model's raw logits.

    Formula (C classes, f raw logits [N, C], b the inference-rule offset of the training loss):
        z     = f + b + log p_r                  (log p_r(y|x) up to a row constant)
        z_cal = calibration(z)                   (fitted on validation logits and labels)
        em:   pi <- (sum_i q_i + lambda * p_s) / (N + lambda),
              q_i(y) ∝ softmax(z_cal_i)(y) * pi(y) / p_r(y)   (Dirichlet-MAP EM; lambda = 0: EM)
        bbse: M p_t = mu with the validation confusion matrix of argmax z_cal (Lipton et al.)
    p_r = validation label distribution when calibration != "none", else p_s.

    Args:
        class_counts: training images per class [C] (p_s, the inference rule, the EM centre).
        train_loss: the loss the model was trained with (`lade_tf.losses.LOSS_NAMES`).
        tau: the logit-adjusted loss's temperature (1.0 for other losses).
        method: "em" (default) or "bbse".
        calibration: "dirichlet" (default), "bcts", "temperature" or "none".
        prior_strength: lambda, the Dirichlet pseudo-count of MAP-EM; None gives
            DEFAULT_PRIOR_STRENGTH for EM (0 for BBSE, which takes no prior).
        tol, max_iter: EM stopping rule.

    Calibration and BBSE need `fit(val_logits, val_labels)` before `estimate`; "em" with
    calibration "none" works unfitted.

    Examples:
        >>> estimator = TargetPriorEstimator([30, 10], "ce", calibration="none", prior_strength=0)
        >>> estimator.estimate(np.array([[3.0, 0.0], [0.0, 3.0]])).round(3).tolist()
        [0.421, 0.579]
    """

    def __init__(
        self,
        class_counts: Sequence[float],
        train_loss: str,
        *,
        tau: float = 1.0,
        method: str = "em",
        calibration: str = DEFAULT_CALIBRATION,
        prior_strength: float | None = None,
        tol: float = EM_TOLERANCE,
        max_iter: int = EM_MAX_ITERATIONS,
    ):
        check_choice("method", method, ESTIMATION_METHODS)
        check_choice("calibration", calibration, CALIBRATIONS)
        if prior_strength is None:
            prior_strength = DEFAULT_PRIOR_STRENGTH if method == "em" else 0.0
        strength = check_prior_strength(prior_strength)
        if method == "bbse" and strength:
            raise ValueError(
                f"prior_strength = {prior_strength!r} with method='bbse': the "
                "Dirichlet prior belongs to EM; use 0 or None"
            )
        if (
            not tol > 0
            or isinstance(max_iter, bool)
            or not isinstance(max_iter, int)
            or max_iter < 1
        ):
            raise ValueError(
                f"tol = {tol!r}, max_iter = {max_iter!r}: expected tol > 0 and "
                "an integer max_iter >= 1"
            )
        self.class_counts = [float(n) for n in class_counts]
        self.train_loss = train_loss
        self.tau = float(tau)
        self.method = method
        self.calibration = calibration
        self.prior_strength = strength
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self._offset = correction_offset(self.class_counts, train_loss, tau)
        self.source_prior = source_prior(self.class_counts)
        self.reference_prior = self.source_prior
        self.calibrator: Calibrator | None = Calibrator() if calibration == "none" else None
        self._val_probs: np.ndarray | None = None
        #: The joint soft confusion matrix of the calibrated validation posteriors, A[i, j] =
        #: (1 / M) sum_{k: y_k = j} q_k(i): what a tracker's soft-BBSE local estimate needs
        #: (`lade_tf.local_estimates.SoftBBSE`); None until fitted on a validation split.
        self.reference_confusion: np.ndarray | None = None
        self._val_labels: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        """C."""
        return self.source_prior.size

    @property
    def needs_validation(self) -> bool:
        """True when `fit` must run first (a calibration to fit, or BBSE's confusion matrix)."""
        return self.calibration != "none" or self.method == "bbse"

    @property
    def fitted(self) -> bool:
        """True when `estimate` can run."""
        return self.calibrator is not None and (
            self.method != "bbse" or self._val_probs is not None
        )

    def fit(self, val_logits: np.ndarray, val_labels: Sequence[int]) -> "TargetPriorEstimator":
        """Fits the calibration (and BBSE's confusion matrix) on labelled validation logits.

        Args:
            val_logits: raw logits f [M, C] of the validation split.
            val_labels: its labels [M]; every class must occur (the reference prior and the
                calibration's per-class parameters need them).

        Returns:
            self.

        Raises:
            ValueError: for malformed logits or labels, a class absent from `val_labels`, or a
                calibration that does not fit (see `lade_tf.calibration.Calibrator.fit`).
        """
        val_logits = check_logits(val_logits, self.num_classes, "val_logits")
        labels = check_labels(
            val_labels, self.num_classes, len(val_logits), "val_labels", rows_of="val_logits"
        )
        counts = np.bincount(labels, minlength=self.num_classes)
        if (counts == 0).any():
            raise ValueError(
                f"val_labels have no example of class(es) "
                f"{np.flatnonzero(counts == 0).tolist()}: calibration and BBSE "
                "need every class in the validation split"
            )
        reference = self.source_prior if self.calibration == "none" else counts / counts.sum()
        scores = val_logits + self._offset + np.log(reference)
        calibrator = Calibrator.fit(scores, labels, self.calibration)
        self.reference_prior, self.calibrator = reference, calibrator
        calibrated = softmax(calibrator.apply(scores))
        self.reference_confusion = calibrated.T @ np.eye(self.num_classes)[labels] / len(labels)
        if self.method == "bbse":
            self._val_probs = calibrated
            self._val_labels = labels
        return self

    def posterior_map(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(c, M, beta) with calibrated posterior logits z_cal = log_softmax(f + c) @ M^T + beta
        (for p_r, up to a row constant): c = b + log p_r [C], M [C, C], beta [C], float64.

        Raises:
            ValueError: if a calibration still has to be fitted.
        """
        calibrator = self._require_fitted()
        matrix, bias = calibrator.linear_map(self.num_classes)
        return self._offset + np.log(self.reference_prior), matrix, bias

    def posterior_logits(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated log-posteriors z_cal [N, C] (for p_r, up to a row constant) of raw logits."""
        logits = check_logits(logits, self.num_classes)
        offset, matrix, bias = self.posterior_map()
        return log_softmax(logits + offset) @ matrix.T + bias

    def posteriors(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated posteriors softmax(z_cal) [N, C] of raw logits, for the prior p_r."""
        return softmax(self.posterior_logits(logits))

    def estimate(self, logits: np.ndarray) -> np.ndarray:
        """The estimated target prior p_t, float64 [C] summing to 1, of a batch of raw logits.

        Args:
            logits: raw logits f [N >= 1, C] of unlabeled samples from the target distribution.

        Raises:
            ValueError: for an empty batch, the wrong width, NaN / infinite logits, or an
                estimator that still has to be fitted.
        """
        probs = self.posteriors(logits)
        return estimate_target_prior(
            probs,
            self.reference_prior,
            self.method,
            prior_strength=self.prior_strength,
            prior_centre=self.source_prior,
            tol=self.tol,
            max_iter=self.max_iter,
            val_probs=self._val_probs,
            val_labels=self._val_labels,
        )

    def to_config(self) -> dict[str, Any]:
        """JSON-safe description: the options, the fitted calibration and `posterior_map`.

        `from_config` rebuilds an EM estimator from it (BBSE's validation predictions are not
        stored).
        """
        calibrator = self._require_fitted()
        offset, matrix, bias = self.posterior_map()
        return {
            "format": CONFIG_FORMAT,
            "method": self.method,
            "class_counts": self.class_counts,
            "train_loss": self.train_loss,
            "tau": self.tau,
            "calibration": calibrator.to_dict(),
            "reference_prior": self.reference_prior.tolist(),
            "prior_centre": self.source_prior.tolist(),
            "prior_strength": self.prior_strength,
            "tolerance": self.tol,
            "max_iterations": self.max_iter,
            "posterior_offset": offset.tolist(),
            "posterior_matrix": matrix.tolist(),
            "posterior_bias": bias.tolist(),
            "reference_confusion": None
            if self.reference_confusion is None
            else self.reference_confusion.tolist(),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "TargetPriorEstimator":
        """The EM estimator a `to_config` document describes (e.g. a served model's metadata).

        Raises:
            ValueError: for another format, method "bbse", or inconsistent values.
        """
        if config.get("format") not in READABLE_FORMATS:
            raise ValueError(
                f"prior estimation format {config.get('format')!r}: expected one of "
                f"{READABLE_FORMATS}"
            )
        if config["method"] != "em":
            raise ValueError(
                f"method = {config['method']!r}: only an 'em' estimator can be "
                "rebuilt from its config (BBSE needs its validation predictions)"
            )
        calibrator = Calibrator.from_dict(config["calibration"])
        estimator = cls(
            config["class_counts"],
            config["train_loss"],
            tau=config["tau"],
            calibration=calibrator.method,
            prior_strength=config["prior_strength"],
            tol=config["tolerance"],
            max_iter=int(config["max_iterations"]),
        )
        reference = np.asarray(config["reference_prior"], np.float64)
        if reference.shape != (estimator.num_classes,) or not (reference > 0).all():
            raise ValueError(
                f"reference_prior = {config['reference_prior']!r}: expected "
                f"{estimator.num_classes} positive probabilities"
            )
        estimator.reference_prior = reference / reference.sum()
        estimator.calibrator = calibrator
        confusion = config.get("reference_confusion")
        if confusion is not None:
            confusion = np.asarray(confusion, np.float64)
            size = estimator.num_classes
            if confusion.shape != (size, size) or not np.isfinite(confusion).all():
                raise ValueError(
                    f"reference_confusion of shape {confusion.shape}: expected [{size}, {size}] "
                    "finite values"
                )
            estimator.reference_confusion = confusion
        return estimator

    def _require_fitted(self) -> Calibrator:
        if not self.fitted:
            raise ValueError(
                f"calibration = {self.calibration!r}, method = {self.method!r}: fit(val_logits, "
                "val_labels) on the validation split first (or use calibration='none' with EM)"
            )
        return self.calibrator
