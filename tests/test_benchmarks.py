"""A benchmark ends on any failure, with one line saying why: it never hangs on a model or database left
open (a busy machine hitting the reply timeout made `bench cast` print its error and then wait forever)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .support.configs import REPO, write_config

pytestmark = pytest.mark.slow

ENDS_WITHIN = 240  # seconds: loading the bundled model and seeding a history, then the first turn fails


@pytest.mark.parametrize("what", ["cast", "llm", "repetition"])
def test_a_benchmark_whose_turn_times_out_ends_with_one_line(tmp_path: Path, what: str) -> None:
    config = write_config(tmp_path, model="timeout_seconds = 0.001\n")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", what, "--quick", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=ENDS_WITHIN,  # a hang fails here
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert lines[-1].startswith(f"bench {what}") and "timeout_seconds" in lines[-1], lines[-1]
