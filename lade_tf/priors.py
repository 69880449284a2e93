"""Label priors: long-tailed class counts, shifted test distributions, target-prior estimation
(EM, BBSE) and the calibration (temperature scaling, BCTS) that estimation relies on.

Everything here is NumPy in, NumPy out, so the pipeline, the evaluator and the tests can use it
without building a Keras object.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

PROFILES = ("exp", "step")

#: The 11 test distributions of the shift protocol (DESIGN section 5), forward to backward.
SHIFT_NAMES = ("F50", "F25", "F10", "F5", "F2", "U", "B2", "B5", "B10", "B25", "B50")


def source_prior(class_counts: Sequence[float]) -> np.ndarray:
    """Training prior p_s(c) = n_c / sum(n) as float64 [C].

    Raises:
        ValueError: if a count is zero, negative or not finite (the error names the class), or if
            there are fewer than two classes.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size < 2:
        raise ValueError(
            f"class_counts must be a 1-D sequence of at least 2 counts, got shape {counts.shape}")
    for c, n in enumerate(counts):
        if not np.isfinite(n) or n <= 0:
            raise ValueError(
                f"class_counts[{c}] = {class_counts[c]!r}: every class needs a positive, finite "
                "training count (a class absent from training has no defined prior)")
    return counts / counts.sum()


def long_tail_counts(n_max: int, num_classes: int, imbalance_ratio: float,
                     profile: str = "exp") -> list[int]:
    """Per-class image counts of a long-tailed training set, class 0 the most frequent.

    Formula:
        exp:  n_k = floor(n_max * (1 / IR) ** (k / (C - 1)))
        step: n_k = n_max for the first C // 2 classes, floor(n_max / IR) for the rest

    Args:
        n_max: images kept for the most frequent class (>= 1).
        num_classes: C (>= 2).
        imbalance_ratio: IR = n_max / n_min (>= 1; 1 gives a balanced set).
        profile: "exp" (the usual CIFAR-LT profile) or "step".

    Returns:
        A list of C ints. Fashion-MNIST (6000, 10, 100) sums to 14,886; CIFAR-10 (5000, 10, 100) to
        12,406; CIFAR-100 (500, 100, 100 / 50 / 10) to 10,847 / 12,608 / 19,573.
    """
    if not isinstance(n_max, (int, np.integer)) or n_max < 1:
        raise ValueError(f"n_max = {n_max!r}: expected an integer >= 1")
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes = {num_classes!r}: expected an integer >= 2")
    if not math.isfinite(imbalance_ratio) or imbalance_ratio < 1:
        raise ValueError(
            f"imbalance_ratio = {imbalance_ratio!r}: expected a finite number >= 1 (n_max / n_min)")
    if profile == "exp":
        # Same expression (and float rounding) as the CIFAR-LT reference code, so totals match.
        factor = 1.0 / imbalance_ratio
        return [int(n_max * factor ** (k / (num_classes - 1.0))) for k in range(num_classes)]
    if profile == "step":
        n_min = max(1, int(n_max / imbalance_ratio))
        head = num_classes // 2
        return [n_max] * head + [n_min] * (num_classes - head)
    raise ValueError(f"profile = {profile!r}: expected one of {PROFILES}")


def shift_ratio(name: str) -> tuple[str, float]:
    """Direction and imbalance ratio rho of one of the 11 test distributions.

    Returns:
        ("forward", rho) for "F<rho>", ("backward", rho) for "B<rho>", ("uniform", 1.0) for "U".

    Raises:
        ValueError: if `name` is not in SHIFT_NAMES.
    """
    if name not in SHIFT_NAMES:
        raise ValueError(f"shift name {name!r}: expected one of {SHIFT_NAMES}")
    if name == "U":
        return "uniform", 1.0
    return ("forward" if name[0] == "F" else "backward"), float(name[1:])


def frequency_ranks(train_counts: Sequence[float]) -> np.ndarray:
    """Rank of every class by training frequency, 0 for the most frequent, as int64 [C].

    Ties keep label order (the smaller label gets the smaller rank).

    Raises:
        ValueError: as `source_prior` for invalid counts.
    """
    counts = source_prior(train_counts)
    order = np.argsort(-counts, kind="stable")
    ranks = np.empty(counts.size, dtype=np.int64)
    ranks[order] = np.arange(counts.size)
    return ranks


