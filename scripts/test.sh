#!/usr/bin/env bash
# The whole test suite: sets up both environments if needed, then
#  1. every test in the TFX environment (.venv, Python 3.10, slow end-to-end tests included),
#  2. the library tests (tests/lib) in .venv-lib (Python 3.11, newest TensorFlow and Keras),
#  3. the loss, layer and metric tests once more there with KERAS_BACKEND=jax.
# Extra arguments go to the first pytest run (e.g. -k losses, -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --lib
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
echo "== [1/3] full suite, TFX stack (.venv, Python 3.10)"
.venv/bin/python -m pytest -q -rs --durations=15 "$@" tests
echo "== [2/3] library tests, newest TensorFlow/Keras (.venv-lib, Python 3.11)"
.venv-lib/bin/python -m pytest -q -rs -p no:cacheprovider tests/lib
echo "== [3/3] losses, layers, metrics with KERAS_BACKEND=jax (.venv-lib)"
KERAS_BACKEND=jax .venv-lib/bin/python -m pytest -q -rs -p no:cacheprovider -m backend_agnostic tests/lib
