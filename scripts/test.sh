#!/usr/bin/env bash
# The whole test suite: sets up the environments if needed, then
#  1. every test in the TFX environment (.venv, Python 3.10, slow end-to-end tests included),
#  2. the library tests (tests/lib) in .venv-lib (Python 3.11, newest TensorFlow and Keras),
#  3. the layer tests once more there with KERAS_BACKEND=jax (they need TensorFlow for the
#     SavedModel round trip),
#  4. without TensorFlow (.venv-jax, Keras on JAX): the backend-agnostic loss, metric and check
#     tests, and tests/no_tensorflow (python -m lade_tf.train on data pipeline.prepare wrote).
# Every stage runs even when an earlier one fails; a summary line per stage closes the output and
# the exit status is non-zero when any stage failed (pytest's "no tests collected", 5, included).
# With CI=true, a test whose data file or package is missing fails instead of being skipped.
# Extra arguments go to the first pytest run (e.g. -k losses, -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --lib --jax
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export CI="${CI:-}"

summary=()
failed=0

# run_stage NAME COMMAND...: runs the command, records its exit status and wall time.
run_stage() {
  local name=$1 started=$SECONDS status=0
  shift
  echo "== $name"
  "$@" || status=$?
  local seconds=$((SECONDS - started)) verdict=passed
  if [ "$status" -ne 0 ]; then
    verdict=FAILED
    failed=1
  fi
  summary+=("$(printf '%-70s %-6s exit %-3s %3d min %02d s' "$name" "$verdict" "$status" \
    $((seconds / 60)) $((seconds % 60)))")
}

# One pytest worker per core (pytest-xdist), whole files to a worker so that a file's fixtures
# are built once; much of the suite waits on servers, pipelines and subprocesses.
parallel=(-n auto --dist loadfile)
run_stage "[1/4] full suite, TFX stack (.venv, Python 3.10)" \
  .venv/bin/python -m pytest -q -rs --durations=15 "${parallel[@]}" --ignore=tests/no_tensorflow \
  "$@" tests
run_stage "[2/4] library tests, newest TensorFlow/Keras (.venv-lib, Python 3.11)" \
  .venv-lib/bin/python -m pytest -q -rs -p no:cacheprovider "${parallel[@]}" tests/lib
run_stage "[3/4] layers with KERAS_BACKEND=jax, TensorFlow installed (.venv-lib)" \
  env KERAS_BACKEND=jax .venv-lib/bin/python -m pytest -q -rs -p no:cacheprovider \
  -m backend_agnostic tests/lib/test_layers.py
run_stage "[4/4] no TensorFlow: Keras on JAX, python -m lade_tf.train (.venv-jax)" \
  env KERAS_BACKEND=jax .venv-jax/bin/python -m pytest -q -rs -p no:cacheprovider \
  --durations=5 -m "backend_agnostic or no_tensorflow" tests/no_tensorflow \
  tests/lib/test_losses.py tests/lib/test_metrics.py tests/lib/test_label_checks.py \
  tests/lib/test_train_config.py tests/lib/test_prior_tracking.py

echo "== summary${CI:+ (CI=$CI)}"
printf '%s\n' "${summary[@]}"
exit "$failed"
