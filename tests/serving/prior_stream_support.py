"""What the prior stream tests share: a digits model whose answers depend on the prior, a stream
whose class mix drifts, and HTTP calls that name a stream."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from serving.prior_streams import STREAM_HEADER, UPDATES_HEADER

#: Test images per class of the tracked digits model.
TEST_PER_CLASS = 25


def tracked_digits_model(digits, base: Path) -> dict:
    """A small CNN trained for two epochs on long-tailed digits (IR 10, 150 down to 15 images per
    class), so that it is unsure enough for the prior to matter (87 % on a balanced test set),
    exported to `base / "1"` with a BCTS-calibrated estimator fitted on the digits left over
    (the tracker constants of `class_info` then come from a validation split).

    Returns:
        dict with base (Path), counts, test_x float32 [250, 8, 8, 1] (0..255), test_y [250].
    """
    import keras

    from lade_tf.export import export_serving_model
    from lade_tf.prior_estimation import TargetPriorEstimator
    from lade_tf.priors import long_tail_counts

    images, labels = digits
    counts = long_tail_counts(150, 10, 10)
    rng = np.random.default_rng(0)
    train, val, test = [], [], []
    for label, count in enumerate(counts):
        members = rng.permutation(np.flatnonzero(labels == label))
        train += list(members[:count])
        val += list(members[count:-TEST_PER_CLASS])
        test += list(members[-TEST_PER_CLASS:])
    as_input = lambda idx: images[np.array(idx)][..., None].astype(np.float32)  # noqa: E731
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(as_input(train), labels[train], epochs=2, batch_size=64, verbose=0)
    val_logits = np.asarray(model.predict(as_input(val), verbose=0), np.float64)
    estimator = TargetPriorEstimator(counts, "ce", calibration="bcts").fit(val_logits, labels[val])
    export_serving_model(
        model, base / "1", class_counts=counts, train_loss="ce", prior_estimator=estimator
    )
    return {"base": base, "counts": counts, "test_x": as_input(test), "test_y": labels[test]}


def drifting_stream(
    labels: np.ndarray, steps: int, size: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A square wave between a head-heavy and a tail-heavy class mix (ten steps each), and each
    step's images drawn by its mix (with replacement).

    Returns:
        (priors [steps, C], image indices [steps, size]).
    """
    num_classes = int(labels.max()) + 1
    head = 0.6 ** np.arange(num_classes)
    first, second = head / head.sum(), head[::-1] / head.sum()
    priors = np.array([first if (t // 10) % 2 == 0 else second for t in range(steps)])
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    indices = np.array(
        [[rng.choice(by_class[c]) for c in rng.choice(num_classes, size, p=p)] for p in priors]
    )
    return priors, indices


def post(
    url: str, payload: dict, stream: str | None = None, timeout: float = 60.0
) -> tuple[int, dict, dict]:
    """POST JSON, naming a prior stream if given: (status, body, response headers)."""
    headers = {"Content-Type": "application/json"}
    if stream is not None:
        headers[STREAM_HEADER] = stream
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def predict_stream(url: str, images: np.ndarray, stream: str, model: str = "lade"):
    """One streamed predict (columnar, no prior): (status, outputs or error body, updates)."""
    status, body, headers = post(
        f"{url}/v1/models/{model}:predict", {"inputs": {"images": images.tolist()}}, stream
    )
    updates = headers.get(UPDATES_HEADER)
    return status, body.get("outputs", body), None if updates is None else int(updates)
