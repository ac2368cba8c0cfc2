"""Memory beyond the prompt window: summaries of what left it, full-text recall of exact earlier lines,
facts pinned by admins. Kept in the store, obeying its history: what a member erased is gone here too."""

from __future__ import annotations

from bot.memory.keeper import Memory, MemoryView
from bot.memory.recall import PromptMemory, RecalledLine, match_query

__all__ = ["Memory", "MemoryView", "PromptMemory", "RecalledLine", "match_query"]
