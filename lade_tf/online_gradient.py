"""Online gradient descent for a drifting target prior, as the authors' code computes it
(acmi-lab/OnlineLabelShift): ROGD (Wu et al. 2021) on the reweighting of the posteriors, and UOGD
(Baby et al. 2023) on the last linear layer of the classifier. NumPy only."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lade_tf.checks import check_labels, check_prior
from lade_tf.local_estimates import LocalEstimator, SoftBBSE, local_estimator_from_state
from lade_tf.tracking_checks import (
    STATE_FORMAT,
    HeldPrior,
    check_state,
    label_distribution,
    positive_int,
    positive_number,
    reference_data,
    require_every_class,
    state_array,
)

#: ROGD: the authors' bound on the analytic gradient's norm above which they fall back to
#: central finite differences (step 1e-2, order 3), and their Lipschitz sampling (100 random
#: priors in `run_ols.py`).
ROGD_GRADIENT_LIMIT = 10.0
ROGD_LIPSCHITZ_TRIES = 100
#: UOGD: tries of the Lipschitz sampling of the linear layer's gradient (the authors' 500).
UOGD_LIPSCHITZ_TRIES = 500


def project_to_simplex(vector: Any) -> np.ndarray:
    """Euclidean projection onto the probability simplex (the authors' `proj_to_probsimplex`,
    Chen and Ye 2011).

    Formula: u = v sorted decreasingly, rho = the largest j (from 1) with
    u_j + (1 - sum_{k<=j} u_k) / j > 0, theta = (1 - sum_{k<=rho} u_k) / rho,
    result = max(v + theta, 0).
    """
    vector = np.asarray(vector, dtype=np.float64)
    if vector.ndim != 1 or not vector.size or not np.isfinite(vector).all():
        raise ValueError(f"vector has shape {vector.shape}: expected a finite 1-D vector")
    ordered = np.sort(vector)[::-1]
    sizes = np.arange(1, vector.size + 1)
    rho = int(np.flatnonzero(ordered + (1 - np.cumsum(ordered)) / sizes > 0)[-1])
    theta = 1 / (rho + 1) * (1 - np.sum(ordered[: rho + 1]))
    return np.maximum(vector + theta, 0.0)


def finite_gradient(
    function: Callable[[np.ndarray], Any], x0: np.ndarray, delta: float, order: int
) -> np.ndarray:
    """Central finite-difference gradient of order `order` (the authors' `finite_gradient`):
    g_i = sum_{j=1..k} (f(x + j delta e_i) - f(x - j delta e_i)) alpha_j / (2 delta j),
    alpha_j = 2 (-1)^(j+1) C(k, k-j) / C(k+j, k).

    Returns:
        [n] for a scalar f of x0 [n]; [n, *shape] (the Jacobian, row i = d f / d x_i) for an
        array-valued f.
    """
    rows = []
    for i in range(x0.shape[0]):
        step = np.zeros(x0.shape[0])
        step[i] = 1
        grad: Any = 0.0
        for j in range(1, order + 1):
            difference = function(x0 + j * delta * step) - function(x0 - j * delta * step)
            alpha = 2 * (-1) ** (j + 1) * math.comb(order, order - j) / math.comb(order + j, order)
            grad = grad + difference * alpha / (2 * delta * j)
        rows.append(grad)
    return np.asarray(rows, dtype=np.float64)


class ROGDTracker(HeldPrior):
    """ROGD (Wu et al. 2021): online projected gradient descent on the prior, as the authors'
    `RegularOnlineGradientEstimator` with the smooth loss (the default), on per-batch local
    estimates e_t.

    Formula (reference data: calibrated posteriors P [M, C] for p_r, labels y; a = P / p_r):
        w_k(p)  = a_k * p / sum_c a_kc p_c                (reweighted reference posteriors)
        D_j(p)  = (1 / M) sum_{k: y_k = j} w_kj(p)        (diagonal of the joint soft
                                                           confusion matrix)
        L(p; e) = sum_j e_j (1 - D_j(p))
        p_{t+1} = Proj_simplex(p_t - lr grad_p L(p_t; e_t)),  p_0 = p_s
    grad_p L is the analytic derivative of the authors' code (a column j with p_j < 1e-7
    contributes nothing); when its norm exceeds 10 the authors' central finite differences
    (step 1e-2, order 3) replace it. The authors' smooth loss weights the reference
    posteriors by p alone, which is this formula when the reference labels are balanced (as in
    this project); dividing by p_r keeps it the reweighting the predictions use otherwise.
    `update(batch t)` returns p_{t+1}, the prior for batch t + 1.

    Learning rate: `lr`, or the authors' sqrt(2 / T) / L for a stream of T = `total_steps`
    batches with the Lipschitz constant L given or estimated as theirs (`lipschitz`; their
    `run_ols.py` uses a constant stored per data set and model by default).

    Args:
        local_estimator: `SoftBBSE` or `BatchEM`, the per-batch estimate e_t.
        source_prior: p_s [C], the starting estimate.
        reference_posteriors: calibrated posteriors [M, C] of the labelled reference
            (validation) images, for p_r.
        reference_labels: their labels [M]; every class must occur.
        lr: the learning rate; None for the authors' default (needs total_steps).
        total_steps: T, the stream's length in batches (for the default lr).
        lipschitz: L for the default lr; None estimates it (`ROGDTracker.lipschitz`).
        lipschitz_tries, seed: the estimate's random priors and their generator's seed.
    """

    kind = "rogd"

    def __init__(
        self,
        local_estimator: LocalEstimator,
        source_prior: Sequence[float],
        reference_posteriors: Any,
        reference_labels: Any,
        *,
        lr: float | None = None,
        total_steps: int | None = None,
        lipschitz: float | None = None,
        lipschitz_tries: int = ROGD_LIPSCHITZ_TRIES,
        seed: int = 0,
    ):
        self.local_estimator = local_estimator
        num_classes = local_estimator.num_classes
        self.source_prior = check_prior(source_prior, "source_prior", num_classes=num_classes)
        self.reference_posteriors, self.reference_labels = reference_data(
            reference_posteriors, reference_labels, num_classes, "reference"
        )
        if lr is None:
            if total_steps is None:
                raise ValueError(
                    "lr = None and total_steps = None: give a learning rate, or the stream's "
                    "length in batches for the authors' default sqrt(2 / T) / L"
                )
            total_steps = positive_int("total_steps", total_steps)
            if lipschitz is None:
                lipschitz = self.lipschitz(lipschitz_tries, seed)
            lipschitz = positive_number("lipschitz", lipschitz, "a Lipschitz constant > 0")
            lr = (2 / total_steps) ** (1 / 2) / lipschitz
        self.lr = positive_number("lr", lr, "a learning rate > 0")
        self._prior = self.source_prior.copy()

    @property
    def _scaled_posteriors(self) -> np.ndarray:
        """a = P / p_r with p_r the reference labels' distribution."""
        return self.reference_posteriors / label_distribution(
            self.reference_labels, self.num_classes
        )

    def smooth_loss(self, prior: np.ndarray, local: np.ndarray) -> float:
        """L(p; e) = sum_j e_j (1 - D_j(p)) (the authors' `get_smooth_loss`)."""
        weighted = self._scaled_posteriors * prior
        weighted = weighted / weighted.sum(axis=1)[:, np.newaxis]
        labels = self.reference_labels
        diagonal = np.bincount(labels, weighted[np.arange(labels.size), labels], self.num_classes)
        return float((1 - diagonal / labels.size) @ local)

    def smooth_gradient(self, prior: np.ndarray, local: np.ndarray) -> np.ndarray:
        """grad_p L(p; e), analytic (the authors' `get_analytical_smooth_grad`, vectorised).

        Formula (S_k = sum_c a_kc p_c): dD_j/dp_i = (1 / M) sum_{k: y_k = j}
        (delta_ij a_ki / S_k - a_ki a_kj p_j / S_k^2), set to 0 for p_j < 1e-7; grad = -G e.
        """
        scaled, labels = self._scaled_posteriors, self.reference_labels
        totals = (scaled * prior).sum(axis=1)
        own = scaled[np.arange(labels.size), labels]
        onehot = np.eye(self.num_classes)[labels]
        derivative = -(scaled * (own * prior[labels] / totals**2)[:, None]).T @ onehot
        derivative += np.diag(onehot.T @ (own / totals))
        derivative /= labels.size
        derivative[:, prior < 1e-7] = 0.0
        return -derivative @ local

    def update(self, posteriors: Any) -> np.ndarray:
        """Adds one batch of calibrated posteriors [n >= 1, C]; returns the prior [C] for the
        next batch."""
        local = self.local_estimator.estimate(posteriors)
        grad = self.smooth_gradient(self._prior, local)
        if np.linalg.norm(grad) > ROGD_GRADIENT_LIMIT:
            grad = finite_gradient(
                lambda p: self.smooth_loss(p, local), self._prior, delta=1e-2, order=3
            )
        self._prior = project_to_simplex(self._prior - self.lr * grad)
        return self.prior

    def lipschitz(self, tries: int = ROGD_LIPSCHITZ_TRIES, seed: int = 0) -> float:
        """The authors' Lipschitz estimate (`estimate_lipschitz`), seeded.

        Formula: the largest ||grad_p L01(p; e)|| over `tries` random priors p (normalised
        exponential draws: uniform on the simplex) and, for each, the local estimates e = BBSE
        of every one-hot predicted marginal; L01 is the 0-1 version of L (D_j = the joint
        confusion's diagonal of argmax_c a_kc p_c) and its gradient the central finite
        differences of `finite_gradient` (step 1e-2, order 3). The BBSE is the local
        estimator when it is a `SoftBBSE`, else one on the reference data.
        """
        tries = positive_int("lipschitz_tries", tries)
        bbse = (
            self.local_estimator
            if isinstance(self.local_estimator, SoftBBSE)
            else SoftBBSE(self.reference_posteriors, self.reference_labels)
        )
        locals_ = np.stack([bbse.estimate_from_marginal(e) for e in np.eye(self.num_classes)])
        scaled, labels = self._scaled_posteriors, self.reference_labels

        def missed(p: np.ndarray) -> np.ndarray:
            """1 - D(p) [C] of the 0-1 rule; L01(p; e) = missed(p) @ e is linear in e."""
            predicted = np.argmax(scaled * p, axis=-1)
            hits = np.bincount(labels[predicted == labels], minlength=self.num_classes)
            return 1 - hits / labels.size

        rng = np.random.default_rng(seed)
        largest = -1.0
        for _ in range(tries):
            exponential = rng.exponential(scale=1.0, size=self.num_classes)
            prior = exponential / sum(exponential)
            jacobian = finite_gradient(missed, prior, delta=1e-2, order=3)
            largest = max(largest, float(np.linalg.norm(jacobian @ locals_.T, axis=0).max()))
        return largest

    def state(self) -> dict[str, Any]:
        """JSON-safe state: the learning rate, the reference data, the estimate and the local
        estimator's state."""
        return {
            "format": STATE_FORMAT,
            "kind": self.kind,
            "source_prior": self.source_prior.tolist(),
            "lr": self.lr,
            "reference_posteriors": self.reference_posteriors.tolist(),
            "reference_labels": self.reference_labels.tolist(),
            "prior": self._prior.tolist(),
            "local_estimator": self.local_estimator.state(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "ROGDTracker":
        """The tracker a `state()` document describes, continuing where it stopped."""
        check_state(state, cls.kind)
        tracker = cls(
            local_estimator_from_state(state["local_estimator"]),
            state["source_prior"],
            state["reference_posteriors"],
            state["reference_labels"],
            lr=state["lr"],
        )
        # As stored, not renormalised once more: the continuation is exact.
        tracker.reference_posteriors = state_array(
            state["reference_posteriors"],
            "reference_posteriors",
            tracker.reference_posteriors.shape,
        )
        tracker._prior = state_array(state["prior"], "prior", (tracker.num_classes,))
        return tracker


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class UOGDClassifier:
    """UOGD (Baby et al. 2023), as the authors' `UnbiasedOnlineGradientDescentClassifier`: it
    adapts the classifier's last linear layer, NOT the prior, so it cannot be served through a
    prior input; its predictions are the argmax of `logits(features)` as they are (no
    inference-rule offset: the weighted loss fits W to the target distribution itself).

    Formula (kernel W [d, C] and frozen bias b of the last Dense layer; reference (validation)
    features X [M, d] and labels y; local estimate e_t of batch t from the fixed base model's
    calibrated posteriors):
        v       = e_t / p_w                                   (class weights; p_w = p_r)
        L(W)    = sum_k v_{y_k} CE(x_k W + b, y_k) / sum_k v_{y_k}
                  (torch CrossEntropyLoss(weight=v), mean reduction)
        grad    = X^T ((softmax(X W + b) - onehot(y)) * v_y) / sum_k v_{y_k}
        W      <- W - lr grad;   W <- W ||W_0||_F / ||W||_F   (back to the initial norm)
    `update(batch t)` returns W for batch t + 1 (batch t is predicted before its update).
    The authors divide by their training prior, which is their reference split's label
    distribution; here p_w defaults to the reference labels' distribution (pass p_s as
    `weight_prior` to reproduce them literally where they differ).

    Learning rate: `lr`, or the authors' 2 ||W_0||_F / (L sqrt(T)) for T = `total_steps` with
    the Lipschitz constant L given or estimated (`uogd_lipschitz`).

    Args:
        local_estimator: `SoftBBSE` or `BatchEM`, the per-batch estimate e_t.
        kernel: W_0 [d, C] (Keras Dense layout: logits = features @ kernel + bias).
        bias: b [C], frozen (the authors' `linear.bias` has requires_grad False).
        reference_features: X [M, d], the penultimate features of the reference images.
        reference_labels: y [M]; every class must occur.
        weight_prior: p_w [C]; default the reference labels' distribution.
        lr, total_steps, lipschitz, lipschitz_tries, seed: the learning rate, as above.
        initial_norm: ||W_0||_F, the norm every step projects back to; default the kernel's
            (`from_state` passes the original's).
    """

    kind = "uogd"

    def __init__(
        self,
        local_estimator: LocalEstimator,
        kernel: Any,
        bias: Any,
        reference_features: Any,
        reference_labels: Any,
        *,
        weight_prior: Sequence[float] | None = None,
        lr: float | None = None,
        total_steps: int | None = None,
        lipschitz: float | None = None,
        lipschitz_tries: int = UOGD_LIPSCHITZ_TRIES,
        seed: int = 0,
        initial_norm: float | None = None,
    ):
        self.local_estimator = local_estimator
        num_classes = local_estimator.num_classes
        kernel = np.asarray(kernel, dtype=np.float64)
        if kernel.ndim != 2 or kernel.shape[1] != num_classes or not np.isfinite(kernel).all():
            raise ValueError(
                f"kernel has shape {kernel.shape}: expected finite [d, {num_classes}] "
                "(Keras Dense layout)"
            )
        self.kernel = kernel.copy()
        self.bias = state_array(bias, "bias", (num_classes,))
        features = state_array(reference_features, "reference_features")
        if features.ndim != 2 or features.shape[1] != kernel.shape[0] or not len(features):
            raise ValueError(
                f"reference_features has shape {features.shape}: expected [M >= 1, "
                f"{kernel.shape[0]}] (one feature row per reference image)"
            )
        self.reference_features = features
        self.reference_labels = check_labels(
            reference_labels,
            num_classes,
            len(features),
            "reference_labels",
            rows_of="reference_features",
        )
        require_every_class(self.reference_labels, num_classes, "reference_labels")
        self.weight_prior = check_prior(
            label_distribution(self.reference_labels, num_classes)
            if weight_prior is None
            else weight_prior,
            "weight_prior",
            num_classes=num_classes,
            zeros=False,
        )
        self.initial_norm = (
            float(np.linalg.norm(kernel))
            if initial_norm is None
            else positive_number("initial_norm", initial_norm, "a norm > 0")
        )
        if lr is None:
            if total_steps is None:
                raise ValueError(
                    "lr = None and total_steps = None: give a learning rate, or the stream's "
                    "length in batches for the authors' default 2 ||W|| / (L sqrt(T))"
                )
            total_steps = positive_int("total_steps", total_steps)
            if lipschitz is None:
                lipschitz = uogd_lipschitz(
                    kernel, self.bias, features, tries=lipschitz_tries, seed=seed
                )
            lipschitz = positive_number("lipschitz", lipschitz, "a Lipschitz constant > 0")
            lr = 2 * self.initial_norm / lipschitz / (total_steps ** (1 / 2))
        self.lr = positive_number("lr", lr, "a learning rate > 0")

    @property
    def num_classes(self) -> int:
        """C."""
        return self.bias.size

    def logits(self, features: Any) -> np.ndarray:
        """The adapted classifier's logits features @ W + b, float64 [N, C]."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.kernel.shape[0]:
            raise ValueError(
                f"features have shape {features.shape}: expected [N, {self.kernel.shape[0]}]"
            )
        return features @ self.kernel + self.bias

    def loss_and_gradient(self, local: np.ndarray) -> tuple[float, np.ndarray]:
        """The weighted cross-entropy L(W) on the reference data and its gradient [d, C]."""
        labels = self.reference_labels
        class_weights = local / self.weight_prior
        weights = class_weights[labels]
        logits = self.logits(self.reference_features)
        probs = _softmax(logits)
        log_probs = logits - logits.max(axis=1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(axis=1, keepdims=True))
        total = weights.sum()
        loss = float(-(weights * log_probs[np.arange(labels.size), labels]).sum() / total)
        residual = probs - np.eye(self.num_classes)[labels]
        return loss, self.reference_features.T @ (residual * weights[:, None]) / total

    def update(self, posteriors: Any) -> np.ndarray:
        """One step on one batch of calibrated posteriors [n >= 1, C] (the base model's);
        returns the kernel W [d, C] for the next batch."""
        local = self.local_estimator.estimate(posteriors)
        _, grad = self.loss_and_gradient(local)
        kernel = self.kernel - self.lr * grad
        self.kernel = kernel / np.linalg.norm(kernel) * self.initial_norm
        return self.kernel.copy()

    def state(self) -> dict[str, Any]:
        """JSON-safe state: the kernel, bias, norm, learning rate, reference data and the local
        estimator's state."""
        return {
            "format": STATE_FORMAT,
            "kind": self.kind,
            "kernel": self.kernel.tolist(),
            "bias": self.bias.tolist(),
            "initial_norm": self.initial_norm,
            "lr": self.lr,
            "weight_prior": self.weight_prior.tolist(),
            "reference_features": self.reference_features.tolist(),
            "reference_labels": self.reference_labels.tolist(),
            "local_estimator": self.local_estimator.state(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "UOGDClassifier":
        """The classifier a `state()` document describes, continuing where it stopped."""
        check_state(state, cls.kind)
        return cls(
            local_estimator_from_state(state["local_estimator"]),
            state["kernel"],
            state["bias"],
            state["reference_features"],
            state["reference_labels"],
            weight_prior=state["weight_prior"],
            lr=state["lr"],
            initial_norm=state["initial_norm"],
        )


def uogd_lipschitz(
    kernel: Any,
    bias: Any,
    reference_features: Any,
    *,
    tries: int = UOGD_LIPSCHITZ_TRIES,
    seed: int = 0,
) -> float:
    """A sampled Lipschitz constant of the cross-entropy in the last layer's kernel, seeded
    (after the authors' `sample_linear_weight_lipschitz`).

    Formula: the largest ||d CE(x W + b, y) / dW||_F = ||x|| ||softmax(x W + b) - onehot(y)||
    over `tries` draws of a kernel W (a Gaussian direction scaled to U(0, 1) ||W_0||_F), a
    reference feature row x and a label y (uniform). The authors push Gaussian-noise inputs
    through their feature extractor; a features-only object draws reference features instead.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    bias = np.asarray(bias, dtype=np.float64)
    features = np.asarray(reference_features, dtype=np.float64)
    tries = positive_int("tries", tries)
    rng = np.random.default_rng(seed)
    norm = np.linalg.norm(kernel)
    largest = -1.0
    for _ in range(tries):
        direction = rng.standard_normal(kernel.shape)
        weight = direction / np.linalg.norm(direction) * (rng.random() * norm)
        row = features[rng.integers(len(features))]
        label = rng.integers(kernel.shape[1])
        residual = _softmax((row @ weight + bias)[None])[0]
        residual[label] -= 1.0
        largest = max(largest, float(np.linalg.norm(row) * np.linalg.norm(residual)))
    return largest
