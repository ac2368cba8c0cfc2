"""Recall by meaning: every stored line gets an embedding from the shipped sentence encoder (in the
background, giving way to the model), a question finds the lines near it in meaning as well as by its
words, and an edited or erased line can never be found by what it used to say: not in the store, not in
the vectors held in RAM, not in the database file's bytes."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from bot.config import Config
from bot.core.engine import Engine
from bot.errors import ModelError, StoreError
from bot.llm import LlamaBackend
from bot.memory import meaning as meaning_module
from bot.memory.meaning import ChannelVectors, MeaningIndex, nearest, shared_sentence_encoder
from bot.memory.recall import match_query, name_words, paired
from bot.personas import PersonaLibrary
from bot.store import Store

from .support.old_database import old_database
from .test_memory import CHANNEL, say, seed, sized

pytestmark = pytest.mark.slow

PARIS = "I grew up in Paris, in a flat above a bakery."
ASKED = "Which French city was my childhood home?"


@pytest.fixture
async def engine(config: Config, model: LlamaBackend) -> AsyncIterator[Engine]:
    """An engine over the real model with recall by meaning on (summaries off), its encoder loaded."""
    memory = dataclasses.replace(config.memory, summaries=False, meaning=True)
    config = dataclasses.replace(config, memory=memory)
    store = await Store.open(config.resolve(config.store.path))
    engine = Engine(config, store, model, PersonaLibrary.from_config(config))
    engine.models.memory.start()
    assert await engine.models.memory.meaning.ready(), engine.models.memory.meaning.failed
    yield engine
    await engine.close()
    await store.close()


async def embedded(index: MeaningIndex) -> None:
    """Every stored line embedded (the worker woken, its queue emptied)."""
    index.wake()
    await index.idle.wait()


async def asked(engine: Engine, question: str, author: str = "Sam") -> str:
    """The prompt built for `question`, asked now in CHANNEL (then taken back out of the history)."""
    row = await say(engine.store, author, question)
    mira = engine.personas.load("mira")
    history = await engine.scene.history(CHANNEL, [mira])
    built = await engine.composer.prompt(CHANNEL, mira, [mira], history, author)
    await engine.store._db.execute("DELETE FROM messages WHERE id = ?", (row,))
    engine.scene.windows.clear()
    return built.text


def meaning_off(engine: Engine) -> None:
    config = dataclasses.replace(engine.config.memory, meaning=False)
    engine.models.memory.config = config


async def test_a_paraphrased_question_recalls_the_line_by_its_meaning(
    engine: Engine, model: LlamaBackend
) -> None:
    """No word in common: words alone cannot find the line; meaning puts it in the prompt."""
    sized(engine, model, 2048, dataclasses.replace(engine.config.memory, meaning=True))
    await say(engine.store, "Sam", PARIS)
    await seed(engine.store, 300, long=True)
    await embedded(engine.models.memory.meaning)
    assert match_query(ASKED) and await engine.store.index_holds(match_query(ASKED)) == 0
    assert f"Sam: {PARIS}" in await asked(engine, ASKED)
    meaning_off(engine)
    assert f"Sam: {PARIS}" not in await asked(engine, ASKED)


async def test_lines_wait_for_the_model_and_are_found_by_words_meanwhile(engine: Engine) -> None:
    """While the model has a request, no line is embedded (the worker looks again and again); the
    turn does not wait: its lines are found by their words. Once the model is idle, by meaning too."""
    store = engine.store
    busy = True
    looked = asyncio.Event()
    looks = 0

    def model_busy() -> bool:
        nonlocal looks
        looks += 1
        if looks >= 3:
            looked.set()
        return busy

    index = MeaningIndex(store, model_busy, load=shared_sentence_encoder)
    await engine.models.memory.meaning.close()
    engine.models.memory.meaning = index
    index.start()
    assert await index.ready()
    await say(store, "Sam", PARIS)
    await say(store, "Sam", "The lantern in the tower is green, never red.")
    await seed(store, 20, long=False)
    index.wake()
    # The worker asked three times whether the model is busy, or (wrongly) embedded everything without.
    await asyncio.wait(
        [asyncio.ensure_future(looked.wait()), asyncio.ensure_future(index.idle.wait())],
        return_when=asyncio.FIRST_COMPLETED,
    )
    assert await store.waiting_embeddings() == 22 and not index.idle.is_set()
    memory = engine.models.memory
    history = await store.history(CHANNEL, ["mira"], 2)
    question = dataclasses.replace(history[-1], role="user", content="What colour is the lantern?")
    found = await memory.for_prompt(CHANNEL, "mira", ["mira"], [question], history[0].id)
    texts = [line.text for line in found[0].recalled]
    assert "Sam: The lantern in the tower is green, never red." in texts and f"Sam: {PARIS}" not in texts
    busy = False
    await index.idle.wait()
    assert await store.waiting_embeddings() == 0
    question = dataclasses.replace(question, content=ASKED)
    found = await memory.for_prompt(CHANNEL, "mira", ["mira"], [question], history[0].id)
    assert f"Sam: {PARIS}" in [line.text for line in found[0].recalled]


async def test_an_edited_line_is_found_by_what_it_says_now_never_by_what_it_said(engine: Engine) -> None:
    store, index = engine.store, engine.models.memory.meaning
    row = await store.add_message(
        CHANNEL, role="user", author_name="Sam", content=PARIS, persona="mira", discord_id=555
    )
    await seed(store, 10, long=False)
    await embedded(index)
    last = (await store.history(CHANNEL, ["mira"], 1))[0].id
    assert [m.id for m in await index.search(CHANNEL, ASKED, ["mira"], last, 3)][:1] == [row]
    await store.edit_message(555, "My dog is named Pepper; she is afraid of thunder.")
    # The vector went with the edit, in the same transaction; the channel's vectors in RAM still hold it.
    assert (
        row not in [i for i, _ in await store.vectors_of(CHANNEL)] and await store.waiting_embeddings() == 1
    )
    assert row not in [m.id for m in await index.search(CHANNEL, ASKED, ["mira"], last, 10)]
    await embedded(index)
    found = await index.search(CHANNEL, "Which pet is scared of storms?", ["mira"], last, 3)
    assert found and found[0].id == row and "Pepper" in found[0].content


@pytest.mark.parametrize("erase", ["forget-me", "reset", "purge"])
async def test_an_erased_line_leaves_no_vector_in_the_store_ram_or_file(engine: Engine, erase: str) -> None:
    """After /forget-me, /reset or a purge, a search by the erased line's meaning finds nothing, no
    vector or queue row holds it, and neither the database file nor its log holds the vector's bytes."""
    store, index = engine.store, engine.models.memory.meaning
    await store.add_message(
        CHANNEL, role="user", author_name="Zed", content=PARIS, persona="mira", author_id=42, discord_id=77
    )
    await seed(store, 10, long=False)
    await embedded(index)
    last = (await store.history(CHANNEL, ["mira"], 1))[0].id
    assert await index.search(CHANNEL, ASKED, ["mira"], last, 1)  # held in RAM from here on
    row_id, vector = (await store.vectors_of(CHANNEL))[0]
    if erase == "forget-me":
        await engine.admin.forget_member(42, [CHANNEL])
    elif erase == "reset":
        await store.clear_channel(CHANNEL)
    else:
        await store.delete_messages({77})
    assert row_id not in [m.id for m in await index.search(CHANNEL, ASKED, ["mira"], last + 1, 30)]
    gone = await store._rows(
        "SELECT id FROM message_vectors WHERE id = ? UNION SELECT id FROM embed_queue WHERE id = ?",
        (row_id, row_id),
    )
    assert gone == []
    await store.give_back_space()
    raw = Path(store.path).read_bytes() + _wal(Path(store.path))
    assert vector[:96] not in raw and PARIS.encode() not in raw


