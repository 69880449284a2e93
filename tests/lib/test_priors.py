"""lade_tf.priors against independent NumPy/SciPy references and real (digits) classifiers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax, softmax

from lade_tf import priors
from lade_tf.priors import SHIFT_NAMES

FASHION_MNIST_LT = priors.long_tail_counts(6000, 10, 100)
CIFAR100_LT = priors.long_tail_counts(500, 100, 100)


# ---------------------------------------------------------------- long-tailed training counts


@pytest.mark.parametrize(
    "n_max, num_classes, ratio, total",
    [
        (6000, 10, 100, 14_886),
        (5000, 10, 100, 12_406),
        (500, 100, 100, 10_847),
        (500, 100, 50, 12_608),
        (500, 100, 10, 19_573),
    ],
)
def test_long_tail_totals_match_published_benchmarks(n_max, num_classes, ratio, total):
    counts = priors.long_tail_counts(n_max, num_classes, ratio)
    assert sum(counts) == total
    assert counts[0] == n_max and counts[-1] == n_max // ratio
    assert all(a >= b for a, b in zip(counts, counts[1:]))


def test_long_tail_fashion_mnist_profile():
    assert FASHION_MNIST_LT[:2] == [6000, 3596] and FASHION_MNIST_LT[-2:] == [100, 60]


def test_long_tail_step_profile():
    assert priors.long_tail_counts(500, 10, 100, profile="step") == [500] * 5 + [5] * 5
    assert priors.long_tail_counts(500, 5, 10, profile="step") == [500] * 2 + [50] * 3


@pytest.mark.parametrize(
    "kwargs",
    [dict(n_max=0), dict(num_classes=1), dict(imbalance_ratio=0.5), dict(profile="linear")],
)
def test_long_tail_rejects_bad_arguments(kwargs):
    args = {**dict(n_max=100, num_classes=10, imbalance_ratio=10), **kwargs}
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        priors.long_tail_counts(**args)


def test_source_prior_names_bad_class():
    assert priors.source_prior([3, 1]) == pytest.approx([0.75, 0.25])
    with pytest.raises(ValueError, match=r"class_counts\[1\]"):
        priors.source_prior([3, 0, 2])


# ---------------------------------------------------------------- the 11 shifted test sets


def test_shift_ratio_all_names():
    assert [priors.shift_ratio(n) for n in SHIFT_NAMES] == [
        ("forward", 50.0),
        ("forward", 25.0),
        ("forward", 10.0),
        ("forward", 5.0),
        ("forward", 2.0),
        ("uniform", 1.0),
        ("backward", 2.0),
        ("backward", 5.0),
        ("backward", 10.0),
        ("backward", 25.0),
        ("backward", 50.0),
    ]
    with pytest.raises(ValueError, match="F3"):
        priors.shift_ratio("F3")


def test_frequency_ranks_most_frequent_first_ties_by_label():
    np.testing.assert_array_equal(priors.frequency_ranks([5, 30, 5, 100, 1]), [2, 1, 3, 0, 4])


def _reference_shifted_counts(train_counts, m, name):
    """DESIGN section 5 written directly with NumPy."""
    counts = np.asarray(train_counts, dtype=float)
    num_classes = counts.size
    rank = np.empty(num_classes)
    rank[np.argsort(-counts, kind="stable")] = np.arange(num_classes)
    if name == "U":
        return np.full(num_classes, m)
    rho = float(name[1:])
    steps = rank if name[0] == "F" else num_classes - 1 - rank
    exponent = steps / (num_classes - 1)
    return np.floor(m * (1.0 / rho) ** exponent).astype(int)


@pytest.mark.parametrize(
    "train_counts, m",
    [(FASHION_MNIST_LT, 1000), (CIFAR100_LT, 100)],
    ids=["fashion_mnist", "cifar100"],
)
@pytest.mark.parametrize("name", SHIFT_NAMES)
def test_shifted_test_counts_match_reference(train_counts, m, name):
    # Labels not sorted by frequency: the result must be indexed by label, not by rank.
    permuted = np.random.default_rng(7).permutation(train_counts).tolist()
    for counts in (train_counts, permuted):
        got = priors.shifted_test_counts(counts, m, name)
        np.testing.assert_array_equal(got, _reference_shifted_counts(counts, m, name))
        assert got.dtype == np.int64


def test_shifted_test_counts_known_values():
    f50 = priors.shifted_test_counts(FASHION_MNIST_LT, 1000, "F50")
    assert f50[0] == 1000 and f50[-1] == 20
    assert priors.shifted_test_counts(FASHION_MNIST_LT, 1000, "B50")[0] == 20


@pytest.mark.parametrize("rho", ["50", "25", "10", "5", "2"])
def test_forward_and_backward_are_mirror_images(rho):
    order = np.argsort(-np.asarray(CIFAR100_LT), kind="stable")
    forward = priors.shifted_test_counts(CIFAR100_LT, 100, "F" + rho)[order]
    backward = priors.shifted_test_counts(CIFAR100_LT, 100, "B" + rho)[order]
    np.testing.assert_array_equal(forward, backward[::-1])
    assert forward[0] == 100 and forward[-1] == int(100 / float(rho))


def test_shifted_priors_all_eleven_normalised():
    result = priors.shifted_priors(FASHION_MNIST_LT, 1000)
    assert tuple(result) == SHIFT_NAMES
    for name, prior in result.items():
        assert prior.sum() == pytest.approx(1.0)
        counts = _reference_shifted_counts(FASHION_MNIST_LT, 1000, name)
        np.testing.assert_allclose(prior, counts / counts.sum())
    np.testing.assert_allclose(result["U"], 0.1)


def test_shifted_counts_reject_bad_per_class():
    with pytest.raises(ValueError, match="per_class"):
        priors.shifted_test_counts(FASHION_MNIST_LT, 0, "U")


# ---------------------------------------------------------------- subsampling


def test_subsample_by_counts_exact_counts_and_seeded(digits):
    _, labels = digits
    counts = priors.shifted_test_counts(np.arange(10, 0, -1), 170, "F10")
    first = priors.subsample_by_counts(labels, counts, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[first], minlength=10), counts)
    assert np.all(np.diff(first) > 0)  # sorted, no repeats
    np.testing.assert_array_equal(first, priors.subsample_by_counts(labels, counts, seed=0))
    assert not np.array_equal(first, priors.subsample_by_counts(labels, counts, seed=1))
    everything = priors.subsample_by_counts(labels, np.bincount(labels), seed=3)
    np.testing.assert_array_equal(everything, np.arange(labels.size))


def test_subsample_by_counts_errors(digits):
    _, labels = digits
    too_many = np.bincount(labels)
    too_many[4] += 1
    with pytest.raises(ValueError, match=r"counts\[4\]"):
        priors.subsample_by_counts(labels, too_many, seed=0)
    with pytest.raises(ValueError, match="labels span"):
        priors.subsample_by_counts(labels, [1] * 9, seed=0)
    with pytest.raises(ValueError, match="integers >= 0"):
        priors.subsample_by_counts(labels, [-1] + [1] * 9, seed=0)


# ---------------------------------------------------------------- target prior estimation


class GaussianClasses:
    """A known generative model: 2-D unit-variance Gaussian classes; exact posteriors for any prior.

    Means 4 apart (2.8 for the centre class): closer, the centre class is never the argmax under
    the skewed source prior and BBSE cannot identify its share (measured error 0.17).
    """

    means = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0], [2.0, 2.0]])

    def sample(self, prior, size, rng):
        labels = rng.choice(len(prior), size=size, p=prior)
        return labels, self.means[labels] + rng.normal(size=(size, 2))

    def posterior(self, x, prior):
        log_joint = -0.5 * ((x[:, None, :] - self.means[None]) ** 2).sum(-1) + np.log(prior)
        return softmax(log_joint, axis=1)


SOURCE = np.array([0.5, 0.25, 0.12, 0.08, 0.05])
TARGET = np.array([0.05, 0.1, 0.2, 0.3, 0.35])


def test_em_recovers_prior_from_exact_posteriors():
    model, rng = GaussianClasses(), np.random.default_rng(0)
    _, x = model.sample(TARGET, 20_000, rng)
    probs = model.posterior(x, SOURCE)
    estimate = priors.estimate_target_prior(probs, SOURCE, "em")
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
    one_step = priors.estimate_target_prior(probs, SOURCE, "em", max_iter=1)
    np.testing.assert_allclose(one_step, probs.mean(0))


def test_bbse_recovers_prior_and_matches_lipton_formula():
    model, rng = GaussianClasses(), np.random.default_rng(2)
    val_labels, val_x = model.sample(SOURCE, 20_000, rng)
    _, x = model.sample(TARGET, 20_000, rng)
    val_probs, probs = model.posterior(val_x, SOURCE), model.posterior(x, SOURCE)
    estimate = priors.estimate_target_prior(
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


@pytest.fixture(scope="module")
def digits_classifier(digits):
    """Logistic regression on half of digits; (val, test) probabilities, logits and labels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from threadpoolctl import threadpool_limits

    images, labels = digits
    features = images.reshape(len(images), -1) / 255.0
    x_train, x_rest, y_train, y_rest = train_test_split(
        features, labels, train_size=0.5, stratify=labels, random_state=0
    )
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, train_size=0.4, stratify=y_rest, random_state=0
    )
    with threadpool_limits(1):  # BLAS threads fight over the shared cores: 0.2 s vs 10 s
        model = LogisticRegression(max_iter=500).fit(x_train, y_train)
    return dict(
        source=np.bincount(y_train) / y_train.size,
        val=(model.predict_proba(x_val), model.decision_function(x_val), y_val),
        test=(model.predict_proba(x_test), model.decision_function(x_test), y_test),
    )


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
        estimate = priors.estimate_target_prior(
            probs[kept], source, method, val_probs=val_probs, val_labels=val_labels
        )
        # Measured (F50/F10/B10/B50, 3 seeds): max error <= 0.029 for EM and BBSE, while the
        # source prior is off by 0.15..0.27.
        assert np.abs(estimate - true).max() < 0.06
        assert np.abs(estimate - true).sum() < 0.5 * np.abs(source - true).sum()


