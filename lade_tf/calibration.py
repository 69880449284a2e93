"""Calibration of a model's log-posteriors before prior estimation: Dirichlet calibration (Kull et
al. 2019, the default), bias-corrected temperature scaling (BCTS, Alexandari et al. 2020),
temperature scaling (Guo et al. 2017) and `Calibrator`, the fitted map both the NumPy estimator
and the served `estimate_prior` graph apply.

Every calibration is a linear map of log-probabilities, calibrated = log_softmax(s) @ M^T + beta
(an affine one has M = I / T), so the graph bakes in one matrix and one vector. Dirichlet
calibration fits the whole matrix: per class, how the scores of every class move its posterior,
where BCTS has one temperature for all classes; a single temperature leaves the classes'
different over- and under-confidence of a long-tailed model in the estimate of the prior (README,
Unknown target prior). Its off-diagonal entries and biases are shrunk by an L2 penalty whose
strength is chosen by cross-validation on the labelled data it is fitted on.

NumPy only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from lade_tf.checks import check_choice, check_logits_labels

#: L2 strengths of Dirichlet calibration's off-diagonal entries and biases, chosen among by
#: cross-validation.
DIRICHLET_L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
#: Folds of that cross-validation (stratified: each class's examples dealt out in turn).
CROSS_VALIDATION_FOLDS = 5


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [N, C] scores, float64 (shifted by the row maximum for range)."""
    logits = np.asarray(logits, dtype=np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of [N, C] scores, float64."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


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


def fit_dirichlet(
    logits: np.ndarray, labels: Sequence[int], l2: float
) -> tuple[np.ndarray, np.ndarray]:
    """Dirichlet calibration (Kull et al. 2019) with a given L2 strength.

    Formula (x_i = log_softmax(logits_i), W [C, C], b [C]):
        minimise  mean_i -log softmax(W x_i + b)[y_i]
                  + l2 * (sum_{j != k} W[j, k]^2 + sum_k b[k]^2)
    The penalty shrinks toward the identity map (W = I, b = 0), with which softmax(W x + b)
    gives back the posteriors as they are; the diagonal is free, as in Kull et al.'s ODIR.
    Convex; solved by L-BFGS from the identity.

    Args:
        logits: [N, C] scores on labelled data (logits or log-probabilities).
        labels: [N] integer labels; every class must occur.
        l2: the penalty strength, > 0.

    Returns:
        (W float64 [C, C], b float64 [C]).

    Raises:
        ValueError: for malformed inputs, a class absent from `labels` or a bad l2.
    """
    logits, labels = check_logits_labels(logits, labels)
    num_classes = logits.shape[1]
    missing = np.flatnonzero(np.bincount(labels, minlength=num_classes) == 0)
    if missing.size:
        raise ValueError(
            f"labels have no example of class(es) {missing.tolist()}: Dirichlet calibration "
            "fits a row per class and needs every class"
        )
    if not (isinstance(l2, (int, float)) and math.isfinite(l2) and l2 > 0):
        raise ValueError(f"l2 = {l2!r}: expected a finite number > 0")
    return _fit_dirichlet(log_softmax(logits), labels, float(l2))


def choose_dirichlet_l2(
    logits: np.ndarray,
    labels: Sequence[int],
    grid: Sequence[float] = DIRICHLET_L2_GRID,
    folds: int = CROSS_VALIDATION_FOLDS,
) -> float:
    """The L2 strength of `grid` with the lowest cross-validated NLL of Dirichlet calibration.

    Each class's examples are dealt to the folds in turn (stratified, deterministic). With a
    class of fewer examples than folds there is no such split: the strongest penalty (the map
    closest to the identity) is returned.

    Raises:
        ValueError: as `fit_dirichlet`, or an empty grid.
    """
    logits, labels = check_logits_labels(logits, labels)
    if not len(grid):
        raise ValueError("grid is empty: expected at least one L2 strength")
    per_class = np.bincount(labels, minlength=logits.shape[1])
    if per_class.min() < folds:
        return float(max(grid))
    fold_of = np.empty(len(labels), dtype=np.int64)
    for c in range(logits.shape[1]):
        members = np.flatnonzero(labels == c)
        fold_of[members] = np.arange(members.size) % folds
    features = log_softmax(logits)
    losses = []
    for l2 in grid:
        total = 0.0
        for fold in range(folds):
            held = fold_of == fold
            matrix, bias = _fit_dirichlet(features[~held], labels[~held], float(l2))
            scores = log_softmax(features[held] @ matrix.T + bias)
            total -= scores[np.arange(held.sum()), labels[held]].sum()
        losses.append(total / len(labels))
    return float(grid[int(np.argmin(losses))])


def _fit_dirichlet(
    features: np.ndarray, labels: np.ndarray, l2: float
) -> tuple[np.ndarray, np.ndarray]:
    num, num_classes = features.shape
    onehot = np.zeros((num, num_classes))
    onehot[np.arange(num), labels] = 1.0
    off_diagonal = ~np.eye(num_classes, dtype=bool)

    def loss_and_gradient(params: np.ndarray) -> tuple[float, np.ndarray]:
        matrix = params[: num_classes * num_classes].reshape(num_classes, num_classes)
        bias = params[num_classes * num_classes :]
        scores = log_softmax(features @ matrix.T + bias)
        probs = np.exp(scores)
        penalised = np.where(off_diagonal, matrix, 0.0)
        loss = -np.mean(scores[np.arange(num), labels]) + l2 * (
            np.sum(penalised**2) + np.sum(bias**2)
        )
        residual = (probs - onehot) / num
        grad_matrix = residual.T @ features + 2 * l2 * penalised
        grad_bias = residual.sum(axis=0) + 2 * l2 * bias
        return float(loss), np.concatenate([grad_matrix.ravel(), grad_bias])

    start = np.concatenate([np.eye(num_classes).ravel(), np.zeros(num_classes)])
    params = _minimise_lbfgs(loss_and_gradient, start)
    matrix = params[: num_classes * num_classes].reshape(num_classes, num_classes)
    return matrix, params[num_classes * num_classes :]


def _minimise_lbfgs(loss_and_gradient, start: np.ndarray, *, memory: int = 10) -> np.ndarray:
    """L-BFGS with a backtracking (Armijo) line search, for smooth convex objectives: stops when
    the gradient or the step is below float noise, or after 1000 iterations."""
    x = start.copy()
    loss, gradient = loss_and_gradient(x)
    steps: list[tuple[np.ndarray, np.ndarray, float]] = []
    for _ in range(1000):
        if np.max(np.abs(gradient)) < 1e-9:
            break
        direction = -gradient
        alphas = []
        for s, y, rho in reversed(steps):
            alpha = rho * (s @ direction)
            direction = direction - alpha * y
            alphas.append(alpha)
        if steps:
            s, y, _ = steps[-1]
            direction = direction * (s @ y) / (y @ y)
        for (s, y, rho), alpha in zip(steps, reversed(alphas)):
            direction = direction + s * (alpha - rho * (y @ direction))
        slope = float(gradient @ direction)
        if slope >= 0:  # not a descent direction: restart from the gradient
            steps.clear()
            direction, slope = -gradient, -float(gradient @ gradient)
        size = 1.0
        for _ in range(50):
            candidate = x + size * direction
            new_loss, new_gradient = loss_and_gradient(candidate)
            if new_loss <= loss + 1e-4 * size * slope:
                break
            size *= 0.5
        else:
            break
        s, y = candidate - x, new_gradient - gradient
        if s @ y > 1e-12:
            steps.append((s, y, 1.0 / (s @ y)))
            steps = steps[-memory:]
        converged = loss - new_loss < 1e-14 * max(1.0, abs(loss))
        x, loss, gradient = candidate, new_loss, new_gradient
        if converged:
            break
    return x


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


CALIBRATIONS = ("dirichlet", "bcts", "temperature", "none")
#: Calibration fitted before EM unless asked otherwise.
DEFAULT_CALIBRATION = "dirichlet"


@dataclasses.dataclass(frozen=True)
class Calibrator:
    """A calibration of log-posterior scores, fitted on labelled (validation) data.

    Formula (s: scores, logits or log-probabilities; softmax ignores a per-row constant):
        dirichlet:   log_softmax(s) @ W^T + b, W [C, C] and b [C] fitted with the L2 strength
                     chosen by cross-validation (`fit_dirichlet`, `choose_dirichlet_l2`)
        bcts:        s / T + b, T and b [C] minimise the NLL (`fit_bcts`)
        temperature: s / T, T minimises the NLL (`fit_temperature`)
        none:        s (the identity)
    `linear_map` gives every method as log_softmax(s) @ M^T + beta.

    Attributes:
        method: one of CALIBRATIONS.
        temperature: T > 0 (1.0 for "dirichlet" and "none").
        bias: b [C] as a tuple ("bcts", "dirichlet"), else None.
        matrix: W [C, C] as a tuple of rows ("dirichlet"), else None.
        l2: the L2 strength the Dirichlet map was fitted with ("dirichlet"), else None.

    Examples:
        >>> scores = [[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0], [0.5, 0.0]]
        >>> calibrator = Calibrator.fit(scores, [0, 1, 0, 1, 1], "temperature")
        >>> round(calibrator.temperature, 3), calibrator.apply([[2.0, 0.0]]).round(3).tolist()
        (0.644, [[3.107, 0.0]])
    """

    method: str = "none"
    temperature: float = 1.0
    bias: tuple[float, ...] | None = None
    matrix: tuple[tuple[float, ...], ...] | None = None
    l2: float | None = None

    def __post_init__(self) -> None:
        check_choice("calibration", self.method, CALIBRATIONS)
        if not (
            isinstance(self.temperature, (int, float))
            and math.isfinite(self.temperature)
            and self.temperature > 0
        ):
            raise ValueError(f"temperature = {self.temperature!r}: expected a finite number > 0")
        if (self.bias is not None) != (self.method in ("bcts", "dirichlet")):
            raise ValueError(
                f"bias = {self.bias!r} with calibration = {self.method!r}: "
                "expected a bias for 'bcts' and 'dirichlet' only"
            )
        if (self.matrix is not None or self.l2 is not None) != (self.method == "dirichlet"):
            raise ValueError(
                f"matrix / l2 with calibration = {self.method!r}: expected them for "
                "'dirichlet' only"
            )
        if self.method in ("none", "dirichlet") and self.temperature != 1.0:
            raise ValueError(
                f"temperature = {self.temperature!r} with calibration = {self.method!r}: "
                "expected 1.0"
            )
        if self.bias is not None and not np.isfinite(np.asarray(self.bias, np.float64)).all():
            raise ValueError(f"bias = {self.bias!r}: expected finite values")
        if self.matrix is not None:
            matrix = np.asarray(self.matrix, np.float64)
            size = len(self.bias or ())
            if matrix.shape != (size, size) or not np.isfinite(matrix).all():
                raise ValueError(
                    f"matrix of shape {matrix.shape}: expected [{size}, {size}] finite values, "
                    "one row per class of the bias"
                )

    @classmethod
    def fit(
        cls, logits: np.ndarray, labels: Sequence[int], method: str = DEFAULT_CALIBRATION
    ) -> "Calibrator":
        """The calibration `method` fitted on labelled scores [N, C] and labels [N].

        Raises:
            ValueError: for an unknown method or what the fitting functions reject (a class
                absent from `labels` for BCTS and Dirichlet calibration, malformed inputs).
        """
        check_choice("calibration", method, CALIBRATIONS)
        if method == "dirichlet":
            l2 = choose_dirichlet_l2(logits, labels)
            matrix, bias = fit_dirichlet(logits, labels, l2)
            return cls(
                "dirichlet",
                bias=tuple(float(b) for b in bias),
                matrix=tuple(tuple(float(w) for w in row) for row in matrix),
                l2=l2,
            )
        if method == "bcts":
            temperature, bias = fit_bcts(logits, labels)
            return cls("bcts", temperature, tuple(float(b) for b in bias))
        if method == "temperature":
            return cls("temperature", fit_temperature(logits, labels))
        check_logits_labels(logits, labels)
        return cls()

    def linear_map(self, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """(M float64 [C, C], beta float64 [C]) with apply(s) = log_softmax(s) @ M^T + beta up
        to a per-row constant: M = W for "dirichlet", I / T otherwise."""
        if self.matrix is not None:
            return np.asarray(self.matrix, np.float64), np.asarray(self.bias, np.float64)
        bias = np.zeros(num_classes) if self.bias is None else np.asarray(self.bias, np.float64)
        return np.eye(num_classes) / self.temperature, bias

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated scores, float64 [N, C] (log-posteriors up to a per-row constant)."""
        if self.method != "dirichlet":
            return calibrate_logits(logits, self.temperature, self.bias)
        matrix, bias = self.linear_map(len(self.bias))
        logits = np.asarray(logits, dtype=np.float64)
        if logits.ndim != 2 or logits.shape[1] != len(bias):
            raise ValueError(f"logits have shape {logits.shape}: expected [N, {len(bias)}]")
        return log_softmax(logits) @ matrix.T + bias

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe {"method", "temperature", "bias", "matrix", "l2"} (lists or None)."""
        return {
            "method": self.method,
            "temperature": float(self.temperature),
            "bias": None if self.bias is None else [float(b) for b in self.bias],
            "matrix": None if self.matrix is None else [list(row) for row in self.matrix],
            "l2": self.l2,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Calibrator":
        """The calibrator `to_dict` describes ("matrix" and "l2" may be absent: an affine one).

        Raises:
            ValueError: for missing or unknown keys, or invalid values.
        """
        required, optional = {"method", "temperature", "bias"}, {"matrix", "l2"}
        if not required <= set(values) <= required | optional:
            raise ValueError(
                f"calibration keys {sorted(values)}: expected {sorted(required)} and "
                f"optionally {sorted(optional)}"
            )
        bias, matrix, l2 = values["bias"], values.get("matrix"), values.get("l2")
        return cls(
            values["method"],
            float(values["temperature"]),
            None if bias is None else tuple(float(b) for b in bias),
            None if matrix is None else tuple(tuple(float(w) for w in row) for row in matrix),
            None if l2 is None else float(l2),
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
