"""What memory puts in a prompt, and the full-text query a new message makes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bot.store import StoredMessage

MAX_TERMS = 12  # words of the new message looked up; a long message is reduced to its rarer words
MIN_WORD = 3
# Words that match nearly every line; BM25 would weigh them low, but each one costs a posting-list scan.
_STOPWORD_TEXT = (
    "about above after again against all also and any are aren because "
    "been before being below between both but can cannot could did didn "
    "does doesn doing don down during each few for from further had "
    "hadn has hasn have haven having her here hers herself him himself "
    "his how into isn its itself just let me more most "
    "mustn myself nor not now off once only other our ours ourselves "
    "out over own same she should shouldn some such than that the "
    "their theirs them themselves then there these they this those through "
    "too under until very was wasn were weren what when where which "
    "while who whom why will with won would wouldn you your yours "
    "yourself yourselves yes yeah okay like really know think want going "
    "got get one two tell said say see well ooc "
)
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class RecalledLine:
    id: int
    text: str  # "Name: what they said", on one line


@dataclass(frozen=True)
class PromptMemory:
    """Memory's part of one prompt: pinned facts and the summary in the permanent head (they change
    only when an admin pins or the window moves), recalled lines after the history (they change every
    turn, so a warm turn re-reads only them)."""

    pins: list[str] = field(default_factory=list)
    summary: str = ""
    recalled: list[RecalledLine] = field(default_factory=list)


def match_query(text: str) -> str:
    """An FTS5 query for the stored lines that share words with `text`: each word quoted (the member's
    text is searched for, never parsed as query syntax), any of them matching, longer words first."""
    unique = dict.fromkeys(WORD.findall(text.lower()))
    words = [w for w in unique if len(w) >= MIN_WORD and w not in STOPWORDS]
    words.sort(key=len, reverse=True)
    return " OR ".join(f'"{w}"' for w in words[:MAX_TERMS])


def recalled_line(message: StoredMessage) -> RecalledLine:
    return RecalledLine(message.id, f"{message.author_name}: {' '.join(message.content.split())}")
