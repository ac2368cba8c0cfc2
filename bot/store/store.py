"""Chat history, channel state, the cast and the render index: the queries on the bot's one SQLite file.

One aiosqlite connection serves every task; every write is one transaction, so a crash or a cancelled
task never leaves half a turn behind. The file itself (checks, settings, migrations) is schema.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiosqlite

from bot.errors import StoreError
from bot.store.erasure import Erasure
from bot.store.members import MemberQueries
from bot.store.memory import MemoryQueries
from bot.store.outbox import OutboxQueries
from bot.store.presence import PresenceQueries
from bot.store.records import (
    MESSAGE_COLUMNS,
    CastMember,
    ChannelState,
    ReplyVersion,
    Role,
    StoredMessage,
)
from bot.store.renders import RenderQueries
from bot.store.schema import WriteBackFailed, connect, fault, write_back
from bot.store.vectors import VectorQueries

C = TypeVar("C", bound=type)
_log = logging.getLogger(__name__)

MAX_BOUND = 500  # ids bound in one statement: under SQLite's limit on parameters (999 in older builds)


def _chunks(ids: Sequence[int]) -> list[Sequence[int]]:
    return [ids[start : start + MAX_BOUND] for start in range(0, len(ids), MAX_BOUND)]


def _faults_are_store_errors(cls: C) -> C:
    """Every public query raises StoreError (one line naming the file, what happened and what to do)
    instead of a bare sqlite3 error: disk full, locked, I/O error, a damaged schema."""

    def guard(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(method)
        async def guarded(self: Store, *args: Any, **kwargs: Any) -> Any:
            try:
                return await method(self, *args, **kwargs)
            except sqlite3.Error as exc:
                raise fault(exc, self.path) from None

        return guarded

    for base in reversed(cls.__mro__[:-1]):  # the memory mixin's queries too
        for name, member in list(vars(base).items()):
            if inspect.iscoroutinefunction(member) and not name.startswith("_") and name != "close":
                setattr(cls, name, guard(member))
    return cls


@_faults_are_store_errors
class Store(
    MemoryQueries, VectorQueries, MemberQueries, PresenceQueries, RenderQueries, OutboxQueries, Erasure
):
    """The bot's database. Open with `await Store.open(path)`; close with `await store.close()`."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        # One connection is shared by every task; BEGIN..COMMIT must not interleave between them.
        self._write_lock = asyncio.Lock()
        # The file opened: a write checks it is still there, not deleted or replaced under the bot.
        self._identity = self._file_identity()
        self._lost: str | None = None  # why writes stopped, once the file went
        self._reads_open = asyncio.Event()  # cleared only while a deleted file is written back
        self._reads_open.set()

    def _file_identity(self) -> tuple[int, int] | None:
        if str(self.path) == ":memory:":
            return None
        try:
            stat = os.stat(self.path)
        except OSError:
            return (-1, -1)
        return (stat.st_dev, stat.st_ino)

    async def _check_file(self) -> None:
        """Before a write: the database file must still be the one opened. Deleted under the bot, it is
        written back from the copy the bot still has open (nothing it held is lost); replaced by another
        file, writes stop with one line: they would go to a file nobody sees, and the next start would
        find the other file."""
        if self._lost is None and self._identity is not None:
            now = self._file_identity()
            if now == (-1, -1):
                await self._write_back()
            elif now != self._identity:
                self._lost = "was replaced by another file while the bot ran"
        if self._lost is not None:
            raise StoreError(
                f"{self.path}: the database file {self._lost}; nothing more is saved: restart the bot"
                " (it starts a new history there), or put the file back first"
            )

    async def _write_back(self) -> None:
        """The file was deleted: put it back from the open connection (see `write_back`), reads waiting
        at the gate meanwhile, so that none meets a closed connection."""
        self._reads_open.clear()
        try:
            self._db = await write_back(self._db, self.path)
        except WriteBackFailed as exc:
            self._lost = f"was deleted while the bot ran and could not be written back ({exc.why})"
            if exc.reading is not None:
                self._db = exc.reading
            return
        finally:
            self._reads_open.set()
        self._identity = self._file_identity()
        _log.warning(
            "%s: the database file was deleted while the bot ran; written back from the copy the bot had"
            " open, with everything it held",
            self.path,
        )

    @classmethod
    async def open(cls, path: str | Path) -> Store:
        """Open (or create) the database; raises StoreError naming the file and the problem."""
        path = Path(path)
        return cls(await connect(path), path)

    async def close(self) -> None:
        await self._db.close()

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write_lock:
            await self._check_file()
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                await self._db.execute("COMMIT")  # a full disk may refuse it: rolled back below too
            except BaseException:
                # A rollback that fails as well (the disk is gone) must not hide the first error.
                with contextlib.suppress(sqlite3.Error):
                    await self._db.execute("ROLLBACK")
                raise

    # Reads run and fetch in one call on the connection's thread: a statement left open between two
    # calls would hold its pages, and the space given back after deletes would wait behind it.
    async def _rows(self, sql: str, params: Sequence[object] = ()) -> list[aiosqlite.Row]:
        if not self._reads_open.is_set():
            await self._reads_open.wait()
        return list(await self._db.execute_fetchall(sql, params))

    async def _row(self, sql: str, params: Sequence[object] = ()) -> aiosqlite.Row | None:
        rows = await self._rows(sql, params)
        return rows[0] if rows else None

    async def _write(self, sql: str, params: Sequence[object] = ()) -> aiosqlite.Cursor:
        async with self._transaction() as db:
            return await db.execute(sql, params)

    # -- messages ---------------------------------------------------------------------------------------

    async def add_message(
        self,
        channel_id: int,
        *,
        role: Role,
        author_name: str,
        content: str,
        persona: str,
        author_id: int | None = None,
        discord_id: int | None = None,
        emotion: str | None = None,
        prompt_id: int | None = None,
    ) -> int:
        """Store one message; returns its row id."""
        cursor = await self._write(
            "INSERT INTO messages (channel_id, discord_id, author_id, author_name, role, content, emotion,"
            " persona, created_at, prompt_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                channel_id,
                discord_id,
                author_id,
                author_name,
                role,
                content,
                emotion,
                persona,
                time.time(),
                prompt_id,
            ),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    async def history(
        self, channel_id: int, persona: str | Sequence[str], limit: int = 400
    ) -> list[StoredMessage]:
        """The channel's most recent messages with this persona (or any of these, a cast), oldest first."""
        personas = [persona] if isinstance(persona, str) else list(persona)
        marks = ",".join("?" * len(personas))
        rows = await self._rows(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE channel_id = ? AND persona IN ({marks})"
            " ORDER BY id DESC LIMIT ?",
            (channel_id, *personas, limit),
        )
        return [StoredMessage(**dict(row)) for row in reversed(list(rows))]

    async def message(self, row_id: int) -> StoredMessage | None:
        return await self._message_where("id", row_id)

    async def message_by_discord_id(self, discord_id: int) -> StoredMessage | None:
        return await self._message_where("discord_id", discord_id)

    async def _message_where(self, column: Literal["id", "discord_id"], value: int) -> StoredMessage | None:
        row = await self._row(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE {column} = ?", (value,))
        return StoredMessage(**dict(row)) if row else None

    # -- reply versions (regenerate) ----------------------------------------------------------------

    async def versions(self, row_id: int) -> list[ReplyVersion]:
        """Every version of a reply, oldest first; [] for one never regenerated."""
        rows = await self._rows(
            "SELECT version, content, emotion FROM reply_versions WHERE message_id = ? ORDER BY version",
            (row_id,),
        )
        return [ReplyVersion(row["version"], row["content"], row["emotion"]) for row in rows]

    async def add_version(self, row_id: int, content: str, emotion: str | None) -> int:
        """Replace a reply in the history by a new version; the earlier ones are kept aside (never in a
        prompt). Returns the new version's number."""
        now = time.time()
        async with self._transaction() as db:
            # The first regeneration files the original as version 0.
            await db.execute(
                "INSERT OR IGNORE INTO reply_versions (message_id, version, content, emotion, created_at)"
                " SELECT id, version, content, emotion, created_at FROM messages WHERE id = ?",
                (row_id,),
            )
            async with db.execute(
                "SELECT COALESCE(MAX(version), -1) + 1 FROM reply_versions WHERE message_id = ?", (row_id,)
            ) as cursor:
                row = await cursor.fetchone()
            version = int(row[0]) if row else 0
            await db.execute(
                "INSERT INTO reply_versions (message_id, version, content, emotion, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (row_id, version, content, emotion, now),
            )
            await db.execute(
                "UPDATE messages SET content = ?, emotion = ?, version = ?, edited_at = ? WHERE id = ?",
                (content, emotion, version, now, row_id),
            )
        return version

    async def show_version(self, row_id: int, version: int) -> ReplyVersion | None:
        """Make an earlier (or later) version the one in the history; None if there is no such version."""
        async with self._transaction() as db:
            async with db.execute(
                "SELECT version, content, emotion FROM reply_versions WHERE message_id = ? AND version = ?",
                (row_id, version),
            ) as cursor:
                row = await cursor.fetchone()
            if row is None:
                return None
            await db.execute(
                "UPDATE messages SET content = ?, emotion = ?, version = ?, edited_at = ? WHERE id = ?",
                (row["content"], row["emotion"], version, time.time(), row_id),
            )
        return ReplyVersion(row["version"], row["content"], row["emotion"])

    async def set_emotion(self, row_id: int, label: str) -> None:
        """A face chosen by hand for a reply (and for the version shown)."""
        async with self._transaction() as db:
            await db.execute("UPDATE messages SET emotion = ? WHERE id = ?", (label, row_id))
            await db.execute(
                "UPDATE reply_versions SET emotion = ? WHERE message_id = ?"
                " AND version = (SELECT version FROM messages WHERE id = ?)",
                (label, row_id, row_id),
            )

    async def set_discord_id(self, row_id: int, discord_id: int) -> None:
        await self._write("UPDATE messages SET discord_id = ? WHERE id = ?", (discord_id, row_id))

    async def edit_message(self, discord_id: int, content: str) -> bool:
        """Apply a Discord edit to the stored copy. False when the message was never stored."""
        cursor = await self._write(
            "UPDATE messages SET content = ?, edited_at = ? WHERE discord_id = ?",
            (content, time.time(), discord_id),
        )
        return cursor.rowcount > 0

    async def delete_message(self, discord_id: int) -> bool:
        return await self.delete_messages({discord_id}) > 0

    async def delete_messages(self, discord_ids: set[int] | frozenset[int]) -> int:
        """Forget many messages at once (a purge: at most 100 on Discord), all or none; returns how many
        were stored."""
        removed = 0
        async with self._transaction() as db:
            for chunk in _chunks(sorted(discord_ids)):
                marks = ",".join("?" * len(chunk))
                cursor = await db.execute(f"DELETE FROM messages WHERE discord_id IN ({marks})", chunk)
                removed += cursor.rowcount
        if removed:
            await self.give_back_space()
        return removed

    async def forget_author(self, author_id: int, channel_ids: list[int]) -> int:
        """Erase everything one member wrote in these channels; returns how many messages went."""
        removed = 0
        for chunk in _chunks(channel_ids):
            marks = ",".join("?" * len(chunk))
            removed += await self._erase(f"author_id = ? AND channel_id IN ({marks})", (author_id, *chunk))
        return removed

    async def count_by_author(self, author_id: int, channel_ids: list[int]) -> int:
        count = 0
        for chunk in _chunks(channel_ids):
            marks = ",".join("?" * len(chunk))
            row = await self._row(
                f"SELECT COUNT(*) FROM messages WHERE author_id = ? AND channel_id IN ({marks})",
                (author_id, *chunk),
            )
            count += int(row[0]) if row else 0
        return count

    async def clear_channel(self, channel_id: int) -> int:
        """Forget a channel's whole history; returns how many messages went."""
        await self._write("DELETE FROM outbox WHERE channel_id = ?", (channel_id,))
        return await self._erase("channel_id = ?", (channel_id,))

    async def count_messages(self, channel_id: int | None = None) -> int:
        sql, params = "SELECT COUNT(*) FROM messages", tuple[int, ...]()
        if channel_id is not None:
            sql, params = sql + " WHERE channel_id = ?", (channel_id,)
        row = await self._row(sql, params)
        return int(row[0]) if row else 0

    # -- channels ---------------------------------------------------------------------------------------

    async def channel(self, channel_id: int) -> ChannelState:
        row = await self._row(
            "SELECT channel_id, persona, enabled, mode, last_emotion FROM channels WHERE channel_id = ?",
            (channel_id,),
        )
        return ChannelState(channel_id) if row is None else _channel_state(row)

    async def channels(self, limit: int) -> list[tuple[ChannelState, int]]:
        """Channels with settings or history (the most recently active first, at most `limit`), each with
        its message count."""
        rows = await self._rows(
            "SELECT c.channel_id, ch.persona, ch.enabled, ch.mode, ch.last_emotion, COALESCE(m.n, 0) AS n"
            " FROM (SELECT channel_id FROM channels UNION SELECT DISTINCT channel_id FROM messages) AS c"
            " LEFT JOIN channels AS ch USING (channel_id)"
            " LEFT JOIN (SELECT channel_id, COUNT(*) AS n, MAX(id) AS newest FROM messages"
            " GROUP BY channel_id) AS m USING (channel_id)"
            " ORDER BY COALESCE(m.newest, 0) DESC, c.channel_id LIMIT ?",
            (limit,),
        )
        return [(_channel_state(row), int(row["n"])) for row in rows]

    async def update_channel(self, channel_id: int, **fields: object) -> None:
        """Set some of persona, enabled, mode, last_emotion for a channel (created on first use)."""
        allowed = {"persona", "enabled", "mode", "last_emotion"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown channel fields: {sorted(unknown)}")
        columns = ", ".join(fields)
        placeholders = ", ".join("?" for _ in fields)
        updates = ", ".join(f"{name} = excluded.{name}" for name in fields)
        await self._write(
            f"INSERT INTO channels (channel_id, {columns}, updated_at) VALUES (?, {placeholders}, ?)"
            f" ON CONFLICT (channel_id) DO UPDATE SET {updates}, updated_at = excluded.updated_at",
            (channel_id, *fields.values(), time.time()),
        )

    # -- cast -------------------------------------------------------------------------------------------

    async def cast_members(self, channel_id: int) -> list[CastMember]:
        """The personas sharing a channel besides its lead, in the order they joined."""
        rows = await self._rows(
            "SELECT persona, last_emotion FROM cast_members WHERE channel_id = ? ORDER BY position",
            (channel_id,),
        )
        return [CastMember(row["persona"], row["last_emotion"]) for row in rows]

    async def add_cast_member(self, channel_id: int, persona: str) -> None:
        await self._write(
            "INSERT OR IGNORE INTO cast_members (channel_id, persona, position) VALUES (?, ?,"
            " (SELECT COALESCE(MAX(position), 0) + 1 FROM cast_members WHERE channel_id = ?))",
            (channel_id, persona, channel_id),
        )

    async def remove_cast_member(self, channel_id: int, persona: str) -> bool:
        cursor = await self._write(
            "DELETE FROM cast_members WHERE channel_id = ? AND persona = ?", (channel_id, persona)
        )
        return cursor.rowcount > 0

    async def clear_cast(self, channel_id: int) -> None:
        await self._write("DELETE FROM cast_members WHERE channel_id = ?", (channel_id,))

    async def set_cast_emotion(self, channel_id: int, persona: str, label: str | None) -> None:
        await self._write(
            "UPDATE cast_members SET last_emotion = ? WHERE channel_id = ? AND persona = ?",
            (label, channel_id, persona),
        )

    async def hand_lead(self, channel_id: int, old: str, new: str) -> None:
        """The lead leaves the cast: `new` (a member) leads, with its face, and the members' messages
        filed under the old lead are filed under the new one, so the conversation stays whole."""
        async with self._transaction() as db:
            async with db.execute(
                "SELECT last_emotion FROM cast_members WHERE channel_id = ? AND persona = ?",
                (channel_id, new),
            ) as cursor:
                row = await cursor.fetchone()
            await db.execute(
                "DELETE FROM cast_members WHERE channel_id = ? AND persona = ?", (channel_id, new)
            )
            await db.execute(
                "INSERT INTO channels (channel_id, persona, last_emotion, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (channel_id) DO UPDATE SET persona = excluded.persona,"
                " last_emotion = excluded.last_emotion, updated_at = excluded.updated_at",
                (channel_id, new, row["last_emotion"] if row else None, time.time()),
            )
            await db.execute(
                "UPDATE messages SET persona = ? WHERE channel_id = ? AND persona = ? AND role = 'user'",
                (new, channel_id, old),
            )


def _channel_state(row: aiosqlite.Row) -> ChannelState:
    enabled = None if row["enabled"] is None else bool(row["enabled"])
    return ChannelState(row["channel_id"], row["persona"], enabled, row["mode"], row["last_emotion"])
