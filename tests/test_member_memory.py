"""Memory of each member: notes of what a member told about themselves, written by the model in the
background after their turn, kept per server (known in the server's other channels, never in another
server's), grounded in their own words, corrected and erased by the member, turned off by admins, and
gone with /forget-me down to the file's bytes."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.config import Config
from bot.core.engine import Engine
from bot.errors import InputError
from bot.llm import LlamaBackend
from bot.memory.members import MAX_NOTE_CHARS, MAX_NOTE_LINES, _stem, grounded, note_lines
from bot.memory.recall import STOPWORDS, WORD
from bot.personas import PersonaLibrary
from bot.store import Store

from .support.scripted import Scripted

pytestmark = pytest.mark.slow

SAM = 42
TOLD = "My cat is called Miso and I work nights as a nurse."
NOTES = "- Sam's cat is called Miso\n- Sam works nights as a nurse"
A, B, OTHER = 10, 11, 20  # channels: A and B in server 1, OTHER in server 2


@pytest.fixture
async def engine(config: Config, model: LlamaBackend) -> AsyncIterator[Engine]:
    config = dataclasses.replace(config, memory=dataclasses.replace(config.memory, summaries=False))
    store = await Store.open(config.resolve(config.store.path))
    engine = Engine(config, store, model, PersonaLibrary.from_config(config))
    memory = engine.models.memory
    for channel, server in ((A, 1), (B, 1), (OTHER, 2)):
        await memory.note_server(channel, server)
    yield engine
    await engine.close()
    await store.close()


def notes_written_by(engine: Engine, model: LlamaBackend, *answers: str) -> Scripted:
    """The notes writer's model, with its answers given (what a 135M model writes cannot be chosen)."""
    scripted = Scripted(model, list(answers))
    engine.models.memory.notes._llm = lambda: scripted
    return scripted


async def told(engine: Engine, channel: int, text: str, member: int = SAM, name: str = "Sam") -> int:
    """The member said `text` in `channel`, and their turn ended: the notes are written."""
    row = await engine.store.add_message(
        channel, role="user", author_name=name, content=text, persona="mira", author_id=member
    )
    memory = engine.models.memory
    await memory.heard(channel, member, name)
    await memory.notes.idle.wait()
    return row


async def prompt_in(engine: Engine, channel: int, text: str = "Good evening!") -> str:
    await engine.store.add_message(
        channel, role="user", author_name="Sam", content=text, persona="mira", author_id=SAM
    )
    mira = engine.personas.load("mira")
    history = await engine.scene.history(channel, [mira])
    return (await engine.composer.prompt(channel, mira, [mira], history, "Sam")).text


async def test_a_fact_told_in_one_channel_is_known_in_the_servers_others_not_in_another_server(
    engine: Engine, model: LlamaBackend
) -> None:
    scripted = notes_written_by(engine, model, NOTES)
    await told(engine, A, TOLD)
    assert TOLD in scripted.prompts[0]  # the model read the member's line
    in_b = await prompt_in(engine, B)
    assert "What Sam has told you about themselves (your notes):\n- Sam's cat is called Miso" in in_b
    # After the history, with the recall slot: the head (and a warm turn's prefix) never changes for it.
    assert in_b.index("Miso") > in_b.index("Sam: Good evening!")
    assert "Miso" not in await prompt_in(engine, OTHER)
    # Another member speaking in B does not bring Sam's notes.
    await engine.store.add_message(
        B, role="user", author_name="Ann", content="Hi", persona="mira", author_id=7
    )
    mira = engine.personas.load("mira")
    history = await engine.scene.history(B, [mira])
    assert "Miso" not in (await engine.composer.prompt(B, mira, [mira], history, "Ann")).text


async def test_invented_notes_are_dropped_and_notes_stay_bounded(engine: Engine, model: LlamaBackend) -> None:
    notes_written_by(engine, model, "- Sam's cat is called Miso\n- Sam was born on the moon\n* Sam likes Sam")
    await told(engine, A, TOLD)
    notes = await engine.models.memory.member_view(1, SAM)
    assert notes is not None and notes.text == "- Sam's cat is called Miso"
    many = "\n".join(f"- fact {i} about nurse work and the cat Miso, long enough to count" for i in range(40))
    kept = grounded(many, "", [TOLD], "Sam")
    assert len(kept.splitlines()) <= MAX_NOTE_LINES and len(kept) <= MAX_NOTE_CHARS


