"""A database file as an earlier version of the bot left it, to test what an upgrade keeps."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from bot.store import MIGRATIONS


def old_database(path: Path, version: int, lines: Iterable[tuple[int, str, int | None]]) -> Path:
    """A file at schema `version` holding Sam's `lines` (channel, text, Discord message id)."""
    raw = sqlite3.connect(path)
    raw.executescript("".join(MIGRATIONS[:version]) + f"\nPRAGMA user_version = {version};")
    raw.executemany(
        "INSERT INTO messages (channel_id, author_name, role, content, persona, created_at, discord_id)"
        " VALUES (?, 'Sam', 'user', ?, 'mira', 0, ?)",
        list(lines),
    )
    raw.commit()
    raw.close()
    return path
