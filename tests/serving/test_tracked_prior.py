"""serving.tracked_prior: the additive rule against the library's inference rule, the prior sent,
tracker options, and the constants a model's class_info gives (in process, no server)."""

from __future__ import annotations

import numpy as np
import pytest

from lade_tf import prior_tracking as pt
from lade_tf.layers import ZERO_PRIOR_LOGIT, adjust_logits_numpy
from serving import tracked_prior
from serving.tracked_prior import (
    TrackerConstants,
    make_tracker,
    parse_tracker_options,
    reprior,
    restored_tracker,
    sent_prior,
    track_batch,
)
from tests.serving.serving_support import run_signature

pytestmark = pytest.mark.timeout(120)
COUNTS = [60, 30, 20, 10]


def constants(confusion: bool = True) -> TrackerConstants:
    source = np.array(COUNTS, float) / sum(COUNTS)
    reference = np.full(4, 0.25)
    matrix = np.diag([0.2, 0.2, 0.15, 0.15]) + 0.0125 if confusion else None
    return TrackerConstants(source, reference, 10.0, matrix, ("a", "b", "c", "d"))


def test_reprior_is_the_inference_rule_for_the_new_prior():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(5, 4)) * 3
    before = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    after = np.array([0.5, 0.0, 0.3, 0.2])
    adjusted = adjust_logits_numpy(raw, COUNTS, "ce", before).astype(np.float32)
    outputs = {
        "logits": adjusted,
        "probabilities": np.full((5, 4), 0.25, np.float32),
        "class_ids": np.zeros(5, np.int64),
        "posteriors": rng.dirichlet(np.ones(4), 5).astype(np.float32),
    }
    result = reprior(outputs, before, after)
    expected = adjust_logits_numpy(raw, COUNTS, "ce", after)
    np.testing.assert_allclose(result["logits"], expected, rtol=1e-6, atol=1e-5)
    assert result["logits"].dtype == np.float32 and result["class_ids"].dtype == np.int64
    np.testing.assert_array_equal(result["class_ids"], expected.argmax(axis=1))
    shifted = np.exp(expected - expected.max(axis=1, keepdims=True))
    np.testing.assert_allclose(
        result["probabilities"], shifted / shifted.sum(axis=1, keepdims=True), atol=1e-6
    )
    assert (result["probabilities"][:, 1] == 0).all()
    np.testing.assert_array_equal(result["posteriors"], outputs["posteriors"])
    assert tracked_prior.ZERO_PRIOR_LOGIT == ZERO_PRIOR_LOGIT


def test_the_prior_sent_is_floored_only_when_the_answer_is_re_expressed():
    prior = np.array([0.5, 0.5, 0.0, 0.0])
    np.testing.assert_array_equal(sent_prior(prior, batch_prior=False), np.float32(prior))
    floored = sent_prior(prior, batch_prior=True)
    assert floored.dtype == np.float32 and (floored > 0).all()
    assert floored[2] == pytest.approx(1e-6, rel=1e-3)


def test_tracker_options_are_parsed_and_checked():
    assert parse_tracker_options("half_life=50, window=200,local=batch_em,authors_delay=false") == {
        "half_life": 50,
        "window": 200,
        "local": "batch_em",
        "authors_delay": False,
    }
    with pytest.raises(ValueError, match="expected name=value"):
        parse_tracker_options("half_life")
    with pytest.raises(ValueError, match="tracker 'forgetting' options \\['window'\\]"):
        make_tracker("forgetting", constants(), {"window": 3})
    with pytest.raises(ValueError, match="tracker 'uogd': expected one of"):
        make_tracker("uogd", constants())
    with pytest.raises(ValueError, match="use local=batch_em"):
        make_tracker("flh_ftl", constants(confusion=False))
    tracker = make_tracker("flh_ftl", constants(confusion=False), {"local": "batch_em"})
    assert isinstance(tracker.local_estimator, pt.BatchEM)


def test_each_kind_is_the_library_tracker_with_the_models_constants():
    given = constants()
    rng = np.random.default_rng(1)
    batches = [rng.dirichlet(np.ones(4), 3) for _ in range(5)]
    library = {
        "forgetting": pt.ForgettingTracker(given.source_prior, given.reference_prior),
        "history": pt.HistoryTracker(given.source_prior, given.reference_prior),
        "window": pt.WindowTracker(given.source_prior, given.reference_prior),
        "flh_ftl": pt.FLHFTLTracker(
            pt.SoftBBSE.from_state(
                {
                    "format": pt.STATE_FORMAT,
                    "kind": "soft_bbse",
                    "confusion": given.reference_confusion.tolist(),
                    "reference_prior": given.reference_prior.tolist(),
                    "ridge": 1e-8,
                }
            ),
            given.source_prior,
        ),
    }
    for kind, expected in library.items():
        tracker = make_tracker(kind, given)
        for batch in batches:
            prior = track_batch(tracker, batch, given, batch_prior=True)
            np.testing.assert_allclose(
                prior, pt.prior_for_batch(batch, expected.prior, given.reference_prior)
            )
            expected.update(batch)
            np.testing.assert_allclose(tracker.prior, expected.prior)
        again = restored_tracker(tracker.state(), kind, given)
        np.testing.assert_allclose(again.prior, tracker.prior)


def test_a_saved_tracker_of_another_kind_or_model_is_refused():
    given = constants()
    state = make_tracker("forgetting", given).state()
    with pytest.raises(ValueError, match="holds a 'forgetting' tracker, and 'history'"):
        restored_tracker(state, "history", given)
    other = TrackerConstants(np.full(4, 0.25), given.reference_prior, 10.0, None, given.class_names)
    with pytest.raises(ValueError, match="saved for another model"):
        restored_tracker(state, "forgetting", other)


def test_constants_come_from_the_class_info_signature(tracked_digits, saved_model):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(tracked_digits["base"] / "1"))
    outputs = run_signature(loaded, "class_info", class_ids=np.arange(10, dtype=np.int64))
    got = TrackerConstants.from_class_info(outputs)
    counts = np.array(tracked_digits["counts"], float)
    np.testing.assert_allclose(got.source_prior, counts / counts.sum(), atol=1e-7)
    assert got.prior_strength == 10.0 and got.reference_confusion.shape == (10, 10)
    assert got.class_names == tuple(str(c) for c in range(10))
    untracked = run_signature(saved_model, "class_info", class_ids=np.arange(10, dtype=np.int64))
    assert TrackerConstants.from_class_info(untracked).reference_confusion is None
    del untracked["reference_prior"]
    with pytest.raises(ValueError, match="returns no reference_prior"):
        TrackerConstants.from_class_info(untracked)
