"""Short real training on a long-tailed subset of scikit-learn digits (seconds per model).

Margins measured with this exact protocol (IR 50, seeds 0-3 on TF 2.16 with oneDNN on and off,
the same numbers, and on 2.21; seeds 0-1 on JAX):
PC Softmax raised the CE model's balanced accuracy by 0.056 to 0.106 (plain about 0.78), LADE and
Balanced Softmax beat plain CE by 0.076 to 0.116, and both losses fell by more than 1.6 (LADE to
about -0.13, Balanced Softmax to about 0.05). The assertions ask for 0.02 and 1.0.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from lade_tf import layers, losses, metrics
from lade_tf.priors import long_tail_counts

SEED = 0
NUM_CLASSES = 10
TEST_PER_CLASS = 50
IMBALANCE_RATIO = 50
REPEATS = 20  # passes over the training subset, as one Keras epoch (per-epoch overhead is large)
MARGIN = 0.02


def long_tailed_split(images, labels, seed):
    """Long-tailed training indices (exp profile, 120 .. 2 per class) and a balanced test split."""
    rng = np.random.default_rng(seed)
    counts = long_tail_counts(120, NUM_CLASSES, IMBALANCE_RATIO)
    train, test = [], []
    for c in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == c))
        test.extend(members[:TEST_PER_CLASS])
        train.extend(members[TEST_PER_CLASS : TEST_PER_CLASS + counts[c]])
    return np.array(train), np.array(test), counts


def train(loss, images, labels, seed):
    """A small MLP trained with `loss`; returns (model, train-set loss before, after)."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(images.shape[1:]),
            keras.layers.Flatten(),
            keras.layers.Rescaling(1.0 / 255.0),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(NUM_CLASSES),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss, steps_per_execution=8)
    before = float(keras.ops.convert_to_numpy(loss(labels, model(images))))
    model.fit(
        np.tile(images, (REPEATS, 1, 1)),
        np.tile(labels, REPEATS),
        batch_size=64,
        epochs=1,
        verbose=0,
    )
    after = float(keras.ops.convert_to_numpy(loss(labels, model(images))))
    return model, before, after


@pytest.fixture(scope="module")
def trained(digits):
    images, labels = digits
    train_index, test_index, counts = long_tailed_split(images, labels, SEED)
    x_train, y_train = images[train_index].astype(np.float32), labels[train_index]
    runs = {
        name: train(losses.make_loss(name, counts), x_train, y_train, SEED)
        for name in ("ce", "lade", "balanced_softmax")
    }
    x_test = images[test_index].astype(np.float32)
    test_logits = {name: keras.ops.convert_to_numpy(run[0](x_test)) for name, run in runs.items()}
    return runs, test_logits, labels[test_index], counts


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", ["lade", "balanced_softmax"])
def test_long_tail_losses_decrease(trained, name):
    runs, _, _, _ = trained
    _, before, after = runs[name]
    assert after < before - 1.0, (before, after)


@pytest.mark.timeout(240)
def test_pc_softmax_raises_balanced_accuracy_of_ce_model(trained):
    _, test_logits, test_labels, counts = trained
    uniform = np.ones(NUM_CLASSES)
    plain = metrics.balanced_accuracy(test_labels, test_logits["ce"])
    corrected = metrics.balanced_accuracy(
        test_labels, layers.adjust_logits_numpy(test_logits["ce"], counts, "ce", uniform)
    )
    assert corrected > plain + MARGIN, (plain, corrected)
    for name in ("lade", "balanced_softmax"):
        # f + log p_u ranks like f: these models are already prior-free on a balanced test set.
        accuracy = metrics.balanced_accuracy(
            test_labels, layers.adjust_logits_numpy(test_logits[name], counts, name, uniform)
        )
        assert accuracy > plain + MARGIN, (name, plain, accuracy)


# LADER's optimum is f(x)[c] = log C + log p_u(c|x) (DESIGN section 1), so the logit of a
# well-fitted positive sample tends to log C, and more so as alpha grows (paper Fig. 2); without
# LADER (alpha = 0, Balanced Softmax) the logits are free up to a constant and drift. Measured with
# this protocol on the training set, seeds 0-2, TF 2.16 oneDNN on: mean |f(x)[y] - log C| was
# 2.37 / 3.0 / 3.9 at alpha 0, 0.65 / 0.83 / 0.78 at 0.1 and 0.47 / 0.51 / 0.55 at 1, i.e. drops of
# >= 1.7 and >= 0.18. The assertions ask for drops of 0.5 and 0.05, and a level below 1 at alpha 1.
FIGURE2_ALPHAS = (0.0, 0.1, 1.0)


@pytest.fixture(scope="module")
def positive_logit_spread(digits) -> dict[float, float]:
    """alpha -> mean |f(x)[y] - log C| over the training samples of a LADE model."""
    images, labels = digits
    train_index, _, counts = long_tailed_split(images, labels, SEED)
    x_train, y_train = images[train_index].astype(np.float32), labels[train_index]
    spread = {}
    for alpha in FIGURE2_ALPHAS:
        model, _, _ = train(losses.LADELoss(counts, alpha=alpha), x_train, y_train, SEED)
        logits = keras.ops.convert_to_numpy(model(x_train)).astype(np.float64)
        positive = logits[np.arange(len(y_train)), y_train]
        spread[alpha] = float(np.mean(np.abs(positive - np.log(NUM_CLASSES))))
    return spread


@pytest.mark.timeout(240)
def test_lade_positive_logits_gather_at_log_c_as_alpha_grows(positive_logit_spread):
    """What tells LADE from Balanced Softmax: with the LADER term dropped all three are equal."""
    spread = positive_logit_spread
    assert spread[0.0] > spread[0.1] + 0.5, spread
    assert spread[0.1] > spread[1.0] + 0.05, spread
    assert spread[1.0] < 1.0, spread