def _wal(path: Path) -> bytes:
    wal = path.with_name(path.name + "-wal")
    return wal.read_bytes() if wal.exists() else b""


async def test_a_line_edited_while_it_was_embedded_keeps_no_stale_vector(engine: Engine) -> None:
    """The worker read a line, it was edited before the vector came back: the vector is refused and the
    line stays queued for its new words."""
    store = engine.store
    await store.add_message(
        CHANNEL, role="user", author_name="Sam", content=PARIS, persona="mira", discord_id=9
    )
    lines = await store.unembedded(10)
    await store.edit_message(9, "Something else entirely.")
    assert await store.put_vectors(lines, [b"\x00" * 768]) == []
    assert await store.vectors_of(CHANNEL) == [] and await store.waiting_embeddings() == 1


async def test_an_upgraded_database_is_embedded_in_the_background(tmp_path: Path, engine: Engine) -> None:
    """A database from before recall by meaning (schema 4) keeps its lines; all of them are queued by the
    upgrade and embedded after it, and then found by meaning."""
    lines = [(CHANNEL, PARIS, None), *((CHANNEL, f"ok {i}", None) for i in range(40))]
    path = old_database(tmp_path / "old.sqlite3", 4, lines)
    store = await Store.open(path)
    try:
        assert await store.waiting_embeddings() == 41
        index = MeaningIndex(store, lambda: False)
        index.start()
        await index.idle.wait()
        assert await store.waiting_embeddings() == 0 and len(await store.vectors_of(CHANNEL)) == 41
        assert [m.content for m in await index.search(CHANNEL, ASKED, ["mira"], 10_000, 1)] == [PARIS]
        await index.close()
    finally:
        await store.close()


