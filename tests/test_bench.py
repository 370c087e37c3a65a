"""Every benchmark still starts: the suite runs none of them in full, so a renamed import would go unseen.

`--help` imports the script and everything it uses and parses its arguments, in a fresh interpreter, as
a user runs it (from the repository root, with bench/ as the script's folder).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SCRIPTS = sorted(path for path in (REPO / "bench").glob("*.py") if path.name != "common.py")


def test_every_benchmark_is_covered() -> None:
    assert {path.stem for path in SCRIPTS} >= {"quality", "robustness", "train", "api_load", "index_throughput"}


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_benchmark_starts(script: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ")
