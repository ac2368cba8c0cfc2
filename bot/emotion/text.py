"""Text as the emotion classifier reads it: roleplay markup stripped, then word features.

The same functions serve training (scripts/train_emotion.py) and judging, so a model never sees text
prepared differently from what it was fitted on. Curly apostrophes read as straight ones, emoji and the
action verbs of roleplay add the plain words for their emotion (bot/emotion/lexicon.py), and the words
after a negation are marked (`not_happy`), so "I'm not happy" is not read as joy.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

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

# Politeness formulas at the head of a sentence: "Sorry, we don't deliver on Sundays" apologises for nothing
# and "Thanks, I'll take the window seat" is not joy. Intensified ones ("I'm so sorry", "thank you so
# much") are meant, and are not matched.
_FORMULA_HEAD = re.compile(
    r"^(?:(?:i'm |i am )?sorry(?: to bother you| for the wait)?|(?:my )?apologies|pardon(?: me)?|excuse me"
    r"|(?:many )?thanks(?: a lot)?|thank you|no thanks|no thank you|cheers|okay|ok|no|nope"
    r"|unfortunately|i'm afraid(?: that)?|i am afraid(?: that)?|please)"
    r"(?:[,;:]\s*(?:but\s+)?|\s+but\s+|[.!]+\s+|(?<=afraid)\s+(?!of\b|for\b|to\b)|(?<=that)\s+"
    r"|(?<=please)\s+)(?=\S)",
    re.IGNORECASE,
)
# A sentence that is nothing but a formula ("Thanks." "Sorry!"), read only when the reply says nothing else.
_FORMULA_ALONE = re.compile(
    r"^(?:(?:i'm )?sorry|(?:my )?apologies|pardon(?: me)?|excuse me|(?:many )?thanks(?: a lot)?|thank you"
    r"|no thanks|cheers|okay|ok|no|nope|please|unfortunately)(?:,?\s*but)?[.!,]*$",
    re.IGNORECASE,
)
T = TypeVar("T")


def without_formula_sentences(parts: list[str]) -> list[str]:
    """A reply's stripped sentences less those that are only a formula, unless nothing else is said."""
    return [p for p in parts if not _FORMULA_ALONE.match(p)] or parts


def reply_parts(text: str, names: Iterable[str], apart: bool, most: int | None = None) -> list[str]:
    """What a judge reads of a reply: its sentences and *actions*, stripped, less those that are only a
    formula (while more is said); read `apart`, each alone, or as one text; at most `most` of them (runs of
    neighbouring sentences, where there are more)."""
    names = list(names)
    parts = without_formula_sentences([p for p in (strip_roleplay(s, names) for s in segments(text)) if p])
    if not apart or len(parts) <= 1:
        return [" ".join(parts) or strip_roleplay(text, names)]
    if most is not None and len(parts) > most:
        step = -(-len(parts) // most)
        return [" ".join(parts[i : i + step]) for i in range(0, len(parts), step)]
    return parts


def formula_free(part: str) -> str | None:
    """The sentence without the formula it opens with; None where it opens with none."""
    rest = _FORMULA_HEAD.sub("", part, count=1)
    if rest == part or not rest.strip():
        return None
    # Read as the sentence it now is: the encoder's tokenizer keeps case, and "go home" after "Sorry,"
    # would read otherwise than the sentence "Go home".
    return rest[0].upper() + rest[1:]


def calmest(
    parts: Sequence[str], read: Callable[[list[str]], Sequence[T]], calm: Callable[[T], bool]
) -> list[T]:
    """Each sentence's reading, read past the formula it opens with: without it, unless only the sentence
    with it reads calm. A formula can take an emotion away ("Sorry, we don't deliver on Sundays" is not
    the complaint "we don't deliver on Sundays" reads as) but never set one by itself. The reply is read
    whole without its formulas (one call to `read`), and with them only where a sentence with one reads
    other than calm without it (nothing else can change): an int8 encoder's reading of a sentence depends
    a little on the sentences read beside it, and a reply whose formulas are all read past must read
    exactly as it would without them."""
    parts = list(parts)
    bare = [formula_free(p) for p in parts]
    without = list(read([b if b is not None else p for b, p in zip(bare, parts, strict=True)]))
    if all(b is None or calm(o) for b, o in zip(bare, without, strict=True)):
        return without
    with_them = read(parts)
    return [
        w if b is not None and calm(w) and not calm(o) else o
        for b, w, o in zip(bare, with_them, without, strict=True)
    ]


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


def negates(word: str) -> bool:
    """A lower-case word that negates what follows it ("not", "never", "don't")."""
    return word in _NEGATORS or word.endswith("n't")


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
            if negates(word):
                negated = NEGATION_SCOPE
            words.append(word)
    return unigrams + [f"{a} {b}" for a, b in itertools.pairwise(words)]
