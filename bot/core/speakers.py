"""Speaker labels in the model's text. Small models often begin a reply with a label ("Mira:", or the
member's "Sam:" as if speaking for them, or both: "Mira: Sam: …"). Stored, such a reply teaches the
model to do it again, so labels at the start are removed: from the stored reply, and from the streamed
text before anyone sees it."""

from __future__ import annotations

import re
from collections.abc import Iterable

LABEL_SLACK = 4  # characters past the longest name ("**", spaces) before a start is known not to be a label


def _label_pattern(names: Iterable[str]) -> re.Pattern[str]:
    alternatives = "|".join(
        re.escape(n.strip()) for n in sorted(set(names), key=len, reverse=True) if n.strip()
    )
    return re.compile(rf"\s*\**(?:{alternatives})\**\s*:\**\s*", re.IGNORECASE)


def strip_speaker_labels(text: str, names: Iterable[str]) -> str:
    """`text` without the speaker labels it starts with (any number of them, any of `names`)."""
    names = [n for n in names if n.strip()]
    if names:
        pattern = _label_pattern(names)
        while match := pattern.match(text):
            text = text[match.end() :]
    return text.lstrip()


class LabelGate:
    """Streams text through, holding back only the first few characters until it is clear whether the
    reply starts with speaker labels, which are then dropped."""

    def __init__(self, names: Iterable[str]) -> None:
        names = [n for n in names if n.strip()]
        self._names = names
        self._longest = max((len(n) for n in names), default=0)
        self._buffer = ""
        self._deciding = bool(names)

    def feed(self, chunk: str) -> str:
        """The part of the stream that can be shown now."""
        if not self._deciding:
            return chunk
        self._buffer += chunk
        head = strip_speaker_labels(self._buffer, self._names)
        if ":" in head or "\n" in head or len(head) > self._longest + LABEL_SLACK:
            self._deciding = False
            self._buffer = ""
            return head
        return ""

    def flush(self) -> str:
        """Whatever is still held back, once the stream has ended."""
        rest, self._buffer = self._buffer, ""
        if not self._deciding:
            return rest
        self._deciding = False
        return strip_speaker_labels(rest, self._names)
