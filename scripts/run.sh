#!/usr/bin/env bash
# Sets up if needed, then runs the main job: the whole TFX pipeline on the embedded default
# (Fashion-MNIST-LT). Arguments go to pipeline/run.py (default: --runner=local).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ $# -gt 0 ] || set -- --runner=local
exec .venv/bin/python pipeline/run.py "$@"
