"""Calibration of a model's log-posteriors before prior estimation: temperature scaling (Guo et
al. 2017), bias-corrected temperature scaling (BCTS, Alexandari et al. 2020) and `Calibrator`,
the fitted map both the NumPy estimator and the served `estimate_prior` graph apply.

NumPy only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from lade_tf.checks import check_choice, check_logits_labels


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
