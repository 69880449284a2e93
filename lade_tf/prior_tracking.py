"""Online label shift: follow a drifting target prior p_t over a stream of unlabeled batches.

Every tracker takes the stream one batch at a time (any size, down to one image) as calibrated
source posteriors q_i = p_r(y|x_i) [n, C] for the reference prior p_r, exactly what
`lade_tf.prior_estimation.TargetPriorEstimator.posteriors(raw_logits)` returns, and
`update(posteriors)` returns the prior to predict the NEXT batch with (batch t is predicted with
the estimate from batches < t, the authors' default `use_current_marginal_estimate=False`);
predictions then use the inference rule f + b + log p_t (`lade_tf.layers.adjust_logits_numpy`).
Before any update `prior` is the training prior p_s, where the authors start.

    HistoryTracker      follow the history: Dirichlet-MAP EM over every image so far (bounded state)
    WindowTracker       MAP-EM over the last W images
    ForgettingTracker   follow the history with exponential forgetting (a half-life in images)
    FLHFTLTracker       FLH-FTL of Baby et al. 2023 on per-batch local estimates
    ROGDTracker         ROGD of Wu et al. 2021 on per-batch local estimates
    UOGDClassifier      UOGD of Baby et al. 2023: adapts the last linear layer, not the prior

Local (per-batch) estimates for the last three: `SoftBBSE` (the authors' default: BBSE with the
soft confusion matrix of the reference data, also this module's, `make_local_estimator`) or
`BatchEM` (the library's Dirichlet-MAP EM on the batch alone). Where a batch is seen before it is
answered, `prior_for_batch` combines a tracker's prior with the batch's own images.

The trackers live in modules by kind (`em_tracking`, `flh_ftl`, `online_gradient`, with
`local_estimates` and `tracking_checks`); this module is their one entry point: every name above,
`tracker_from_state` and `follow`.

FLH-FTL, ROGD and UOGD follow the authors' code (acmi-lab/OnlineLabelShift, `utils/model_utils.py`,
`utils/label_shift_utils.py`, `utils/misc_utils.py`) operation for operation
(benchmarks/online_reference.py compares them); where the code departs from the papers, or this
module from the code, the docstrings say so.

Each object's `state()` is plain JSON-safe data (a kind tag and the format version) and
`from_state` / `tracker_from_state` rebuild it so that it continues exactly as the original
would. No global random state: the only randomness (the Lipschitz estimates of the default
learning rates) comes from a seeded `numpy.random.default_rng`. NumPy only: importable without
Keras or TensorFlow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from lade_tf.em_tracking import (
    CENTRE_FLOOR,
    DEFAULT_HALF_LIFE,
    DEFAULT_WINDOW,
    ForgettingTracker,
    HistoryTracker,
    WindowTracker,
    prior_for_batch,
    running_map_em,
)
from lade_tf.flh_ftl import FLHFTLTracker
from lade_tf.local_estimates import (
    DEFAULT_LOCAL_ESTIMATOR,
    LOCAL_ESTIMATORS,
    BatchEM,
    LocalEstimator,
    SoftBBSE,
    local_estimator_from_state,
    make_local_estimator,
)
from lade_tf.online_gradient import (
    ROGDTracker,
    UOGDClassifier,
    finite_gradient,
    project_to_simplex,
    uogd_lipschitz,
)
from lade_tf.tracking_checks import STATE_FORMAT

__all__ = [
    "CENTRE_FLOOR",
    "DEFAULT_HALF_LIFE",
    "DEFAULT_LOCAL_ESTIMATOR",
    "DEFAULT_WINDOW",
    "LOCAL_ESTIMATORS",
    "STATE_FORMAT",
    "TRACKERS",
    "BatchEM",
    "FLHFTLTracker",
    "ForgettingTracker",
    "HistoryTracker",
    "LocalEstimator",
    "ROGDTracker",
    "SoftBBSE",
    "Tracker",
    "UOGDClassifier",
    "WindowTracker",
    "finite_gradient",
    "follow",
    "local_estimator_from_state",
    "make_local_estimator",
    "prior_for_batch",
    "project_to_simplex",
    "running_map_em",
    "tracker_from_state",
    "uogd_lipschitz",
]


Tracker = HistoryTracker | WindowTracker | ForgettingTracker | FLHFTLTracker | ROGDTracker
TRACKERS = {
    cls.kind: cls
    for cls in (
        HistoryTracker,
        WindowTracker,
        ForgettingTracker,
        FLHFTLTracker,
        ROGDTracker,
        UOGDClassifier,
    )
}


def tracker_from_state(state: Mapping[str, Any]) -> Tracker | UOGDClassifier:
    """The tracker (or UOGD classifier) a `state()` document describes, whatever its kind."""
    kind = state.get("kind") if isinstance(state, Mapping) else None
    if kind not in TRACKERS:
        raise ValueError(f"tracker kind {kind!r}: expected one of {tuple(TRACKERS)}")
    return TRACKERS[kind].from_state(state)


def follow(tracker: Tracker, batches: Iterable[Any]) -> np.ndarray:
    """The prior each batch is predicted with, [T, C]: row t is `tracker.prior` before batch t
    is added (the estimate from batches < t); the tracker is updated with every batch."""
    priors = []
    for batch in batches:
        priors.append(tracker.prior)
        tracker.update(batch)
    return np.asarray(priors)
