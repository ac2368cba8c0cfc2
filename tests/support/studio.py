"""A studio served on a real engine for tests: its own config folder, a free port, the link with the
token."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from bot.config import Config, load_config
from bot.core.app import open_engine
from bot.core.engine import Engine
from bot.studio import Studio

from .configs import expression_settings, write_config


@dataclass
class Served:
    studio: Studio
    engine: Engine
    config: Config
    folder: Path
    link: str

    @property
    def base(self) -> str:
        return self.studio.base_url

    @property
    def cookies(self) -> dict[str, str]:
        return {"studio_token": self.studio.token}

    @property
    def origin(self) -> dict[str, str]:
        return {"Origin": self.studio.base_url}


def studio_config(folder: Path, tiny_pipeline: Path, steps: int = 6) -> Config:
    """Faces rendered by the tiny pipeline (no shipped sprites), with enough steps to watch."""
    settings = expression_settings(tiny_pipeline).replace("steps = 2", f"steps = {steps}")
    return load_config(write_config(folder, settings, sprites=False))


@contextlib.asynccontextmanager
async def served(config: Config) -> AsyncIterator[Served]:
    async with open_engine(config) as engine:
        studio = Studio(engine, "127.0.0.1", 0)
        link = await studio.start()
        try:
            yield Served(studio, engine, config, config.root, link)
        finally:
            await studio.stop()
