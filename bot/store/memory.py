"""The store's memory queries: full-text recall over a channel's whole history, the summaries of what
left each prompt window, the pinned facts. A mixin of Store (same connection, same transactions)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import aiosqlite

from bot.store.migrations import FTS_KEY_BITS
from bot.store.records import MESSAGE_COLUMNS, Pin, StoredMessage, Summary

if TYPE_CHECKING:

    class StoreBase:
        """What the query mixins use of Store: its connection and its one-at-a-time transactions."""

        _db: aiosqlite.Connection
        _write_lock: asyncio.Lock
        path: Path

        async def _check_file(self) -> None: ...

        async def _write(self, sql: str, params: Sequence[object] = ()) -> aiosqlite.Cursor: ...

        async def _rows(self, sql: str, params: Sequence[object] = ()) -> list[aiosqlite.Row]: ...

        async def _row(self, sql: str, params: Sequence[object] = ()) -> aiosqlite.Row | None: ...

        def _transaction(self) -> contextlib.AbstractAsyncContextManager[aiosqlite.Connection]: ...

else:
    StoreBase = object


# BM25's constants (Robertson et al.): term-frequency saturation and length normalisation.
BM25_K1, BM25_B = 1.2, 0.75
SHORTLIST, MIN_SHORTLIST = 8, 200  # lines ranked whole (length read) per line wanted: the rest rank lower
MAX_POSTINGS = 2000  # lines listed for one word, newest first

SUMMARY_QUERY = "SELECT text, through_id, edited FROM memory_summaries WHERE channel_id = ? AND persona = ?"


def _summary(row: aiosqlite.Row | None) -> Summary | None:
    return Summary(row["text"], row["through_id"], bool(row["edited"])) if row else None


def _marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


async def sources_unchanged(db: aiosqlite.Connection, sources: Sequence[StoredMessage]) -> bool:
    """Whether every line a background text (a summary, a member's notes) was written from is still
    stored as it was read: one edited or erased meanwhile must not have its words survive there."""
    ids = [m.id for m in sources]
    async with db.execute(f"SELECT id, edited_at FROM messages WHERE id IN ({_marks(ids)})", ids) as cursor:
        found = {r["id"]: r["edited_at"] for r in await cursor.fetchall()}
    return found == {m.id: m.edited_at for m in sources}


class MemoryQueries(StoreBase):
    async def recall(
        self, channel_id: int, personas: Sequence[str], words: Sequence[str], before_id: int, limit: int
    ) -> list[StoredMessage]:
        """The channel's stored lines (of these personas' conversation) older than `before_id` that hold
        any of `words`, best first: BM25 with this channel's own statistics (a word rare here weighs
        more), each word counted once a line. Every read stays inside the channel's range of index keys,
        so a lookup costs what this channel holds, whatever the other channels do."""
        if not words or limit <= 0:
            return []
        row = await self._row("SELECT number, lines FROM fts_channels WHERE channel_id = ?", (channel_id,))
        if row is None:
            return []
        low = int(row[0]) << FTS_KEY_BITS
        span = (low, low + max(0, min(before_id, 1 << FTS_KEY_BITS) - 1))
        quoted = ['"' + word.replace('"', '""') + '"' for word in words]
        in_range = "messages_fts WHERE messages_fts MATCH ? AND rowid BETWEEN ? AND ?"
        counted = await self._rows(
            " UNION ALL ".join(
                f"SELECT {i} AS word, COUNT(*) AS n FROM {in_range}" for i in range(len(words))
            ),
            [value for q in quoted for value in (q, *span)],
        )
        held = {int(r["word"]): int(r["n"]) for r in counted if r["n"]}
        if not held:
            return []
        # A word on most of the channel's lines weighs next to nothing: its lines are not listed (the
        # rarest word's always are), which keeps a long channel's lookup short.
        looked = [w for w, n in held.items() if n <= MAX_POSTINGS] or [min(held, key=held.__getitem__)]
        found = await self._rows(
            " UNION ALL ".join(
                f"SELECT {w} AS word, id FROM (SELECT rowid - ? AS id FROM {in_range} ORDER BY rowid DESC"
                " LIMIT ?)"
                for w in looked
            ),
            [value for w in looked for value in (low, quoted[w], *span, MAX_POSTINGS)],
        )
        total = max(int(row[1]), max(held.values()))
        weight = {w: math.log(1.0 + (total - n + 0.5) / (n + 0.5)) for w, n in held.items()}
        holding: dict[int, list[int]] = {}
        for hit in found:
            holding.setdefault(int(hit["id"]), []).append(int(hit["word"]))
        plain = {i: sum(weight[w] for w in ws) for i, ws in holding.items()}
        shortlist = sorted(plain, key=lambda i: (-plain[i], i))[: max(limit * SHORTLIST, MIN_SHORTLIST)]
        rows = await self._rows(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id IN ({_marks(shortlist)})"
            f" AND persona IN ({_marks(personas)})",
            (*shortlist, *personas),
        )
        messages = [StoredMessage(**dict(r)) for r in rows]
        if not messages:
            return []
        length = {m.id: max(1, len(m.content.split())) for m in messages}
        mean = sum(length.values()) / len(length)

        def score(message: StoredMessage) -> float:
            norm = 1.0 - BM25_B + BM25_B * length[message.id] / mean
            return plain[message.id] * (BM25_K1 + 1.0) / (1.0 + BM25_K1 * norm)

        messages.sort(key=lambda m: (-score(m), m.id))  # ties: the older first, as the index lists them
        return messages[:limit]

    async def history_since(
        self, channel_id: int, personas: Sequence[str], first_id: int, limit: int
    ) -> list[StoredMessage]:
        """The conversation from message `first_id` on (its newest `limit` lines when there are more),
        oldest first: a prompt window's lines, wherever it started."""
        rows = await self._rows(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE channel_id = ? AND persona IN ({_marks(personas)})"
            " AND id >= ? ORDER BY id DESC LIMIT ?",
            (channel_id, *personas, first_id, limit),
        )
        return [StoredMessage(**dict(row)) for row in reversed(list(rows))]

    async def lines_between(
        self, channel_id: int, personas: Sequence[str], after_id: int, before_id: int, limit: int
    ) -> list[StoredMessage]:
        """The conversation's lines with after_id < id < before_id (the newest `limit` of them), oldest
        first: what left a prompt window and is not summarised yet."""
        rows = await self._rows(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE channel_id = ? AND persona IN ({_marks(personas)})"
            " AND id > ? AND id < ? ORDER BY id DESC LIMIT ?",
            (channel_id, *personas, after_id, before_id, limit),
        )
        return [StoredMessage(**dict(row)) for row in reversed(list(rows))]

    # -- summaries --------------------------------------------------------------------------------------

    async def summary(self, channel_id: int, persona: str) -> Summary | None:
        return _summary(await self._row(SUMMARY_QUERY, (channel_id, persona)))

    async def put_summary(
        self,
        channel_id: int,
        persona: str,
        text: str,
        sources: Sequence[StoredMessage],
        base: Summary | None,
    ) -> bool:
        """Keep the model's summary of `sources` (folded into `base`, the summary it extended), unless
        meanwhile a source was edited or erased, the base summary changed (an admin's edit, another
        summary, a drop), or the summary would not move forward. False when it was not kept."""
        if not sources:
            return False
        ids = [m.id for m in sources]
        async with self._transaction() as db:
            async with db.execute(SUMMARY_QUERY, (channel_id, persona)) as cursor:
                now = _summary(await cursor.fetchone())
            if now != base or (now is not None and now.edited):
                return False  # an admin's summary is kept as written
            if not await sources_unchanged(db, sources):
                return False
            await db.execute(
                "INSERT INTO memory_summaries (channel_id, persona, text, through_id, edited, updated_at)"
                " VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT (channel_id, persona) DO UPDATE SET"
                " text = excluded.text, through_id = excluded.through_id, edited = 0,"
                " updated_at = excluded.updated_at",
                (channel_id, persona, text, max(ids), time.time()),
            )
        return True

    async def edit_summary(self, channel_id: int, persona: str, text: str, through_id: int) -> None:
        """An admin's summary: kept as written (the model no longer replaces it); empty text drops it,
        and the model summarises again."""
        async with self._transaction() as db:
            if not text.strip():
                await db.execute(
                    "DELETE FROM memory_summaries WHERE channel_id = ? AND persona = ?", (channel_id, persona)
                )
                return
            await db.execute(
                "INSERT INTO memory_summaries (channel_id, persona, text, through_id, edited, updated_at)"
                " VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT (channel_id, persona) DO UPDATE SET"
                " text = excluded.text, through_id = MAX(through_id, excluded.through_id), edited = 1,"
                " updated_at = excluded.updated_at",
                (channel_id, persona, text.strip(), through_id, time.time()),
            )

    async def summaries_of(self, channel_id: int) -> dict[str, Summary]:
        rows = await self._rows(
            "SELECT persona, text, through_id, edited FROM memory_summaries WHERE channel_id = ?",
            (channel_id,),
        )
        return {r["persona"]: summary for r in rows if (summary := _summary(r)) is not None}

    # -- pins -------------------------------------------------------------------------------------------

    async def pins(self, channel_id: int) -> list[Pin]:
        rows = await self._rows(
            "SELECT id, text FROM memory_pins WHERE channel_id = ? ORDER BY id", (channel_id,)
        )
        return [Pin(r["id"], r["text"]) for r in rows]

    async def add_pin(self, channel_id: int, text: str) -> int:
        async with self._transaction() as db:
            cursor = await db.execute(
                "INSERT INTO memory_pins (channel_id, text, created_at) VALUES (?, ?, ?)",
                (channel_id, text, time.time()),
            )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    async def remove_pin(self, channel_id: int, pin_id: int) -> bool:
        async with self._transaction() as db:
            cursor = await db.execute(
                "DELETE FROM memory_pins WHERE channel_id = ? AND id = ?", (channel_id, pin_id)
            )
        return cursor.rowcount > 0

    async def clear_memory(self, channel_id: int) -> None:
        """A new story: the channel's summaries and pins go with its history."""
        async with self._transaction() as db:
            await db.execute("DELETE FROM memory_summaries WHERE channel_id = ?", (channel_id,))
            await db.execute("DELETE FROM memory_pins WHERE channel_id = ?", (channel_id,))

    async def window_start(self, channel_id: int, persona: str) -> int | None:
        """Where the persona's prompt window in the channel last started, while that line is still
        stored (an erased start is no start: the window is placed again)."""
        row = await self._row(
            "SELECT w.first_id FROM prompt_windows w JOIN messages m ON m.id = w.first_id"
            " WHERE w.channel_id = ? AND w.persona = ? AND m.channel_id = w.channel_id",
            (channel_id, persona),
        )
        return int(row[0]) if row else None

    async def save_window(self, channel_id: int, persona: str, first_id: int) -> None:
        await self._write(
            "INSERT INTO prompt_windows (channel_id, persona, first_id) VALUES (?, ?, ?)"
            " ON CONFLICT (channel_id, persona) DO UPDATE SET first_id = excluded.first_id",
            (channel_id, persona, first_id),
        )

    async def forget_windows(self, channel_id: int, persona: str | None = None) -> None:
        if persona is None:
            await self._write("DELETE FROM prompt_windows WHERE channel_id = ?", (channel_id,))
        else:
            await self._write(
                "DELETE FROM prompt_windows WHERE channel_id = ? AND persona = ?", (channel_id, persona)
            )

    async def index_holds(self, words: str) -> int:
        """How many stored lines the full-text index finds for these words (any channel)."""
        row = await self._row("SELECT COUNT(*) FROM messages_fts WHERE messages_fts MATCH ?", (words,))
        return int(row[0]) if row else 0
