"""Emotion label sets: GoEmotions' 28 labels (also SillyTavern's classifier labels), the bot's 10 default
labels, and how any one of them falls back onto whatever labels a persona actually has.

The grouping of the 28 into the 10 defaults follows the Ekman grouping published with GoEmotions
(Demszky et al., 2020), with joy split into joy, amusement and love and with embarrassment and confusion
kept apart, because each of those looks different on a face. Curiosity and approval show the neutral
face: in a conversation they are a question asked with interest and an "Ok" or "Sure", and a confused
frown or a beaming smile would misread both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

# GoEmotions' label ids, in the dataset's order (27 = neutral).
GOEMOTIONS: tuple[str, ...] = (
    "admiration",
    "amusement",
    "anger",
    "annoyance",
    "approval",
    "caring",
    "confusion",
    "curiosity",
    "desire",
    "disappointment",
    "disapproval",
    "disgust",
    "embarrassment",
    "excitement",
    "fear",
    "gratitude",
    "grief",
    "joy",
    "love",
    "nervousness",
    "optimism",
    "pride",
    "realization",
    "relief",
    "remorse",
    "sadness",
    "surprise",
    "neutral",
)


# Each GoEmotions label -> the default label whose face shows it.
TO_DEFAULT: dict[str, str] = {
    "admiration": "joy",
    "amusement": "amusement",
    "anger": "anger",
    "annoyance": "anger",
    "approval": "neutral",
    "caring": "love",
    "confusion": "confusion",
    "curiosity": "neutral",
    "desire": "love",
    "disappointment": "sadness",
    "disapproval": "anger",
    "disgust": "anger",
    "embarrassment": "embarrassment",
    "excitement": "joy",
    "fear": "fear",
    "gratitude": "joy",
    "grief": "sadness",
    "joy": "joy",
    "love": "love",
    "nervousness": "fear",
    "optimism": "joy",
    "pride": "joy",
    "realization": "surprise",
    "relief": "joy",
    "remorse": "sadness",
    "sadness": "sadness",
    "surprise": "surprise",
    "neutral": "neutral",
}

# A default label a persona lacks -> the broader Ekman label (GoEmotions' grouping) to use instead.
_BROADER: dict[str, str] = {
    "amusement": "joy",
    "love": "joy",
    "embarrassment": "sadness",
    "confusion": "surprise",
}

# Other spellings people and sprite packs use for the same emotions.
SYNONYMS: dict[str, str] = {
    "happy": "joy",
    "happiness": "joy",
    "glad": "joy",
    "smile": "joy",
    "smiling": "joy",
    "excited": "excitement",
    "amused": "amusement",
    "laugh": "amusement",
    "laughing": "amusement",
    "sad": "sadness",
    "crying": "sadness",
    "cry": "sadness",
    "angry": "anger",
    "mad": "anger",
    "annoyed": "annoyance",
    "disgusted": "disgust",
    "scared": "fear",
    "afraid": "fear",
    "fearful": "fear",
    "nervous": "nervousness",
    "worried": "nervousness",
    "surprised": "surprise",
    "shocked": "surprise",
    "confused": "confusion",
    "curious": "curiosity",
    "embarrassed": "embarrassment",
    "blush": "embarrassment",
    "blushing": "embarrassment",
    "shy": "embarrassment",
    "loving": "love",
    "affection": "love",
    "calm": "neutral",
    "default": "neutral",
    "idle": "neutral",
    "normal": "neutral",
}


def canonical(name: str) -> str:
    """A label as written by a person or a sprite pack -> GoEmotions' spelling where one exists."""
    word = name.strip().lower().replace(" ", "_")
    return SYNONYMS.get(word, word)


def fallbacks(goemotion: str) -> tuple[str, ...]:
    """The labels that may show a GoEmotions label, best first."""
    group = TO_DEFAULT[goemotion]
    chain = [goemotion, group, _BROADER.get(group, group), "neutral"]
    return tuple(dict.fromkeys(chain))


def projection(labels: Sequence[str]) -> dict[str, str]:
    """GoEmotions label -> the persona label that shows it. Persona labels may be any subset of the 28,
    the 10 defaults, or their synonyms; a GoEmotions label with no place in the set is left out."""
    by_canonical: dict[str, str] = {}
    for label in labels:
        by_canonical.setdefault(canonical(label), label)
    mapping: dict[str, str] = {}
    for goemotion in GOEMOTIONS:
        for candidate in fallbacks(goemotion):
            if candidate in by_canonical:
                mapping[goemotion] = by_canonical[candidate]
                break
    return mapping


def unjudgeable(labels: Iterable[str]) -> list[str]:
    """Persona labels the text classifier can never pick (no GoEmotions label maps onto them)."""
    shown = set(projection(list(labels)).values())
    return [label for label in labels if label not in shown]


def project(probabilities: Mapping[str, float], labels: Sequence[str]) -> dict[str, float]:
    """GoEmotions probabilities -> probabilities over a persona's labels (summed, renormalised)."""
    mapping = projection(labels)
    out = dict.fromkeys(labels, 0.0)
    for goemotion, p in probabilities.items():
        target = mapping.get(goemotion)
        if target is not None:
            out[target] += p
    total = sum(out.values())
    if total <= 0:
        return {label: 1.0 / len(labels) for label in labels}
    return {label: p / total for label, p in out.items()}
