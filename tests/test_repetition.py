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


async def test_a_reply_the_token_limit_cuts_ends_on_a_whole_sentence(
    config: Config, model, monkeypatch
) -> None:
    """No half word posted: a reply that ran into max_reply_tokens ends where its last sentence ends (or,
    with none, at its last whole word, trailing off)."""
    from bot.core.compose import SENTENCE_END

    store = await Store.open(config.resolve(config.store.path))
    short = dataclasses.replace(config, model=dataclasses.replace(config.model, max_reply_tokens=24))
    engine = Engine(short, store, model, PersonaLibrary.from_config(config))
    try:
        for n, line in enumerate(
            ["Tell me a long story about the sea.", "And then what happened to the ship?"]
        ):
            result = await engine.turn(1, "Sam", line)
            assert result.stats.finish_reason == "length"  # the limit did cut it
            text = result.text
            assert text.endswith("…") or SENTENCE_END.search(text[-4:]) is not None, text
            stored = await engine.admin.recent_messages(1, 10)
            assert stored[2 * n + 1].content == text
    finally:
        await engine.close()
        await store.close()


def test_whole_sentences() -> None:
    from bot.core.compose import SentenceGate, whole_sentences

    assert whole_sentences('Yes. "Come in," she says. *She opens the doo') == 'Yes. "Come in," she says.'
    assert whole_sentences("*She waves* Hello there, how are yo") == "*She waves*"
    assert whole_sentences("One long clause that never ends") == "One long clause that never ends"
    assert whole_sentences("Done!") == "Done!"
    # Streamed, the same text is shown as is stored.
    for cut in (True, False):
        gate = SentenceGate()
        text = 'Yes. "Come in," she says. *She opens the doo'
        shown = "".join(gate.feed(text[i : i + 3]) for i in range(0, len(text), 3)) + gate.finish(cut)
        assert shown == (whole_sentences(text) if cut else text)
