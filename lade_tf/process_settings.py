"""Process-wide settings that must be made before Keras or TensorFlow loads.

Entry points call these where the process starts (`pipeline/run.py`, `python -m lade_tf.train`,
the test configuration); importing `lade_tf` changes nothing. The embedded server makes its own
(it does not depend on this package), and the Dockerfile sets the same in its `ENV`.
"""

from __future__ import annotations

import importlib.util
import os

#: TF_ENABLE_ONEDNN_OPTS where the user set nothing. TensorFlow 2.16 enables its oneDNN CPU
#: kernels by default only on CPUs with AVX-512 or AMX; elsewhere convolution gradients run on
#: generic kernels several times slower (README, Speed). On everywhere, so every CPU runs the same
#: kernels; TF_ENABLE_ONEDNN_OPTS=0 still turns them off.
ONEDNN_DEFAULT = "1"


def configure_tensorflow() -> None:
    """Sets TensorFlow's process settings that the user has not set (before TensorFlow loads)."""
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", ONEDNN_DEFAULT)


def choose_keras_backend() -> str | None:
    """Sets KERAS_BACKEND=jax when it is unset, TensorFlow is not installed and JAX is (Keras
    would otherwise try its TensorFlow default and fail to import); returns the choice made."""
    if "KERAS_BACKEND" in os.environ or importlib.util.find_spec("tensorflow") is not None:
        return None
    if importlib.util.find_spec("jax") is None:
        return None
    os.environ["KERAS_BACKEND"] = "jax"
    return "jax"