async def test_recall_by_meaning_stays_in_its_channel_and_cast(engine: Engine) -> None:
    store, index = engine.store, engine.models.memory.meaning
    await store.add_message(2, role="user", author_name="Sam", content=PARIS, persona="mira")
    await store.add_message(CHANNEL, role="user", author_name="Sam", content=PARIS, persona="tobin")
    await store.add_message(CHANNEL, role="user", author_name="Sam", content="ok", persona="mira")
    await embedded(index)
    assert await index.search(CHANNEL, ASKED, ["mira"], 10_000, 5) == []  # another channel's, another cast's
    assert [m.persona for m in await index.search(CHANNEL, ASKED, ["mira", "tobin"], 10_000, 1)] == ["tobin"]


async def test_speakers_names_do_not_pull_in_every_greeting(engine: Engine) -> None:
    """ "Thanks, Caroline!" shares only a name with Caroline's question: neither words nor meaning
    recall it; the line that answers her does."""
    store, memory = engine.store, engine.models.memory
    await say(store, "Caroline", "I hid the spare key inside the old boot by the door.")
    for i in range(30):
        await say(store, "Mira", f"Thanks, Caroline! Good night, Caroline. ({i})")
    await say(store, "Caroline", "ok")
    await embedded(memory.meaning)
    history = await store.history(CHANNEL, ["mira"], 2)
    question = dataclasses.replace(history[-1], content="Caroline is locked out: where is the spare key?")
    assert "caroline" not in match_query(question.content, name_words(["Caroline", "Mira"]))
    for meaning in (False, True):
        memory.config = dataclasses.replace(memory.config, meaning=meaning)
        found, _ = await memory.for_prompt(CHANNEL, "mira", ["mira"], [*history, question], history[0].id)
        texts = [line.text for line in found.recalled]
        assert texts[0] == "Caroline: I hid the spare key inside the old boot by the door.", texts
        assert not any("Thanks, Caroline" in text for text in texts[:4]), (meaning, texts)


async def test_a_recalled_question_brings_its_answer(engine: Engine) -> None:
    """The question shares the member's words; the answer, the line after it, does not: it comes along,
    right after the question, and the two are in the prompt together."""
    store, memory = engine.store, engine.models.memory
    await say(store, "Mira", "What did you get for your birthday, Sam?")
    await say(store, "Sam", "A telescope, to watch the stars.")
    await seed(store, 40, long=True)
    meaning_off(engine)
    history = await store.history(CHANNEL, ["mira"], 2)
    question = dataclasses.replace(history[-1], role="user", content="What was my birthday present?")
    found, _ = await memory.for_prompt(CHANNEL, "mira", ["mira"], [question], history[0].id)
    texts = [line.text for line in found.recalled]
    assert texts[:2] == [
        "Mira: What did you get for your birthday, Sam?",
        "Sam: A telescope, to watch the stars.",
    ]


def test_only_a_question_brings_the_line_after_it_and_an_answer_its_question() -> None:
    def line(row: int, who: str, text: str):
        from bot.store import StoredMessage

        return StoredMessage(row, 1, None, None, who, "user", text, None, "mira", 0.0, None)

    question, answer, aside = line(1, "Mira", "Where to?"), line(2, "Sam", "North."), line(3, "Mira", "Fine.")
    assert [n.id for n, _ in paired(question, None, answer, 1.0)] == [2]
    assert [n.id for n, _ in paired(answer, question, aside, 1.0)] == [1]
    assert paired(aside, answer, None, 1.0) == []  # a statement after a statement: nothing comes along
    assert paired(line(4, "Sam", "Really?"), None, line(5, "Sam", "Yes."), 1.0) == []  # one speaker


