"""Text as the emotion classifier reads it: roleplay markup stripped, then word features.

The same functions serve training (scripts/train_emotion.py) and judging, so a model never sees text
prepared differently from what it was fitted on.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

# (OOC: ...), ((...)), [OOC ...]: out-of-character asides say nothing about the character's face.
_OOC = re.compile(
    r"\(\(.*?\)\)|[(\[]\s*ooc\b.*?[)\]]|^\s*ooc\s*:.*$", re.IGNORECASE | re.MULTILINE | re.DOTALL
)
# "Mira:" at the start of a line: a speaker label, not part of what is said.
_SPEAKER = re.compile(r"^\s*[\w .'-]{1,32}:\s+", re.MULTILINE)
# Markdown and roleplay emphasis marks. The words inside *actions* stay: "*laughs*" is the clearest
# emotion signal a roleplay reply has; only the marks go.
_MARKS = re.compile(r"[*_~`>#|]+")
_URL = re.compile(r"https?://\S+|<[@#!&:a-z0-9]*\d+>", re.IGNORECASE)
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|[!?]|[:;]-?[()dp]", re.IGNORECASE)

MAX_CHARS = 2000  # a judgement reads the start of a long reply; the rest rarely changes the face


def strip_roleplay(text: str, names: Iterable[str] = ()) -> str:
    """The words a reply says and does, without markup, asides, links, mentions or speaker labels.
    `names` (the persona's and the speakers' names) are removed too: "Joy" is a name, not an emotion."""
    text = text[: MAX_CHARS * 2]
    text = _OOC.sub(" ", text)
    text = _SPEAKER.sub("", text)
    text = _URL.sub(" ", text)
    text = _MARKS.sub(" ", text)
    for name in names:
        if name.strip():
            text = re.sub(rf"(?<!\w){re.escape(name.strip())}(?!\w)", " ", text, flags=re.IGNORECASE)
    return _SPACE.sub(" ", text).strip()[:MAX_CHARS]


def tokens(text: str) -> list[str]:
    """Lower-case words, apostrophes kept ("don't"), plus ! ? and simple emoticons."""
    return [t.lower() for t in _WORD.findall(text)]


def features(text: str) -> list[str]:
    """Unigrams and bigrams of the words: bigrams carry negation ("not happy") and set phrases."""
    words = tokens(text)
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