def shifted_test_counts(train_counts: Sequence[float], per_class: int, name: str) -> np.ndarray:
    """Test images kept per class (indexed by label) for one shifted test distribution.

    Formula (class of training-frequency rank k, C classes, m = per_class):
        forward  "F<rho>": floor(m * (1 / rho) ** (k / (C - 1)))
        backward "B<rho>": floor(m * (1 / rho) ** ((C - 1 - k) / (C - 1)))
        uniform  "U":      m
    Forward keeps the training order of head and tail, backward reverses it.

    Args:
        train_counts: training images per class [C], used only to rank the classes.
        per_class: m, test images available in every class (1000 for Fashion-MNIST and CIFAR-10,
            100 for CIFAR-100).
        name: one of SHIFT_NAMES.

    Returns:
        int64 [C]; every entry is between 0 and per_class.

    Raises:
        ValueError: for invalid counts, a per_class below 1 or an unknown name.
    """
    if not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ValueError(f"per_class = {per_class!r}: expected an integer >= 1")
    direction, rho = shift_ratio(name)
    ranks = frequency_ranks(train_counts)
    last = ranks.size - 1.0
    factor = 1.0 / rho
    kept = []
    for k in ranks:
        exponent = {"forward": k / last, "backward": (last - k) / last, "uniform": 0.0}[direction]
        kept.append(int(per_class * factor ** exponent))
    return np.asarray(kept, dtype=np.int64)


def shifted_priors(train_counts: Sequence[float], per_class: int) -> dict[str, np.ndarray]:
    """The 11 target priors p_t of the shift protocol: normalised `shifted_test_counts`.

    Returns:
        {name: float64 [C] summing to 1} for every name in SHIFT_NAMES, in that order. Classes
        that keep no test image have prior 0.
    """
    priors = {}
    for name in SHIFT_NAMES:
        counts = shifted_test_counts(train_counts, per_class, name).astype(np.float64)
        priors[name] = counts / counts.sum()
    return priors


