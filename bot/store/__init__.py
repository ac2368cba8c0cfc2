"""The bot's one SQLite file: history, channels, the cast and the render index (store.py's queries over
schema.py's file and migrations)."""

from __future__ import annotations

from bot.store.records import CastMember, ChannelState, RenderRecord, ReplyVersion, Role, StoredMessage
from bot.store.schema import MIGRATIONS, SCHEMA_VERSION
from bot.store.store import Store

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "CastMember",
    "ChannelState",
    "RenderRecord",
    "ReplyVersion",
    "Role",
    "Store",
    "StoredMessage",
]
