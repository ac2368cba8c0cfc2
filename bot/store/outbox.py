"""The outbox: what is shown on Discord is stored. A reply is written here before it is posted, and
filed into the history with the posted message's id in the same transaction that removes it here; a row
left over from a crash is filed once the front-end finds the reply in its channel, or dropped when it
was never posted. A mixin of Store (same connection, same transactions)."""

from __future__ import annotations

import time

from bot.store.memory import StoreBase
from bot.store.records import UnsentReply

OUTBOX_COLUMNS = "id, channel_id, persona, author_name, content, emotion, prompt_id, answers, created_at"
MESSAGE_FROM_OUTBOX = (
    "INSERT INTO messages (channel_id, discord_id, author_id, author_name, role, content, emotion, persona,"
    " created_at, prompt_id) SELECT channel_id, ?, NULL, author_name, 'assistant', content, emotion,"
    " persona, ?, prompt_id FROM outbox WHERE id = ?"
)


class OutboxQueries(StoreBase):
    async def expect_reply(
        self,
        channel_id: int,
        *,
        persona: str,
        author_name: str,
        content: str,
        emotion: str | None,
        prompt_id: int | None,
        answers: int | None,
    ) -> int:
        """Note a reply about to be posted; returns its outbox id (see `file_reply`, `drop_unsent`)."""
        cursor = await self._write(
            "INSERT INTO outbox (channel_id, persona, author_name, content, emotion, prompt_id, answers,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (channel_id, persona, author_name, content, emotion, prompt_id, answers, time.time()),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    async def file_reply(self, outbox_id: int, discord_id: int | None) -> int | None:
        """The reply was posted as message `discord_id`: it enters the history and leaves the outbox in
        one transaction. Returns its history row, or None when the outbox no longer holds it."""
        async with self._transaction() as db:
            cursor = await db.execute(MESSAGE_FROM_OUTBOX, (discord_id, time.time(), outbox_id))
            if cursor.rowcount != 1:
                return None
            row = cursor.lastrowid
            await db.execute("DELETE FROM outbox WHERE id = ?", (outbox_id,))
        return row

    async def drop_unsent(self, outbox_id: int) -> None:
        """The reply was not posted: nothing of it is kept."""
        await self._write("DELETE FROM outbox WHERE id = ?", (outbox_id,))

    async def unsent_replies(self) -> list[UnsentReply]:
        """Replies noted before posting and never filed, oldest first."""
        rows = await self._rows(f"SELECT {OUTBOX_COLUMNS} FROM outbox ORDER BY id")
        return [UnsentReply(**dict(row)) for row in rows]
