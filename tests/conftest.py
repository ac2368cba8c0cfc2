from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.config import Config, load_config

REPO = Path(__file__).resolve().parent.parent


def write_config(folder: Path, extra: str = "", *, sprites: bool = True) -> Path:
    """A config.toml in `folder` with its own database, personas and avatars (copied from the repo).
    `sprites=False` leaves out the shipped expression sets, so that faces are rendered."""
    shutil.copytree(REPO / "persona", folder / "persona", dirs_exist_ok=True)
    skip = ("cache",) if sprites else ("cache", "sprites")
    shutil.copytree(
        REPO / "avatars", folder / "avatars", dirs_exist_ok=True, ignore=shutil.ignore_patterns(*skip)
    )
    path = folder / "config.toml"
    path.write_text(
        "[model]\nn_ctx = 2048\nmax_reply_tokens = 48\ntemperature = 0.0\nseed = 7\n"
        '[store]\npath = "data/test.sqlite3"\n'
        # `auto` would measure the judges in the background during every test; test_emotion covers it.
        '[emotion]\njudge = "classifier"\n' + extra
    )
    return path


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(write_config(tmp_path))


@pytest.fixture(scope="session")
def model():
    """The real bundled SmolLM2 GGUF, loaded once for the whole run."""
    from bot.config import ModelConfig
    from bot.llm import LlamaBackend

    backend = asyncio.run(
        LlamaBackend.load(ModelConfig(n_ctx=2048, max_reply_tokens=48, temperature=0.0, seed=7))
    )
    yield backend
    asyncio.run(backend.close())


@pytest.fixture
def library(config: Config):
    from bot.app import persona_library

    return persona_library(config)


def folder_snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def snapshot() -> Iterator[type]:
    yield folder_snapshot  # type: ignore[misc]


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random inpainting pipeline saved in diffusers' folder layout (built once)."""
    from bot.tiny_diffusion import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-inpaint")


def expression_settings(model: Path | str) -> str:
    return (
        f'[expressions]\nmodel = "{model}"\nresolution = 64\nsteps = 2\nmask_dilate = 2\nmask_blur = 3\n'
        "crop_padding = 8\nlocal_files_only = true\n"
    )


@pytest.fixture
def expr_config(tmp_path: Path, tiny_pipeline_dir: Path) -> Config:
    return load_config(write_config(tmp_path, expression_settings(tiny_pipeline_dir), sprites=False))
