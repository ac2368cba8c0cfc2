"""The store's side of member memory: which server each channel is in, each member's notes per server,
and whether a server keeps them. A mixin of Store (same connection, same transactions); the triggers of
schema version 6 drop notes built from a line later edited or erased."""

from __future__ import annotations

import time
from collections.abc import Sequence

import aiosqlite

from bot.store.memory import StoreBase, _marks, sources_unchanged
from bot.store.records import MESSAGE_COLUMNS, MemberNotes, StoredMessage

NOTES_QUERY = "SELECT text, through_id, edited FROM member_notes WHERE server_id = ? AND member_id = ?"


def _notes(row: aiosqlite.Row | None) -> MemberNotes | None:
    return MemberNotes(row["text"], row["through_id"], bool(row["edited"])) if row else None


class MemberQueries(StoreBase):
    async def note_server(self, channel_id: int, server_id: int) -> None:
        await self._write(
            "INSERT INTO channel_servers (channel_id, server_id) VALUES (?, ?)"
            " ON CONFLICT (channel_id) DO UPDATE SET server_id = excluded.server_id",
            (channel_id, server_id),
        )

    async def servers_of(self, channel_ids: Sequence[int]) -> set[int]:
        if not channel_ids:
            return set()
        rows = await self._rows(
            f"SELECT DISTINCT server_id FROM channel_servers WHERE channel_id IN ({_marks(channel_ids)})",
            list(channel_ids),
        )
        return {int(r[0]) for r in rows}

    async def member_notes(self, server_id: int, member_id: int) -> MemberNotes | None:
        return _notes(await self._row(NOTES_QUERY, (server_id, member_id)))

    async def member_lines(
        self, server_id: int, member_id: int, after_id: int, limit: int
    ) -> list[StoredMessage]:
        """What the member said in the server's channels after line `after_id` (the newest `limit`
        lines), oldest first."""
        rows = await self._rows(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE author_id = ? AND id > ? AND channel_id IN"
            " (SELECT channel_id FROM channel_servers WHERE server_id = ?) ORDER BY id DESC LIMIT ?",
            (member_id, after_id, server_id, limit),
        )
        return [StoredMessage(**dict(row)) for row in reversed(list(rows))]

    async def put_member_notes(
        self,
        server_id: int,
        member_id: int,
        text: str,
        sources: Sequence[StoredMessage],
        base: MemberNotes | None,
    ) -> bool:
        """Keep the model's notes built from `sources` over `base`, unless meanwhile a source was edited
        or erased, the notes changed (the member's correction, an erasure), or nothing moves forward."""
        if not sources:
            return False
        ids = [m.id for m in sources]
        async with self._transaction() as db:
            async with db.execute(NOTES_QUERY, (server_id, member_id)) as cursor:
                now = _notes(await cursor.fetchone())
            if now != base or (now is not None and now.edited):
                return False
            if not await sources_unchanged(db, sources):
                return False
            await db.execute(
                "INSERT INTO member_notes (server_id, member_id, text, through_id, edited, updated_at)"
                " VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT (server_id, member_id) DO UPDATE SET"
                " text = excluded.text, through_id = excluded.through_id, edited = 0,"
                " updated_at = excluded.updated_at",
                (server_id, member_id, text, max(ids), time.time()),
            )
        return True

    async def edit_member_notes(self, server_id: int, member_id: int, text: str, through_id: int) -> None:
        """The member's own notes: kept as written; empty text erases them (the model may write new ones
        from what they say after `through_id`)."""
        async with self._transaction() as db:
            if not text.strip():
                await db.execute(
                    "INSERT INTO member_notes (server_id, member_id, text, through_id, edited, updated_at)"
                    " VALUES (?, ?, '', ?, 0, ?) ON CONFLICT (server_id, member_id) DO UPDATE SET"
                    " text = '', through_id = MAX(through_id, excluded.through_id), edited = 0,"
                    " updated_at = excluded.updated_at",
                    (server_id, member_id, through_id, time.time()),
                )
                return
            await db.execute(
                "INSERT INTO member_notes (server_id, member_id, text, through_id, edited, updated_at)"
                " VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT (server_id, member_id) DO UPDATE SET"
                " text = excluded.text, through_id = MAX(through_id, excluded.through_id), edited = 1,"
                " updated_at = excluded.updated_at",
                (server_id, member_id, text.strip(), through_id, time.time()),
            )

    async def forget_member_notes(self, member_id: int, server_ids: Sequence[int]) -> int:
        if not server_ids:
            return 0
        cursor = await self._write(
            f"DELETE FROM member_notes WHERE member_id = ? AND server_id IN ({_marks(server_ids)})",
            (member_id, *server_ids),
        )
        return cursor.rowcount

    async def member_memory_on(self, server_id: int) -> bool | None:
        """The server's admins' choice; None where they made none (the config's default holds)."""
        row = await self._row("SELECT member_memory FROM server_settings WHERE server_id = ?", (server_id,))
        return bool(row[0]) if row else None

    async def set_member_memory(self, server_id: int, on: bool) -> None:
        await self._write(
            "INSERT INTO server_settings (server_id, member_memory) VALUES (?, ?)"
            " ON CONFLICT (server_id) DO UPDATE SET member_memory = excluded.member_memory",
            (server_id, int(on)),
        )
