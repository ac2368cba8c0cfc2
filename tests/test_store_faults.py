"""The store fails clearly and loses nothing: a full disk, another program holding the write lock, the
file replaced under the bot, another program's SQLite file, a damaged schema. Each is one line naming the
file, what happened and what to do; committed rows stay; the chat goes on. A file deleted under the bot
is written back from the copy it still has open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import bot.store.schema as schema
from bot.errors import StoreError
from bot.store import Store

from .support.configs import write_config


async def _seeded(path: Path) -> Store:
    store = await Store.open(path)
    await store.add_message(1, role="user", author_name="Ann", content="kept", persona="mira")
    return store


async def _contents(store: Store, channel: int = 1) -> list[str]:
    return [m.content for m in await store.history(channel, "mira")]


async def test_a_full_disk_is_one_line_and_the_store_goes_on_after(tmp_path: Path) -> None:
    store = await _seeded(tmp_path / "bot.sqlite3")
    try:
        # The database may grow no further: SQLite's own disk-full path (SQLITE_FULL).
        async with store._db.execute("PRAGMA page_count") as cursor:
            pages = (await cursor.fetchone())[0]  # type: ignore[index]
        await store._db.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StoreError, match=r"bot\.sqlite3: the disk is full .*free some space"):
            await store.add_message(1, role="user", author_name="Ann", content="x" * 200_000, persona="mira")
        assert await _contents(store) == ["kept"]
        await store._db.execute("PRAGMA max_page_count = 1073741823")  # space freed
        await store.add_message(1, role="user", author_name="Ann", content="again", persona="mira")
        assert await _contents(store) == ["kept", "again"]
    finally:
        await store.close()


async def test_a_write_lock_held_elsewhere_is_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(schema, "BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "bot.sqlite3"
    store = await _seeded(path)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another program writing, and not letting go
        with pytest.raises(StoreError, match=r"another program has held the database's write lock"):
            await store.add_message(1, role="user", author_name="Ann", content="blocked", persona="mira")
        other.execute("ROLLBACK")
        await store.add_message(1, role="user", author_name="Ann", content="after", persona="mira")
        assert await _contents(store) == ["kept", "after"]
    finally:
        other.close()
        await store.close()


async def test_a_database_file_deleted_under_the_bot_is_written_back_whole(tmp_path: Path, caplog) -> None:
    """The bot still has the deleted file open: its next write puts the whole database back under the
    same name first, then goes on there; nothing it held is lost, and the log says what happened."""
    path = tmp_path / "data" / "bot.sqlite3"
    store = await _seeded(path)
    try:
        await store.add_message(1, role="assistant", author_name="Mira", content="in the log", persona="mira")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        path.parent.rmdir()  # the whole data folder, even
        await store.add_message(1, role="user", author_name="Ann", content="after", persona="mira")
        assert await _contents(store) == ["kept", "in the log", "after"]
        assert "was deleted while the bot ran; written back" in caplog.text
        # Deleted again: written back again (the file's new identity is the one watched).
        path.unlink()
        await store.add_message(1, role="user", author_name="Ann", content="again", persona="mira")
    finally:
        await store.close()
    with sqlite3.connect(path) as raw:  # on disk, for the next start, not only in the open copy
        rows = [r[0] for r in raw.execute("SELECT content FROM messages ORDER BY id")]
    assert rows == ["kept", "in the log", "after", "again"]
    assert not Path(f"{path}.restoring").exists()


async def test_a_database_file_replaced_under_the_bot_stops_writes_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    store = await _seeded(path)
    try:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        with sqlite3.connect(path) as other:  # another file now has the name: it is not overwritten
            other.execute("CREATE TABLE t (x)")
        for _ in range(2):  # and every write after, not only the first
            with pytest.raises(StoreError, match=r"the database file was replaced .*nothing more is saved"):
                await store.add_message(1, role="user", author_name="Ann", content="lost?", persona="mira")
        assert await _contents(store) == ["kept"]  # what it had is still readable
    finally:
        await store.close()
    with sqlite3.connect(path) as other:
        assert [r[0] for r in other.execute("SELECT name FROM sqlite_master")] == ["t"]


async def test_another_programs_sqlite_file_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite3"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    raw.execute("INSERT INTO notes (text) VALUES ('my notes')")
    raw.commit()
    raw.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"another program's SQLite database \(its tables: notes\)"):
        await Store.open(path)
    assert path.read_bytes() == before and not Path(f"{path}-wal").exists()  # not migrated, not WAL


async def test_a_damaged_schema_is_refused_at_open_and_named_when_it_breaks_later(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    await (await _seeded(path)).close()
    with sqlite3.connect(path) as raw:
        raw.execute("DROP TABLE messages")
    before = path.read_bytes()
    with pytest.raises(StoreError, match="damaged: table messages is missing"):
        await Store.open(path)
    assert path.read_bytes() == before
    # Broken while the bot runs: the next query says so in one line.
    other = tmp_path / "other.sqlite3"
    store = await _seeded(other)
    try:
        with sqlite3.connect(other) as raw:
            raw.execute("DROP TABLE cast_members")
        with pytest.raises(StoreError, match=r"damaged \(no such table: cast_members\)"):
            await store.cast_members(1)
    finally:
        await store.close()


@pytest.mark.slow
def test_the_terminal_chat_goes_on_after_its_database_is_deleted(tmp_path: Path) -> None:
    from .test_console import Chat

    config = write_config(tmp_path)
    chat = Chat(config)
    chat.type("Hello Mira.")
    chat.expect("judged by classifier)]")
    database = tmp_path / "data" / "test.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    chat.type("Are you still there?")
    out = chat.expect("judged by classifier)]")
    assert "Traceback" not in out and "[error: " not in out
    chat.type("/quit")
    assert chat.close() == 0
    with sqlite3.connect(database) as raw:  # written back, with the turns before and after
        said = [r[0] for r in raw.execute("SELECT content FROM messages WHERE role = 'user' ORDER BY id")]
    assert said == ["Hello Mira.", "Are you still there?"]


async def test_reads_go_on_while_a_deleted_database_is_written_back(tmp_path: Path) -> None:
    """Other channels keep reading while one write puts the deleted file back: no read meets a closed
    connection, and every read sees the whole history."""
    import asyncio

    path = tmp_path / "bot.sqlite3"
    store = await _seeded(path)
    try:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        write = asyncio.ensure_future(
            store.add_message(1, role="user", author_name="Ann", content="after", persona="mira")
        )
        seen = []
        while not write.done():
            seen.append(await _contents(store))
        await write
        assert seen and all(s in (["kept"], ["kept", "after"]) for s in seen)
        assert await _contents(store) == ["kept", "after"]
    finally:
        await store.close()
    with sqlite3.connect(path) as raw:
        assert [r[0] for r in raw.execute("SELECT content FROM messages ORDER BY id")] == ["kept", "after"]
