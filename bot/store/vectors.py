"""The store's side of recall by meaning: the queue of lines waiting for an embedding, the vectors
themselves, and the lines a vector search found. A mixin of Store (same connection, same transactions).
The triggers of schema version 5 keep vectors and queue in step with every edit and erasure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.store.memory import StoreBase, _marks
from bot.store.records import MESSAGE_COLUMNS, StoredMessage


@dataclass(frozen=True)
class Unembedded:
    id: int
    channel_id: int
    content: str


def _columns(alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in MESSAGE_COLUMNS.split(","))


class VectorQueries(StoreBase):
    async def unembedded(self, limit: int) -> list[Unembedded]:
        """Lines waiting for an embedding, newest first (the newest are the likeliest to be asked about,
        and after an upgrade the old ones follow)."""
        rows = await self._rows(
            "SELECT m.id, m.channel_id, m.content FROM embed_queue q JOIN messages m ON m.id = q.id"
            " ORDER BY q.id DESC LIMIT ?",
            (limit,),
        )
        return [Unembedded(r["id"], r["channel_id"], r["content"]) for r in rows]

    async def waiting_embeddings(self) -> int:
        row = await self._row("SELECT COUNT(*) FROM embed_queue")
        return int(row[0]) if row else 0

    async def put_vectors(self, lines: Sequence[Unembedded], vectors: Sequence[bytes]) -> list[int]:
        """Keep each line's vector, in one transaction, unless the line was edited or erased since it was
        read (its vector would then hold words that are no longer there); returns the ids kept."""
        kept: list[int] = []
        async with self._transaction() as db:
            for line, vector in zip(lines, vectors, strict=True):
                cursor = await db.execute(
                    "INSERT OR REPLACE INTO message_vectors (id, channel_id, vector)"
                    " SELECT id, channel_id, ? FROM messages WHERE id = ? AND content = ?",
                    (vector, line.id, line.content),
                )
                if cursor.rowcount > 0:
                    kept.append(line.id)
                    await db.execute("DELETE FROM embed_queue WHERE id = ?", (line.id,))
        return kept

    async def vectors_of(self, channel_id: int, after_id: int = 0) -> list[tuple[int, bytes]]:
        """A channel's (id, vector) pairs with id > after_id, oldest first."""
        rows = await self._rows(
            "SELECT id, vector FROM message_vectors WHERE channel_id = ? AND id > ? ORDER BY id",
            (channel_id, after_id),
        )
        return [(int(r[0]), bytes(r[1])) for r in rows]

    async def embedded_lines(
        self, channel_id: int, personas: Sequence[str], ids: Sequence[int], before_id: int
    ) -> list[StoredMessage]:
        """Those of `ids` that are still stored with the vector they were found by (an edit or erasure
        since makes a search's answer stale), in this channel's conversation and older than `before_id`;
        in no particular order."""
        if not ids:
            return []
        rows = await self._rows(
            # The unary + keeps SQLite on the few id lookups: through the (channel, persona, id) index it
            # would scan every older line of the channel (20 ms at 100k lines).
            f"SELECT {_columns('m')} FROM messages m JOIN message_vectors v ON v.id = m.id"
            f" WHERE m.id IN ({_marks(ids)}) AND +m.channel_id = ? AND +m.persona IN ({_marks(personas)})"
            " AND +m.id < ?",
            (*ids, channel_id, *personas, before_id),
        )
        return [StoredMessage(**dict(row)) for row in rows]

    async def neighbours(
        self, channel_id: int, personas: Sequence[str], row_ids: Sequence[int], before_id: int
    ) -> dict[int, tuple[StoredMessage | None, StoredMessage | None]]:
        """For each of `row_ids`, the conversation's line just before it and just after it (None past
        either end, or at `before_id`, where the prompt's window begins). Two queries for them all: a
        turn's lookup is on the reply's path."""
        if not row_ids:
            return {}
        marks = _marks(personas)
        hits = ", ".join("(?)" for _ in row_ids)
        pairs = await self._rows(
            f"WITH hits(h) AS (VALUES {hits}) SELECT h,"
            f" (SELECT MAX(id) FROM messages WHERE channel_id = ? AND persona IN ({marks}) AND id < h),"
            f" (SELECT MIN(id) FROM messages WHERE channel_id = ? AND persona IN ({marks}) AND id > h"
            " AND id < ?) FROM hits",
            (*row_ids, channel_id, *personas, channel_id, *personas, before_id),
        )
        wanted = sorted({int(i) for r in pairs for i in (r[1], r[2]) if i is not None})
        lines = {}
        if wanted:
            rows = await self._rows(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id IN ({_marks(wanted)})", wanted
            )
            lines = {int(r["id"]): StoredMessage(**dict(r)) for r in rows}
        return {
            int(r[0]): (
                lines.get(r[1]) if r[1] is not None else None,
                lines.get(r[2]) if r[2] is not None else None,
            )
            for r in pairs
        }
