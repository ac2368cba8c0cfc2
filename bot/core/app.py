"""Builds the pieces (store, model, personas, expressions, engine) from a config, and closes them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from bot.config import Config
from bot.core.engine import Engine
from bot.emotion import EmotionJudge
from bot.llm import load_backend
from bot.personas import PersonaLibrary
from bot.store import Store

JUDGE_VERDICTS = "emotion-judge.json"  # beside the database: which judge `auto` chose for each model


@contextlib.asynccontextmanager
async def open_engine(config: Config) -> AsyncIterator[Engine]:
    """The engine with everything it needs, closed in reverse order on exit."""
    personas = PersonaLibrary.from_config(config)
    personas.load(config.persona.default)  # a broken default persona should stop start-up, not a chat
    store = await Store.open(config.resolve(config.store.path))
    try:
        llm = await load_backend(config.model, config.root)
        try:
            expressions = None
            if config.expressions.enabled:
                # Sprites (the shipped drawn sets, imported packs) need no inpainting model.
                from bot.expressions import ExpressionService

                expressions = ExpressionService(config, store, personas)
            judge = EmotionJudge(
                config.emotion,
                llm,
                model_id=llm.identity,
                verdict_file=config.resolve(config.store.path).parent / JUDGE_VERDICTS,
            )
            judge.start()  # the sentence encoder loads in the background; the classifier serves till then
            engine = Engine(config, store, llm, personas, expressions, judge)
            engine.models.memory.start()  # recall by meaning loads and embeds in the background
            try:
                # A default persona too large for the context should stop start-up, not every chat.
                await engine.admin.check_default_persona()
                yield engine
            finally:
                await engine.close()
                await judge.close()
                if expressions is not None:
                    await expressions.close()
        finally:
            await llm.close()
    finally:
        await store.close()