def subsample_by_counts(labels: Sequence[int], counts: Sequence[int], seed: int) -> np.ndarray:
    """Seeded sample without replacement of `counts[c]` examples of every class c.

    Args:
        labels: integer labels [N] in 0..C-1.
        counts: examples to keep per class [C], each at most the number of examples of that class.
        seed: NumPy random seed; the same seed gives the same indices.

    Returns:
        Sorted int64 indices into `labels`, sum(counts) of them.

    Raises:
        ValueError: if labels fall outside 0..C-1, a count is negative or not an integer, or a
            class has fewer examples than requested (the error names the class).
    """
    labels = np.asarray(labels)
    counts = np.asarray(counts)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected a 1-D integer array, got {labels.dtype} {labels.shape}")
    if counts.ndim != 1 or not np.issubdtype(counts.dtype, np.integer) or (counts < 0).any():
        raise ValueError(f"counts = {counts.tolist()}: expected a 1-D array of integers >= 0")
    if labels.size and (labels.min() < 0 or labels.max() >= counts.size):
        raise ValueError(f"labels span {labels.min()}..{labels.max()}: expected "
                         f"0..{counts.size - 1} (one count per class, {counts.size} counts given)")
    rng = np.random.default_rng(seed)
    chosen = []
    for c, wanted in enumerate(counts):
        members = np.flatnonzero(labels == c)
        if wanted > members.size:
            raise ValueError(f"counts[{c}] = {wanted}: class {c} has only {members.size} examples")
        chosen.append(rng.choice(members, size=int(wanted), replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


ESTIMATION_METHODS = ("em", "bbse")


def estimate_target_prior(probs: np.ndarray, source_prior: Sequence[float], method: str = "em", *,
                          tol: float = 1e-6, max_iter: int = 100,
                          val_probs: np.ndarray | None = None,
                          val_labels: Sequence[int] | None = None) -> np.ndarray:
    """Estimate the label distribution p_t of an unlabeled target sample (label shift).

    Formula:
        em (Saerens et al. 2002, maximum likelihood): start at pi = p_s, repeat
            q(y|x_i) = p(y|x_i) pi(y) / p_s(y) / sum_c p(c|x_i) pi(c) / p_s(c)
            pi = mean_i q(.|x_i)
            until max |pi_new - pi| < tol or max_iter steps.
        bbse (Lipton et al. 2018, black-box shift estimation): with hard predictions
            yhat = argmax p(.|x), the confusion matrix M[i, j] = P_val(yhat = i | y = j) and the
            predicted-label distribution mu[i] = P_target(yhat = i), solve M p_t = mu (least
            squares), clip at 0 and renormalise. Lipton's w = C^-1 mu with the joint matrix
            C = M diag(p_s) gives the same p_t = w p_s; the per-class form lets the validation
            split have any label distribution (it is balanced in this project).

    Args:
        probs: [N, C] class probabilities p(y|x) of the target samples, calibrated for the
            training distribution p_s (for EM; BBSE uses only their argmax).
        source_prior: p_s [C], the label distribution `probs` are posteriors for.
        method: "em" or "bbse".
        tol: EM stopping threshold on the largest change of pi.
        max_iter: EM step limit.
        val_probs: [M, C] probabilities of labelled validation samples (BBSE only).
        val_labels: [M] their labels (BBSE only); every class must occur.

    Returns:
        float64 [C], non-negative, summing to 1.

    Raises:
        ValueError: for an unknown method, malformed probabilities or priors, BBSE without
            validation data or with a class absent from it.
    """
    prior = _check_prior(source_prior, "source_prior")
    probs = _check_probs(probs, prior.size, "probs")
    if method == "em":
        if not tol > 0 or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
            raise ValueError(f"tol = {tol!r}, max_iter = {max_iter!r}: expected tol > 0 and "
                             "max_iter >= 1")
        return _em_prior(probs, prior, tol, int(max_iter))
    if method == "bbse":
        if val_probs is None or val_labels is None:
            raise ValueError("method='bbse' needs val_probs and val_labels (labelled "
                             "validation data)")
        val_probs = _check_probs(val_probs, prior.size, "val_probs")
        val_labels = _check_labels(val_labels, prior.size, len(val_probs), "val_labels")
        return _bbse_prior(probs, val_probs, val_labels)
    raise ValueError(f"method = {method!r}: expected one of {ESTIMATION_METHODS}")


def _em_prior(probs: np.ndarray, prior: np.ndarray, tol: float, max_iter: int) -> np.ndarray:
    pi = prior.copy()
    for _ in range(max_iter):
        weighted = probs * (pi / prior)
        weighted /= np.maximum(weighted.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)
        new_pi = weighted.mean(axis=0)
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
        raise ValueError(f"val_labels has no example of class(es) {missing}: BBSE needs every "
                         "class")
    confusion = np.zeros((num_classes, num_classes))
    np.add.at(confusion, (val_probs.argmax(axis=1), val_labels), 1.0)
    confusion /= per_class[np.newaxis, :]
    predicted = np.bincount(probs.argmax(axis=1), minlength=num_classes) / len(probs)
    solution = np.linalg.lstsq(confusion, predicted, rcond=None)[0]
    solution = np.clip(solution, 0.0, None)
    if solution.sum() <= 0:
        raise ValueError("BBSE found no non-negative prior: the confusion matrix is degenerate")
    return solution / solution.sum()


def fit_temperature(logits: np.ndarray, labels: Sequence[int]) -> float:
    """Temperature T minimising the NLL of softmax(logits / T) on labelled data (Guo et al. 2017).

    Fitted by Newton's method on a = 1 / T, where the NLL is convex.

    Args:
        logits: [N, C] (any shift-invariant scores: logits or log-probabilities).
        labels: [N] integer labels.

    Returns:
        T > 0 as a Python float.

    Raises:
        ValueError: for malformed inputs, or if no positive temperature fits (the logits rank the
            true class below the others on average).
    """
    logits, labels = _check_logits_labels(logits, labels)
    inverse_temperature, _ = _fit_affine_calibration(logits, labels, with_bias=False)
    return float(1.0 / inverse_temperature)


def fit_bcts(logits: np.ndarray, labels: Sequence[int]) -> tuple[float, np.ndarray]:
    """Bias-corrected temperature scaling (Alexandari et al. 2020): fit T and a bias per class.

    Formula:
        minimise over T > 0 and b [C]:  -mean_i log softmax(logits_i / T + b)[y_i]
    The bias is returned centred (mean 0): adding a constant to every b changes nothing.

    Args:
        logits: [N, C] scores on labelled data, typically the validation split.
        labels: [N] integer labels; every class must occur (an absent class has no finite bias).

    Returns:
        (temperature, bias float64 [C]).

    Raises:
        ValueError: for malformed inputs, a class absent from `labels`, or no positive temperature.
    """
    logits, labels = _check_logits_labels(logits, labels)
    missing = np.flatnonzero(np.bincount(labels, minlength=logits.shape[1]) == 0)
    if missing.size:
        raise ValueError(f"labels have no example of class(es) {missing.tolist()}: BCTS fits a "
                         "bias per class and needs every class")
    inverse_temperature, bias = _fit_affine_calibration(logits, labels, with_bias=True)
    return float(1.0 / inverse_temperature), bias - bias.mean()


def calibrate_logits(logits: np.ndarray, temperature: float,
                     bias: Sequence[float] | None = None) -> np.ndarray:
    """Apply temperature scaling (and BCTS bias): logits / T + b, float64 [N, C].

    Raises:
        ValueError: for a non-positive or non-finite temperature, or a bias of the wrong length.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits: expected shape [N, C], got {logits.shape}")
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature = {temperature!r}: expected a finite number > 0")
    scaled = logits / temperature
    if bias is None:
        return scaled
    bias = np.asarray(bias, dtype=np.float64)
    if bias.shape != (logits.shape[1],) or not np.isfinite(bias).all():
        raise ValueError(f"bias: expected {logits.shape[1]} finite values, got shape {bias.shape}")
    return scaled + bias


def _fit_affine_calibration(logits: np.ndarray, labels: np.ndarray, with_bias: bool,
                            max_steps: int = 100) -> tuple[float, np.ndarray]:
    """Newton's method for min NLL(softmax(a * logits + b)); convex in (a, b), so it converges."""
    num, num_classes = logits.shape
    # Shifting each row changes no softmax but keeps exp() in range.
    logits = logits - logits.max(axis=1, keepdims=True)
    onehot = np.zeros_like(logits)
    onehot[np.arange(num), labels] = 1.0

    def nll(a: float, b: np.ndarray) -> float:
        scores = a * logits + b
        top = scores.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(scores - top).sum(axis=1))
        return float(np.mean(log_norm - scores[np.arange(num), labels]))

    a, b = 1.0, np.zeros(num_classes)
    loss = nll(a, b)
    for _ in range(max_steps):
        scores = a * logits + b
        probs = np.exp(scores - scores.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        expected_logit = (probs * logits).sum(axis=1)
        grad = [np.mean(expected_logit - logits[np.arange(num), labels])]
        hess_aa = np.mean((probs * logits**2).sum(axis=1) - expected_logit**2)
        if with_bias:
            grad_b = (probs - onehot).mean(axis=0)
            hess_ab = (probs * logits - probs * expected_logit[:, None]).mean(axis=0)
            hess_bb = np.diag(probs.mean(axis=0)) - probs.T @ probs / num
            hessian = np.block([[np.array([[hess_aa]]), hess_ab[None, :]],
                                [hess_ab[:, None], hess_bb]])
            gradient = np.concatenate([grad, grad_b])
        else:
            hessian, gradient = np.array([[hess_aa]]), np.array(grad)
        # Least squares: the bias Hessian is singular along b + const (softmax ignores it).
        step = np.linalg.lstsq(hessian, -gradient, rcond=None)[0]
        # Newton decrement: the loss reduction still to gain, about; below float noise, done.
        decrement = -float(gradient @ step)
        if decrement < 1e-13:
            break
        size, improved = 1.0, False
        for _ in range(40):
            new_a = a + size * step[0]
            new_b = b + size * step[1:] if with_bias else b
            if new_a > 0:
                new_loss = nll(new_a, new_b)
                if new_loss <= loss - 1e-4 * size * decrement:
                    improved = True
                    break
            size *= 0.5
        if not improved:
            break
        a, b, loss = new_a, new_b, new_loss
    if not (np.isfinite(a) and a > 0):
        raise ValueError(f"calibration found no positive temperature (1/T = {a!r})")
    return a, b


def _check_prior(prior: Sequence[float], name: str) -> np.ndarray:
    prior = np.asarray(prior, dtype=np.float64)
    if prior.ndim != 1 or prior.size < 2 or not np.isfinite(prior).all() or (prior <= 0).any():
        raise ValueError(f"{name} = {prior.tolist()}: expected >= 2 positive finite probabilities")
    return prior / prior.sum()


def _check_probs(probs: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != num_classes or probs.shape[0] < 1:
        raise ValueError(f"{name}: expected shape [N >= 1, {num_classes}], got {probs.shape}")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError(f"{name}: expected finite non-negative probabilities (not logits)")
    sums = probs.sum(axis=1)
    if np.abs(sums - 1.0).max() > 1e-3:
        raise ValueError(f"{name}: rows must sum to 1 (found sums from {sums.min():.4g} to "
                         f"{sums.max():.4g}); pass probabilities, not logits")
    return probs / sums[:, None]


def _check_labels(labels: Sequence[int], num_classes: int, num: int, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (num,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}: expected {num} integer labels, got {labels.dtype} "
                         f"{labels.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"{name} span {labels.min()}..{labels.max()}: expected "
                         f"0..{num_classes - 1}")
    return labels.astype(np.int64)


def _check_logits_labels(logits: np.ndarray,
                         labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 2:
        raise ValueError(f"logits: expected shape [N >= 1, C >= 2], got {logits.shape}")
    if not np.isfinite(logits).all():
        raise ValueError("logits: expected finite values")
    return logits, _check_labels(labels, logits.shape[1], logits.shape[0], "labels")
