"""Fixtures shared by the library tests."""

from __future__ import annotations

import numpy as np
import pytest


def _digits_logistic(digits, seed: int, max_iter: int):
    """A logistic regression on a stratified half of digits (seeded split), with the other
    half's 40 % validation and 60 % test features and labels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from threadpoolctl import threadpool_limits

    images, labels = digits
    features = images.reshape(len(images), -1) / 255.0
    x_train, x_rest, y_train, y_rest = train_test_split(
        features, labels, train_size=0.5, stratify=labels, random_state=seed
    )
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, train_size=0.4, stratify=y_rest, random_state=seed
    )
    with threadpool_limits(1):  # BLAS threads fight over the shared cores: 0.2 s vs 10 s
        model = LogisticRegression(max_iter=max_iter).fit(x_train, y_train)
    return model, y_train, (x_val, y_val), (x_test, y_test)


@pytest.fixture(scope="session")
def digits_classifier(digits):
    """Logistic regression on half of digits; (val, test) probabilities, logits and labels."""
    model, y_train, (x_val, y_val), (x_test, y_test) = _digits_logistic(digits, 0, 500)
    return dict(
        source=np.bincount(y_train) / y_train.size,
        val=(model.predict_proba(x_val), model.decision_function(x_val), y_val),
        test=(model.predict_proba(x_test), model.decision_function(x_test), y_test),
    )


@pytest.fixture(scope="session")
def digits_linear(digits):
    """Features, Dense-layout kernel and bias of a logistic regression on digits (another
    split than digits_classifier's), with the reference (validation) and stream (test) splits'
    features, labels and probabilities."""
    model, _, (x_val, y_val), (x_test, y_test) = _digits_logistic(digits, 1, 300)
    return dict(
        kernel=model.coef_.T.copy(),
        bias=model.intercept_.copy(),
        val=(x_val, y_val, model.predict_proba(x_val)),
        test=(x_test, y_test, model.predict_proba(x_test)),
    )
