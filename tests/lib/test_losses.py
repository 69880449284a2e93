"""Losses against an independent float64 NumPy implementation of DESIGN section 1."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest

from lade_tf import losses

COUNTS = [50, 20, 10, 5, 2]
NUM_CLASSES = len(COUNTS)
OPTIONS = list(itertools.product(losses.IMPORTANCE_VARIANTS, losses.LADER_CLASS_SETS))


# ---- independent NumPy reference: loops over classes, plain exp/log (moderate logits) ----


def reference_prior_ce(labels, logits, counts, tau=1.0):
    prior = np.asarray(counts, np.float64) / np.sum(counts)
    shifted = np.asarray(logits, np.float64) + tau * np.log(prior)
    top = shifted.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(shifted - top).sum(axis=1))
    return log_norm - shifted[np.arange(len(labels)), labels]


def reference_lader(labels, logits, counts, remine_lambda, importance, lader_classes):
    logits = np.asarray(logits, np.float64)
    prior = np.asarray(counts, np.float64) / np.sum(counts)
    num_samples, num_classes = logits.shape
    uniform = 1.0 / num_classes
    total = 0.0
    for c in range(num_classes):
        members = labels == c
        if lader_classes == "present" and not members.any():
            continue
        first = logits[members, c].mean() if members.any() else 0.0
        if importance == "sample":
            weights = uniform / prior[labels]
        else:
            weights = np.full(num_samples, uniform / prior[c])
        second = np.log(np.sum(weights * np.exp(logits[:, c])) / num_samples)
        total += prior[c] * (-first + second + remine_lambda * second**2)
    return total


def reference_lade(labels, logits, counts, alpha, remine_lambda, importance, lader_classes):
    return reference_prior_ce(labels, logits, counts).mean() + alpha * reference_lader(
        labels, logits, counts, remine_lambda, importance, lader_classes
    )


# ---- helpers ----


def batch(kind: str, seed: int = 0, size: int = 12):
    """(labels int64 [size], logits float32 [size, C]); kind "random" or "missing" classes."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, size=(size, NUM_CLASSES)).astype(np.float32)
    if kind == "random":
        labels = np.concatenate(
            [np.arange(NUM_CLASSES), rng.integers(0, NUM_CLASSES, size - NUM_CLASSES)]
        )
    else:  # classes 1 and 4 absent
        labels = rng.choice([0, 2, 3], size=size)
    return labels.astype(np.int64), logits


def label_formats(labels):
    return {
        "int": labels,
        "int_column": labels[:, None],
        "one_hot": np.eye(NUM_CLASSES, dtype=np.float32)[labels],
    }


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float64)


