from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.config import Config, load_config

from .support.configs import expression_settings, folder_snapshot, write_config
from .support.discord_server import FakeDiscord


@pytest.fixture
async def server() -> AsyncIterator[FakeDiscord]:
    """The local Discord server for end-to-end tests (test_openai_backend's `server` is a model server)."""
    s = FakeDiscord()
    await s.start()
    yield s
    await s.stop()
    # Every request the bot made must be one Discord accepts (its official API description).
    assert s.violations == [], "requests Discord would refuse:\n" + "\n".join(s.violations)
    # The bot never pings anyone, whatever its text says: every post and every edit (AllowedMentions.none()).
    assert s.pings == [], "the bot pinged:\n" + "\n".join(s.pings)


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
async def engine(config: Config, model):
    """An engine over the real model, its summaries off (tests of them turn them on); test files with
    their own `engine` use theirs."""
    import dataclasses

    from bot.core.engine import Engine
    from bot.personas import PersonaLibrary
    from bot.store import Store

    config = dataclasses.replace(config, memory=dataclasses.replace(config.memory, summaries=False))
    store = await Store.open(config.resolve(config.store.path))
    engine = Engine(config, store, model, PersonaLibrary.from_config(config))
    yield engine
    await engine.close()
    await store.close()
    await model.forget_contexts()  # the next test's first turn reads its prompt afresh


@pytest.fixture
def library(config: Config):
    from bot.personas import PersonaLibrary

    return PersonaLibrary.from_config(config)


@pytest.fixture
def snapshot() -> Iterator[type]:
    yield folder_snapshot  # type: ignore[misc]


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random inpainting pipeline saved in diffusers' folder layout (built once)."""
    from tests.support.tiny_diffusion import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-inpaint")


@pytest.fixture
def expr_config(tmp_path: Path, tiny_pipeline_dir: Path) -> Config:
    return load_config(write_config(tmp_path, expression_settings(tiny_pipeline_dir), sprites=False))


@pytest.fixture
async def drawn_service(tmp_path: Path):
    """A service with no inpainting model and no shipped sprites: every face is drawn."""
    from bot.store import Store

    config = load_config(write_config(tmp_path, sprites=False))
    store = await Store.open(config.resolve(config.store.path))
    from bot.expressions import ExpressionService
    from bot.personas import PersonaLibrary

    service = ExpressionService(config, store, PersonaLibrary.from_config(config))
    yield service
    await service.close()
    await store.close()
