"""Which emotion a reply shows: the reply model itself picks one label, constrained to the label set.

The question is appended after the reply in the same conversation, so the model's already-evaluated
prefix (persona, history, reply) is reused and the judgement costs only the question's few tokens.
Probabilities come from the model's own distribution restricted to the labels, so the answer is always
a valid label, and smoothing keeps the face steady when the signal is weak.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bot.config import EmotionConfig
from bot.prompt import Message


@dataclass(frozen=True)
class EmotionResult:
    label: str  # the expression to show (after smoothing)
    raw_label: str  # the most probable label for this reply alone
    probabilities: dict[str, float]


def question(name: str) -> Message:
    # Short on purpose: it is evaluated every turn. The label list lives in the system message,
    # which stays in the cached prefix (see prompt.system_message).
    return {"role": "user", "content": f"(OOC: {name}'s emotion in one word?)"}


def classification_messages(reply_messages: Sequence[Message], reply: str, name: str) -> list[Message]:
    """The reply's own conversation, the reply, then the question: a prefix-sharing extension."""
    return [*reply_messages, {"role": "assistant", "content": reply}, question(name)]


def answer_variants(labels: Sequence[str]) -> dict[str, str]:
    """Spellings the model may answer with -> label. Models often capitalise a one-word answer."""
    variants: dict[str, str] = {}
    for label in labels:
        for spelling in (label, label.capitalize()):
            variants.setdefault(spelling, label)
    return variants


def fold_variants(variant_probs: Mapping[str, float], variants: Mapping[str, str]) -> dict[str, float]:
    """Sum the variants' probabilities per label and normalise."""
    totals: dict[str, float] = {}
    for spelling, p in variant_probs.items():
        label = variants[spelling]
        totals[label] = totals.get(label, 0.0) + p
    norm = sum(totals.values()) or 1.0
    return {label: p / norm for label, p in totals.items()}


def smooth(probs: Mapping[str, float], previous: str | None, config: EmotionConfig) -> str:
    """The label to show: the new best, unless it is weak or barely beats the previous expression."""
    best = max(probs, key=lambda label: probs[label])
    if previous is None or previous not in probs or best == previous:
        return best
    if probs[best] < config.min_confidence or probs[best] - probs[previous] < config.switch_margin:
        return previous
    return best
