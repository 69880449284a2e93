#!/usr/bin/env bash
# Idempotent setup, quick when done. Always: Python 3.10 + uv + .venv (pinned TFX stack, project
# editable) and Debian's Fashion-MNIST. Options (any combination):
#   --lib    .venv-lib   Python 3.11, newest TensorFlow/Keras/JAX (library tests)
#   --jax    .venv-jax   Python 3.11, Keras + JAX and no TensorFlow (python -m lade_tf.train)
#   --torch  .venv-torch Python 3.11, PyTorch 2.13 (the reference of benchmarks/throughput.py)
#   --gpu    .venv gets the CUDA build of its pinned TensorFlow (the and-cuda extra, same version)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

log() { printf '[setup] %s\n' "$*" >&2; }

find_python() {  # $1 = minor version, e.g. 3.10
  local want=$1 cand
  for cand in "python$want" "$(command -v pyenv >/dev/null 2>&1 && echo "$(pyenv root)/versions/$want"*/bin/python 2>/dev/null | tr ' ' '\n' | sort -V | tail -n1)" \
              "$HOME/.pyenv/versions/$want"*/bin/python; do
    [ -n "$cand" ] || continue
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$want'.split('.'))))" 2>/dev/null; then
      command -v "$cand"; return 0
    fi
  done
  if command -v uv >/dev/null 2>&1; then
    uv python find "$want" 2>/dev/null && return 0
    log "Python $want not found; asking uv to install it"
    uv python install "$want" >&2 && uv python find "$want" && return 0
  fi
  return 1
}

ensure_uv() {
  command -v uv >/dev/null 2>&1 && return 0
  [ -x "$HOME/.local/bin/uv" ] && export PATH="$HOME/.local/bin:$PATH" && return 0
  log "installing uv with pip"
  local py; py=$(command -v python3 || command -v python)
  "$py" -m pip install --user --quiet uv 2>/dev/null || "$py" -m pip install --quiet --break-system-packages uv 2>/dev/null \
    || "$py" -m pip install --quiet uv
  export PATH="$HOME/.local/bin:$PATH"
  command -v uv >/dev/null 2>&1 || { log "uv could not be installed; install it (https://docs.astral.sh/uv/) and rerun"; exit 1; }
}

# The wheel holds the library alone (pyproject.toml); the pipeline and the server run from this
# checkout. A .pth file puts the checkout on the path of every process of the environment, Beam
# workers and TFX executors included, which import `pipeline.*` by module name.
link_checkout() {  # $1 = venv dir
  local site
  site=$("$1/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "$ROOT" > "$site/lade_tf_checkout.pth"
}

stamp_of() { cat "$@" | sha256sum | cut -c1-16; }

make_env() {  # $1 = venv dir, $2 = python minor, $3 = requirements file, $4 = editable (yes/no)
  local venv=$1 minor=$2 req=$3 editable=$4 stamp
  stamp=$(stamp_of "$req" pyproject.toml)
  if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.setup-stamp" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  ensure_uv
  local py; py=$(find_python "$minor") || { log "Python $minor is needed (PATH, pyenv or uv-managed); none found"; exit 1; }
  log "creating $venv with $py from $req"
  [ -x "$venv/bin/python" ] || uv venv --quiet -p "$py" "$venv"
  uv pip install --quiet -p "$venv/bin/python" -r "$req"
  if [ "$editable" = yes ]; then
    uv pip install --quiet -p "$venv/bin/python" --no-deps -e .
    link_checkout "$venv"
  fi
  echo "$stamp" > "$venv/.setup-stamp"
}

ensure_fashion_mnist() {
  local dir=/usr/share/datasets/fashion-mnist
  [ -f "$dir/train-images-idx3-ubyte.gz" ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian package dataset-fashion-mnist"
    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1) || \
      (apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null) || \
      log "could not install dataset-fashion-mnist; the pipeline will fall back to TFDS"
  else
    log "Fashion-MNIST files not found in $dir. On Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist;"
    log "elsewhere the pipeline downloads it through tensorflow-datasets on first use."
  fi
}

install_tensorflow_cuda() {  # the and-cuda extra of the TensorFlow version .venv pins
  local version
  version=$(sed -n 's/^tensorflow==\([0-9.]*\).*/\1/p' requirements.txt)
  [ -n "$version" ] || { log "requirements.txt pins no tensorflow version"; exit 1; }
  if .venv/bin/python -c "import importlib.metadata as m; m.version('nvidia-cudnn-cu12')" >/dev/null 2>&1; then
    return 0
  fi
  ensure_uv
  log "installing tensorflow[and-cuda]==$version into .venv (CUDA and cuDNN wheels, about 3 GB)"
  uv pip install --quiet -p .venv/bin/python "tensorflow[and-cuda]==$version" -c requirements.txt
}

main() {
  local option
  for option in "$@"; do
    case $option in
      --lib | --jax | --torch | --gpu) ;;
      *) log "unknown option $option: expected --lib, --jax, --torch or --gpu"; exit 2 ;;
    esac
  done
  make_env .venv 3.10 requirements.txt yes
  for option in "$@"; do
    case $option in
      --lib) make_env .venv-lib 3.11 requirements-lib.txt no ;;
      --jax) make_env .venv-jax 3.11 requirements-jax.txt no ;;
      --torch) make_env .venv-torch 3.11 requirements-torch.txt no ;;
      --gpu) install_tensorflow_cuda ;;
    esac
  done
  ensure_fashion_mnist
}
main "$@"
