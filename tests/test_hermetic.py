"""Tests are hermetic: what a user did with the bot in its folder (a persona imported, config.toml
changed, a history in data/, renders in the cache) changes no test's result. A copy of this checkout,
used like that, runs a sample of the suite and passes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .support.configs import REPO, add_persona

pytestmark = pytest.mark.slow

# The tests that met the user's own files before they read the shipped ones: personas listed by name,
# the shipped config's values, the shipped faces, a whole terminal session.
SAMPLE = [
    "tests/test_persona.py",
    "tests/test_config.py",
    "tests/test_faces.py",
    "tests/test_console.py::test_terminal_chat_survives_ctrl_c_and_restart",
    "tests/test_store_faults.py",
    "tests/test_layers.py",
]
CACHES = {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}
USERS_OWN = {".venv", "data", "models"}  # at the top of the checkout only (bot/emotion/data is shipped)


def left_out(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) == REPO
    return {n for n in names if n in CACHES or (top and n in USERS_OWN)}


def test_a_sample_of_the_suite_passes_in_a_folder_a_user_has_used(tmp_path: Path) -> None:
    used = tmp_path / "checkout"
    shutil.copytree(REPO, used, ignore=left_out, symlinks=True)
    add_persona(used, "seraphina", "Seraphina")  # an imported card
    config = used / "config.toml"
    text = config.read_text()
    for old, new in (
        ('default = "mira"', 'default = "seraphina"'),
        ("n_ctx = 4096", "n_ctx = 8192"),
        ("drawn = true", "drawn = false"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    config.write_text(text)
    (used / "data").mkdir()
    (used / "data" / "bot.sqlite3").write_bytes(b"")  # a history of their own (here: an empty file)
    (used / "avatars" / "cache" / "mira").mkdir(parents=True)
    (used / "avatars" / "cache" / "mira" / "joy-0-0123.png").write_bytes(b"not a face")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SAMPLE],
        cwd=used,
        env={**os.environ, "PYTHONPATH": str(used)},  # the copy's bot and tests, not this checkout's
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
