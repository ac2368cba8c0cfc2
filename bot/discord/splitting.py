"""Split a reply into Discord-sized messages at natural boundaries, never inside a code block if avoidable."""

from __future__ import annotations

import re

DISCORD_LIMIT = 2000
FENCE = "```"
# Preferred cut points, best first: paragraph, line, sentence end, then any space.
_BOUNDARIES = (
    re.compile(r"\n\s*\n"),
    re.compile(r"\n"),
    re.compile(r"(?<=[.!?…])[\"')\]]*\s"),
    re.compile(r"\s"),
)


def _open_fence(text: str) -> str | None:
    """The opening fence line (e.g. '```python') if text ends inside a code block."""
    fences = list(re.finditer(r"```[^\n`]*", text))
    if len(fences) % 2 == 0:
        return None
    return fences[-1].group(0)


def _cut(text: str, limit: int) -> int:
    window = text[:limit]
    # Never end a chunk inside a code block when the block can start the next chunk instead.
    fence = _open_fence(window)
    if fence is not None:
        start = window.rfind(fence)
        if start > limit // 4:
            return start
    for pattern in _BOUNDARIES:
        ends = [m.end() for m in pattern.finditer(window) if m.end() > limit // 3]
        if ends:
            return ends[-1]
    return limit  # one unbroken word longer than the limit: cut it


def split_message(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """Chunks of at most `limit` characters; a code block that must be cut is closed and reopened."""
    chunks: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        cut = _cut(rest, limit - len(FENCE) - 1)
        head, rest = rest[:cut].rstrip(), rest[cut:].lstrip("\n ")
        fence = _open_fence(head)
        if fence is not None:  # the block is longer than a message: close it here, reopen in the next
            head += "\n" + FENCE
            rest = fence + "\n" + rest
        if head.strip():
            chunks.append(head)
    if rest.strip():
        chunks.append(rest)
    return chunks
