"""Memory beyond the prompt window: the window keeps its prefix at every context size, earlier lines are
recalled from the whole history, summaries of what left the window are kept per persona, and what a
member erased is gone from all of it."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from bot.config import MemoryConfig
from bot.core.engine import Engine
from bot.core.prompt import RECALL_HEADING, BuiltPrompt, PromptBuilder
from bot.errors import InputError
from bot.llm import LlamaBackend
from bot.memory import match_query
from bot.memory.recall import match_words
from bot.personas import Persona
from bot.store import Store, StoredMessage

from .support.contexts import SizedContext, read_tokens
from .support.scripted import Scripted

pytestmark = pytest.mark.slow

CHANNEL = 7


def sized(engine: Engine, model: LlamaBackend, n_ctx: int, memory: MemoryConfig | None = None) -> None:
    """Make the engine build prompts for an n_ctx-token context."""
    config = engine.config
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, n_ctx=n_ctx), memory=memory or config.memory
    )
    engine.config = engine.scene.config = config
    engine.models.prompts = PromptBuilder(
        SizedContext(model, n_ctx), config.model.max_reply_tokens, config.prompt, config.memory
    )
    engine.models.memory.config = config.memory


async def say(store: Store, author: str, text: str, channel: int = CHANNEL, author_id: int = 1) -> int:
    role = "assistant" if author == "Mira" else "user"
    return await store.add_message(
        channel,
        role=role,
        author_name=author,
        content=text,
        persona="mira",
        author_id=None if role == "assistant" else author_id,
    )


async def placed_window(
    engine: Engine, model: LlamaBackend
) -> tuple[Persona, list[StoredMessage], BuiltPrompt]:
    """Mira's window placed over 600 long lines at n_ctx 2048: she, the history and the first prompt."""
    sized(engine, model, 2048)
    await seed(engine.store, 600, long=True)
    mira = engine.personas.load("mira")
    history = await engine.scene.history(CHANNEL, [mira])
    return mira, history, await engine.composer.prompt(CHANNEL, mira, [mira], history, "Ann")


