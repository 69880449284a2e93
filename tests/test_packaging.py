"""The project's wheel is the library alone: built from this checkout and installed into a fresh
virtual environment, it brings `lade_tf` (and no top-level `pipeline`, `serving` or `tests`), its
NumPy modules import with no Keras backend, and with the `jax` extra the loss and the layer work.

Packages come from the registry through uv's cache (warm after scripts/setup.sh), never data."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, require_or_skip

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _uv() -> str:
    uv = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    if not Path(uv).exists():
        require_or_skip("uv not found (scripts/setup.sh installs it)")
    return uv


def _run(command: list[str], **options) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, **options)
    assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("dist")
    _run([_uv(), "build", "--wheel", "--out-dir", str(output), str(REPO_ROOT)])
    [built] = output.glob("lade_tf-*.whl")
    return built


def test_the_wheel_holds_the_library_alone(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"lade_tf"}


def test_the_wheel_installs_alone_into_a_fresh_environment(wheel: Path, tmp_path: Path):
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    # Python 3.11, as scripts/setup.sh finds it for .venv-jax: the jax extra's current wheels.
    found = subprocess.run([_uv(), "python", "find", "3.11"], capture_output=True, text=True)
    interpreter = found.stdout.strip() if found.returncode == 0 else sys.executable
    _run([_uv(), "venv", "--quiet", "-p", interpreter, str(venv)])
    _run([_uv(), "pip", "install", "--quiet", "-p", str(python), f"{wheel}[jax]"])
    elsewhere = {"cwd": tmp_path}  # not the checkout, whose folders would shadow the install
    check = (
        "import importlib.util, sys\n"
        "import lade_tf.calibration, lade_tf.label_shift, lade_tf.priors, lade_tf.train_config\n"
        "assert 'keras' not in sys.modules, 'the NumPy modules loaded Keras'\n"
        "print([n for n in ('pipeline', 'serving', 'tests', 'tensorflow', 'tfx')"
        " if importlib.util.find_spec(n)])\n"
    )
    assert _run([str(python), "-c", check], **elsewhere).stdout.strip() == "[]"
    use = (
        "import numpy as np\n"
        "from lade_tf.losses import LADELoss\n"
        "from lade_tf.layers import PriorCorrection\n"
        "loss = LADELoss([100, 10, 1], alpha=0.1)(np.array([0, 1, 2]), np.zeros((3, 3), 'f4'))\n"
        "out = PriorCorrection([3, 1], train_loss='ce')(np.zeros((1, 2), 'f4'), np.ones(2))\n"
        "print(float(loss), *np.asarray(out, 'f8').ravel())\n"
    )
    env = {"KERAS_BACKEND": "jax", "PATH": "/usr/bin:/bin"}
    loss, *adjusted = map(
        float, _run([str(python), "-c", use], env=env, **elsewhere).stdout.split()
    )
    # The installed library on JAX gives what this checkout gives on its own backend; PC Softmax
    # with a uniform target prior on zero logits is -log p_s + log 1/2.
    from lade_tf.losses import LADELoss

    here = LADELoss([100, 10, 1], alpha=0.1)(np.array([0, 1, 2]), np.zeros((3, 3), "f4"))
    assert loss == pytest.approx(float(here), rel=1e-5)
    np.testing.assert_allclose(adjusted, -np.log([0.75, 0.25]) + np.log(0.5), atol=1e-6)
