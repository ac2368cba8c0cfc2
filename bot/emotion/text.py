"""Text as the emotion classifier reads it: roleplay markup stripped, then word features.

The same functions serve training (scripts/train_emotion.py) and judging, so a model never sees text
prepared differently from what it was fitted on. Curly apostrophes read as straight ones, emoji and the
action verbs of roleplay add the plain words for their emotion (bot/emotion/lexicon.py), and the words
after a negation are marked (`not_happy`), so "I'm not happy" is not read as joy.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

from bot.emotion.lexicon import ACTION_WORDS, EMOJI

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
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "ʼ": "'", "′": "'"})
_EMOJI = re.compile("|".join(map(re.escape, sorted(EMOJI, key=len, reverse=True))))
# A negation marks the next few words of its clause.
_NEGATORS = frozenset({"not", "no", "never", "nothing", "nobody", "neither", "nor", "without", "cannot"})
NEGATION_SCOPE = 3
_CLAUSE = re.compile(r"[.,;:]+|\bbut\b", re.IGNORECASE)
# Where a reply's sentences and *actions* end: each is read alone when a reply has several.
_SEGMENT = re.compile(r"(?<=[.!?])\s+|\n+|\*")

MAX_CHARS = 2000  # a judgement reads the start of a long reply; the rest rarely changes the face


def strip_roleplay(text: str, names: Iterable[str] = ()) -> str:
    """The words a reply says and does, without markup, asides, links, mentions or speaker labels.
    `names` (the persona's and the speakers' names) are removed too: "Joy" is a name, not an emotion."""
    text = normalise(text[: MAX_CHARS * 2])
    text = _OOC.sub(" ", text)
    text = _SPEAKER.sub("", text)
    text = _URL.sub(" ", text)
    text = _MARKS.sub(" ", text)
    for name in names:
        if name.strip():
            text = re.sub(rf"(?<!\w){re.escape(name.strip())}(?!\w)", " ", text, flags=re.IGNORECASE)
    return _SPACE.sub(" ", text).strip()[:MAX_CHARS]


def normalise(text: str) -> str:
    """Curly apostrophes made straight (so "don’t" is "don't"), emoji replaced by their words."""
    text = text.translate(_APOSTROPHES).replace("\ufe0f", "")  # U+FE0F: the emoji presentation mark
    return _EMOJI.sub(lambda m: f" {EMOJI[m.group()]} ", text)


def segments(text: str) -> list[str]:
    """A reply's sentences and *actions*, each to be stripped and read alone."""
    return [part for part in _SEGMENT.split(text) if part.strip()]


def tokens(text: str) -> list[str]:
    """Lower-case words, apostrophes kept ("don't"), plus ! ? and simple emoticons."""
    return [t.lower() for t in _WORD.findall(text)]


def features(text: str) -> list[str]:
    """Unigrams, with the emotion words of action verbs added and negated words marked, then bigrams of
    the words as written (they carry set phrases)."""
    unigrams: list[str] = []
    words: list[str] = []
    for clause in _CLAUSE.split(text):
        negated = 0
        for word in tokens(clause):
            mark = "not_" if negated and word not in ("!", "?") else ""
            negated = max(0, negated - 1) if mark else negated
            unigrams.append(mark + word)
            unigrams += (mark + cue for cue in ACTION_WORDS.get(word, ()))
            if word in _NEGATORS or word.endswith("n't"):
                negated = NEGATION_SCOPE
            words.append(word)
    return unigrams + [f"{a} {b}" for a, b in itertools.pairwise(words)]
