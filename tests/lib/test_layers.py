"""PriorCorrection and adjust_logits_numpy against the inference rule of DESIGN section 1."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from lade_tf import layers
from lade_tf.losses import LOSS_NAMES

COUNTS = [40, 20, 10, 5]
NUM_CLASSES = len(COUNTS)


def reference_adjusted(logits, counts, train_loss, target_prior, tau=1.0):
    """Independent NumPy inference rule; zero-prior classes are -inf here (probability 0).

    A loss CE(f + k log p_s) is minimised by f + k log p_s = log p_s(y|x) + const, so f carries
    (1 - k) log p_s: k = 0 for CE, 1 for LADE / Balanced Softmax, tau for the logit-adjusted
    loss. Removing it and adding log p_t gives log p_t(y|x) + const.
    """
    source = np.asarray(counts, np.float64) / np.sum(counts)
    prior = np.asarray(target_prior, np.float64)
    prior = prior / prior.sum(axis=-1, keepdims=True)
    k = {"ce": 0.0, "lade": 1.0, "balanced_softmax": 1.0, "logit_adjusted": tau}[train_loss]
    with np.errstate(divide="ignore"):
        return np.asarray(logits, np.float64) - (1.0 - k) * np.log(source) + np.log(prior)


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def random_logits(rows=6, seed=0):
    return np.random.default_rng(seed).normal(0, 3, size=(rows, NUM_CLASSES)).astype(np.float32)


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float64)


BAD_PRIORS = {
    "negative": ([0.5, -0.1, 0.3, 0.3], "negative"),
    "nan": ([0.5, float("nan"), 0.3, 0.2], "NaN or infinite"),
    "inf": ([0.5, float("inf"), 0.3, 0.2], "NaN or infinite"),
    "all_zero": ([0.0, 0.0, 0.0, 0.0], "sums to 0"),
    "zero_row": ([[0.2, 0.3, 0.1, 0.4]] + [[0.0] * 4] * 5, "sums to 0"),
    "too_short": ([0.5, 0.5, 0.0], r"shape \(3,\).*\[4\]"),
    "too_long": ([0.2] * 5, r"shape \(5,\).*\[4\]"),
}


RULE_CASES = [(loss, 1.0) for loss in LOSS_NAMES] + [
    ("logit_adjusted", 0.5),
    ("logit_adjusted", 2.0),
]


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("train_loss, tau", RULE_CASES)
def test_layer_and_numpy_twin_match_the_rule(train_loss, tau):
    logits = random_logits()
    rng = np.random.default_rng(1)
    priors = {
        "vector": rng.uniform(0.1, 3.0, NUM_CLASSES),
        "per_row": rng.uniform(0.1, 3.0, (6, NUM_CLASSES)),
    }
    layer = layers.PriorCorrection(COUNTS, train_loss=train_loss, tau=tau)
    for name, prior in priors.items():
        expected = reference_adjusted(logits, COUNTS, train_loss, prior, tau)
        np.testing.assert_allclose(
            to_numpy(layer(logits, prior.astype(np.float32))),
            expected,
            rtol=1e-5,
            atol=1e-5,
            err_msg=name,
        )
        np.testing.assert_allclose(
            layers.adjust_logits_numpy(logits, COUNTS, train_loss, prior, tau=tau),
            expected,
            rtol=1e-12,
            err_msg=name,
        )


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_logit_adjusted_rule_recovers_the_target_posterior(tau):
    """Expected values from the generative model, not from the rule's formula.

    Class-conditional log-likelihoods l(x, y) (random) define p_s(y|x) = softmax(l + log p_s)
    and p_t(y|x) = softmax(l + log p_t). A model minimising CE(f + tau log p_s) has
    softmax(f + tau log p_s) = p_s(y|x), i.e. f = l + (1 - tau) log p_s + const(x); the
    correction must turn that f into p_t(y|x).
    """
    rng = np.random.default_rng(11)
    log_likelihood = rng.normal(0, 2, size=(8, NUM_CLASSES))
    source = np.asarray(COUNTS, np.float64) / np.sum(COUNTS)
    row_constant = rng.normal(0, 5, size=(8, 1))  # a model's logits are free up to one per row
    logits = log_likelihood + (1.0 - tau) * np.log(source) + row_constant
    np.testing.assert_allclose(
        softmax(logits + tau * np.log(source)), softmax(log_likelihood + np.log(source)), atol=1e-12
    )
    target = rng.dirichlet(np.ones(NUM_CLASSES))
    expected = softmax(log_likelihood + np.log(target))
    layer = layers.PriorCorrection(COUNTS, train_loss="logit_adjusted", tau=tau)
    np.testing.assert_allclose(
        softmax(to_numpy(layer(logits.astype(np.float32), target))), expected, atol=1e-5
    )
    np.testing.assert_allclose(
        softmax(layers.adjust_logits_numpy(logits, COUNTS, "logit_adjusted", target, tau=tau)),
        expected,
        atol=1e-12,
    )
    # With p_t = p_s the rule gives the source posterior softmax(f + tau log p_s).
    np.testing.assert_allclose(
        softmax(layers.adjust_logits_numpy(logits, COUNTS, "logit_adjusted", source, tau=tau)),
        softmax(logits + tau * np.log(source)),
        atol=1e-12,
    )
    if tau != 1.0:  # the rule without the tau term is off by (tau - 1) log p_s
        wrong = softmax(layers.adjust_logits_numpy(logits, COUNTS, "logit_adjusted", target))
        assert np.abs(wrong - expected).max() > 0.05


@pytest.mark.backend_agnostic
def test_correction_offset_per_loss():
    log_source = np.log(np.asarray(COUNTS) / np.sum(COUNTS))
    np.testing.assert_allclose(layers.correction_offset(COUNTS, "ce"), -log_source)
    np.testing.assert_array_equal(layers.correction_offset(COUNTS, "lade"), 0.0)
    np.testing.assert_array_equal(layers.correction_offset(COUNTS, "balanced_softmax"), 0.0)
    np.testing.assert_allclose(layers.correction_offset(COUNTS, "logit_adjusted", 2.0), log_source)
    np.testing.assert_allclose(
        layers.correction_offset(COUNTS, "logit_adjusted", 0.5), -0.5 * log_source
    )


@pytest.mark.backend_agnostic
@pytest.mark.parametrize(
    "loss, tau, message",
    [
        ("logit_adjusted", -1.0, "tau = -1.0: expected a finite number >= 0"),
        ("logit_adjusted", float("nan"), "tau = nan"),
        ("ce", 2.0, "tau = 2.0 with train_loss = 'ce'"),
        ("lade", 0.5, "tau = 0.5 with train_loss = 'lade'"),
    ],
)
def test_bad_tau_is_rejected(loss, tau, message):
    with pytest.raises(ValueError, match=message):
        layers.PriorCorrection(COUNTS, train_loss=loss, tau=tau)
    with pytest.raises(ValueError, match=message):
        layers.adjust_logits_numpy(random_logits(), COUNTS, loss, None, tau=tau)


@pytest.mark.backend_agnostic
def test_prior_is_normalised_and_uniform_ce_prior_is_pc_softmax():
    logits = random_logits(seed=2)
    layer = layers.PriorCorrection(COUNTS)
    np.testing.assert_allclose(
        to_numpy(layer(logits, np.full(NUM_CLASSES, 7.0))),
        to_numpy(layer(logits, np.full(NUM_CLASSES, 0.25))),
        rtol=1e-6,
    )
    # PC Softmax towards the uniform prior: f - log p_s + const, so the argmax of f - log p_s.
    source = np.asarray(COUNTS) / np.sum(COUNTS)
    np.testing.assert_array_equal(
        to_numpy(layer(logits, np.ones(NUM_CLASSES))).argmax(axis=1),
        (logits - np.log(source)).argmax(axis=1),
    )


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("train_loss", ["ce", "lade"])
def test_zero_prior_class_has_probability_exactly_zero(train_loss):
    logits = random_logits(seed=3) * 10.0
    logits[:, 1] = 50.0  # the class we switch off is the model's favourite
    prior = np.array([0.2, 0.0, 0.5, 0.3])
    layer = layers.PriorCorrection(COUNTS, train_loss=train_loss)
    adjusted = to_numpy(layer(logits, prior))
    numpy_twin = layers.adjust_logits_numpy(logits, COUNTS, train_loss, prior)
    for result in (adjusted, numpy_twin):
        assert np.all(np.isfinite(result))
        probs = to_numpy(
            keras.ops.softmax(keras.ops.convert_to_tensor(result.astype(np.float32)), axis=-1)
        )
        assert np.all(probs[:, 1] == 0.0)
        assert np.all(softmax(result)[:, 1] == 0.0)
        assert not np.any(result.argmax(axis=1) == 1)
        np.testing.assert_allclose(
            softmax(result),
            softmax(reference_adjusted(logits, COUNTS, train_loss, prior)),
            atol=1e-6,
        )


@pytest.mark.backend_agnostic
def test_numpy_twin_without_prior_is_the_plain_model_output():
    logits = random_logits(seed=4)
    for train_loss in LOSS_NAMES:
        np.testing.assert_array_equal(
            layers.adjust_logits_numpy(logits, COUNTS, train_loss, None), logits
        )


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("case", sorted(BAD_PRIORS))
def test_bad_prior_raises_value_error_eagerly(case):
    prior, message = BAD_PRIORS[case]
    logits = random_logits()
    layer = layers.PriorCorrection(COUNTS, train_loss="lade")
    with pytest.raises(ValueError, match=message):
        layer(logits, np.asarray(prior, np.float32))
    with pytest.raises(ValueError, match=message):
        layers.adjust_logits_numpy(logits, COUNTS, "lade", prior)


@pytest.mark.backend_agnostic
def test_bad_construction_and_shapes():
    with pytest.raises(ValueError, match="train_loss = 'focal'"):
        layers.PriorCorrection(COUNTS, train_loss="focal")
    with pytest.raises(ValueError, match=r"class_counts\[1\]"):
        layers.PriorCorrection([3, 0, 1])
    with pytest.raises(ValueError, match="train_loss = 'mse'"):
        layers.adjust_logits_numpy(random_logits(), COUNTS, "mse", None)
    with pytest.raises(ValueError, match="3 rows for 6"):
        layers.adjust_logits_numpy(random_logits(), COUNTS, "ce", np.ones((3, NUM_CLASSES)))
    with pytest.raises(ValueError, match="3 rows for 6"):
        layers.PriorCorrection(COUNTS)(random_logits(), np.ones((3, NUM_CLASSES), np.float32))
    with pytest.raises(ValueError, match=r"logits have shape \(6, 3\)"):
        layers.adjust_logits_numpy(random_logits()[:, :3], COUNTS, "ce", None)


@pytest.mark.backend_agnostic
def test_float32_output_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = layers.PriorCorrection(COUNTS)
        result = layer(random_logits().astype(np.float16), np.array([1.0, 0.0, 1.0, 1.0]))
    finally:
        keras.config.set_dtype_policy(previous)
    assert keras.backend.standardize_dtype(result.dtype) == "float32"
    assert np.all(to_numpy(result)[:, 1] == layers.ZERO_PRIOR_LOGIT)


@pytest.mark.backend_agnostic
def test_serialisation_and_keras_save_load_round_trip(tmp_path):
    layer = layers.PriorCorrection(COUNTS, train_loss="logit_adjusted", tau=2.0, name="pc")
    clone = layers.PriorCorrection.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config() and clone.tau == 2.0
    logits = random_logits()
    np.testing.assert_allclose(
        to_numpy(clone(logits, np.ones(NUM_CLASSES))), to_numpy(layer(logits, np.ones(NUM_CLASSES)))
    )

    images = keras.Input((3,), name="features")
    prior = keras.Input((NUM_CLASSES,), name="target_prior")
    logits = keras.layers.Dense(NUM_CLASSES)(images)
    model = keras.Model(
        [images, prior], layers.PriorCorrection(COUNTS, train_loss="ce")(logits, prior)
    )
    features = np.random.default_rng(5).normal(size=(4, 3)).astype(np.float32)
    priors = np.tile([[0.1, 0.0, 0.6, 0.3]], (4, 1)).astype(np.float32)
    path = tmp_path / "pc.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    expected = to_numpy(model.predict([features, priors], verbose=0))
    np.testing.assert_allclose(
        to_numpy(loaded.predict([features, priors], verbose=0)), expected, rtol=1e-6
    )
    assert np.all(expected[:, 1] == layers.ZERO_PRIOR_LOGIT)


# ---- TensorFlow graphs: tf.debugging assertions instead of eager errors ----


@pytest.mark.parametrize("case", sorted(BAD_PRIORS))
def test_bad_prior_fails_tf_debugging_assertion_in_graph(case):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.function graphs only exist on the TensorFlow backend")
    import tensorflow as tf

    prior, message = BAD_PRIORS[case]
    layer = layers.PriorCorrection(COUNTS, train_loss="ce")
    logits = random_logits()

    def serve(target_prior):
        # Unknown dimensions, as in a serving signature: only the graph can check the values.
        prior_spec = tf.TensorSpec([None] * np.ndim(target_prior))
        signature = [tf.TensorSpec([None, NUM_CLASSES]), prior_spec]
        traced = tf.function(lambda f, p: layer(f, p), input_signature=signature)
        return traced(tf.constant(logits), tf.constant(target_prior, tf.float32))

    if case in ("too_short", "too_long"):
        message = "entries per row"
    else:
        message = message.replace(r"\(", "(")
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        serve(prior)
    good = serve([0.1, 0.0, 0.6, 0.3])
    assert np.all(good.numpy()[:, 1] == layers.ZERO_PRIOR_LOGIT)


def test_gradients_are_finite_with_zero_prior_entries():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("uses tf.GradientTape")
    import tensorflow as tf

    logits = tf.constant(random_logits())
    prior = tf.constant([0.1, 0.0, 0.6, 0.3])
    layer = layers.PriorCorrection(COUNTS, train_loss="lade")
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([logits, prior])
        loss = tf.reduce_sum(tf.nn.log_softmax(layer(logits, prior)) * tf.nn.softmax(logits))
    for grad in tape.gradient(loss, [logits, prior]):
        assert np.all(np.isfinite(grad.numpy()))


@pytest.mark.backend_agnostic
def test_bad_prior_under_jax_jit_gives_nan_not_a_silent_answer():
    if keras.backend.backend() != "jax":
        pytest.skip("JAX tracing only")
    import jax

    layer = layers.PriorCorrection(COUNTS, train_loss="ce")
    traced = jax.jit(lambda f, p: layer(f, p))
    logits = random_logits()
    for case in ("negative", "nan", "inf", "all_zero", "zero_row"):
        prior = np.asarray(BAD_PRIORS[case][0], np.float32)
        nan_rows = np.isnan(np.asarray(traced(logits, prior))).any(axis=1)
        bad_rows = (prior.sum(axis=-1) == 0) if case == "zero_row" else np.ones(6, bool)
        np.testing.assert_array_equal(nan_rows, bad_rows, err_msg=case)
    good = np.asarray(traced(logits, np.array([0.1, 0.0, 0.6, 0.3], np.float32)))
    np.testing.assert_allclose(
        good,
        layers.adjust_logits_numpy(logits, COUNTS, "ce", [0.1, 0.0, 0.6, 0.3]),
        rtol=1e-5,
        atol=1e-5,
    )
