"""Labels outside [0, C) in lade_tf.losses: a ValueError naming the label where the values are
known (NumPy input, eager TensorFlow, concrete JAX arrays); compiled code is left unchanged."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from lade_tf import losses

COUNTS = [50, 20, 10, 5, 2]
LOGITS = np.random.default_rng(0).normal(size=(4, len(COUNTS))).astype(np.float32)
GOOD = np.array([0, 4, 2, 1])

LOSSES = {
    "lade_loss": lambda y, f: losses.lade_loss(y, f, COUNTS),
    "lader": lambda y, f: losses.lader(y, f, COUNTS, importance="class"),
    "balanced_softmax_loss": lambda y, f: losses.balanced_softmax_loss(y, f, COUNTS),
    "logit_adjusted_loss": lambda y, f: losses.logit_adjusted_loss(y, f, COUNTS, tau=2.0),
    "LADELoss": lambda y, f: losses.LADELoss(COUNTS)(y, f),
}


def with_label(index: int, value, dtype=np.int64) -> np.ndarray:
    labels = GOOD.astype(dtype)
    labels[index] = value
    return labels


def compiled(function):
    """`function` as the backend compiles a train step (tf.function, jax.jit)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function)
    if backend == "jax":
        import jax

        return jax.jit(function)
    pytest.skip(f"no compiled form for backend {backend}")


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize(
    "labels, shown",
    [
        (with_label(2, 5), "y_true[2] = 5"),
        (with_label(0, -1), "y_true[0] = -1"),
        (with_label(3, np.nan, np.float32), "y_true[3] = nan"),
        (with_label(1, 7)[:, None], "y_true[1] = 7"),
    ],
)
def test_a_label_outside_the_classes_is_named_on_the_eager_path(name, labels, shown):
    loss = LOSSES[name]
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(loss(GOOD, LOGITS))))  # in range
    expected = (
        f"{shown}: expected a class id in [0, 5) (5 classes in class_counts); 1 of 4 "
        "labels are outside"
    )
    for as_given in (lambda x: x, keras.ops.convert_to_tensor):  # NumPy, then a backend tensor
        with pytest.raises(ValueError) as caught:
            loss(as_given(labels), as_given(LOGITS))
        assert str(caught.value) == expected


@pytest.mark.backend_agnostic
def test_one_hot_labels_are_never_out_of_range():
    one_hot = np.eye(len(COUNTS), dtype=np.float32)[GOOD]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(losses.lade_loss(one_hot, LOGITS, COUNTS)),
        keras.ops.convert_to_numpy(losses.lade_loss(GOOD, LOGITS, COUNTS)),
    )


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_compiled_losses_are_unchanged_and_not_checked(name):
    loss = LOSSES[name]
    step = compiled(loss)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(step(GOOD, LOGITS)),
        keras.ops.convert_to_numpy(loss(GOOD, LOGITS)),
        rtol=1e-6,
    )
    # Symbolic labels cannot be read: no ValueError while tracing (the backend's kernels decide
    # what an out-of-range label gives, e.g. an InvalidArgumentError on TensorFlow's CPU).
    try:
        step(with_label(2, 5), LOGITS)
    except ValueError as error:  # pragma: no cover - the failure this test is about
        pytest.fail(f"compiled loss raised the eager check: {error}")
    except Exception as error:  # noqa: BLE001 - a kernel's own error is fine here
        assert "expected a class id" not in str(error)


@pytest.mark.backend_agnostic
def test_fit_checks_labels_when_run_eagerly_and_trains_when_compiled():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(1).normal(size=(32, 3)).astype(np.float32)
    y = np.arange(32) % len(COUNTS)

    def model(**compile_options) -> keras.Model:
        built = keras.Sequential([keras.Input((3,)), keras.layers.Dense(len(COUNTS))])
        built.compile(optimizer="sgd", loss=losses.LADELoss(COUNTS), **compile_options)
        return built

    with pytest.raises(ValueError, match=r"y_true\[\d+\] = 5: expected a class id in \[0, 5\)"):
        model(run_eagerly=True).fit(x, np.where(y == 4, 5, y), batch_size=16, verbose=0)
    history = model().fit(x, y, batch_size=16, epochs=2, verbose=0)  # compiled: no check
    assert np.all(np.isfinite(history.history["loss"]))
