"""Erasing many messages without stalling the other channels, and giving the space back: a mixin of
Store (same connection, same write lock)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Sequence

from bot.errors import StoreError
from bot.store.memory import StoreBase

_log = logging.getLogger(__name__)

# Rows erased per transaction: a 150k-message /reset runs as many short writes, and every other channel's
# reads and writes take their turn on the one connection between them instead of waiting a second.
DELETE_BATCH = 250
VACUUM_PAGES = 128  # free pages handed back to the disk per step after deletes
VACUUM_TRIES = 50  # steps that found another task's read in the way before giving up until next time
VACUUM_WAIT = 0.005


class Erasure(StoreBase):
    async def _erase(self, where: str, params: Sequence[object]) -> int:
        """DELETE the messages `where` holds, DELETE_BATCH rows per transaction, letting the other
        tasks' queries run between batches; then hand the freed space back. Each batch removes its rows
        from the full-text index and drops the summaries that read them (the triggers), so what is gone
        is gone everywhere at every step; an interrupted erase is finished by running it again."""
        removed = 0
        while True:
            async with self._transaction() as db:
                cursor = await db.execute(
                    f"DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE {where} LIMIT ?)",
                    (*params, DELETE_BATCH),
                )
                count = cursor.rowcount
            removed += count
            if count < DELETE_BATCH:
                break
            await asyncio.sleep(0)
        if removed:
            try:
                await self.give_back_space()
            except StoreError as exc:  # the erase itself is done; the space comes back another time
                _log.warning("%s", exc)
        return removed

    async def give_back_space(self) -> int:
        """Return the file's free pages to the disk, VACUUM_PAGES per step (other queries run between
        steps), and shrink the write-ahead log; returns how many pages went. The full-text index is not
        rewritten here: FTS5's 'optimize' is one statement (0.9 s at 180k stored lines, with every other
        channel waiting), and its stepwise 'merge' interleaved with the triggers' inserts damaged the
        index (SQLite 3.40). An erased line's entries are marked deleted at once (no search finds
        them) and dropped from the file as the index merges its segments during later writes."""
        freed, busy = 0, 0
        while busy < VACUUM_TRIES:
            row = await self._row("PRAGMA freelist_count")
            free = int(row[0]) if row else 0
            if free == 0:
                break
            async with self._write_lock:
                await self._check_file()
                try:
                    # Stepped to its end: a half-stepped pragma would keep its write transaction open.
                    await self._rows(f"PRAGMA incremental_vacuum({VACUUM_PAGES})")
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc):
                        raise
                    busy += 1  # a statement is still open on the connection: let it finish first
                else:
                    freed += min(free, VACUUM_PAGES)
            await asyncio.sleep(0 if not busy else VACUUM_WAIT)
        await self.checkpoint()
        return freed

    async def checkpoint(self) -> None:
        """Copy the write-ahead log into the database and empty it. secure_delete zeroes an erased
        line's bytes in the database's pages, but the log keeps the older images of those pages until a
        checkpoint: without one, words a member erased stay readable in the -wal file (by a backup, a
        disk image, after a crash) until the bot happens to checkpoint or stops cleanly."""
        async with self._write_lock:
            await self._check_file()
            for _ in range(VACUUM_TRIES):
                row = await self._row("PRAGMA wal_checkpoint(TRUNCATE)")
                if row is None or not row[0]:  # not busy: the log is empty
                    return
                await asyncio.sleep(VACUUM_WAIT)  # another program reading the file: let it finish
            _log.warning(
                "%s: another program keeps reading the database; erased words stay in its write-ahead log"
                " until it lets go (the next erase or a restart empties it)",
                self.path,
            )
