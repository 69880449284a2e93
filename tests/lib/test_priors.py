"""Label priors: long-tailed counts, the shifted test distributions and their subsampling."""

from __future__ import annotations

import numpy as np
import pytest

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
