"""Builds the pieces (store, model, personas, expressions, engine) from a config, and closes them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from bot.config import Config
from bot.engine import Engine
from bot.llm import LlamaBackend
from bot.persona import PersonaLibrary
from bot.store import Store


def persona_library(config: Config) -> PersonaLibrary:
    return PersonaLibrary(
        config.resolve(config.persona.dir),
        config.resolve(config.persona.avatars_dir),
        max_card_bytes=config.persona.max_card_bytes,
        max_pixels=config.persona.max_portrait_pixels,
    )


@contextlib.asynccontextmanager
async def open_engine(config: Config) -> AsyncIterator[Engine]:
    """The engine with everything it needs, closed in reverse order on exit."""
    personas = persona_library(config)
    personas.load(config.persona.default)  # a broken default persona should stop start-up, not a chat
    store = await Store.open(config.resolve(config.store.path))
    try:
        llm = await LlamaBackend.load(config.model, config.root)
        try:
            expressions = None
            if config.expressions.enabled and config.expressions.model:
                from bot.expressions import ExpressionService

                expressions = ExpressionService(config, store, personas)
            engine = Engine(config, store, llm, personas, expressions)
            try:
                yield engine
            finally:
                if expressions is not None:
                    await expressions.close()
        finally:
            await llm.close()
    finally:
        await store.close()
