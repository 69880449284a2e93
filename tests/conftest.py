"""Shared fixtures: real data sets only (scikit-learn digits, Fashion-MNIST, CIFAR-10 tarball).

Missing data or packages: `require_or_skip` skips the test on a developer's partial machine, and
fails it when the environment variable CI is true (as CI services set it), so CI never passes by
skipping what it should run.
"""

from __future__ import annotations

import importlib
import os
import subprocess
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import numpy as np
import pytest

from lade_tf.process_settings import configure_tensorflow

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LADE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CIFAR10_TARBALL = SHARED_DATA / "cifar10-jpeg.tar.xz"


def pytest_configure(config: pytest.Config) -> None:
    """The test process's settings, made as every entry point makes them: before any test
    imports TensorFlow."""
    configure_tensorflow()


def in_ci() -> bool:
    """Whether the environment variable CI says this is a CI run (true, 1 or yes)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_or_skip(reason: str) -> NoReturn:
    """Ends the current test for a missing data file or package: a failure under CI=true, else a
    skip. Works in tests, fixtures and at module level."""
    if in_ci():
        pytest.fail(
            f"{reason} (CI={os.environ['CI']}: missing data or packages fail the run)",
            pytrace=False,
        )
    pytest.skip(reason, allow_module_level=True)


def import_or_skip(name: str, why: str = "") -> ModuleType:
    """`pytest.importorskip` through `require_or_skip`: the module, or a skip (a failure in CI)."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        problem = f"cannot import {name} ({error}){': ' + why if why else ''}"
    require_or_skip(problem)  # outside the except block: no chained traceback


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits as (uint8 images [1797, 8, 8] scaled to 0..255, int64 labels)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """Directory of the Debian `dataset-fashion-mnist` idx files."""
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        require_or_skip(
            f"Fashion-MNIST not installed in {FASHION_MNIST_DIR} (apt-get install "
            "dataset-fashion-mnist; scripts/setup.sh does it as root)"
        )
    return FASHION_MNIST_DIR


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared CIFAR-10 JPEG tree extracted once per session; returns `.../cifar10-jpeg`."""
    if not CIFAR10_TARBALL.exists():
        require_or_skip(
            f"{CIFAR10_TARBALL} not found (set LADE_SHARED_DATA to the shared data folder)"
        )
    target = tmp_path_factory.mktemp("cifar10")
    subprocess.run(["tar", "-xJf", str(CIFAR10_TARBALL), "-C", str(target)], check=True)
    return target / "cifar10-jpeg"


@pytest.fixture(scope="session")
def digits_folder(digits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits as a PNG folder tree with train/ and test/ (every fifth image is test)."""
    from PIL import Image

    images, labels = digits
    root = tmp_path_factory.mktemp("digits_folder")
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / ("test" if i % 5 == 0 else "train") / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root


#: The TFX environment's interpreter: `pipeline.prepare` (Beam) runs there, whatever runs the test.
TFX_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"


def extract_cifar10_subset(target: Path, per_class: int) -> Path:
    """Files 0000 .. per_class - 1 of every class and split of the shared CIFAR-10 tarball
    (per_class a multiple of 100 up to 1000); returns `.../cifar10-jpeg`."""
    if not CIFAR10_TARBALL.exists():
        require_or_skip(
            f"{CIFAR10_TARBALL} not found (set LADE_SHARED_DATA to the shared data folder)"
        )
    hundreds = "".join(str(d) for d in range(per_class // 100))
    pattern = f"cifar10-jpeg/*/*/0[{hundreds}]*.jpg"
    subprocess.run(
        ["tar", "-xJf", str(CIFAR10_TARBALL), "-C", str(target), "--wildcards", pattern],
        check=True,
    )
    return target / "cifar10-jpeg"


def run_pipeline_prepare(source: str, output: Path, *flags: str) -> Path:
    """`python -m pipeline.prepare` in the TFX environment (.venv), as a user runs it."""
    if not TFX_PYTHON.exists():
        require_or_skip(f"{TFX_PYTHON} not found (scripts/setup.sh builds the TFX environment)")
    # The caller's KERAS_BACKEND (jax in stage 4) is not the TFX environment's.
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    done = subprocess.run(
        [str(TFX_PYTHON), "-m", "pipeline.prepare", "--source", source, "--output-dir"]
        + [str(output), *flags],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert done.returncode == 0, f"pipeline.prepare failed:\n{done.stderr[-3000:]}"
    return output


@pytest.fixture(scope="session")
def cifar10_lt_examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CIFAR-10-LT IR 100 from 300 images per class (JPEG bytes kept), 20 val per class, the
    10 x 300 test images: 689 / 200 / 3,000 examples written by `pipeline.prepare`."""
    root = tmp_path_factory.mktemp("cifar10_subset")
    tree = extract_cifar10_subset(root, 300)
    return run_pipeline_prepare(
        f"folder:{tree}", root / "examples", "--imbalance-ratio", "100", "--val-per-class", "20"
    )


@pytest.fixture(scope="session")
def digits_lt_examples(digits_folder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits folder as a long-tailed split (IR 10, 10 val per class) by `pipeline.prepare`:
    499 / 100 / 360 examples of 8x8 grey PNGs."""
    output = tmp_path_factory.mktemp("digits_lt") / "examples"
    return run_pipeline_prepare(
        f"folder:{digits_folder}", output, "--imbalance-ratio", "10", "--val-per-class", "10"
    )
