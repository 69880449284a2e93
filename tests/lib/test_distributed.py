"""LADER over the global batch under tf.distribute.MirroredStrategy (TensorFlow backend only).

Logical CPU devices must be configured before TensorFlow initialises, so the training runs in a
fresh Python process; it reports losses and weights as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a fresh TensorFlow process with two logical CPUs, about a minute

REPO_ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from lade_tf import losses

COUNTS = [40, 20, 10, 5]
rng = np.random.default_rng(0)
features = rng.normal(size=(16, 6)).astype(np.float32)
# Replica 0 receives the first 8 samples (classes 0, 1), replica 1 the rest (classes 2, 3): per
# replica LADER statistics would differ a lot from the global ones.
labels = np.repeat([0, 1, 2, 3], 4)
kernel = rng.normal(size=(6, 4)).astype(np.float32)
bias = rng.normal(size=(4,)).astype(np.float32)


def train(strategy, loss_options):
    with strategy.scope():
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
        model.set_weights([kernel, bias])
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5),
                      loss=losses.LADELoss(COUNTS, **loss_options), jit_compile=False)
    history = model.fit(features, labels, batch_size=16, epochs=1, shuffle=False, verbose=0)
    return history.history["loss"][0], [w.tolist() for w in model.get_weights()]


mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert mirrored.num_replicas_in_sync == 2
single = tf.distribute.get_strategy()
results = {"initial": [0.0, [kernel.tolist(), bias.tolist()]]}
for name, options in {"sample_all": dict(alpha=1.0),
                      "class_present": dict(alpha=1.0, importance="class",
                                            lader_classes="present")}.items():
    results[name] = {"single": train(single, options), "mirrored": train(mirrored, options)}
# The same run with the gather switched off: proves the comparison can fail.
losses._global_batch = lambda logits, labels: (logits, labels)
results["no_gather"] = {"single": results["sample_all"]["single"],
                        "mirrored": train(mirrored, dict(alpha=1.0))}
json.dump(results, sys.stdout)
"""


def max_difference(run_a, run_b) -> tuple[float, float]:
    import numpy as np

    loss_gap = abs(run_a[0] - run_b[0])
    weight_gap = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(run_a[1], run_b[1])
    )
    return loss_gap, weight_gap


@pytest.fixture(scope="module")
def distributed_runs(tmp_path_factory) -> dict:
    script = tmp_path_factory.mktemp("distributed") / "mirrored.py"
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": str(REPO_ROOT),
    }
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


# Float32 summation order is all that may differ. Measured with TF 2.16 and 2.21 (
# oneDNN on and off, the same to the bit): loss gap 9.5e-7 on a loss of 10.4 (one float32 ulp,
# 9.2e-8 relative), weight gap 2.4e-7 after a step of 1.2 (2e-7 relative). The tolerances leave
# 100x and 50x of margin; without the gather the gaps are 1.03 (0.1 relative) and 0.41 (0.31).
LOSS_RTOL = 1e-5
WEIGHT_RTOL = 1e-5


@pytest.mark.timeout(300)
@pytest.mark.parametrize("options", ["sample_all", "class_present"])
def test_mirrored_step_equals_single_device_global_batch(distributed_runs, options):
    run = distributed_runs[options]
    loss_gap, weight_gap = max_difference(run["single"], run["mirrored"])
    step_size = max_difference(distributed_runs["initial"], run["single"])[1]
    assert step_size > 1e-2, step_size  # the step really moved the weights
    assert loss_gap < LOSS_RTOL * abs(run["single"][0]), loss_gap
    assert weight_gap < WEIGHT_RTOL * step_size, (weight_gap, step_size)


@pytest.mark.timeout(300)
def test_without_the_gather_mirrored_training_differs(distributed_runs):
    run = distributed_runs["no_gather"]
    loss_gap, weight_gap = max_difference(run["single"], run["mirrored"])
    step_size = max_difference(distributed_runs["initial"], run["single"])[1]
    assert loss_gap > 0.03 * abs(run["single"][0]), loss_gap
    assert weight_gap > 0.1 * step_size, (weight_gap, step_size)
