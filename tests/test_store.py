from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bot.errors import StoreError
from bot.store import SCHEMA_VERSION, RenderRecord, Store


@pytest.fixture
async def store(tmp_path: Path):
    s = await Store.open(tmp_path / "db" / "bot.sqlite3")
    yield s
    await s.close()


async def test_schema_version_and_pragmas(store: Store) -> None:
    raw = sqlite3.connect(store.path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_history_is_per_channel_and_per_persona_in_order(store: Store) -> None:
    await store.add_message(1, role="user", author_name="Ann", content="one", persona="mira", author_id=5)
    await store.add_message(2, role="user", author_name="Bob", content="other channel", persona="mira")
    await store.add_message(
        1, role="assistant", author_name="Mira", content="two", persona="mira", emotion="joy"
    )
    await store.add_message(1, role="user", author_name="Ann", content="to someone else", persona="rook")
    history = await store.history(1, "mira")
    assert [(m.role, m.content, m.emotion) for m in history] == [
        ("user", "one", None),
        ("assistant", "two", "joy"),
    ]
    assert history[0].author_id == 5 and history[0].author_name == "Ann"
    assert [m.content for m in await store.history(1, "mira", limit=1)] == ["two"]


async def test_edits_deletions_and_clear(store: Store) -> None:
    await store.add_message(1, role="user", author_name="Ann", content="helo", persona="mira", discord_id=111)
    await store.add_message(1, role="user", author_name="Ann", content="oops", persona="mira", discord_id=112)
    assert await store.edit_message(111, "hello")
    assert await store.delete_message(112)
    assert not await store.edit_message(999, "never stored")
    history = await store.history(1, "mira")
    assert [m.content for m in history] == ["hello"] and history[0].edited_at is not None
    assert await store.clear_channel(1) == 1
    assert await store.history(1, "mira") == []


async def test_channel_state_upserts(store: Store) -> None:
    assert (await store.channel(7)).persona is None
    await store.update_channel(7, persona="mira", enabled=True)
    await store.update_channel(7, mode="all")
    state = await store.channel(7)
    assert (state.persona, state.enabled, state.mode) == ("mira", True, "all")
    with pytest.raises(ValueError):
        await store.update_channel(7, bogus=1)


async def test_history_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    first = await Store.open(path)
    await first.add_message(3, role="user", author_name="Ann", content="remember me", persona="mira")
    await first.close()
    second = await Store.open(path)
    assert [m.content for m in await second.history(3, "mira")] == ["remember me"]
    await second.close()


async def test_concurrent_writers_do_not_interleave_transactions(store: Store) -> None:
    await asyncio.gather(
        *(
            store.add_message(c, role="user", author_name="x", content=str(i), persona="mira")
            for i in range(40)
            for c in (1, 2)
        )
    )
    assert await store.count_messages() == 80


async def test_failed_write_rolls_back(store: Store) -> None:
    with pytest.raises(StoreError, match=r"refused the request .*CHECK constraint"):
        await store.add_message(1, role="narrator", author_name="x", content="bad role", persona="mira")  # type: ignore[arg-type]
    await store.add_message(1, role="user", author_name="x", content="fine", persona="mira")
    assert await store.count_messages(1) == 1


async def test_render_index_and_stale_renders(store: Store) -> None:
    await store.put_render(RenderRecord("k1", "mira", "joy", 0, "a.png", "old"))
    await store.put_render(RenderRecord("k2", "mira", "joy", 0, "b.png", "new"))
    stale = await store.drop_stale_renders("mira", "new")
    assert [r.key for r in stale] == ["k1"]
    assert await store.render("k1") is None and (await store.render("k2")).path == "b.png"  # type: ignore[union-attr]


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    raw.close()
    with pytest.raises(StoreError, match="newer than this bot"):
        await Store.open(path)


async def test_a_version_1_database_upgrades_with_its_history(tmp_path: Path) -> None:
    """A database written before casts existed (schema 1) opens, migrates, and keeps every message; its
    replies get no versions until regenerated."""
    from bot.store import MIGRATIONS

    path = tmp_path / "old.sqlite3"
    raw = sqlite3.connect(path)
    raw.executescript(MIGRATIONS[0] + "\nPRAGMA user_version = 1;")
    raw.execute(
        "INSERT INTO messages (channel_id, discord_id, author_name, role, content, persona, created_at)"
        " VALUES (1, 77, 'Mira', 'assistant', 'Hello.', 'mira', 0)"
    )
    raw.commit()
    raw.close()
    store = await Store.open(path)
    try:
        [message] = await store.history(1, "mira")
        assert (message.content, message.version, message.prompt_id) == ("Hello.", 0, None)
        assert await store.versions(message.id) == []
        assert await store.add_version(message.id, "Hi there.", "joy") == 1
        assert [v.content for v in await store.versions(message.id)] == ["Hello.", "Hi there."]
        assert await store.cast_members(1) == []
    finally:
        await store.close()


async def _fail_on(store: Store, event: str, when: str = "1") -> None:
    """Make a statement of the store's next writes fail, as a full disk or an I/O error would: a trigger
    created through a second connection to the same file."""
    with sqlite3.connect(store.path) as raw:
        raw.execute("DROP TRIGGER IF EXISTS fail")
        raw.execute(f"CREATE TRIGGER fail BEFORE {event} WHEN {when} BEGIN SELECT RAISE(ABORT, 'I/O'); END")
    await _see_schema(store)


async def _no_failures(store: Store) -> None:
    with sqlite3.connect(store.path) as raw:
        raw.execute("DROP TRIGGER IF EXISTS fail")
    await _see_schema(store)


async def _see_schema(store: Store) -> None:
    """The store reads once, so its connection loads the schema the second connection changed: SQLite
    3.40 fails the first write prepared against a schema another connection changed ("no such table:
    messages"), which the bot, its file's only writer, never meets."""
    await store.count_messages(0)


async def test_every_multi_statement_write_is_one_transaction(store: Store) -> None:
    """A write whose last statement fails leaves nothing of its first ones behind."""
    ask = await store.add_message(1, role="user", author_name="Ann", content="hi", persona="mira")
    reply = await store.add_message(
        1, role="assistant", author_name="Mira", content="first", persona="mira", emotion="joy", prompt_id=ask
    )

    # A new version: the original filed as version 0, the new one added, the message updated.
    await _fail_on(store, "UPDATE ON messages")
    with pytest.raises(StoreError, match="refused"):
        await store.add_version(reply, "second", "sadness")
    assert await store.versions(reply) == []
    stored = await store.message(reply)
    assert stored is not None and (stored.content, stored.version) == ("first", 0)

    # A face chosen by hand: the message and its version row together.
    await _no_failures(store)
    await store.add_version(reply, "second", "sadness")
    await _fail_on(store, "UPDATE ON reply_versions")
    with pytest.raises(StoreError, match="refused"):
        await store.set_emotion(reply, "anger")
    assert (await store.message(reply)).emotion == "sadness"  # type: ignore[union-attr]

    # The lead leaving the cast: the member taken out, the channel's lead set, the lines refiled.
    await _no_failures(store)
    await store.add_cast_member(1, "rook")
    await _fail_on(store, "UPDATE ON messages")
    with pytest.raises(StoreError, match="refused"):
        await store.hand_lead(1, "mira", "rook")
    assert [m.persona for m in await store.cast_members(1)] == ["rook"]
    assert (await store.channel(1)).persona is None
    assert [m.content for m in await store.history(1, "mira")] == ["hi", "second"]

    # A purge larger than one statement's bound: all of it, or none of it.
    await _no_failures(store)
    for n in range(1, 701):
        await store.add_message(2, role="user", author_name="B", content=f"{n}", persona="mira", discord_id=n)
    await _fail_on(store, "DELETE ON messages", "old.discord_id = 650")  # in the second statement
    with pytest.raises(StoreError, match="refused"):
        await store.delete_messages(frozenset(range(1, 701)))
    assert await store.count_messages(2) == 700
    await _no_failures(store)
    assert await store.delete_messages(frozenset(range(1, 701))) == 700


def _on_disk(path: Path) -> bytes:
    """The database file and its write-ahead log, as a backup or a disk image would copy them."""
    wal = Path(f"{path}-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


@pytest.mark.parametrize("how", ["forget", "delete", "reset"])
async def test_erased_words_leave_the_file_and_its_log_at_once(store: Store, how: str) -> None:
    """Two lines erased (far too few to fill the log and set off a checkpoint): neither the database
    nor its write-ahead log holds them afterwards, while the bot still runs."""
    secrets = ["My bank PIN is 4417-Quillfeather.", "I live at 9 Marrowgate Lane."]
    for n, text in enumerate(secrets):
        await store.add_message(
            1, role="user", author_name="Zed", content=text, persona="mira", author_id=42, discord_id=900 + n
        )
    await store.add_message(1, role="user", author_name="Sam", content="Sam stays.", persona="mira")
    assert all(s.encode() in _on_disk(store.path) for s in secrets)  # written: the check can see them
    if how == "forget":
        assert await store.forget_author(42, [1]) == 2
    elif how == "delete":
        assert await store.delete_messages({900, 901}) == 2
    else:
        assert await store.clear_channel(1) == 3
    raw = _on_disk(store.path)
    assert not any(s.encode() in raw for s in secrets)
    assert [m.content for m in await store.history(1, "mira")] == ([] if how == "reset" else ["Sam stays."])


async def test_the_outbox_files_a_posted_reply_in_one_step_and_drops_the_rest(store: Store) -> None:
    asked = await store.add_message(1, role="user", author_name="Ann", content="Hi", persona="mira")
    note = dict(persona="mira", author_name="Mira", emotion="joy", prompt_id=asked, answers=77)
    posted = await store.expect_reply(1, content="Hello, Ann.", **note)  # type: ignore[arg-type]
    lost = await store.expect_reply(1, content="Never posted.", **note)  # type: ignore[arg-type]
    assert [r.content for r in await store.unsent_replies()] == ["Hello, Ann.", "Never posted."]
    row = await store.file_reply(posted, 9001)
    assert row is not None and await store.file_reply(posted, 9001) is None  # filed once
    await store.drop_unsent(lost)
    assert await store.unsent_replies() == []
    filed = await store.message(row)
    assert filed is not None
    assert (filed.role, filed.content, filed.emotion, filed.discord_id) == (
        "assistant",
        "Hello, Ann.",
        "joy",
        9001,
    )
    assert (filed.persona, filed.author_name, filed.prompt_id) == ("mira", "Mira", asked)
    # A /reset takes what waits in the outbox with the history.
    await store.expect_reply(1, content="Mid-post when the channel was reset.", **note)  # type: ignore[arg-type]
    await store.clear_channel(1)
    assert await store.unsent_replies() == []


async def test_a_window_start_is_kept_while_its_line_is_stored(store: Store) -> None:
    first = await store.add_message(
        1, role="user", author_name="Ann", content="a", persona="mira", discord_id=5
    )
    second = await store.add_message(1, role="user", author_name="Ann", content="b", persona="mira")
    await store.add_message(2, role="user", author_name="Ann", content="c", persona="mira")
    assert await store.window_start(1, "mira") is None
    await store.save_window(1, "mira", first)
    await store.save_window(1, "rook", second)
    await store.save_window(2, "mira", first)  # not a line of channel 2: no start there
    assert await store.window_start(1, "mira") == first and await store.window_start(2, "mira") is None
    await store.delete_messages({5})  # its first line erased: placed again
    assert await store.window_start(1, "mira") is None
    await store.save_window(1, "mira", second)
    await store.forget_windows(1, "rook")
    assert (await store.window_start(1, "mira"), await store.window_start(1, "rook")) == (second, None)
    await store.forget_windows(1)
    assert await store.window_start(1, "mira") is None