def autodiff(fn, x: np.ndarray) -> np.ndarray:
    """d fn(x) / dx with the active backend's autodiff (fn returns a scalar tensor)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(fn)(x), np.float64)
    if backend == "tensorflow":
        import tensorflow as tf

        value = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(value)
            result = fn(value)
        return tape.gradient(result, value).numpy().astype(np.float64)
    pytest.skip(f"no gradient helper for backend {backend}")


# ---- values ----


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("kind", ["random", "missing"])
@pytest.mark.parametrize("importance,lader_classes", OPTIONS)
def test_lade_matches_numpy_reference(kind, importance, lader_classes):
    labels, logits = batch(kind, seed=1)
    alpha, remine_lambda = 0.7, 0.3
    expected = reference_lade(
        labels, logits, COUNTS, alpha, remine_lambda, importance, lader_classes
    )
    expected_lader = reference_lader(
        labels, logits, COUNTS, remine_lambda, importance, lader_classes
    )
    expected_per_sample = reference_prior_ce(labels, logits, COUNTS) + alpha * expected_lader
    loss = losses.LADELoss(
        COUNTS,
        alpha=alpha,
        remine_lambda=remine_lambda,
        importance=importance,
        lader_classes=lader_classes,
    )
    for name, y_true in label_formats(labels).items():
        per_sample = to_numpy(
            losses.lade_loss(
                y_true, logits, COUNTS, alpha, remine_lambda, importance, lader_classes
            )
        )
        np.testing.assert_allclose(
            per_sample, expected_per_sample, rtol=1e-5, atol=1e-6, err_msg=name
        )
        np.testing.assert_allclose(
            to_numpy(loss(y_true, logits)), expected, rtol=1e-5, err_msg=name
        )
        np.testing.assert_allclose(
            to_numpy(
                losses.lader(y_true, logits, COUNTS, remine_lambda, importance, lader_classes)
            ),
            expected_lader,
            rtol=1e-5,
            atol=1e-6,
            err_msg=name,
        )


@pytest.mark.backend_agnostic
def test_lade_variants_really_differ_on_missing_classes():
    """The four variants are four different numbers (measured 2.63, 1.36, 1.24 and 0.31), each
    the reference's: an option that is silently ignored would make two of them equal."""
    labels, logits = batch("missing", seed=2)
    values = {
        option: float(to_numpy(losses.lader(labels, logits, COUNTS, 0.1, *option)))
        for option in OPTIONS
    }
    for option, value in values.items():
        assert value == pytest.approx(
            reference_lader(labels, logits, COUNTS, 0.1, *option), rel=1e-5
        ), option
    ordered = sorted(values.values())
    assert min(np.diff(ordered)) > 0.05, values


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("kind", ["random", "missing"])
def test_balanced_softmax_and_logit_adjusted_match_numpy(kind):
    labels, logits = batch(kind, seed=3)
    for y_true in label_formats(labels).values():
        expected = reference_prior_ce(labels, logits, COUNTS)
        np.testing.assert_allclose(
            to_numpy(losses.balanced_softmax_loss(y_true, logits, COUNTS)),
            expected,
            rtol=1e-5,
            atol=1e-6,
        )
        np.testing.assert_allclose(
            to_numpy(losses.BalancedSoftmaxLoss(COUNTS)(y_true, logits)),
            expected.mean(),
            rtol=1e-5,
            atol=1e-6,
        )
        for tau in (0.0, 0.5, 1.0, 2.0):
            expected = reference_prior_ce(labels, logits, COUNTS, tau)
            np.testing.assert_allclose(
                to_numpy(losses.logit_adjusted_loss(y_true, logits, COUNTS, tau)),
                expected,
                rtol=1e-5,
                atol=1e-6,
            )
            np.testing.assert_allclose(
                to_numpy(losses.LogitAdjustedLoss(COUNTS, tau=tau)(y_true, logits)),
                expected.mean(),
                rtol=1e-5,
                atol=1e-6,
            )


@pytest.mark.backend_agnostic
def test_lade_reference_code_variant_matches_authors_formula():
    """importance="class", lader_classes="all" is the authors' PyTorch code, re-derived here."""
    labels, logits = batch("missing", seed=4)
    prior = np.asarray(COUNTS, np.float64) / np.sum(COUNTS)
    f = logits.astype(np.float64)
    member = labels[None, :] == np.arange(NUM_CLASSES)[:, None]  # C x N
    first = (f.T * member).sum(axis=1) / (member.sum(axis=1) + 1e-8)
    spread = (f - np.log(prior) + np.log(1.0 / NUM_CLASSES)).T
    second = np.log(np.exp(spread).sum(axis=1)) - np.log(len(labels))
    lader = -np.sum((first - second - 0.1 * second**2) * prior)
    got = to_numpy(losses.lader(labels, logits, COUNTS, 0.1, "class", "all"))
    np.testing.assert_allclose(got, lader, rtol=1e-5, atol=1e-6)


@pytest.mark.backend_agnostic
def test_large_logits_are_stable():
    labels, logits = batch("missing", seed=5)
    logits = logits * 100.0  # exp would overflow float32 without logsumexp
    assert np.abs(logits).max() < 700  # but not float64: the plain reference still holds
    for importance, lader_classes in OPTIONS:
        value = to_numpy(
            losses.LADELoss(COUNTS, importance=importance, lader_classes=lader_classes)(
                labels, logits
            )
        )
        expected = reference_lade(
            labels, logits.astype(np.float64), COUNTS, 0.1, 0.1, importance, lader_classes
        )
        # Measured relative error <= 1.2e-7 (values 660 to 890).
        np.testing.assert_allclose(value, expected, rtol=1e-5)


# ---- reductions and sample weights (the documented contract) ----