async def seed(store: Store, lines: int, long: bool) -> None:
    for i in range(lines // 2):
        if long:
            await say(store, "Ann", f"Line {i}: the fog rolls over the harbour and the bells ring again.")
            await say(store, "Mira", f"Reply {i}: *Mira lights the lamp and watches the dark water.*")
        else:
            await say(store, "Ann", f"ok {i}")
            await say(store, "Mira", f"Sure {i}.")


@pytest.mark.parametrize("n_ctx", [4096, 16384, 32768])
@pytest.mark.parametrize("long", [False, True], ids=["short lines", "long lines"])
async def test_warm_turns_read_only_the_new_tokens_at_every_context_size(
    engine: Engine, model: LlamaBackend, n_ctx: int, long: bool
) -> None:
    """More stored lines than the context holds (and than the old fixed fetch of 400): the window keeps
    its start from turn to turn, so each warm turn reads the new exchange, the recalled lines' slot and
    the markers, however large the context."""
    sized(engine, model, n_ctx)
    per_line = 7 if not long else 24
    await seed(engine.store, max(1200, n_ctx // per_line * 3 // 2), long)
    mira = engine.personas.load("mira")
    cast = [mira]
    history = await engine.scene.history(CHANNEL, cast)
    before = await engine.composer.prompt(CHANNEL, mira, cast, history, "Ann")
    assert before.window_start > 0  # the history is larger than the context
    assert before.n_tokens > engine.models.prompts.budget * 0.6  # and the window is filled
    first = engine.scene.windows[(CHANNEL, "mira")].first_id
    reply = "Sure 0." if not long else "Reply: *Mira nods and turns the lamp down.*"
    bound = engine.models.prompts.recall_tokens + 60
    for turn in range(6):
        await say(engine.store, "Mira", reply)
        await say(engine.store, "Ann", f"and the harbour {turn}?" if long else f"ok {turn}")
        history = await engine.scene.history(CHANNEL, cast)
        assert history[0].id == first  # the turn reads the window's lines, not the newest n_ctx
        built = await engine.composer.prompt(CHANNEL, mira, cast, history, "Ann")
        read = read_tokens(model, before.text, reply, built.text)
        assert read <= bound, (turn, read, built.n_tokens)
        assert engine.scene.windows[(CHANNEL, "mira")].first_id == first
        before = built


async def test_recall_puts_the_matching_earlier_line_after_the_history(
    engine: Engine, model: LlamaBackend
) -> None:
    """A fact said long before the window is found by its words and shown with who said it, in a
    bounded slot after the history; lines inside the window are not repeated there."""
    sized(engine, model, 2048)
    await say(engine.store, "Sam", "I hid the silver key under the blue vase in the library.")
    await seed(engine.store, 600, long=True)
    await say(engine.store, "Sam", "Where did I hide the silver key?")
    mira = engine.personas.load("mira")
    history = await engine.scene.history(CHANNEL, [mira])
    built = await engine.composer.prompt(CHANNEL, mira, [mira], history, "Sam")
    assert "I hid the silver key" not in "".join(m["content"] for m in built.messages[2:-2])
    recall = built.messages[-1]
    assert recall["role"] == "system" and recall["content"].startswith(RECALL_HEADING)
    assert "Sam: I hid the silver key under the blue vase in the library." in recall["content"]
    assert "Where did I hide" not in recall["content"]  # the question itself is in the window
    assert len(model.tokenize(recall["content"])) <= engine.models.prompts.recall_tokens + 12
    # Memory off: no recalled lines, the window alone.
    sized(engine, model, 2048, MemoryConfig(enabled=False))
    engine.scene.windows.clear()
    built = await engine.composer.prompt(CHANNEL, mira, [mira], history, "Sam")
    assert RECALL_HEADING not in built.text


def test_the_search_reads_the_members_words_as_words_never_as_query_syntax() -> None:
    query = match_query('the "key" OR NEAR(vase*, 3) -- where is it?')
    assert all(part.startswith('"') and part.endswith('"') for part in query.split(" OR "))
    assert set(query.replace('"', "").split(" OR ")) == {"key", "near", "vase"}
    assert match_query("is it? a, an, the") == ""


async def test_a_hostile_search_is_searched_for_not_run(engine: Engine) -> None:
    await say(engine.store, "Sam", 'the "vault" code is NEAR(7, 3) and col:umn * ^')
    found = await engine.store.recall(
        CHANNEL, ["mira"], match_words('what was "vault" NEAR(7, 3) col:umn * ^'), 1 << 62, 4
    )
    assert [m.content for m in found] == ['the "vault" code is NEAR(7, 3) and col:umn * ^']


async def test_edits_and_deletes_change_what_is_recalled(engine: Engine) -> None:
    store = engine.store
    row = await store.add_message(
        CHANNEL,
        role="user",
        author_name="Sam",
        content="The treasure is in the lighthouse.",
        persona="mira",
        discord_id=555,
    )
    assert [m.id for m in await store.recall(CHANNEL, ["mira"], match_words("treasure"), row + 1, 4)] == [row]
    await engine.admin.message_edited(555, "The gold is in the cellar.")
    assert await store.recall(CHANNEL, ["mira"], match_words("treasure"), row + 1, 4) == []
    assert [m.id for m in await store.recall(CHANNEL, ["mira"], match_words("cellar"), row + 1, 4)] == [row]
    await engine.admin.message_deleted(555)
    assert await store.recall(CHANNEL, ["mira"], match_words("cellar"), row + 1, 4) == []
    assert await store.index_holds('"cellar" OR "treasure"') == 0


async def test_recall_stays_inside_the_channel_and_its_cast(engine: Engine) -> None:
    await say(engine.store, "Sam", "The password is periwinkle.", channel=99)
    await engine.store.add_message(
        CHANNEL, role="user", author_name="Sam", content="periwinkle, with rook", persona="rook"
    )
    assert await engine.store.recall(CHANNEL, ["mira"], match_words("periwinkle"), 1 << 62, 4) == []


async def test_forget_me_leaves_no_word_in_history_index_summaries_or_prompt(
    engine: Engine, model: LlamaBackend
) -> None:
    """A member's /forget-me: their lines, the index entries, their lines' embeddings, their notes and every
    summary that read them are gone; the next prompt and /memory show hold none of their words, and
    neither does the database file (nor the embeddings' bytes)."""
    sized(engine, model, 2048, dataclasses.replace(engine.config.memory, meaning=True))
    store, memory = engine.store, engine.models.memory
    memory.start()
    await memory.note_server(CHANNEL, 1)
    zed = await say(store, "Zed", "My secret name is Quillfeather and I live at Marrowgate.", author_id=42)
    await engine.admin.correct_member_notes(1, 42, "- Zed's secret name is Quillfeather, of Marrowgate")
    await seed(store, 400, long=True)
    memory.meaning.wake()
    await memory.meaning.idle.wait()
    [vector] = [blob for row, blob in await store.vectors_of(CHANNEL) if row == zed]
    history = await store.history(CHANNEL, ["mira"], 50)
    base = None
    assert await store.put_summary(
        CHANNEL, "mira", "Zed said he is Quillfeather of Marrowgate.", history[:5], base
    )
    await say(store, "Sam", "Who is Quillfeather? Marrowgate?", author_id=43)
    mira = engine.personas.load("mira")
    history = await engine.scene.history(CHANNEL, [mira])
    built = await engine.composer.prompt(CHANNEL, mira, [mira], history, "Sam")
    assert "Zed: My secret name is Quillfeather" in built.text  # recalled...
    assert "Zed said he is Quillfeather" in built.text  # ...and summarised

    # The model holds an evaluated conversation with the member's words (this channel's, in its slot).
    warm = model.generate(built.text, max_tokens=1, session="with the words")
    async for _chunk in warm.chunks():
        pass
    async for _chunk in model.generate("Hello", max_tokens=1, session="another").chunks():
        pass

    def kept() -> list[object]:  # contexts kept: in reply slots, and saved aside in RAM
        return [slot.session for slot in model._loop.slots if slot.tokens] + list(model._sessions._saved)

    assert "with the words" in kept()
    assert await engine.admin.forget_member(42, [CHANNEL]) == 1
    assert kept() == [] and model._llm.n_tokens == 0  # no kept context holds them
    assert await store.index_holds('"quillfeather" OR "marrowgate"') == 1  # Sam's own question only
    assert await store.summaries_of(CHANNEL) == {}
    history = await engine.scene.history(CHANNEL, [mira])
    built = await engine.composer.prompt(CHANNEL, mira, [mira], history, "Sam")
    assert "My secret name" not in built.text and "Zed said" not in built.text
    view = await engine.admin.memory(CHANNEL)
    assert all("secret name" not in m.content for m in view.recalled) and view.summaries == {}
    await store.give_back_space()
    raw = Path(store.path).read_bytes() + _wal(Path(store.path))
    assert b"My secret name" not in raw and b"he is Quillfeather" not in raw
    assert b"secret name is Quillfeather, of" not in raw and vector[:96] not in raw
    assert await engine.admin.member_notes(1, 42) == (None, True)
    assert await store._rows("SELECT id FROM message_vectors WHERE id = ?", (zed,)) == []


def _wal(path: Path) -> bytes:
    wal = path.with_name(path.name + "-wal")
    return wal.read_bytes() if wal.exists() else b""


async def test_a_summary_written_from_an_erased_line_is_not_kept(engine: Engine) -> None:
    """The summariser read a line, a member erased it while the model wrote: the summary is refused."""
    store = engine.store
    await say(store, "Zed", "I buried the map by the old mill.", author_id=42)
    lines = await store.history(CHANNEL, ["mira"], 10)
    await engine.admin.forget_member(42, [CHANNEL])
    assert not await store.put_summary(CHANNEL, "mira", "Zed buried a map by the mill.", lines, None)
    assert await store.summary(CHANNEL, "mira") is None


async def test_an_admins_summary_is_kept_and_the_model_does_not_overwrite_it(engine: Engine) -> None:
    store = engine.store
    await say(store, "Sam", "We sailed to Karsk.")
    lines = await store.history(CHANNEL, ["mira"], 10)
    assert await store.put_summary(CHANNEL, "mira", "They sailed north.", lines, None)
    old = await store.summary(CHANNEL, "mira")
    persona = await engine.admin.edit_summary(CHANNEL, "They sailed to Karsk, not north.")
    assert persona.slug == "mira"
    kept = await store.summary(CHANNEL, "mira")
    assert kept is not None and kept.edited and kept.text == "They sailed to Karsk, not north."
    await say(store, "Sam", "Then to Vell.")
    newer = await store.history(CHANNEL, ["mira"], 10)
    assert not await store.put_summary(CHANNEL, "mira", "model text", newer, old)
    assert not await store.put_summary(CHANNEL, "mira", "model text", newer, kept)  # edited: kept as is
    await engine.admin.edit_summary(CHANNEL, "")
    assert await store.summary(CHANNEL, "mira") is None  # the model summarises again


async def test_pins_are_in_every_prompt_within_their_budget(engine: Engine, model: LlamaBackend) -> None:
    sized(engine, model, 2048)
    await engine.admin.pin(CHANNEL, "Sam is the captain of the Aurora.")
    await engine.admin.pin(CHANNEL, "The crew  never\nsails on Sundays.")
    await say(engine.store, "Sam", "Hello.")
    mira = engine.personas.load("mira")
    history = await engine.scene.history(CHANNEL, [mira])
    built = await engine.composer.prompt(CHANNEL, mira, [mira], history, "Sam")
    head = built.messages[0]["content"]
    assert (
        "Facts to remember:\n- Sam is the captain of the Aurora.\n- The crew never sails on Sundays." in head
    )
    pins = await engine.admin.unpin(CHANNEL, 1)
    assert [p.text for p in pins] == ["The crew never sails on Sundays."]
    with pytest.raises(InputError, match="no pinned fact 5"):
        await engine.admin.unpin(CHANNEL, 5)
    with pytest.raises(InputError, match="empty"):
        await engine.admin.pin(CHANNEL, "  \n ")
    with pytest.raises(InputError, match="at most 300"):
        await engine.admin.pin(CHANNEL, "x" * 301)
    for n in range(engine.config.memory.max_pins - 1):
        await engine.admin.pin(CHANNEL, f"fact {n}")
    with pytest.raises(InputError, match="max_pins"):
        await engine.admin.pin(CHANNEL, "one too many")
    # Within their budget: not every one of twenty facts fits in the pinned slot of a 2k context.
    engine.scene.windows.clear()
    built = await engine.composer.prompt(CHANNEL, mira, [mira], history, "Sam")
    shown = built.messages[0]["content"].split("Facts to remember:\n")[1]
    assert len(model.tokenize(shown.split("\n\n")[0])) <= engine.models.prompts.pinned_tokens


async def test_a_move_that_shows_a_newer_summary_places_the_window_for_it(
    engine: Engine, model: LlamaBackend
) -> None:
    """The window moved with the summary it had, then shows the newer stored one: it is placed again for
    that summary's size, where a fresh placement with it would start (so it fills what a move fills)."""
    store = engine.store
    mira, history, _ = await placed_window(engine, model)
    window = engine.scene.windows[(CHANNEL, "mira")]
    older = await store.lines_between(CHANNEL, ["mira"], 0, window.first_id, 10)
    await engine.models.memory.summariser.idle.wait()
    summary = " ".join(["The fog came in over the harbour while Ann and Mira watched the bells."] * 6)
    assert await store.put_summary(CHANNEL, "mira", summary, older, None)
    for i in range(40):  # enough new lines to move the window
        await say(store, "Ann", f"New line {i}: the fog rolls over the harbour and the bells ring again.")
    history = await engine.scene.history(CHANNEL, [mira])
    moved = await engine.composer.prompt(CHANNEL, mira, [mira], history, "Ann")
    start = engine.scene.windows[(CHANNEL, "mira")].first_id
    assert start != window.first_id and "Story so far:\nThe fog came in" in moved.messages[0]["content"]
    await engine.scene.forget_windows(CHANNEL)
    history = await engine.scene.history(CHANNEL, [mira])
    await engine.composer.prompt(CHANNEL, mira, [mira], history, "Ann")
    assert engine.scene.windows[(CHANNEL, "mira")].first_id == start
    # A shorter summary next, shown at the first move: the old start would fit the budget again with it,
    # but a move fills to its mark, as a fresh placement does.
    older = await store.lines_between(CHANNEL, ["mira"], 0, start, 10)
    await engine.models.memory.summariser.idle.wait()
    assert await store.put_summary(CHANNEL, "mira", "Fog.", older, await store.summary(CHANNEL, "mira"))
    for i in range(200):
        await say(store, "Ann", f"Newer line {i}: the fog rolls over the harbour and the bells ring again.")
        history = await engine.scene.history(CHANNEL, [mira])
        await engine.composer.prompt(CHANNEL, mira, [mira], history, "Ann")
        if engine.scene.windows[(CHANNEL, "mira")].summary == "Fog.":
            break
    start = engine.scene.windows[(CHANNEL, "mira")].first_id
    await engine.scene.forget_windows(CHANNEL)
    history = await engine.scene.history(CHANNEL, [mira])
    await engine.composer.prompt(CHANNEL, mira, [mira], history, "Ann")
    assert engine.scene.windows[(CHANNEL, "mira")].first_id == start


async def test_a_restart_starts_the_window_where_it_was(
    engine: Engine, model: LlamaBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the window starts is kept in the database: after a restart the first turn's prompt is the
    one before it, without a search of the history for a start that fits (a render per search step)."""
    mira, history, _ = await placed_window(engine, model)
    before = await engine.composer.prompt(CHANNEL, mira, [mira], history, "Ann")
    searches = []
    search = PromptBuilder._first_fitting
    monkeypatch.setattr(PromptBuilder, "_first_fitting", lambda *a: searches.append(a) or search(*a))
    restarted = Engine(engine.config, engine.store, model, engine.personas)
    try:
        sized(restarted, model, 2048)
        history = await restarted.scene.history(CHANNEL, [mira])
        after = await restarted.composer.prompt(CHANNEL, mira, [mira], history, "Ann")
        assert after.text == before.text and searches == []
        await restarted.admin.reset(CHANNEL)
        kept = await engine.store._row("SELECT COUNT(*) FROM prompt_windows WHERE channel_id = ?", (CHANNEL,))
        assert kept is not None and kept[0] == 0  # a new story: no start kept for it
    finally:
        await restarted.close()


async def test_reset_takes_the_memory_with_the_history(engine: Engine) -> None:
    store = engine.store
    await say(store, "Sam", "Remember the lantern.")
    lines = await store.history(CHANNEL, ["mira"], 10)
    await store.put_summary(CHANNEL, "mira", "Sam spoke of a lantern.", lines, None)
    await engine.admin.pin(CHANNEL, "The lantern is red.")
    await engine.admin.reset(CHANNEL)
    view = await engine.admin.memory(CHANNEL)
    assert view.summaries == {} and view.pins == [] and await store.index_holds('"lantern"') == 0


async def test_the_window_keeps_its_summary_until_it_moves(engine: Engine, model: LlamaBackend) -> None:
    """A summary that lands between two turns waits for the window's next move (the prefix stays); an
    erasure shows the stored one at once."""
    store = engine.store
    mira, history, first = await placed_window(engine, model)
    window = engine.scene.windows[(CHANNEL, "mira")]
    older = await store.lines_between(CHANNEL, ["mira"], 0, window.first_id, 10)
    await engine.models.memory.summariser.idle.wait()
    await store.edit_summary(CHANNEL, "mira", "", 0)
    assert await store.put_summary(CHANNEL, "mira", "The harbour was foggy.", older, None)
    again = await engine.composer.prompt(CHANNEL, mira, [mira], history, "Ann")
    assert again.text == first.text  # the same window, the same summary: the prefix is kept
    engine.scene.erased()
    shown = await engine.composer.prompt(CHANNEL, mira, [mira], history, "Ann")
    assert "Story so far:\nThe harbour was foggy." in shown.messages[0]["content"]


async def test_a_large_erase_lets_other_channels_work_between_its_batches(engine: Engine) -> None:
    """/forget-me of a big channel runs in short transactions: another channel's message is stored
    while it is still going, instead of after it."""
    store = engine.store
    await store._db.executemany(
        "INSERT INTO messages (channel_id, author_id, author_name, role, content, persona, created_at)"
        " VALUES (?, 42, 'Zed', 'user', ?, 'mira', 0)",
        [(CHANNEL, f"line {i} of the long story") for i in range(20_000)],
    )
    erase = asyncio.create_task(engine.admin.forget_member(42, [CHANNEL]))
    await asyncio.sleep(0)
    await say(store, "Sam", "hello from another channel", channel=8)
    assert await store.count_messages(CHANNEL) > 10_000  # stored while most of the erase is still to do
    assert await erase == 20_000
    assert await store.count_messages(CHANNEL) == 0 and await store.count_messages(8) == 1


async def test_space_is_given_back_after_deletes(engine: Engine) -> None:
    store = engine.store
    await store._db.executemany(
        "INSERT INTO messages (channel_id, author_name, role, content, persona, created_at)"
        " VALUES (?, 'Ann', 'user', ?, 'mira', 0)",
        [(CHANNEL, "a long line of the story that takes room " * 8) for _ in range(5000)],
    )
    await store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    full = Path(store.path).stat().st_size
    await engine.admin.reset(CHANNEL)
    # The rows' pages go back; the full-text index keeps its delete markers until it merges itself.
    assert Path(store.path).stat().st_size < full / 3


async def test_the_model_summarises_what_left_the_window_in_the_background(
    engine: Engine, model: LlamaBackend
) -> None:
    """The window moved: the lines before it are summarised by the real model, kept with the last line
    they cover, and the window's next move shows the summary in the head."""
    sized(
        engine,
        model,
        1024,
        MemoryConfig(summary_tokens=48, recall_tokens=64, pinned_tokens=32, members=False),
    )
    await seed(engine.store, 80, long=True)
    mira = engine.personas.load("mira")
    history = await engine.scene.history(CHANNEL, [mira])
    await engine.composer.prompt(CHANNEL, mira, [mira], history, "Ann")
    first = engine.scene.windows[(CHANNEL, "mira")].first_id
    await engine.models.memory.summariser.idle.wait()
    summary = await engine.store.summary(CHANNEL, "mira")
    older = await engine.store.lines_between(CHANNEL, ["mira"], 0, first, 1000)
    assert summary is not None and summary.text.strip() and not summary.edited
    assert summary.through_id == older[-1].id  # every line before the window, and none in it
    engine.scene.windows.clear()  # the window moves (here: is placed again)
    built = await engine.composer.prompt(CHANNEL, mira, [mira], history, "Ann")
    assert f"Story so far:\n{summary.text[:40]}" in built.messages[0]["content"]


class Interrupted(Scripted):
    """The real model, writing the given summaries; a reply starts waiting for it after the first
    chunk of the first one."""

    def __init__(self, model: LlamaBackend, replies: list[str]) -> None:
        super().__init__(model, replies, chunk=4)
        self.waiting = 0
        self.interrupt = True

    @property
    def pending(self) -> int:
        return self.waiting

    def generate(self, prompt: str, **kwargs: object):  # type: ignore[override]
        generation = super().generate(prompt, **kwargs)  # type: ignore[arg-type]
        inner = generation.chunks

        async def chunks():
            self.waiting = 1  # this summary itself
            try:
                async for chunk in inner():
                    yield chunk
                    if self.interrupt:
                        self.interrupt, self.waiting = False, 2  # a reply is queued behind it
            finally:
                self.waiting = 0  # the summary left the model (and the reply was served)

        generation.chunks = chunks
        return generation


async def test_a_summary_gives_way_to_a_reply_and_is_written_again_after(
    engine: Engine, model: LlamaBackend
) -> None:
    scripted = Interrupted(model, ["Ann watched the fog for hours.", "Ann watched the fog all night."])
    engine.llm = scripted
    sized(
        engine,
        model,
        1024,
        MemoryConfig(summary_tokens=48, recall_tokens=64, pinned_tokens=32, members=False),
    )
    await seed(engine.store, 60, long=True)
    mira = engine.personas.load("mira")
    history = await engine.scene.history(CHANNEL, [mira])
    summariser = engine.models.memory.summariser
    await engine.composer.prompt(CHANNEL, mira, [mira], history, "Ann")
    await summariser.idle.wait()
    summary = await engine.store.summary(CHANNEL, "mira")
    # The first summary was abandoned at its first chunk (a reply waited); the second was kept.
    assert len(scripted.prompts) == 2
    assert summary is not None and summary.text == "Ann watched the fog all night."


# -- rules around memory that users rely on ------------------------------------------------------------


async def test_a_summary_whose_base_an_erasure_dropped_is_not_kept(engine: Engine) -> None:
    """The model extends summary S while a member erases a line S had read (which drops S): the new
    summary, built on S's words, is refused, though every line it read itself is still there."""
    store = engine.store
    await say(store, "Zed", "My sister is called Orlaith.", author_id=42)
    await say(store, "Sam", "We reached the pass.")
    first = await store.history(CHANNEL, ["mira"], 10)
    assert await store.put_summary(CHANNEL, "mira", "Zed's sister is Orlaith.", first[:1], None)
    base = await store.summary(CHANNEL, "mira")
    await say(store, "Sam", "Then the valley.")
    newer = (await store.history(CHANNEL, ["mira"], 10))[1:]  # Sam's lines only: none is erased
    await engine.admin.forget_member(42, [CHANNEL])
    assert await store.summary(CHANNEL, "mira") is None  # the erasure dropped the base
    assert not await store.put_summary(CHANNEL, "mira", "Orlaith's brother crossed the pass.", newer, base)
    assert await store.summary(CHANNEL, "mira") is None


async def test_erasing_exactly_the_last_line_a_summary_read_drops_it(engine: Engine) -> None:
    store = engine.store
    await say(store, "Sam", "The pass was cold.")
    last = await say(store, "Zed", "I hid the key under the third stone.", author_id=42)
    await say(store, "Sam", "And then?")
    read = [m for m in await store.history(CHANNEL, ["mira"], 10) if m.id <= last]  # through Zed's line
    assert await store.put_summary(CHANNEL, "mira", "Zed hid a key under the third stone.", read, None)
    assert (await store.summary(CHANNEL, "mira")).through_id == last  # type: ignore[union-attr]
    await engine.admin.forget_member(42, [CHANNEL])
    assert await store.summary(CHANNEL, "mira") is None


def test_a_long_message_is_searched_by_its_rarest_words() -> None:
    """A long message keeps MAX_TERMS words: the longer (rarer) ones, names among them, not the first
    or shortest ones."""
    text = (
        "ok so the crimson lantern flickered beside quiet harbour stones while seven gulls circled grimly"
        " overhead; ask Quillfeather about Marrowgate tomorrow, bye"
    )
    query = match_query(text)
    assert query.count(" OR ") == 11  # MAX_TERMS words of the 17 it has
    assert '"quillfeather"' in query and '"marrowgate"' in query and '"tomorrow"' in query
    assert not any(f'"{short}"' in query for short in ("ask", "bye", "gulls", "quiet"))


async def test_an_admins_corrected_summary_is_in_the_very_next_prompt(
    engine: Engine, model: LlamaBackend
) -> None:
    mira, history, _ = await placed_window(engine, model)
    window = engine.scene.windows[(CHANNEL, "mira")]
    await engine.models.memory.summariser.idle.wait()
    await engine.admin.edit_summary(CHANNEL, "The harbour town is called Westreach.")
    built = await engine.composer.prompt(CHANNEL, mira, [mira], history, "Ann")
    assert engine.scene.windows[(CHANNEL, "mira")].first_id == window.first_id  # the window did not move
    assert "Story so far:\nThe harbour town is called Westreach." in built.messages[0]["content"]


@pytest.mark.parametrize("number", [0, -1, -20])
async def test_unpin_refuses_numbers_no_pin_has(engine: Engine, number: int) -> None:
    await engine.admin.pin(CHANNEL, "The first fact.")
    await engine.admin.pin(CHANNEL, "The last fact.")
    with pytest.raises(InputError, match=f"no pinned fact {number}"):
        await engine.admin.unpin(CHANNEL, number)
    assert [p.text for p in (await engine.admin.memory(CHANNEL)).pins] == [
        "The first fact.",
        "The last fact.",
    ]


async def test_pinned_facts_take_at_most_an_eighth_of_the_prompt(engine: Engine, model: LlamaBackend) -> None:
    """Whatever memory.pinned_tokens says, the pins' slot is capped at 1/8 of the prompt budget."""
    generous = dataclasses.replace(engine.config.memory, pinned_tokens=8192, max_pins=200)
    sized(engine, model, 2048, generous)
    cap = engine.models.prompts.budget // 8
    assert engine.models.prompts.pinned_tokens == cap
    for n in range(60):
        await engine.admin.pin(CHANNEL, f"Fact {n}: the lighthouse keeper's ledger lists ship number {n}.")
    await say(engine.store, "Sam", "Hello.")
    mira = engine.personas.load("mira")
    history = await engine.scene.history(CHANNEL, [mira])
    built = await engine.composer.prompt(CHANNEL, mira, [mira], history, "Sam")
    shown = built.messages[0]["content"].split("Facts to remember:\n")[1].split("\n\n")[0]
    assert 0 < len(model.tokenize(shown)) <= cap
