"""The database file: its checks before opening, its connection settings, and migrating it forward
(bot/store/migrations.py holds the migrations).

Every connection runs in WAL mode with foreign keys on. The schema is versioned with PRAGMA user_version
and migrated forward on open, each step one transaction; a file a newer bot wrote is refused before
anything is written to it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import aiosqlite

from bot.errors import StoreError
from bot.store.migrations import MIGRATIONS, SCHEMA_VERSION, TABLES_AT

_log = logging.getLogger(__name__)

SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 5000  # another process holding the write lock is waited for this long


def check_path(path: Path) -> None:
    """Refuse, with a clear line, database paths SQLite would fail on obscurely."""
    if path.is_dir():
        raise StoreError(f"{path}: is a folder, not a database file (set [store] path to a file)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise StoreError(f"{path}: a parent of this path is a file, not a folder") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot create its folder: {exc.strerror}") from None
    if path.exists() and not path.is_file():
        raise StoreError(f"{path}: not a regular file (a pipe or a device); set [store] path to a file")
    if path.is_file():
        try:
            with path.open("rb") as handle:
                header = handle.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise StoreError(f"{path}: cannot read the database: {exc.strerror}") from None
        if header and header != SQLITE_HEADER:
            raise StoreError(f"{path}: not an SQLite database (refusing to touch it)")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise StoreError(f"{path}: not writable")


async def connect(path: Path) -> aiosqlite.Connection:
    """Open (or create) the database at the current schema version. Raises StoreError naming the file
    and the problem; a failed open never leaves the connection's thread running (which would keep the
    process alive)."""
    if str(path) != ":memory:":
        check_path(path)
    try:
        # isolation_level=None: the store issues BEGIN itself, so each write is exactly one transaction.
        db = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open the database: {exc}") from None
    try:
        db.row_factory = aiosqlite.Row
        version = await _schema_version(db, path)  # before anything below may write to a newer bot's file
        if version == 0:
            await db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only before the first table: no VACUUM
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute("PRAGMA foreign_keys=ON")
        await db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        # Freed pages are zeroed: an erased message does not linger in the file's free space.
        await db.execute("PRAGMA secure_delete=ON")
        await _migrate(db, path, version)
        await _incremental_vacuum_on(db, path)
    except sqlite3.DatabaseError as exc:
        await db.close()
        raise StoreError(f"{path}: cannot use the database: {exc}") from None
    except BaseException:
        await db.close()
        raise
    return db


async def _schema_version(db: aiosqlite.Connection, path: Path) -> int:
    """The file's schema version, after checking (and before anything writes) that the file is ours: not
    a newer bot's, not another program's, not missing tables its version should have."""
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: database schema version {version} is newer than this bot's"
            f" ({SCHEMA_VERSION}); update the bot, or point [store] path at another file"
        )
    async with db.execute("SELECT name FROM sqlite_master WHERE type = 'table'") as cursor:
        tables = {str(r[0]) for r in await cursor.fetchall()}
    if version == 0 and tables - {"sqlite_sequence"}:
        names = ", ".join(sorted(tables)[:5])
        raise StoreError(
            f"{path}: another program's SQLite database (its tables: {names}), not this bot's; refusing"
            " to change it: point [store] path at a file of the bot's own"
        )
    expected = set().union(*(TABLES_AT[v] for v in range(1, version + 1)))
    if missing := sorted(expected - tables):
        raise StoreError(
            f"{path}: the database is damaged: table {', '.join(missing)} is missing; restore a backup,"
            " or point [store] path at a new file"
        )
    return version


async def _migrate(db: aiosqlite.Connection, path: Path, version: int) -> None:
    for target in range(version, SCHEMA_VERSION):
        # executescript commits on its own, so the version bump rides inside the same script.
        await db.executescript(f"BEGIN;\n{MIGRATIONS[target]}\nPRAGMA user_version = {target + 1};\nCOMMIT;")
        _log.info("migrated %s to schema version %d", path, target + 1)


async def _incremental_vacuum_on(db: aiosqlite.Connection, path: Path) -> None:
    """Deleted pages can be handed back to the disk a few at a time (store.give_back_space). Only a
    VACUUM turns this on for a file created without it: once, at the first start of this version."""
    async with db.execute("PRAGMA auto_vacuum") as cursor:
        row = await cursor.fetchone()
    if row is not None and int(row[0]) != 2:
        await db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        await db.execute("VACUUM")
        _log.info("%s: set up to give space back after deletes (incremental vacuum)", path)


class WriteBackFailed(Exception):
    """`write_back` could not put the file back: why, and the connection reads go on through, if the old
    one had to be closed already."""

    def __init__(self, why: str, reading: aiosqlite.Connection | None) -> None:
        super().__init__(why)
        self.why = why
        self.reading = reading


async def write_back(db: aiosqlite.Connection, path: Path) -> aiosqlite.Connection:
    """The database file was deleted while `db` still has it open (and reads all of it): copy it to a
    file beside, close `db` (closing removes the write-ahead log by the database's name, so it must go
    before a file has that name again), give the copy the name and open it. Returns the new connection;
    raises WriteBackFailed."""
    restoring = path.with_name(path.name + ".restoring")
    closed = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for leftover in (restoring, Path(f"{restoring}-journal")):
            leftover.unlink(missing_ok=True)
        copy = await aiosqlite.connect(restoring)
        try:
            await db.backup(copy)
        finally:
            await copy.close()
        await db.close()
        closed = True
        os.replace(restoring, path)
        return await connect(path)
    except (OSError, sqlite3.Error, StoreError) as exc:
        if not closed:
            restoring.unlink(missing_ok=True)
            raise WriteBackFailed(str(exc), None) from None
        # The old connection is gone: read on from the copy, and say where it is.
        kept = restoring if restoring.exists() else path
        try:
            reading = await connect(kept)
        except StoreError:
            reading = None
        raise WriteBackFailed(f"{exc}; everything it held is in {kept}", reading) from None


def fault(exc: sqlite3.Error, path: Path) -> StoreError:
    """What a failed database call means for the person running the bot, in one line."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc)
    if primary == sqlite3.SQLITE_FULL or "full" in text:
        why = "the disk is full (nothing of this turn was saved); free some space"
    elif primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in text:
        why = (
            f"another program has held the database's write lock for over {BUSY_TIMEOUT_MS / 1000:g} s"
            " (nothing of this turn was saved); close it, or point [store] path at another file"
        )
    elif primary == sqlite3.SQLITE_IOERR:
        why = f"the disk failed to read or write ({text}); check the disk"
    elif primary == sqlite3.SQLITE_READONLY:
        why = "the database became read-only; make it writable again"
    elif primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        why = "the database file is damaged; restore a backup, or point [store] path at a new file"
    elif "no such table" in text or "no such column" in text:
        why = f"the database is damaged ({text}); restore a backup, or point [store] path at a new file"
    else:
        why = f"the database refused the request ({text})"
    return StoreError(f"{path}: {why}")
