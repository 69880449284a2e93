"""Label-shift estimation (lade_tf.label_shift): EM, Dirichlet-MAP EM and BBSE against exact
posteriors and independent SciPy / NumPy derivations, and the estimation errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import softmax

from lade_tf import label_shift, priors
from tests.lib.gaussian_classes import SOURCE, TARGET, GaussianClasses


def test_em_recovers_prior_from_exact_posteriors():
    model, rng = GaussianClasses(), np.random.default_rng(0)
    _, x = model.sample(TARGET, 20_000, rng)
    probs = model.posterior(x, SOURCE)
    estimate = label_shift.estimate_target_prior(probs, SOURCE, "em")
    # Measured max error 0.002..0.006 over seeds (sampling noise of 20k points).
    assert np.abs(estimate - TARGET).max() < 0.02
    # It is the maximum-likelihood prior: compare with a direct SciPy maximisation.
    ratio = probs / SOURCE

    def negative_log_likelihood(theta):
        return -np.log(ratio @ softmax(theta)).mean()

    theta = minimize(negative_log_likelihood, np.zeros(5), method="BFGS", options={"gtol": 1e-9}).x
    np.testing.assert_allclose(estimate, softmax(theta), atol=2e-4)
    # And a fixed point of the EM update (to tolerance).
    q = ratio * estimate
    np.testing.assert_allclose((q / q.sum(1, keepdims=True)).mean(0), estimate, atol=1e-5)


def test_em_stops_at_max_iter():
    model, rng = GaussianClasses(), np.random.default_rng(1)
    _, x = model.sample(TARGET, 2000, rng)
    probs = model.posterior(x, SOURCE)
    one_step = label_shift.estimate_target_prior(probs, SOURCE, "em", max_iter=1)
    np.testing.assert_allclose(one_step, probs.mean(0))


def test_bbse_recovers_prior_and_matches_lipton_formula():
    model, rng = GaussianClasses(), np.random.default_rng(2)
    val_labels, val_x = model.sample(SOURCE, 20_000, rng)
    _, x = model.sample(TARGET, 20_000, rng)
    val_probs, probs = model.posterior(val_x, SOURCE), model.posterior(x, SOURCE)
    estimate = label_shift.estimate_target_prior(
        probs, SOURCE, "bbse", val_probs=val_probs, val_labels=val_labels
    )
    # Measured max error 0.012..0.032 over seeds.
    assert np.abs(estimate - TARGET).max() < 0.06
    # Lipton et al.: joint confusion C[i, j] = P(yhat=i, y=j) on source data, w = C^-1 mu,
    # p_t = w * p_s (with p_s the empirical validation label frequencies).
    joint = np.zeros((5, 5))
    np.add.at(joint, (val_probs.argmax(1), val_labels), 1.0 / val_labels.size)
    mu = np.bincount(probs.argmax(1), minlength=5) / len(probs)
    weights = np.linalg.solve(joint, mu)
    reference = np.clip(weights * np.bincount(val_labels) / val_labels.size, 0, None)
    np.testing.assert_allclose(estimate, reference / reference.sum(), atol=1e-10)


@pytest.mark.parametrize("method", ["em", "bbse"])
@pytest.mark.parametrize("name", ["F50", "F10", "B10", "B50"])
def test_estimate_recovers_skewed_prior_on_digits(digits_classifier, method, name):
    val_probs, _, val_labels = digits_classifier["val"]
    probs, _, labels = digits_classifier["test"]
    source = digits_classifier["source"]
    counts = priors.shifted_test_counts(np.arange(10, 0, -1), int(np.bincount(labels).min()), name)
    for seed in range(3):
        kept = priors.subsample_by_counts(labels, counts, seed)
        true = np.bincount(labels[kept], minlength=10) / kept.size
        estimate = label_shift.estimate_target_prior(
            probs[kept], source, method, val_probs=val_probs, val_labels=val_labels
        )
        # Measured (F50/F10/B10/B50, 3 seeds): max error <= 0.029 for EM and BBSE, while the
        # source prior is off by 0.15..0.27.
        assert np.abs(estimate - true).max() < 0.06
        assert np.abs(estimate - true).sum() < 0.5 * np.abs(source - true).sum()


def test_estimate_target_prior_errors():
    probs = np.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match="method"):
        label_shift.estimate_target_prior(probs, [1 / 3] * 3, "mle")
    with pytest.raises(ValueError, match="val_probs and val_labels"):
        label_shift.estimate_target_prior(probs, [1 / 3] * 3, "bbse")
    with pytest.raises(ValueError, match="class"):
        label_shift.estimate_target_prior(
            probs, [1 / 3] * 3, "bbse", val_probs=probs, val_labels=[0, 0, 1, 1]
        )
    with pytest.raises(ValueError, match="source_prior"):
        label_shift.estimate_target_prior(probs, [0.5, 0.5, 0.0])
    with pytest.raises(ValueError, match="prior_strength = -1"):
        label_shift.estimate_target_prior(probs, [1 / 3] * 3, prior_strength=-1)
    with pytest.raises(ValueError, match="prior_strength = 5.*bbse"):
        label_shift.estimate_target_prior(
            probs, [1 / 3] * 3, "bbse", prior_strength=5, val_probs=probs, val_labels=[0, 1, 2, 0]
        )
    with pytest.raises(ValueError, match="prior_centre has 2 entries: expected 3"):
        label_shift.estimate_target_prior(
            probs, [1 / 3] * 3, prior_strength=1, prior_centre=[0.5, 0.5]
        )


@pytest.mark.parametrize(
    "probs, message",
    [
        (np.full((4, 3), 1.0), r"probs\[0\] sums to 3: expected rows that sum to 1"),
        (np.array([[0.5, 0.5, 0.0], [0.2, 0.2, 0.2]]), r"probs\[1\] sums to 0.6"),
        (
            np.array([[0.5, 0.5, 0.0], [np.nan, 0.5, 0.5]]),
            r"probs\[1\] = \[nan, 0.5, 0.5\] has NaN or infinite entries",
        ),
        (np.array([[1.5, -0.5, 0.0]]), r"probs\[0\] = .* has negative entries"),
        (np.full((4, 2), 0.5), r"probs have shape \(4, 2\): expected \[N, 3\]"),
        (np.full(3, 1 / 3), r"probs have shape \(3,\): expected \[N, 3\]"),
        (np.zeros((0, 3)), r"probs is an empty batch \(shape \(0, 3\)\)"),
    ],
)
def test_bad_posteriors_name_the_value_and_the_expectation(probs, message):
    with pytest.raises(ValueError, match=message):
        label_shift.estimate_target_prior(probs, [1 / 3] * 3)


def _reference_map_em(probs, source, strength, centre, steps=5000):
    """Dirichlet-MAP label-shift EM written directly: the posterior mode of
    sum_i log sum_y p(y|x_i) pi_y / p_s(y) + sum_y strength * centre_y * log pi_y,
    found by SciPy on the softmax parametrisation."""
    ratio = probs / source

    def negative_log_posterior(theta):
        pi = softmax(theta)
        return -(np.log(ratio @ pi).sum() + strength * centre @ np.log(pi))

    theta = minimize(
        negative_log_posterior,
        np.log(source),
        method="BFGS",
        options={"gtol": 1e-10, "maxiter": steps},
    ).x
    return softmax(theta)


@pytest.mark.parametrize("size", [1, 8, 200])
def test_map_em_is_the_dirichlet_posterior_mode(size):
    model, rng = GaussianClasses(), np.random.default_rng(4)
    _, x = model.sample(TARGET, size, rng)
    probs = model.posterior(x, SOURCE)
    for strength in (0.5, 10.0):
        estimate = label_shift.estimate_target_prior(
            probs, SOURCE, prior_strength=strength, tol=1e-12, max_iter=100_000
        )
        np.testing.assert_allclose(
            estimate, _reference_map_em(probs, SOURCE, strength, SOURCE), atol=2e-5
        )


def test_map_em_centre_and_limits():
    model, rng = GaussianClasses(), np.random.default_rng(5)
    _, x = model.sample(TARGET, 500, rng)
    probs = model.posterior(x, SOURCE)
    centre = np.full(5, 0.2)
    estimate = label_shift.estimate_target_prior(
        probs, SOURCE, prior_strength=50, prior_centre=centre, tol=1e-12, max_iter=100_000
    )
    np.testing.assert_allclose(estimate, _reference_map_em(probs, SOURCE, 50, centre), atol=2e-5)
    plain = label_shift.estimate_target_prior(probs, SOURCE)
    np.testing.assert_array_equal(
        label_shift.estimate_target_prior(probs, SOURCE, prior_strength=0), plain
    )
    huge = label_shift.estimate_target_prior(probs, SOURCE, prior_strength=1e9, prior_centre=centre)
    np.testing.assert_allclose(huge, centre, atol=1e-5)
    # One image: plain EM collapses towards one class, MAP stays within 2 / (1 + lambda) (L1).
    one = probs[:1]
    assert label_shift.estimate_target_prior(one, SOURCE).max() > 0.99
    strength = label_shift.DEFAULT_PRIOR_STRENGTH
    assert (
        np.abs(
            label_shift.estimate_target_prior(one, SOURCE, prior_strength=strength) - SOURCE
        ).sum()
        <= 2 / (1 + strength) + 1e-9
    )


def test_estimation_errors_against_scipy():
    from scipy.spatial.distance import jensenshannon

    p, q = np.array([0.5, 0.3, 0.2, 0.0]), np.array([0.1, 0.1, 0.4, 0.4])
    error = label_shift.prior_estimation_error(p, q)
    assert error["l1"] == pytest.approx(0.4 + 0.2 + 0.2 + 0.4)
    # SciPy returns the Jensen-Shannon distance, the square root of the divergence.
    assert error["js"] == pytest.approx(jensenshannon(p, q) ** 2, rel=1e-12)
    assert label_shift.jensen_shannon_divergence(p, p) == 0.0
    assert label_shift.jensen_shannon_divergence([1, 0], [0, 1]) == pytest.approx(np.log(2))
    unnormalised = label_shift.prior_estimation_error([2, 2], [1, 1])
    assert unnormalised == {"l1": 0.0, "js": 0.0}
    with pytest.raises(ValueError, match="estimate has 2 entries and true_prior 3"):
        label_shift.prior_estimation_error([0.5, 0.5], [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match=r"p \[-1.,  2.\] has negative entries"):
        label_shift.jensen_shannon_divergence([-1, 2], [0.5, 0.5])
