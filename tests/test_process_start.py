"""Settings are made where a process starts, never on import; and the cheap commands stay cheap.

Each check runs in a fresh interpreter, since this test process has long since imported and
configured everything it checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.timeout(120)

HEAVY_MODULES = ("tensorflow", "tfx", "keras_tuner", "apache_beam", "keras")


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env_without_settings = {
        key: value
        for key, value in os.environ.items()
        if key not in ("TF_ENABLE_ONEDNN_OPTS", "KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL")
    }
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO_ROOT,
        env=env_without_settings,
        capture_output=True,
        text=True,
        timeout=100,
    )


# Keras loading TensorFlow sets variables of its own (KMP_*, ...); a module built on Keras is
# measured after Keras has loaded, so that only the module's own changes count.
@pytest.mark.parametrize(
    ("module", "loaded_first"),
    [
        ("lade_tf", "json"),
        ("lade_tf.losses", "keras"),
        ("lade_tf.train_config", "json"),
        ("lade_tf.prior_tracking", "json"),
        ("pipeline", "json"),
        ("pipeline.flags", "json"),
        ("serving", "json"),
    ],
)
def test_importing_changes_no_environment_variable(module, loaded_first):
    result = run_python(
        f"""
        import json, os
        import {loaded_first}
        before = dict(os.environ)
        import {module}
        after = dict(os.environ)
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        print(json.dumps(changed))
        """
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_configure_tensorflow_keeps_the_users_choice():
    result = run_python(
        """
        import os
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
        from lade_tf.process_settings import configure_tensorflow
        configure_tensorflow()
        print(os.environ["TF_ENABLE_ONEDNN_OPTS"])
        """
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "0"


def test_pipeline_help_loads_no_tensorflow_tfx_or_tuner():
    # `--help` exits inside argparse; the check runs at interpreter exit, after it.
    result = run_python(
        f"""
        import atexit, json, runpy, sys
        heavy = {HEAVY_MODULES!r}
        atexit.register(
            lambda: print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
        )
        sys.argv = ["pipeline/run.py", "--help"]
        runpy.run_path("pipeline/run.py", run_name="__main__")
        """
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--runner" in result.stdout
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
