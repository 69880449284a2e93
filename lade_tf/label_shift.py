"""Label-shift estimation: the target prior p_t of an unlabeled sample from its posteriors, and
how far an estimate is from the truth (docs/design.md section 7).

EM (Saerens et al. 2002) as maximum likelihood or as a MAP estimate under a Dirichlet prior, and
BBSE (Lipton et al. 2018); the L1 distance and the Jensen-Shannon divergence between priors.
`lade_tf.prior_estimation.TargetPriorEstimator` applies them to a trained model's raw logits after
calibration (`lade_tf.calibration`). NumPy only.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lade_tf.checks import check_labels, check_non_negative, check_prior, check_probabilities

ESTIMATION_METHODS = ("em", "bbse")
#: EM stopping rule (docs/design.md section 7; Saerens et al. 2002): largest change of pi, step
#: limit.
EM_TOLERANCE = 1e-6
EM_MAX_ITERATIONS = 100
#: Pseudo-count strength of the Dirichlet prior of MAP-EM where a default is needed (the served
#: `estimate_prior`, `lade_tf.prior_estimation`): worth 10 target images, so one image moves the
#: estimate at most 2 / 11 (L1) from the source prior, while 1000 images outweigh it 100 to 1
#: (plain EM's one-image answer is one-hot; README, Unknown target prior, has the measurements).
DEFAULT_PRIOR_STRENGTH = 10.0


def estimate_target_prior(
    probs: np.ndarray,
    source_prior: Sequence[float],
    method: str = "em",
    *,
    prior_strength: float = 0.0,
    prior_centre: Sequence[float] | None = None,
    tol: float = EM_TOLERANCE,
    max_iter: int = EM_MAX_ITERATIONS,
    val_probs: np.ndarray | None = None,
    val_labels: Sequence[int] | None = None,
) -> np.ndarray:
    """Estimate the label distribution p_t of an unlabeled target sample (label shift).

    Formula:
        em (Saerens et al. 2002, maximum likelihood; MAP with a Dirichlet prior when
        prior_strength = lambda > 0): start at pi = p_s, repeat
            q(y|x_i) = p(y|x_i) pi(y) / p_s(y) / sum_c p(c|x_i) pi(c) / p_s(c)
            pi = (sum_i q(.|x_i) + lambda * m) / (N + lambda)
            until max |pi_new - pi| < tol or max_iter steps.
        The second line is the M-step of the posterior mode under Dirichlet(1 + lambda * m):
        lambda pseudo-images distributed as the centre m (default p_s). lambda = 0 is plain EM
        (pi = mean_i q); one image then gives a nearly one-hot pi, while with lambda > 0 a
        small batch stays near m and a batch much larger than lambda gives the EM answer.
        bbse (Lipton et al. 2018, black-box shift estimation): with hard predictions
            yhat = argmax p(.|x), the confusion matrix M[i, j] = P_val(yhat = i | y = j) and the
            predicted-label distribution mu[i] = P_target(yhat = i), solve M p_t = mu (least
            squares), clip at 0 and renormalise. Lipton's w = C^-1 mu with the joint matrix
            C = M diag(p_s) gives the same p_t = w p_s; the per-class form lets the validation
            split have any label distribution (it is balanced in this project).

    Args:
        probs: [N >= 1, C] class probabilities p(y|x) of the target samples, rows summing to 1,
            calibrated for the distribution `source_prior` (for EM; BBSE uses only their argmax).
        source_prior: p_s [C], the label distribution `probs` are posteriors for.
        method: "em" or "bbse".
        prior_strength: lambda >= 0, the Dirichlet pseudo-count of MAP-EM (EM only; 0 = plain
            maximum likelihood). DEFAULT_PRIOR_STRENGTH is the project's served default.
        prior_centre: m [C], the Dirichlet prior's mean; default `source_prior`.
        tol: EM stopping threshold on the largest change of pi.
        max_iter: EM step limit.
        val_probs: [M, C] probabilities of labelled validation samples (BBSE only).
        val_labels: [M] their labels (BBSE only); every class must occur.

    Returns:
        float64 [C], non-negative, summing to 1.

    Raises:
        ValueError: for an unknown method; probabilities with the wrong width, an empty batch,
            NaN / infinite / negative entries or rows not summing to 1 (the message names the
            row and its values); bad priors or options; BBSE without validation data or with a
            class absent from it.
    """
    prior = check_prior(source_prior, "source_prior", zeros=False)
    probs = _normalised_probabilities(probs, prior.size, "probs")
    if method == "em":
        if not tol > 0 or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
            raise ValueError(
                f"tol = {tol!r}, max_iter = {max_iter!r}: expected tol > 0 and max_iter >= 1"
            )
        strength = check_prior_strength(prior_strength)
        centre = (
            prior
            if prior_centre is None
            else check_prior(prior_centre, "prior_centre", zeros=False)
        )
        if centre.size != prior.size:
            raise ValueError(
                f"prior_centre has {centre.size} entries: expected {prior.size}, "
                "one per class of source_prior"
            )
        return _em_prior(probs, prior, tol, int(max_iter), strength, centre)
    if method == "bbse":
        if prior_strength:
            raise ValueError(
                f"prior_strength = {prior_strength!r} with method='bbse': the "
                "Dirichlet prior belongs to EM; use prior_strength=0"
            )
        if val_probs is None or val_labels is None:
            raise ValueError(
                "method='bbse' needs val_probs and val_labels (labelled validation data)"
            )
        val_probs = _normalised_probabilities(val_probs, prior.size, "val_probs")
        val_labels = check_labels(
            val_labels, prior.size, len(val_probs), "val_labels", rows_of="val_probs"
        )
        return _bbse_prior(probs, val_probs, val_labels)
    raise ValueError(f"method = {method!r}: expected one of {ESTIMATION_METHODS}")


def check_prior_strength(prior_strength: float) -> float:
    """The Dirichlet pseudo-count of MAP-EM as a float; ValueError unless finite and >= 0."""
    return check_non_negative(
        "prior_strength", prior_strength, "a finite pseudo-count >= 0 (0 = plain EM)"
    )


def _em_prior(
    probs: np.ndarray,
    prior: np.ndarray,
    tol: float,
    max_iter: int,
    strength: float,
    centre: np.ndarray,
) -> np.ndarray:
    pi = prior.copy()
    pseudo_counts = strength * centre
    for _ in range(max_iter):
        weighted = probs * (pi / prior)
        weighted /= np.maximum(weighted.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)
        new_pi = (weighted.sum(axis=0) + pseudo_counts) / (len(probs) + strength)
        change = np.abs(new_pi - pi).max()
        pi = new_pi
        if change < tol:
            break
    return pi / pi.sum()


def _bbse_prior(probs: np.ndarray, val_probs: np.ndarray, val_labels: np.ndarray) -> np.ndarray:
    num_classes = probs.shape[1]
    per_class = np.bincount(val_labels, minlength=num_classes)
    if (per_class == 0).any():
        missing = np.flatnonzero(per_class == 0).tolist()
        raise ValueError(
            f"val_labels has no example of class(es) {missing}: BBSE needs every class"
        )
    confusion = np.zeros((num_classes, num_classes))
    np.add.at(confusion, (val_probs.argmax(axis=1), val_labels), 1.0)
    confusion /= per_class[np.newaxis, :]
    predicted = np.bincount(probs.argmax(axis=1), minlength=num_classes) / len(probs)
    solution = np.linalg.lstsq(confusion, predicted, rcond=None)[0]
    solution = np.clip(solution, 0.0, None)
    if solution.sum() <= 0:
        raise ValueError("BBSE found no non-negative prior: the confusion matrix is degenerate")
    return solution / solution.sum()


def jensen_shannon_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon divergence between two label distributions, in nats (0 .. log 2).

    Formula:
        JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2,  m = (p + q) / 2,  0 log 0 = 0.

    Raises:
        ValueError: for distributions of different lengths or that are not non-negative with a
            positive finite sum (both are normalised).
    """
    p = check_prior(p, "p")
    q = check_prior(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"p has {p.size} entries and q {q.size}: expected the same classes")
    m = (p + q) / 2

    def kl_to_m(a: np.ndarray) -> float:
        kept = a > 0
        return float(np.sum(a[kept] * np.log(a[kept] / m[kept])))

    return max(0.0, 0.5 * kl_to_m(p) + 0.5 * kl_to_m(q))


def prior_estimation_error(
    estimate: Sequence[float], true_prior: Sequence[float]
) -> dict[str, float]:
    """How far an estimated prior is from the true one: {"l1": sum |p - q|, "js": JS(p, q)}.

    L1 lies in 0..2, the Jensen-Shannon divergence in 0..log 2 nats (`jensen_shannon_divergence`);
    both distributions are normalised first.

    Raises:
        ValueError: as `jensen_shannon_divergence`.
    """
    p = check_prior(estimate, "estimate")
    q = check_prior(true_prior, "true_prior")
    if p.shape != q.shape:
        raise ValueError(
            f"estimate has {p.size} entries and true_prior {q.size}: expected the same classes"
        )
    return {"l1": float(np.abs(p - q).sum()), "js": jensen_shannon_divergence(p, q)}


def _normalised_probabilities(probs: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    probs = check_probabilities(probs, num_classes, name)
    return probs / probs.sum(axis=1, keepdims=True)
