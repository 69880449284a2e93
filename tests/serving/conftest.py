"""Serving fixtures: a small CNN trained on long-tailed digits, its export, server processes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lade_tf.priors import long_tail_counts
from tests.serving.serving_support import CLASS_NAMES, MAX_REQUEST_BYTES, ServerProcess

TEST_PER_CLASS = 25


@pytest.fixture(scope="session")
def digits_split(digits):
    """Long-tailed train split (IR 10, 150 down to 15 images per class) and a balanced test split.

    Returns:
        dict with train_x / test_x float32 [N, 8, 8, 1] (0..255), train_y / test_y, counts.
    """
    images, labels = digits
    counts = long_tail_counts(150, 10, 10)
    rng = np.random.default_rng(0)
    train, test = [], []
    for label, count in enumerate(counts):
        members = rng.permutation(np.flatnonzero(labels == label))
        train.extend(members[:count])
        test.extend(members[-TEST_PER_CLASS:])
    as_input = lambda idx: images[np.array(idx)][..., None].astype(np.float32)  # noqa: E731
    return {
        "train_x": as_input(train),
        "train_y": labels[np.array(train)],
        "test_x": as_input(test),
        "test_y": labels[np.array(test)],
        "counts": counts,
    }


@pytest.fixture(scope="session")
def trained_model(digits_split):
    """A small Keras CNN (raw pixels -> logits) trained with CE for a few seconds."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    logits = keras.layers.Dense(10)(x)
    model = keras.Model(inputs, logits)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(digits_split["train_x"], digits_split["train_y"], epochs=20, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="session")
def export_base(tmp_path_factory, trained_model, digits_split) -> Path:
    """Model base path with version 1 of the CE model exported by lade_tf.export."""
    from lade_tf.export import export_serving_model

    base = tmp_path_factory.mktemp("models") / "lade"
    export_serving_model(
        trained_model,
        base / "1",
        class_counts=digits_split["counts"],
        train_loss="ce",
        class_names=CLASS_NAMES,
        metadata={"dataset": "sklearn digits, long-tailed IR 10"},
    )
    return base


@pytest.fixture(scope="session")
def saved_model(export_base):
    """The exported version 1 loaded in this process with plain tf.saved_model.load."""
    import tensorflow as tf

    return tf.saved_model.load(str(export_base / "1"))


@pytest.fixture(scope="session")
def server_dirs(tmp_path_factory, export_base) -> dict[str, Path]:
    """Config files and a second base path ("reload", for hot-reload tests)."""
    root = tmp_path_factory.mktemp("serving")
    reload_base = root / "reload"
    reload_base.mkdir()
    shutil.copytree(export_base / "1", reload_base / "1")
    config = root / "models.config"
    config.write_text(f"""
model_config_list {{
  config {{
    name: "lade"
    base_path: "{export_base}"
    model_platform: "tensorflow"
    version_labels {{ key: "stable" value: 1 }}
  }}
  config {{
    name: "reload"
    base_path: "{reload_base}"
    model_platform: "tensorflow"
  }}
}}
""")
    batching = root / "batching.config"
    batching.write_text(
        "max_batch_size { value: 16 }\nbatch_timeout_micros { value: 5000 }\n"
        "num_batch_threads { value: 1 }\nmax_enqueued_batches { value: 100 }\n"
    )
    monitoring = root / "monitoring.config"
    monitoring.write_text("prometheus_config {\n  enable: true\n}\n")
    return {
        "root": root,
        "config": config,
        "batching": batching,
        "monitoring": monitoring,
        "reload_base": reload_base,
    }


@pytest.fixture(scope="session")
def servers(server_dirs, export_base):
    """Both server processes, started together so their start-up overlaps."""
    root = server_dirs["root"]
    plain = ServerProcess(
        [
            "--model-config-file",
            str(server_dirs["config"]),
            "--file-system-poll-wait-seconds",
            "0.5",
            "--max-request-bytes",
            str(MAX_REQUEST_BYTES),
            "--monitoring_config_file",
            str(server_dirs["monitoring"]),
            "--rest_api_enable_cors_support",
        ],
        root / "server.log",
    )
    batching = ServerProcess(
        [
            "--model-base-path",
            str(export_base),
            "--model-name",
            "lade",
            "--enable-batching",
            "--batching-parameters-file",
            str(server_dirs["batching"]),
        ],
        root / "batching_server.log",
    )
    yield {"plain": plain, "batching": batching}
    plain.stop()
    batching.stop()


@pytest.fixture(scope="session")
def server_url(servers) -> str:
    """Root URL of the plain server (models "lade" and "reload")."""
    return servers["plain"].url


@pytest.fixture(scope="session")
def grpc_target(servers) -> str:
    """host:port of the plain server's gRPC API (once it answers requests)."""
    servers["plain"].url  # noqa: B018 - waits for the start-up line
    return servers["plain"].grpc_target


@pytest.fixture(scope="session")
def batching_server_url(servers) -> str:
    """Root URL of the server started with --enable-batching."""
    return servers["batching"].url


@pytest.fixture(scope="session")
def tracked_digits(digits, tmp_path_factory) -> dict:
    """A digits model unsure enough for the prior to matter, exported with tracker constants
    from a validation split (`prior_stream_support.tracked_digits_model`)."""
    from tests.serving.prior_stream_support import tracked_digits_model

    return tracked_digits_model(digits, tmp_path_factory.mktemp("tracked") / "lade")
