"""Predicting with a prior that follows the traffic: what both the client-side tracker
(`serving.prior_tracking_client`) and the server's prior streams (`serving.prior_streams`) do with
one served answer.

A tracker of a drifting prior (`lade_tf.prior_tracking`) needs, besides each batch's calibrated
source posteriors (the `posteriors` output of every prediction signature), a few constants of the
model version: p_s, the reference prior p_r the posteriors are calibrated for, the Dirichlet
strength and, for FLH-FTL's soft BBSE, the soft confusion matrix. The `class_info` signature
returns them (`TrackerConstants.from_class_info`), so a client of plain TF Serving reads them with
one standard Predict call and the embedded server runs the same signature in process.

One request per batch: the signature runs with some prior A (the tracked one, or uniform), and
the answer is re-expressed for the prior B actually chosen by the additive rule of the inference
rule (`reprior`): logits_B = logits_A - log A + log B. B is the tracked prior, or, by default,
`lade_tf.prior_tracking.prior_for_batch`: MAP-EM on the batch's own images centred on the
tracked prior, the better rule where a batch is seen before it is answered (measured in
benchmarks/results/online_prior.md).

The tracker math is the library's, imported only when a tracker is made, so a server without
prior streams never imports `lade_tf`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

#: Trackers that serve through a prior input (UOGD adapts the last layer; ROGD needs the
#: labelled validation posteriors, which a served model does not return).
TRACKER_KINDS = ("forgetting", "history", "window", "flh_ftl")
DEFAULT_TRACKER = "forgetting"
#: The prior input and the outputs a prediction signature needs to follow a prior.
PRIOR_INPUT = "target_prior"
TRACKED_OUTPUTS = ("logits", "posteriors")
CLASS_INFO_SIGNATURE = "class_info"
_CONSTANT_OUTPUTS = ("source_prior", "reference_prior", "reference_confusion", "prior_strength")
#: Smallest entry of a prior sent when the batch prior is on: log A must be finite to move away
#: from A (lade_tf.prior_tracking.CENTRE_FLOOR, the floor of prior_for_batch's centre).
SENT_PRIOR_FLOOR = 1e-6
#: The adjusted logit of a class whose prior is 0: the inference rule's own
#: (`lade_tf.layers.ZERO_PRIOR_LOGIT`, kept equal by a test), so that its probability is 0.
ZERO_PRIOR_LOGIT = -1e9


def _normalised(values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array / array.sum()


@dataclass(frozen=True)
class TrackerConstants:
    """A model version's constants for a tracker (float64).

    Attributes:
        source_prior: p_s [C], the training prior (the estimate before any update).
        reference_prior: p_r [C], the prior the served `posteriors` are calibrated for.
        prior_strength: the Dirichlet pseudo-count of MAP-EM (images).
        reference_confusion: the soft confusion matrix [C, C] of the calibrated validation
            posteriors (soft BBSE), or None for a model exported without a validation split.
        class_names: one name per class.
    """

    source_prior: np.ndarray
    reference_prior: np.ndarray
    prior_strength: float
    reference_confusion: np.ndarray | None
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        """C."""
        return self.source_prior.size

    @classmethod
    def from_class_info(cls, outputs: Mapping[str, Any]) -> "TrackerConstants":
        """The constants from the `class_info` signature's outputs for class ids 0 .. C-1.

        Raises:
            ValueError: outputs without the tracker constants (a model exported before they
                were added to `class_info`).
        """
        missing = [name for name in _CONSTANT_OUTPUTS if name not in outputs]
        if missing:
            raise ValueError(
                f"its class_info signature returns no {', '.join(missing)}: export the model "
                "with a lade_tf.export that returns the tracker constants"
            )
        confusion = np.asarray(outputs["reference_confusion"], dtype=np.float64)
        names = outputs.get("class_names")
        num_classes = len(np.asarray(outputs["source_prior"]))
        return cls(
            source_prior=_normalised(outputs["source_prior"]),
            reference_prior=_normalised(outputs["reference_prior"]),
            prior_strength=float(np.asarray(outputs["prior_strength"]).reshape(-1)[0]),
            reference_confusion=confusion if confusion.any() else None,
            class_names=tuple(
                _text(n) for n in (range(num_classes) if names is None else np.asarray(names))
            ),
        )


def _text(name: Any) -> str:
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def parse_tracker_options(text: str) -> dict[str, Any]:
    """Tracker options "name=value,name=value" (integers, numbers, true/false, or text).

    Raises:
        ValueError: an entry without "=".
    """
    options: dict[str, Any] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, equals, value = entry.partition("=")
        name, value = name.strip(), value.strip()
        if not equals or not name:
            raise ValueError(f"{entry!r}: expected name=value entries separated by commas")
        options[name] = _option_value(value)
    return options


def _option_value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def make_tracker(kind: str, constants: TrackerConstants, options: Mapping[str, Any] | None = None):
    """A fresh tracker of `kind` for a model version's constants.

    Args:
        kind: one of TRACKER_KINDS.
        constants: the model version's constants.
        options: keyword options of the tracker's constructor (`half_life` for forgetting,
            `window` for window, `meta_lr` / `max_experts` / `authors_delay` for flh_ftl, and
            `local` for flh_ftl's local estimate: "soft_bbse", the default, or "batch_em");
            the library's defaults otherwise.

    Raises:
        ValueError: an unknown kind or option, a bad option value, or soft BBSE for a model
            exported without a validation split.
    """
    from lade_tf import prior_tracking as pt

    options = dict(options or {})
    if kind not in TRACKER_KINDS:
        raise ValueError(f"tracker {kind!r}: expected one of {', '.join(TRACKER_KINDS)}")
    try:
        if kind == "flh_ftl":
            local = _local_estimator(options.pop("local", pt.DEFAULT_LOCAL_ESTIMATOR), constants)
            return pt.FLHFTLTracker(local, constants.source_prior, **options)
        return pt.TRACKERS[kind](
            constants.source_prior,
            constants.reference_prior,
            prior_strength=constants.prior_strength,
            **options,
        )
    except TypeError as error:  # an option the constructor does not take
        raise ValueError(f"tracker {kind!r} options {sorted(options)}: {error}") from None


def _local_estimator(kind: str, constants: TrackerConstants):
    from lade_tf import prior_tracking as pt
    from lade_tf.local_estimates import BBSE_RIDGE

    if kind == "batch_em":
        return pt.BatchEM(
            constants.reference_prior,
            prior_strength=constants.prior_strength,
            prior_centre=constants.source_prior,
        )
    if kind != "soft_bbse":
        raise ValueError(f"local = {kind!r}: expected one of {tuple(pt.LOCAL_ESTIMATORS)}")
    if constants.reference_confusion is None:
        raise ValueError(
            "local = 'soft_bbse' needs the soft confusion matrix of a validation split, and the "
            "model was exported without one (class_info's reference_confusion is zero): use "
            "local=batch_em"
        )
    state = {
        "format": pt.STATE_FORMAT,
        "kind": "soft_bbse",
        "confusion": constants.reference_confusion.tolist(),
        "reference_prior": constants.reference_prior.tolist(),
        "ridge": BBSE_RIDGE,
    }
    return pt.SoftBBSE.from_state(state)


def restored_tracker(state: Mapping[str, Any], kind: str, constants: TrackerConstants):
    """The tracker a saved `state()` describes, checked against the model version it serves.

    Raises:
        ValueError: an unreadable state, another kind, or another model's classes or prior.
    """
    from lade_tf import prior_tracking as pt

    tracker = pt.tracker_from_state(state)
    if tracker.kind != kind:
        raise ValueError(f"it holds a {tracker.kind!r} tracker, and {kind!r} is asked for")
    local = getattr(tracker, "local_estimator", tracker)
    saved = (tracker.source_prior, local.reference_prior)
    served = (constants.source_prior, constants.reference_prior)
    if tracker.num_classes != constants.num_classes or not all(
        np.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(saved, served)
    ):
        raise ValueError(
            f"it was saved for another model: {tracker.num_classes} classes with source and "
            f"reference priors {[np.round(p, 4).tolist() for p in saved]}, and the model has "
            f"{constants.num_classes} with {[np.round(p, 4).tolist() for p in served]}"
        )
    return tracker


def track_batch(
    tracker, posteriors: np.ndarray, constants: TrackerConstants, batch_prior: bool
) -> np.ndarray:
    """The prior [C] to predict a batch with, then the tracker updated with the batch.

    Args:
        tracker: a tracker of `lade_tf.prior_tracking` (its `prior` is from earlier batches).
        posteriors: the batch's calibrated source posteriors [n, C] (the served `posteriors`).
        constants: the model version's constants.
        batch_prior: True: `prior_for_batch` (MAP-EM on the batch centred on the tracked
            prior); False: the tracked prior itself.
    """
    from lade_tf.prior_tracking import prior_for_batch

    prior = (
        prior_for_batch(
            posteriors,
            tracker.prior,
            constants.reference_prior,
            prior_strength=constants.prior_strength,
        )
        if batch_prior
        else tracker.prior
    )
    tracker.update(posteriors)
    return prior


def sent_prior(prior: np.ndarray, batch_prior: bool) -> np.ndarray:
    """The prior A to send with a batch, float32 [C]: the tracked prior, with every entry at
    least SENT_PRIOR_FLOOR (renormalised) when the answer will be re-expressed for another."""
    prior = np.asarray(prior, dtype=np.float64)
    if batch_prior:
        prior = np.maximum(prior / prior.sum(), SENT_PRIOR_FLOOR)
    return (prior / prior.sum()).astype(np.float32)


def reprior(
    outputs: Mapping[str, np.ndarray], sent: np.ndarray, prior: np.ndarray
) -> dict[str, np.ndarray]:
    """A prediction signature's outputs for prior A = `sent` re-expressed for prior B = `prior`.

    Formula (the inference rule is additive in log p_t; A normalised, every entry > 0):
        logits_B = logits_A - log A + log B,  probabilities = softmax(logits_B),
        class_ids = argmax(logits_B)
    in float64, returned in the outputs' own dtypes; a zero in B gives its class the logit
    ZERO_PRIOR_LOGIT and probability 0, as the model does for a zero prior. `posteriors` do not
    depend on the prior and are returned as they are.

    Args:
        outputs: `logits` [n, C] (and `probabilities`, `class_ids`, `posteriors`) of a run with
            the prior `sent` [C] on every row.
        sent: A [C], the prior the signature ran with (float32 as sent).
        prior: B [C].
    """
    sent = _normalised(sent)
    target = _normalised(prior)
    with np.errstate(divide="ignore"):
        shift = np.log(target) - np.log(sent)
    logits = np.where(
        target > 0, np.asarray(outputs["logits"], np.float64) + shift, ZERO_PRIOR_LOGIT
    )
    top = logits.max(axis=1, keepdims=True)
    weights = np.exp(logits - top)
    result = dict(outputs)
    result["logits"] = logits.astype(outputs["logits"].dtype)
    if "probabilities" in outputs:
        probabilities = weights / weights.sum(axis=1, keepdims=True)
        result["probabilities"] = probabilities.astype(outputs["probabilities"].dtype)
    if "class_ids" in outputs:
        result["class_ids"] = logits.argmax(axis=1).astype(outputs["class_ids"].dtype)
    return result
