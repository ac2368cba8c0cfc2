"""The LLM as emotion judge: after the reply, an out-of-character question lists the labels, the answer is
primed, and the model's probability of each whole label (every token of it, then the end of the answer)
is read from its next-token distributions, so the answer is always a valid label.

The question is appended to the reply's own conversation, so the evaluated prefix (persona, history,
reply) is reused. Probabilities are calibrated by dividing out the model's preference for each label on
a content-free reply (contextual calibration, Zhao et al., 2021).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from typing import Protocol

from bot.llm.base import Message

PRIME = "Emotion:"  # the answer's start, written for the model: it only has to name the label
CONTENT_FREE = "N/A"
MAX_CALIBRATIONS = 64  # (persona, labels) pairs whose calibration is kept in memory


class Classifier(Protocol):
    """What the judge needs from a model backend (bot.llm.LLMBackend provides it)."""

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str: ...

    async def classify(
        self, prompt: str, options: Sequence[str], *, session: Hashable = None
    ) -> dict[str, float]: ...


def question(name: str, labels: Sequence[str]) -> Message:
    return {
        "role": "user",
        "content": f"(OOC: {name}'s emotion: {', '.join(labels)}?)",
    }


def classification_messages(
    reply_messages: Sequence[Message], reply: str, name: str, labels: Sequence[str]
) -> list[Message]:
    """The reply's own conversation, the reply, then the question: a prefix-sharing extension."""
    return [*reply_messages, {"role": "assistant", "content": reply}, question(name, labels)]


def answer_variants(labels: Sequence[str]) -> dict[str, str]:
    """Spellings the model may answer with after the prime (a space, then the word, often capitalised)."""
    variants: dict[str, str] = {}
    for label in labels:
        for spelling in (label, label.capitalize()):
            variants.setdefault(f" {spelling}", label)
    return variants


def fold_variants(variant_probs: Mapping[str, float], variants: Mapping[str, str]) -> dict[str, float]:
    """Sum the variants' probabilities per label and normalise."""
    totals: dict[str, float] = {}
    for spelling, p in variant_probs.items():
        label = variants[spelling]
        totals[label] = totals.get(label, 0.0) + p
    norm = sum(totals.values()) or 1.0
    return {label: p / norm for label, p in totals.items()}


def calibrate(probs: Mapping[str, float], prior: Mapping[str, float]) -> dict[str, float]:
    """Divide out the model's label preference on a content-free reply, then renormalise."""
    floor = 1e-4  # a label the model never says on its own must not explode
    adjusted = {label: p / max(prior.get(label, floor), floor) for label, p in probs.items()}
    total = sum(adjusted.values()) or 1.0
    return {label: p / total for label, p in adjusted.items()}


class LLMJudge:
    def __init__(self, llm: Classifier) -> None:
        self.llm = llm
        self._priors: OrderedDict[tuple[str, tuple[str, ...]], dict[str, float]] = OrderedDict()

    async def _ask(
        self, messages: Sequence[Message], reply: str, name: str, labels: Sequence[str], session: Hashable
    ) -> dict[str, float]:
        import asyncio

        variants = answer_variants(labels)
        # Rendering the whole conversation is CPU work: keep it off the event loop.
        prompt = await asyncio.to_thread(
            self.llm.render, classification_messages(messages, reply, name, labels)
        )
        scores = await self.llm.classify(prompt + PRIME, list(variants), session=session)
        return fold_variants(scores, variants)

    async def probabilities(
        self,
        messages: Sequence[Message],
        reply: str,
        name: str,
        labels: Sequence[str],
        *,
        session: Hashable = None,
    ) -> dict[str, float]:
        """Calibrated probability of each label for the reply, judged in the reply's conversation."""
        raw = await self._ask(messages, reply, name, labels, session)
        key = (messages[0]["content"] if messages else "", tuple(labels))
        prior = self._priors.get(key)
        if prior is None:
            # The same system prompt and question with a reply that says nothing: what the model
            # answers regardless of the text. Asked once per persona and label set.
            prior = await self._ask(list(messages[:1]), CONTENT_FREE, name, labels, ("calibration", key))
            self._priors[key] = prior
            while len(self._priors) > MAX_CALIBRATIONS:
                self._priors.popitem(last=False)
        else:
            self._priors.move_to_end(key)
        return calibrate(raw, prior)