@pytest.mark.backend_agnostic
def test_reductions_and_sample_weights_follow_the_documented_formulas():
    labels, logits = batch("random", seed=6)
    weights = np.random.default_rng(0).uniform(0.0, 2.0, size=len(labels)).astype(np.float32)
    cross_entropy = reference_prior_ce(labels, logits, COUNTS)
    alpha = 0.5
    regulariser = reference_lader(labels, logits, COUNTS, 0.1, "class", "all")

    def value(reduction):
        loss = losses.LADELoss(COUNTS, alpha=alpha, reduction=reduction)
        return to_numpy(loss(labels, logits, sample_weight=weights))

    np.testing.assert_allclose(
        value("sum_over_batch_size"),
        np.mean(weights * cross_entropy) + alpha * weights.mean() * regulariser,
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        value("mean_with_sample_weight"),
        np.sum(weights * cross_entropy) / weights.sum() + alpha * regulariser,
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        value("sum"),
        np.sum(weights * cross_entropy) + alpha * weights.sum() * regulariser,
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        value("none"), weights * (cross_entropy + alpha * regulariser), rtol=1e-5, atol=1e-6
    )


# ---- gradients ----


def finite_difference(fn, x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    grad = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        grad[index] = (fn(x + step) - fn(x - step)) / (2 * eps)
    return grad


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("kind", ["random", "missing"])
@pytest.mark.parametrize("importance,lader_classes", OPTIONS)
def test_lade_gradient_matches_finite_differences(kind, importance, lader_classes):
    labels, logits = batch(kind, seed=7, size=8)
    alpha, remine_lambda = 0.5, 0.2
    loss = losses.LADELoss(
        COUNTS,
        alpha=alpha,
        remine_lambda=remine_lambda,
        importance=importance,
        lader_classes=lader_classes,
    )
    got = autodiff(lambda f: loss(labels, f), logits)
    expected = finite_difference(
        lambda f: reference_lade(
            labels, f, COUNTS, alpha, remine_lambda, importance, lader_classes
        ),
        logits.astype(np.float64),
    )
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("importance,lader_classes", OPTIONS)
def test_gradients_finite_when_one_class_fills_the_batch(importance, lader_classes):
    labels = np.full(6, 4)
    logits = np.random.default_rng(8).normal(size=(6, NUM_CLASSES)).astype(np.float32)
    for loss in (
        losses.LADELoss(COUNTS, importance=importance, lader_classes=lader_classes),
        losses.BalancedSoftmaxLoss(COUNTS),
        losses.LogitAdjustedLoss(COUNTS, tau=2.0),
    ):
        assert np.isfinite(to_numpy(loss(labels, logits)))
        assert np.all(np.isfinite(autodiff(lambda f: loss(labels, f), logits)))


# ---- mixed precision ----


@pytest.fixture
def mixed_float16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    yield
    keras.config.set_dtype_policy(previous)


@pytest.mark.backend_agnostic
def test_float32_math_for_float16_logits(mixed_float16):
    labels, logits = batch("missing", seed=9)
    logits16 = (logits * 20.0).astype(np.float16)  # e^{f} overflows float16 (max 65504)
    exact = reference_lade(labels, logits16.astype(np.float64), COUNTS, 0.1, 0.1, "class", "all")
    for loss in (losses.LADELoss(COUNTS), losses.make_loss("lade", COUNTS)):
        value = loss(labels, keras.ops.convert_to_tensor(logits16))
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
        np.testing.assert_allclose(to_numpy(value), exact, rtol=1e-6)  # measured 8e-8
    per_sample = losses.balanced_softmax_loss(labels, logits16, COUNTS)
    assert keras.backend.standardize_dtype(per_sample.dtype) == "float32"
    # Some samples have a loss of exactly 0 (the true logit dominates): atol for those.
    np.testing.assert_allclose(
        to_numpy(per_sample), reference_prior_ce(labels, logits16, COUNTS), rtol=1e-6, atol=1e-6
    )


@pytest.mark.backend_agnostic
def test_mixed_precision_model_trains_with_lade(mixed_float16):
    labels, _ = batch("random", seed=10, size=32)
    features = np.random.default_rng(10).normal(size=(32, 6)).astype(np.float32)
    inputs = keras.Input((6,))
    logits = keras.layers.Dense(NUM_CLASSES)(inputs)
    assert keras.backend.standardize_dtype(logits.dtype) == "float16"
    model = keras.Model(inputs, logits)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=losses.LADELoss(COUNTS))
    history = model.fit(features, labels, batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


# ---- configuration, serialisation, errors ----


@pytest.mark.backend_agnostic
def test_config_round_trip_for_every_loss():
    made = [
        losses.LADELoss(
            COUNTS,
            alpha=0.3,
            remine_lambda=0.05,
            importance="class",
            lader_classes="present",
            reduction="mean_with_sample_weight",
        ),
        losses.BalancedSoftmaxLoss(COUNTS),
        losses.LogitAdjustedLoss(COUNTS, tau=1.5),
    ]
    labels, logits = batch("missing", seed=11)
    for loss in made:
        clone = type(loss).from_config(loss.get_config())
        assert clone.get_config() == loss.get_config()
        revived = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(revived) is type(loss) and revived.get_config() == loss.get_config()
        np.testing.assert_allclose(
            to_numpy(revived(labels, logits)), to_numpy(loss(labels, logits)), rtol=1e-6
        )


@pytest.mark.backend_agnostic
def test_compiled_model_survives_keras_save_and_load(tmp_path):
    labels, _ = batch("random", seed=12, size=24)
    features = np.random.default_rng(12).normal(size=(24, 6)).astype(np.float32)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(NUM_CLASSES)])
    lade = losses.LADELoss(COUNTS, alpha=0.2, importance="class")
    model.compile(optimizer="sgd", loss=lade)
    model.fit(features, labels, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.loss, losses.LADELoss)
    assert loaded.loss.get_config() == lade.get_config()
    np.testing.assert_allclose(
        loaded.evaluate(features, labels, verbose=0),
        model.evaluate(features, labels, verbose=0),
        rtol=1e-6,
    )


