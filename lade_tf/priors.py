"""Label priors: long-tailed class counts, shifted test distributions, target-prior estimation
(EM, Dirichlet-MAP EM, BBSE), estimation errors (L1, Jensen-Shannon) and the calibration
(temperature scaling, BCTS, `Calibrator`) that estimation relies on.

`lade_tf.prior_estimation` puts these together for a trained model's raw logits.

Everything here is NumPy in, NumPy out, so the pipeline, the evaluator and the tests can use it
without building a Keras object.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from lade_tf.checks import (
    check_choice,
    check_labels,
    check_logits_labels,
    check_non_negative,
    check_probabilities,
    shown,
)

PROFILES = ("exp", "step")

#: The 11 test distributions of the shift protocol (docs/design.md section 5), forward to backward.
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
            f"class_counts must be a 1-D sequence of at least 2 counts, got shape {counts.shape}"
        )
    for c, n in enumerate(counts):
        if not np.isfinite(n) or n <= 0:
            raise ValueError(
                f"class_counts[{c}] = {class_counts[c]!r}: every class needs a positive, finite "
                "training count (a class absent from training has no defined prior)"
            )
    return counts / counts.sum()


def class_counts_config(class_counts: Sequence[float]) -> list[float]:
    """Validated class counts as a JSON-friendly list (ints stay ints), for Keras configs.

    Raises:
        ValueError: as `source_prior` for invalid counts.
    """
    source_prior(class_counts)
    return [int(n) if float(n).is_integer() else float(n) for n in class_counts]


def long_tail_counts(
    n_max: int, num_classes: int, imbalance_ratio: float, profile: str = "exp"
) -> list[int]:
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
            f"imbalance_ratio = {imbalance_ratio!r}: expected a finite number >= 1 (n_max / n_min)"
        )
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
        kept.append(int(per_class * factor**exponent))
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
    counts = np.asarray(counts)
    if counts.ndim != 1 or not np.issubdtype(counts.dtype, np.integer) or (counts < 0).any():
        raise ValueError(f"counts = {counts.tolist()}: expected a 1-D array of integers >= 0")
    labels = check_labels(labels, counts.size)
    rng = np.random.default_rng(seed)
    chosen = []
    for c, wanted in enumerate(counts):
        members = np.flatnonzero(labels == c)
        if wanted > members.size:
            raise ValueError(f"counts[{c}] = {wanted}: class {c} has only {members.size} examples")
        chosen.append(rng.choice(members, size=int(wanted), replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


ESTIMATION_METHODS = ("em", "bbse")
#: EM stopping rule (docs/design.md section 7; Saerens et al. 2002): largest change of pi, step
#: limit.
EM_TOLERANCE = 1e-6
EM_MAX_ITERATIONS = 100
#: Pseudo-count strength of the Dirichlet prior of MAP-EM where a default is needed (the served
#: `estimate_prior`, `lade_tf.prior_estimation`): worth 10 target images, so one image moves the
#: estimate at most 2 / 11 (L1) from the source prior, while 1000 images outweigh it 100 to 1.
#: Measured on Fashion-MNIST-LT B50 batches (calibrated MLP, L1 to the truth for 1 / 8 / 64 /
#: 1000 images): 1.55 / 1.02 / 0.45 / 0.12, against 1.66 / 0.73 / 0.34 / 0.11 for plain EM,
#: whose one-image answer is one-hot; strength 5 or 20 trade these the other way.
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
    prior = _check_prior(source_prior, "source_prior")
    probs = _normalised_probabilities(probs, prior.size, "probs")
    if method == "em":
        if not tol > 0 or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
            raise ValueError(
                f"tol = {tol!r}, max_iter = {max_iter!r}: expected tol > 0 and max_iter >= 1"
            )
        strength = check_prior_strength(prior_strength)
        centre = prior if prior_centre is None else _check_prior(prior_centre, "prior_centre")
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
    p = _check_distribution(p, "p")
    q = _check_distribution(q, "q")
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
    p = _check_distribution(estimate, "estimate")
    q = _check_distribution(true_prior, "true_prior")
    if p.shape != q.shape:
        raise ValueError(
            f"estimate has {p.size} entries and true_prior {q.size}: expected the same classes"
        )
    return {"l1": float(np.abs(p - q).sum()), "js": jensen_shannon_divergence(p, q)}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [N, C] scores, float64 (shifted by the row maximum for range)."""
    logits = np.asarray(logits, dtype=np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


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
    logits, labels = check_logits_labels(logits, labels)
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
    logits, labels = check_logits_labels(logits, labels)
    missing = np.flatnonzero(np.bincount(labels, minlength=logits.shape[1]) == 0)
    if missing.size:
        raise ValueError(
            f"labels have no example of class(es) {missing.tolist()}: BCTS fits a "
            "bias per class and needs every class"
        )
    inverse_temperature, bias = _fit_affine_calibration(logits, labels, with_bias=True)
    return float(1.0 / inverse_temperature), bias - bias.mean()


def calibrate_logits(
    logits: np.ndarray, temperature: float, bias: Sequence[float] | None = None
) -> np.ndarray:
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


CALIBRATIONS = ("bcts", "temperature", "none")
#: Calibration fitted before EM unless asked otherwise (Alexandari et al. 2020).
DEFAULT_CALIBRATION = "bcts"


@dataclasses.dataclass(frozen=True)
class Calibrator:
    """An affine calibration of log-posterior scores, fitted on labelled (validation) data.

    Formula:
        calibrated = scores / T + b
        bcts:        T and b [C] minimise the NLL of softmax(scores / T + b)  (`fit_bcts`)
        temperature: T minimises the NLL of softmax(scores / T), b = 0         (`fit_temperature`)
        none:        T = 1, b = 0 (the identity)
    `scores` are logits or log-probabilities of the posteriors to calibrate (softmax ignores a
    per-row constant).

    Attributes:
        method: one of CALIBRATIONS.
        temperature: T > 0.
        bias: b [C] as a tuple (mean 0), None for "temperature" and "none".

    Examples:
        >>> scores = [[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0], [0.5, 0.0]]
        >>> calibrator = Calibrator.fit(scores, [0, 1, 0, 1, 1], "temperature")
        >>> round(calibrator.temperature, 3), calibrator.apply([[2.0, 0.0]]).round(3).tolist()
        (0.644, [[3.107, 0.0]])
    """

    method: str = "none"
    temperature: float = 1.0
    bias: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        check_choice("calibration", self.method, CALIBRATIONS)
        if not (
            isinstance(self.temperature, (int, float))
            and math.isfinite(self.temperature)
            and self.temperature > 0
        ):
            raise ValueError(f"temperature = {self.temperature!r}: expected a finite number > 0")
        if (self.bias is not None) != (self.method == "bcts"):
            raise ValueError(
                f"bias = {self.bias!r} with calibration = {self.method!r}: "
                "expected a bias for 'bcts' only"
            )
        if self.method == "none" and self.temperature != 1.0:
            raise ValueError(
                f"temperature = {self.temperature!r} with calibration = 'none': expected 1.0"
            )
        if self.bias is not None and not np.isfinite(np.asarray(self.bias, np.float64)).all():
            raise ValueError(f"bias = {self.bias!r}: expected finite values")

    @classmethod
    def fit(
        cls, logits: np.ndarray, labels: Sequence[int], method: str = DEFAULT_CALIBRATION
    ) -> "Calibrator":
        """The calibration `method` fitted on labelled scores [N, C] and labels [N].

        Raises:
            ValueError: for an unknown method or what `fit_bcts` / `fit_temperature` reject (a
                class absent from `labels` for BCTS, malformed inputs).
        """
        check_choice("calibration", method, CALIBRATIONS)
        if method == "bcts":
            temperature, bias = fit_bcts(logits, labels)
            return cls("bcts", temperature, tuple(float(b) for b in bias))
        if method == "temperature":
            return cls("temperature", fit_temperature(logits, labels))
        check_logits_labels(logits, labels)
        return cls()

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated scores logits / T + b, float64 [N, C]."""
        return calibrate_logits(logits, self.temperature, self.bias)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe {"method", "temperature", "bias" (list or None)}."""
        return {
            "method": self.method,
            "temperature": float(self.temperature),
            "bias": None if self.bias is None else [float(b) for b in self.bias],
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Calibrator":
        """The calibrator `to_dict` describes.

        Raises:
            ValueError: for missing or unknown keys, or invalid values.
        """
        keys = {"method", "temperature", "bias"}
        if set(values) != keys:
            raise ValueError(f"calibration keys {sorted(values)}: expected {sorted(keys)}")
        bias = values["bias"]
        return cls(
            values["method"],
            float(values["temperature"]),
            None if bias is None else tuple(float(b) for b in bias),
        )


def _fit_affine_calibration(
    logits: np.ndarray, labels: np.ndarray, with_bias: bool, max_steps: int = 100
) -> tuple[float, np.ndarray]:
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
            hessian = np.block(
                [[np.array([[hess_aa]]), hess_ab[None, :]], [hess_ab[:, None], hess_bb]]
            )
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
        raise ValueError(f"{name} = {shown(prior)}: expected >= 2 positive finite probabilities")
    return prior / prior.sum()


def _check_distribution(values: Sequence[float], name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if (
        values.ndim != 1
        or not np.isfinite(values).all()
        or (values < 0).any()
        or not values.sum() > 0
    ):
        raise ValueError(
            f"{name} = {shown(values)}: expected a 1-D distribution of finite, "
            "non-negative weights with a positive sum"
        )
    return values / values.sum()


def _normalised_probabilities(probs: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    probs = check_probabilities(probs, num_classes, name)
    return probs / probs.sum(axis=1, keepdims=True)
