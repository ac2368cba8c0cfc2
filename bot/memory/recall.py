"""What memory puts in a prompt, the full-text query a new message makes, and how the lines found by
words and by meaning are merged."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
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
    only when an admin pins or the window moves); the speaking member's notes and the recalled lines after
    the history (they change every turn, so a warm turn re-reads only them)."""

    pins: list[str] = field(default_factory=list)
    summary: str = ""
    recalled: list[RecalledLine] = field(default_factory=list)
    member: str = ""  # the notes on the member who speaks (with their heading), beside the recalled lines


FUSION_K = 60  # reciprocal rank fusion's constant (Cormack et al., 2009): a rank's weight is 1/(K + rank)
# Words count half as much as meaning: a paraphrased question's words match unrelated lines ("taken" in
# "What animal was taken from me?"), while a line that shares the question's words is usually also near
# it in meaning, and found high by both (bench recall: paraphrased questions 0.73 with equal weights,
# 0.83 with these; questions sharing words the same either way).
WORDS_WEIGHT = 0.5
CONTEXT_WEIGHT = 0.5  # the question a found answer replied to ranks as half of it: context, not the fact


def name_words(names: Iterable[str]) -> frozenset[str]:
    """The words of the channel's speakers' names, lower case."""
    return frozenset(w for name in names for w in WORD.findall(name.lower()))


def without_names(text: str, names: frozenset[str]) -> str:
    """`text` without the speakers' names: "Thanks, Caroline!" says nothing about what a question about
    Caroline asks, and every greeting that names her would otherwise match it."""
    return " ".join(WORD.sub(lambda m: "" if m.group().lower() in names else m.group(), text).split())


def match_words(text: str, names: frozenset[str] = frozenset()) -> list[str]:
    """The words of `text` that recall looks up: no stopwords, no speakers' `names`, longer words first,
    at most MAX_TERMS."""
    unique = dict.fromkeys(WORD.findall(text.lower()))
    words = [w for w in unique if len(w) >= MIN_WORD and w not in STOPWORDS and w not in names]
    words.sort(key=len, reverse=True)
    return words[:MAX_TERMS]


def match_query(text: str, names: frozenset[str] = frozenset()) -> str:
    """An FTS5 query for the stored lines that share words with `text`: each word quoted (the member's
    text is searched for, never parsed as query syntax), any of them matching."""
    return " OR ".join(f'"{w}"' for w in match_words(text, names))


def recalled_line(message: StoredMessage) -> RecalledLine:
    return RecalledLine(message.id, f"{message.author_name}: {' '.join(message.content.split())}")


def paired(
    line: StoredMessage, earlier: StoredMessage | None, later: StoredMessage | None, score: float
) -> list[tuple[StoredMessage, float]]:
    """The neighbours a found line brings, with their scores: a question brings the line after it (its
    answer, ranked right below it: "What did you get for your birthday?" matches the question, the
    telescope is in the answer), and a line that answered a question brings that question (ranked
    lower: it tells what the answer was about)."""
    brought = []
    if later is not None and _asks(line.content) and later.author_name != line.author_name:
        brought.append((later, score * (1.0 - 1e-6)))
    if earlier is not None and _asks(earlier.content) and earlier.author_name != line.author_name:
        brought.append((earlier, score * CONTEXT_WEIGHT))
    return brought


def _asks(text: str) -> bool:
    return text.rstrip().rstrip("*_~)\"'").endswith("?")


def fuse(rankings: Sequence[tuple[Sequence[int], float]]) -> dict[int, float]:
    """Weighted reciprocal rank fusion of best-first id lists: a line found high by words and by meaning
    comes first, one found by either alone still scores; no score scale to calibrate between them."""
    scores: dict[int, float] = {}
    for ranking, weight in rankings:
        for rank, row_id in enumerate(ranking, 1):
            scores[row_id] = scores.get(row_id, 0.0) + weight / (FUSION_K + rank)
    return scores