@pytest.mark.backend_agnostic
def test_make_loss():
    assert losses.LOSS_NAMES == ("ce", "lade", "balanced_softmax", "logit_adjusted")
    assert isinstance(losses.make_loss("ce", COUNTS), keras.losses.SparseCategoricalCrossentropy)
    assert isinstance(losses.make_loss("ce", None), keras.losses.SparseCategoricalCrossentropy)
    lade = losses.make_loss("lade", COUNTS, alpha=0.05, remine_lambda=0.5)
    assert isinstance(lade, losses.LADELoss) and (lade.alpha, lade.remine_lambda) == (0.05, 0.5)
    assert isinstance(losses.make_loss("balanced_softmax", COUNTS), losses.BalancedSoftmaxLoss)
    assert losses.make_loss("logit_adjusted", COUNTS, tau=2.0).tau == 2.0
    with pytest.raises(ValueError, match="'focal'.*'ce', 'lade', 'balanced_softmax'"):
        losses.make_loss("focal", COUNTS)
    with pytest.raises(ValueError, match=r"'balanced_softmax' takes no option\(s\) \['tau'\]"):
        losses.make_loss("balanced_softmax", COUNTS, tau=1.0)
    with pytest.raises(ValueError, match="needs class_counts"):
        losses.make_loss("lade", None)


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("bad", [0, -3, float("nan")])
@pytest.mark.parametrize(
    "make",
    [
        lambda counts: losses.LADELoss(counts),
        lambda counts: losses.BalancedSoftmaxLoss(counts),
        lambda counts: losses.LogitAdjustedLoss(counts),
        lambda counts: losses.make_loss("ce", counts),
        lambda counts: losses.lade_loss([0], np.zeros((1, 3), np.float32), counts),
    ],
)
def test_bad_class_count_is_rejected_naming_the_class(make, bad):
    with pytest.raises(ValueError, match=r"class_counts\[2\]"):
        make([10, 5, bad])


@pytest.mark.backend_agnostic
def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="importance = 'paper'"):
        losses.LADELoss(COUNTS, importance="paper")
    with pytest.raises(ValueError, match="lader_classes = 'some'"):
        losses.LADELoss(COUNTS, lader_classes="some")
    with pytest.raises(ValueError, match="alpha = -1"):
        losses.LADELoss(COUNTS, alpha=-1)
    with pytest.raises(ValueError, match="tau = nan"):
        losses.LogitAdjustedLoss(COUNTS, tau=float("nan"))
    with pytest.raises(ValueError, match=r"logits have shape \(2, 3\)"):
        losses.lade_loss([0, 1], np.zeros((2, 3), np.float32), COUNTS)
    with pytest.raises(ValueError, match=r"y_true has shape \(2, 3\)"):
        losses.balanced_softmax_loss(np.zeros((2, 3)), np.zeros((2, NUM_CLASSES)), COUNTS)
