"""The bot's one SQLite file: history, channels, the cast, memory and the render index (store.py's
queries, with memory.py's and renders.py's, over schema.py's file and migrations)."""

from __future__ import annotations

from bot.store.migrations import MIGRATIONS, SCHEMA_VERSION
from bot.store.presence import AutonomyRow
from bot.store.records import (
    CastMember,
    ChannelState,
    MemberNotes,
    Pin,
    RenderRecord,
    ReplyVersion,
    Role,
    StoredMessage,
    Summary,
    UnsentReply,
)
from bot.store.store import Store

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "AutonomyRow",
    "CastMember",
    "ChannelState",
    "MemberNotes",
    "Pin",
    "RenderRecord",
    "ReplyVersion",
    "Role",
    "Store",
    "StoredMessage",
    "Summary",
    "UnsentReply",
]
