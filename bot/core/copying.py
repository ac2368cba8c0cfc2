"""Long verbatim spans a reply shares with earlier lines: how the repetition figure is measured, and how a
cast's persona is kept from reproducing another persona's line."""

from __future__ import annotations

import re
from collections.abc import Iterable

SPAN_WORDS = 8  # consecutive words that make a copy: longer than any phrase two lines share by chance
_WORD = re.compile(r"[\w']+")


def _spans(text: str, n: int) -> list[tuple[tuple[str, ...], int]]:
    """Every run of `n` words in `text` (lowercased), with the character offset where it starts."""
    found = [(m.group().lower(), m.start()) for m in _WORD.finditer(text)]
    return [(tuple(w for w, _ in found[i : i + n]), found[i][1]) for i in range(len(found) - n + 1)]


def copied_at(reply: str, earlier: Iterable[str], n: int = SPAN_WORDS) -> int | None:
    """Where in `reply` the first run of `n` words that also stands in one of `earlier` starts (a character
    offset), or None when the reply copies no such run."""
    seen = {span for text in earlier for span, _ in _spans(text, n)}
    if not seen:
        return None
    return next((start for span, start in _spans(reply, n) if span in seen), None)


class CopyGuard:
    """Watches a reply as it is written for a run of words taken from `earlier` lines (another persona's,
    in a cast): `check` gives where the copy starts, so the reply can stop there."""

    def __init__(self, earlier: Iterable[str], n: int = SPAN_WORDS) -> None:
        self.n = n
        self._seen = {span for text in earlier for span, _ in _spans(text, n)}

    def check(self, reply: str) -> int | None:
        if not self._seen:
            return None
        return next((start for span, start in _spans(reply, self.n) if span in self._seen), None)


def repeated_share(replies: list[str], n: int = SPAN_WORDS) -> float:
    """The share of replies (after the first) that repeat a run of `n` words of an earlier reply."""
    if len(replies) < 2:
        return 0.0
    repeats = sum(copied_at(reply, replies[:i], n) is not None for i, reply in enumerate(replies) if i)
    return repeats / (len(replies) - 1)