def test_vectors_held_in_ram_grow_without_losing_any_and_stay_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((300, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    held = ChannelVectors(8, list(range(1, 101)), vectors[:100].astype(np.float16))
    for start in range(100, 300, 7):  # many small appends, across several regrowths
        end = min(start + 7, 300)
        held.add(list(range(start + 1, end + 1)), vectors[start:end].astype(np.float16))
    ids, matrix = held.snapshot()
    assert list(ids) == list(range(1, 301))
    for row in (5, 150, 299):
        assert nearest(ids, matrix, vectors[row - 1], 10_000, 1)[0][0] == row
        assert all(found < row for found, _ in nearest(ids, matrix, vectors[row - 1], row, 5))
    # A line embedded again (after an edit) takes its old row; a new one is appended.
    held.put([150, 301], vectors[[9, 10]].astype(np.float16))
    ids, matrix = held.snapshot()
    assert len(ids) == 301 and list(ids).count(150) == 1
    assert 150 in [found for found, _ in nearest(ids, matrix, vectors[9], 10_000, 2)]  # as line 10's
    assert nearest(ids, matrix, vectors[149], 10_000, 1)[0][0] != 150  # its old vector is gone
    # The channels held in RAM: the least recently searched go first past LINES_HELD.
    monkeypatch.setattr(meaning_module, "LINES_HELD", 250)
    index = MeaningIndex(None, lambda: False)  # type: ignore[arg-type]
    for channel in (1, 2, 3):
        index._held[channel] = ChannelVectors(8, list(range(100)), vectors[:100].astype(np.float16))
        index._trim()
    assert list(index._held) == [2, 3]


async def test_an_encoder_that_cannot_load_leaves_recall_by_words_with_one_line(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> meaning_module.SentenceEncoder:
        raise ModelError("the sentence encoder package is not installed")

    caplog.set_level(logging.INFO, logger="bot.memory.meaning")
    index = MeaningIndex(engine.store, lambda: False, load=broken)
    await engine.models.memory.meaning.close()
    engine.models.memory.meaning = index
    index.start()
    assert not await index.ready()
    await say(engine.store, "Sam", "The lantern in the tower is green, never red.")
    await seed(engine.store, 10, long=False)
    history = await engine.store.history(CHANNEL, ["mira"], 2)
    question = dataclasses.replace(history[-1], role="user", content="What colour is the lantern?")
    found, _ = await engine.models.memory.for_prompt(CHANNEL, "mira", ["mira"], [question], history[0].id)
    assert found.recalled[0].text == "Sam: The lantern in the tower is green, never red."
    lines = [r.getMessage() for r in caplog.records if r.name == "bot.memory.meaning"]
    assert lines == [
        "memory: recall finds lines by their words only (the sentence encoder: the sentence encoder"
        " package is not installed)"
    ]


async def test_a_failing_store_is_one_line_and_embedding_resumes_after(
    engine: Engine, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk full for a while: one warning, not one per step; the lines are embedded once it is back."""
    store = engine.store
    await say(store, "Sam", PARIS)
    real = store.unembedded
    failures = 0

    async def failing(limit: int) -> list:  # type: ignore[type-arg]
        nonlocal failures
        if failures < 3:
            failures += 1
            raise StoreError(f"{store.path}: the disk is full (nothing of this turn was saved)")
        return await real(limit)

    monkeypatch.setattr(meaning_module, "POLL_SECONDS", 0.01)
    monkeypatch.setattr(store, "unembedded", failing)
    caplog.set_level(logging.WARNING, logger="bot.memory.meaning")
    await embedded(engine.models.memory.meaning)
    while await store.waiting_embeddings():  # the worker polls: the failing steps, then the real one
        await embedded(engine.models.memory.meaning)
    assert failures == 3
    warnings = [r.getMessage() for r in caplog.records if r.name == "bot.memory.meaning"]
    assert len(warnings) == 1 and "the disk is full" in warnings[0], warnings
