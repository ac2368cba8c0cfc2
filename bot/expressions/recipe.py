"""What decides a render: the prompt words for each emotion, the seed, and the job whose recipe is hashed
into the render's cache key."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from bot.errors import ExpressionError
from bot.personas import Persona

# Prompt words for the default labels; a persona's [emotions.prompts] overrides any of them.
DEFAULT_EMOTION_WORDS: dict[str, str] = {
    "neutral": "calm neutral expression, relaxed face",
    "joy": "happy smile, bright eyes",
    "amusement": "amused grin, playful eyes, laughing",
    "sadness": "sad expression, teary eyes, downturned mouth",
    "anger": "angry expression, furrowed brows, clenched jaw",
    "fear": "scared expression, wide eyes, trembling mouth",
    "surprise": "surprised expression, raised eyebrows, open mouth",
    "love": "loving gaze, soft smile, blushing cheeks",
    "embarrassment": "embarrassed expression, deep blush, averted eyes",
    "confusion": "confused expression, tilted head, raised eyebrow",
}


def emotion_prompt(persona: Persona, label: str) -> str:
    words = persona.emotion_prompts.get(label) or DEFAULT_EMOTION_WORDS.get(label) or f"{label} expression"
    base = persona.appearance.strip() or f"portrait of {persona.name}"
    return f"{base}, {words}, detailed face, best quality"


def check_labels(persona: Persona, labels: Sequence[str]) -> None:
    """Raise ExpressionError naming the labels that are not in the persona's set."""
    unknown = [label for label in labels if label not in persona.labels]
    if unknown:
        raise ExpressionError(f"labels not in {persona.slug}'s set: {', '.join(unknown)[:200]}")


def seed_for(base: int, persona: str, label: str, variant: int) -> int:
    digest = hashlib.sha256(f"{base}:{persona}:{label}:{variant}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class RenderJob:
    persona: Persona
    label: str
    variant: int
    prompt: str
    seed: int
    key: str
    source_hash: str  # portrait + mask + persona prompts: renders made from other sources are stale