def test_estimate_target_prior_errors():
    probs = np.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match="method"):
        priors.estimate_target_prior(probs, [1 / 3] * 3, "mle")
    with pytest.raises(ValueError, match="val_probs and val_labels"):
        priors.estimate_target_prior(probs, [1 / 3] * 3, "bbse")
    with pytest.raises(ValueError, match="class"):
        priors.estimate_target_prior(
            probs, [1 / 3] * 3, "bbse", val_probs=probs, val_labels=[0, 0, 1, 1]
        )
    with pytest.raises(ValueError, match="source_prior"):
        priors.estimate_target_prior(probs, [0.5, 0.5, 0.0])
    with pytest.raises(ValueError, match="prior_strength = -1"):
        priors.estimate_target_prior(probs, [1 / 3] * 3, prior_strength=-1)
    with pytest.raises(ValueError, match="prior_strength = 5.*bbse"):
        priors.estimate_target_prior(
            probs, [1 / 3] * 3, "bbse", prior_strength=5, val_probs=probs, val_labels=[0, 1, 2, 0]
        )
    with pytest.raises(ValueError, match="prior_centre has 2 entries: expected 3"):
        priors.estimate_target_prior(probs, [1 / 3] * 3, prior_strength=1, prior_centre=[0.5, 0.5])


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
        priors.estimate_target_prior(probs, [1 / 3] * 3)


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
        estimate = priors.estimate_target_prior(
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
    estimate = priors.estimate_target_prior(
        probs, SOURCE, prior_strength=50, prior_centre=centre, tol=1e-12, max_iter=100_000
    )
    np.testing.assert_allclose(estimate, _reference_map_em(probs, SOURCE, 50, centre), atol=2e-5)
    plain = priors.estimate_target_prior(probs, SOURCE)
    np.testing.assert_array_equal(
        priors.estimate_target_prior(probs, SOURCE, prior_strength=0), plain
    )
    huge = priors.estimate_target_prior(probs, SOURCE, prior_strength=1e9, prior_centre=centre)
    np.testing.assert_allclose(huge, centre, atol=1e-5)
    # One image: plain EM collapses towards one class, MAP stays within 2 / (1 + lambda) (L1).
    one = probs[:1]
    assert priors.estimate_target_prior(one, SOURCE).max() > 0.99
    strength = priors.DEFAULT_PRIOR_STRENGTH
    assert (
        np.abs(priors.estimate_target_prior(one, SOURCE, prior_strength=strength) - SOURCE).sum()
        <= 2 / (1 + strength) + 1e-9
    )


def test_estimation_errors_against_scipy():
    from scipy.spatial.distance import jensenshannon

    p, q = np.array([0.5, 0.3, 0.2, 0.0]), np.array([0.1, 0.1, 0.4, 0.4])
    error = priors.prior_estimation_error(p, q)
    assert error["l1"] == pytest.approx(0.4 + 0.2 + 0.2 + 0.4)
    # SciPy returns the Jensen-Shannon distance, the square root of the divergence.
    assert error["js"] == pytest.approx(jensenshannon(p, q) ** 2, rel=1e-12)
    assert priors.jensen_shannon_divergence(p, p) == 0.0
    assert priors.jensen_shannon_divergence([1, 0], [0, 1]) == pytest.approx(np.log(2))
    assert priors.prior_estimation_error([2, 2], [1, 1]) == {"l1": 0.0, "js": 0.0}  # normalised
    with pytest.raises(ValueError, match="estimate has 2 entries and true_prior 3"):
        priors.prior_estimation_error([0.5, 0.5], [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match=r"p = \[-1.,  2.\]: expected a 1-D distribution"):
        priors.jensen_shannon_divergence([-1, 2], [0.5, 0.5])


# ---------------------------------------------------------------- calibration


def _nll(logits, labels):
    return -log_softmax(logits, axis=1)[np.arange(len(labels)), labels].mean()


def test_fit_temperature_matches_scipy_and_lowers_test_nll(digits_classifier):
    _, val_logits, val_labels = digits_classifier["val"]
    _, test_logits, test_labels = digits_classifier["test"]
    temperature = priors.fit_temperature(val_logits, val_labels)
    reference = minimize_scalar(
        lambda t: _nll(val_logits / t, val_labels),
        bounds=(0.05, 20),
        method="bounded",
        options={"xatol": 1e-8},
    ).x
    assert temperature == pytest.approx(reference, rel=1e-4)
    # Measured: held-out NLL 0.194 -> 0.125 (T = 0.55).
    assert _nll(test_logits / temperature, test_labels) < 0.9 * _nll(test_logits, test_labels)


def test_fit_bcts_matches_scipy_and_lowers_test_nll(digits_classifier):
    _, val_logits, val_labels = digits_classifier["val"]
    _, test_logits, test_labels = digits_classifier["test"]
    temperature, bias = priors.fit_bcts(val_logits, val_labels)
    assert bias.shape == (10,) and abs(bias.mean()) < 1e-12

    def objective(theta):
        return _nll(val_logits * theta[0] + theta[1:], val_labels)

    reference = minimize(
        objective,
        np.r_[1.0, np.zeros(10)],
        method="L-BFGS-B",
        options={"ftol": 1e-14, "gtol": 1e-10, "maxiter": 2000},
    )
    ours = objective(np.r_[1.0 / temperature, bias])
    assert ours <= reference.fun + 1e-7
    assert temperature == pytest.approx(1.0 / reference.x[0], rel=1e-3)
    calibrated = priors.calibrate_logits(test_logits, temperature, bias)
    # Measured: held-out NLL 0.194 -> 0.130.
    assert _nll(calibrated, test_labels) < 0.9 * _nll(test_logits, test_labels)


def test_bcts_corrects_a_shifted_bias():
    model, rng = GaussianClasses(), np.random.default_rng(3)
    labels, x = model.sample(np.full(5, 0.2), 5000, rng)
    # Posteriors for the wrong prior, over-confident: BCTS must undo both.
    logits = 2.0 * np.log(model.posterior(x, SOURCE))
    temperature, bias = priors.fit_bcts(logits, labels)
    assert temperature == pytest.approx(2.0, rel=0.1)
    expected = -np.log(SOURCE) - np.mean(-np.log(SOURCE))
    np.testing.assert_allclose(bias, expected, atol=0.15)


def test_calibrate_logits_formula_and_errors():
    logits = np.array([[1.0, 2.0, 4.0]])
    np.testing.assert_allclose(priors.calibrate_logits(logits, 2.0), [[0.5, 1.0, 2.0]])
    np.testing.assert_allclose(priors.calibrate_logits(logits, 2.0, [1, 0, -1]), [[1.5, 1.0, 1.0]])
    with pytest.raises(ValueError, match="temperature"):
        priors.calibrate_logits(logits, 0.0)
    with pytest.raises(ValueError, match="bias"):
        priors.calibrate_logits(logits, 1.0, [0.0, 1.0])


def test_calibrator_fit_apply_and_round_trip(digits_classifier):
    _, val_logits, val_labels = digits_classifier["val"]
    _, test_logits, _ = digits_classifier["test"]
    bcts = priors.Calibrator.fit(val_logits, val_labels)  # BCTS is the default
    temperature, bias = priors.fit_bcts(val_logits, val_labels)
    assert bcts.method == "bcts" and bcts.temperature == temperature
    np.testing.assert_allclose(bcts.apply(test_logits), test_logits / temperature + bias)
    assert priors.Calibrator.from_dict(bcts.to_dict()) == bcts
    scaled = priors.Calibrator.fit(val_logits, val_labels, "temperature")
    assert scaled.bias is None
    np.testing.assert_allclose(
        scaled.apply(test_logits), test_logits / priors.fit_temperature(val_logits, val_labels)
    )
    identity = priors.Calibrator.fit(val_logits, val_labels, "none")
    assert identity == priors.Calibrator()
    np.testing.assert_array_equal(identity.apply(test_logits), test_logits)
    assert json.loads(json.dumps(bcts.to_dict())) == bcts.to_dict()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="platt"), "calibration = 'platt': expected one of"),
        (dict(method="bcts", temperature=1.0), "bias = None with calibration = 'bcts'"),
        (dict(method="none", temperature=2.0), "temperature = 2.0 with calibration = 'none'"),
        (dict(method="temperature", temperature=-1.0), "temperature = -1.0"),
    ],
)
def test_calibrator_rejects_inconsistent_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        priors.Calibrator(**kwargs)


def test_calibration_errors():
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match=r"class\(es\) \[1\]"):
        priors.fit_bcts(logits, [0, 0, 0])
    with pytest.raises(ValueError, match="labels"):
        priors.fit_temperature(logits, [0, 1])
    with pytest.raises(ValueError, match="finite"):
        priors.fit_temperature(np.array([[np.nan, 0.0]]), [0])
