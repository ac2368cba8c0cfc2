"""Several personas in one channel: who is addressed, who speaks next, and how each persona sees the
others' lines. No I/O here; the engine drives it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from bot.core.prompt import Turn
from bot.llm.base import Message
from bot.personas import Persona
from bot.store import StoredMessage

SPEAKER_PRIME = "Next:"  # the answer's start, written for the model: it only has to name the speaker


def _name_pattern(name: str) -> re.Pattern[str]:
    # Whole words only: "Mira" must not match "Miranda"; an "@" before the name is a mention.
    return re.compile(rf"(?<![\w]){re.escape(name)}(?![\w])", re.IGNORECASE)


def named_in(text: str, cast: Sequence[Persona], exclude: str | None = None) -> Persona | None:
    """The cast member a message speaks to: the first one named (by display name, first name or id),
    ignoring `exclude` (a persona does not address itself)."""
    found: list[tuple[int, int, Persona]] = []
    for order, persona in enumerate(cast):
        if persona.slug == exclude:
            continue
        names = {persona.name, persona.name.split()[0] if persona.name.split() else "", persona.slug}
        hits = [m.start() for n in names if len(n) >= 2 and (m := _name_pattern(n).search(text))]
        if hits:
            found.append((min(hits), order, persona))
    return min(found, key=lambda hit: (hit[0], hit[1]))[2] if found else None


def next_in_order(cast: Sequence[Persona], last: str | None) -> Persona:
    """The member after the one who spoke last (the lead first)."""
    slugs = [p.slug for p in cast]
    if last not in slugs:
        return cast[0]
    return cast[(slugs.index(last) + 1) % len(cast)]


def last_speaker(history: Sequence[StoredMessage]) -> str | None:
    return next((m.persona for m in reversed(history) if m.role == "assistant"), None)


def turns_for(persona: Persona, history: Sequence[StoredMessage]) -> list[Turn]:
    """The history as one persona sees it: its own replies are its turns; everyone else's, members and
    other personas alike, are spoken lines under their names."""
    return [
        Turn("assistant", m.author_name, m.content)
        if m.role == "assistant" and m.persona == persona.slug
        else Turn("user", m.author_name, m.content)
        for m in history
    ]


def speaker_question(candidates: Sequence[str]) -> Message:
    return {"role": "user", "content": f"(OOC: Who speaks next: {', '.join(candidates)}?)"}


def speaker_options(candidates: Sequence[str]) -> dict[str, str]:
    """Spellings of each candidate after the prime (a space, then the name or its first word)."""
    options: dict[str, str] = {}
    for name in candidates:
        for spelling in (name, name.split()[0] if name.split() else name):
            options.setdefault(f" {spelling}", name)
    return options
