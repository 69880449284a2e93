"""The benchmark scripts are a folder of scripts, not a package: their tests import them from it."""

from __future__ import annotations

import sys

from tests.conftest import REPO_ROOT

BENCHMARKS = REPO_ROOT / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))
