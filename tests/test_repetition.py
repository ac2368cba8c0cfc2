"""Replies that do not loop: with DRY (on by default), the bundled model does not carry on a sentence it
has already said in the conversation, though without DRY it does, greedily, in the same history."""

from __future__ import annotations

import dataclasses

import pytest

from bot.config import Config
from bot.core.copying import copied_at
from bot.core.engine import Engine
from bot.llm import LlamaBackend
from bot.personas import PersonaLibrary
from bot.store import Store

pytestmark = pytest.mark.slow

LOOP = "I'm glad you're taking care of the ship, but I'll tell you something else, my dear Sam."
ASKED = [
    "Hello Mira.",
    "What is for dinner?",
    "Is the lamp lit?",
    "Who built this place?",
    "Any ships today?",
]


async def reply_after_a_loop(config: Config, model: LlamaBackend, dry: float, monkeypatch) -> str:
    """The model's greedy reply after five turns in which Mira said the same sentence."""
    monkeypatch.setattr(model, "config", dataclasses.replace(model.config, dry_multiplier=dry))
    store = await Store.open(config.resolve(config.store.path + f".{dry}"))
    try:
        for line in ASKED:
            await store.add_message(1, role="user", author_name="Sam", content=line, persona="mira")
            await store.add_message(1, role="assistant", author_name="Mira", content=LOOP, persona="mira")
        engine = Engine(config, store, model, PersonaLibrary.from_config(config))
        try:
            return (await engine.turn(1, "Sam", "Tell me about the storm.")).text
        finally:
            await engine.close()
    finally:
        await store.close()


async def test_dry_keeps_a_reply_from_repeating_the_conversation(config: Config, model, monkeypatch) -> None:
    assert config.model.temperature == 0.0 and model.config.dry_multiplier > 0  # greedy; DRY on by default
    looping = await reply_after_a_loop(config, model, 0.0, monkeypatch)
    assert copied_at(looping, [LOOP]) is not None, looping  # without DRY the model says it again
    varied = await reply_after_a_loop(config, model, 0.8, monkeypatch)
    assert copied_at(varied, [LOOP]) is None, varied
    assert len(varied.split()) >= 5  # and still says something
