"""Feelings a sentence denies: "I'm not scared of storms", "I don't hate you", "Don't be sad", "Nothing
to worry about". Both text judges read a denied feeling's word as a strong cue for that very feeling (the
encoder reads "I'm not scared" much as "I'm scared"), so a denied feeling may not set the face by itself:
its labels are damped in that sentence's reading (by DENIED, chosen on GoEmotions dev), and the face
comes from whatever else the sentence says. Hand-written for this project, not fitted to any data.

Not a denial: a feeling the same sentence also states ("I'm not sad, I'm furious" keeps anger), an
intensified one ("I've never been so happy", "I couldn't be more proud", "I can't stop laughing"), a
rhetorical question ("Isn't it funny?").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from bot.emotion.labels import TO_DEFAULT
from bot.emotion.text import negates

# Feeling words -> the default labels (faces) they name. Comparatives ("happier") are left out on purpose:
# "couldn't be happier" affirms.
_WORDS: dict[str, str] = {
    "joy": "happy glad excited thrilled pleased proud grateful thankful delighted cheerful ecstatic relieved"
    " hopeful optimistic impressed enjoy enjoying",
    "amusement": "funny amused amusing hilarious laughing laugh",
    "love": "love loved loves loving adore adores care cares caring",
    "sadness": "sad upset sorry disappointed depressed unhappy heartbroken miserable hurt regret lonely"
    " crying cry",
    "anger": "angry mad furious annoyed annoying irritated pissed hate hated hates disgusted offended upset"
    " bothered bother",
    "fear": "scared afraid frightened terrified worried worry nervous anxious fear fearful panic",
    "surprise": "surprised surprising shocked amazed astonished stunned",
    "confusion": "confused puzzled confusing",
    "embarrassment": "embarrassed ashamed embarrassing",
}
FACES: dict[str, frozenset[str]] = {}
for _face, _words in _WORDS.items():
    for _word in _words.split():
        FACES[_word] = FACES.get(_word, frozenset()) | {_face}

# How much of a denied feeling's probability is left in the sentence's reading (chosen on GoEmotions dev).
DENIED = 0.1
# Words a denial reaches past: "I'm not *really that* scared", "you don't *have to be* nervous"; not
# past a word that opens a clause of its own ("you won't believe *how* happy", "I don't know *if*").
_REACH = 3
_OPENS_CLAUSE = frozenset({"how", "what", "why", "when", "where", "who", "which", "if", "whether", "because"})
# After these negators "so", "this", "as" intensify ("never been so happy"); "more" does after any.
_NEVER = frozenset({"never", "nothing", "nobody", "no"})
_CAN_NOT_HELP = frozenset({"stop", "help", "wait"})
_CLAUSE = re.compile(r"[.,;:!]+|\s-+\s|\bbut\b", re.IGNORECASE)
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?", re.IGNORECASE)


def denied(sentence: str) -> frozenset[str]:
    """The default labels (faces) whose feeling the sentence denies and does not also state."""
    no: set[str] = set()
    yes: set[str] = set()
    for clause in _CLAUSE.split(sentence.replace("’", "'")):
        words = [w.lower() for w in _WORD.findall(clause)]
        question = clause.rstrip().endswith("?")
        for i, word in enumerate(words):
            faces = FACES.get(word)
            if not faces:
                continue
            (no if _is_denied(words, i, question) else yes).update(faces)
    return frozenset(no - yes)


def _is_denied(words: list[str], at: int, question: bool) -> bool:
    for start in range(max(0, at - _REACH - 1), at):
        if not negates(words[start]):
            continue
        between = words[start + 1 : at]
        if _OPENS_CLAUSE & set(between):
            continue
        if "more" in between or (words[start] in _NEVER and {"so", "this", "as"} & set(between)):
            return False  # intensified: "never been so happy", "couldn't be more proud"
        if between[:1] and between[0] in _CAN_NOT_HELP:
            return False  # "can't stop laughing", "couldn't help smiling"
        # A question opening with its negation is rhetorical: "Isn't it funny?", "Don't you love it?"
        return not (question and start == 0)
    return False


def damp(reading: Mapping[str, float], faces: frozenset[str]) -> dict[str, float]:
    """A reading over GoEmotions labels with the denied faces' labels damped, summing to 1 again."""
    if not faces:
        return dict(reading)
    damped = {label: p * f for (label, p), f in zip(reading.items(), factors(reading, faces), strict=True)}
    total = sum(damped.values())
    return {label: p / total for label, p in damped.items()}


def factors(labels: Iterable[str], faces: frozenset[str]) -> list[float]:
    """What each GoEmotions label's probability is multiplied by where `faces` are denied."""
    return [DENIED if TO_DEFAULT.get(label) in faces else 1.0 for label in labels]