async def test_the_bundled_models_notes_keep_only_what_the_member_said(engine: Engine) -> None:
    """The real model writes the notes: of what it wrote, a line is kept only when every word of it
    (but stopwords and the member's name) was the member's; the others are dropped."""
    said = "I'm Sam, I love rainy days. My brother Tom plays the violin."
    await told(engine, A, said)
    writer = engine.models.memory.notes
    assert writer.last_answer  # the model was asked, and answered
    notes = await engine.models.memory.member_view(1, SAM)
    assert notes is not None and notes.through_id > 0
    words = {_stem(w) for w in WORD.findall(said.lower())}
    kept = note_lines(notes.text)
    for line in note_lines(writer.last_answer):
        content = {_stem(w) for w in WORD.findall(line.lower()) if len(w) >= 3 and w not in STOPWORDS} - {
            "sam"
        }
        assert (line[:160] in kept) == (bool(content) and content <= words), (line, notes.text)


async def test_lines_that_tell_nothing_about_the_member_never_reach_the_model(
    engine: Engine, model: LlamaBackend
) -> None:
    scripted = notes_written_by(engine, model, NOTES)
    row = await told(engine, A, "The storm is getting worse out there.")
    assert scripted.prompts == []
    notes = await engine.models.memory.member_view(1, SAM)
    assert notes is not None and notes.text == "" and notes.through_id == row  # read past, nothing noted


@pytest.mark.parametrize("change", ["delete", "edit"])
async def test_notes_built_from_a_line_later_erased_or_edited_are_dropped(
    engine: Engine, model: LlamaBackend, change: str
) -> None:
    scripted = notes_written_by(engine, model, NOTES, "- Sam has a dog")
    store = engine.store
    row = await told(engine, A, TOLD)
    await told(engine, OTHER, "My dog is loud.")  # the other server's notes read that server's lines only
    assert "My dog is loud." in scripted.prompts[1] and TOLD not in scripted.prompts[1]
    await store._db.execute("UPDATE messages SET discord_id = 900 WHERE id = ?", (row,))
    if change == "delete":
        await store.delete_message(900)
    else:
        await store.edit_message(900, "Never mind.")
    assert await store.member_notes(1, SAM) is None
    other = await store.member_notes(2, SAM)
    assert other is not None and other.text == "- Sam has a dog"


async def test_a_member_corrects_and_erases_their_notes(engine: Engine, model: LlamaBackend) -> None:
    scripted = notes_written_by(engine, model, NOTES, "- Sam's cat is called Biscuit")
    memory = engine.models.memory
    await told(engine, A, TOLD)
    notes = await memory.correct_member(1, SAM, "My name is Samira; she/her\n- cat: Miso")
    assert notes is not None and notes.edited and notes.text == "- My name is Samira; she/her\n- cat: Miso"
    await told(engine, A, "My cat is called Biscuit now.")  # the member's own notes are kept as written
    assert len(scripted.prompts) == 1
    assert "- My name is Samira; she/her" in await prompt_in(engine, B)
    with pytest.raises(InputError, match="at most 600"):
        await memory.correct_member(1, SAM, "x" * 700)
    notes = await memory.correct_member(1, SAM, "")
    assert notes is not None and notes.text == "" and not notes.edited
    assert "your notes" not in await prompt_in(engine, B)
    await told(engine, A, "I moved to Lisbon.")  # what they say after the erasure may be noted again
    assert len(scripted.prompts) == 2 and "Biscuit" not in scripted.prompts[1]


async def test_admins_turn_member_notes_off_per_server(engine: Engine, model: LlamaBackend) -> None:
    scripted = notes_written_by(engine, model, NOTES, NOTES)
    memory = engine.models.memory
    await told(engine, A, TOLD)
    await memory.set_members(1, False)
    assert "Miso" not in await prompt_in(engine, B)
    await told(engine, A, "I also keep bees.")
    assert len(scripted.prompts) == 1  # none written while off
    await told(engine, OTHER, TOLD)  # another server keeps its own
    assert len(scripted.prompts) == 2 and "Miso" in await prompt_in(engine, OTHER)


async def test_forget_me_erases_the_notes_and_their_bytes(engine: Engine, model: LlamaBackend) -> None:
    notes_written_by(engine, model, "- Sam's cat is called Quillmiso")
    memory, store = engine.models.memory, engine.store
    await told(engine, A, "My cat is called Quillmiso.")
    await memory.correct_member(2, SAM, "- I sing in the Marrowgate choir")  # their own, in another server
    assert (await store.member_notes(1, SAM)) is not None
    await engine.admin.forget_member(SAM, [A, B, OTHER])
    assert await store.member_notes(1, SAM) is None and await store.member_notes(2, SAM) is None
    raw = Path(store.path).read_bytes()
    wal = Path(f"{store.path}-wal")
    raw += wal.read_bytes() if wal.exists() else b""
    assert b"Quillmiso" not in raw and b"Marrowgate" not in raw
