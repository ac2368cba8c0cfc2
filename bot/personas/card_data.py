"""Character cards <-> personas: which card field becomes which persona field, and this project's own card
extension (face region, appearance, emotion labels), validated like a persona file."""

from __future__ import annotations

from typing import Any

from bot.errors import CardError, PersonaError
from bot.personas.cards import TEXT_FIELDS, Card
from bot.personas.persona import Persona, expect, parse_face_box, parse_labels, parse_lorebook, parse_prompts

_CARD_TO_PERSONA = {"first_mes": "greeting", "mes_example": "example_dialogue"}


# The card's `extensions` key under which this project keeps what SillyTavern has no field for: the face
# region, the appearance words for redrawing it, the emotion labels and their prompt words.
CARD_EXTENSION = "expressive_rp_bot"


def persona_from_card(card: Card, slug: str, portrait_file: str) -> Persona:
    data = card.data
    kwargs: dict[str, Any] = {_CARD_TO_PERSONA.get(key, key): data.get(key, "") for key in TEXT_FIELDS}
    known = set(TEXT_FIELDS) | {"alternate_greetings", "tags"}
    extra = {key: value for key, value in data.items() if key not in known}
    kwargs["appearance"] = f"portrait of {kwargs['name']}"
    extensions = data.get("extensions") or {}
    if CARD_EXTENSION in extensions:
        # Ours: read into the persona's own fields, and written back from them on export.
        kwargs |= _face_settings(extensions[CARD_EXTENSION])
        extra["extensions"] = {k: v for k, v in extensions.items() if k != CARD_EXTENSION}
    return Persona(
        slug=slug,
        alternate_greetings=tuple(data.get("alternate_greetings", [])),
        tags=tuple(data.get("tags", [])),
        portrait=portrait_file,
        lorebook=tuple(parse_lorebook(data.get("character_book"), "card field 'character_book'", CardError)),
        card_extra=extra,
        **kwargs,
    )


def _face_settings(table: Any) -> dict[str, Any]:
    """This project's card extension, validated like a persona file (a card is untrusted)."""
    where = f"card extension '{CARD_EXTENSION}'"
    if not isinstance(table, dict):
        raise CardError(f"{where} must be an object, got {type(table).__name__}")
    checks = {
        "face_box": parse_face_box,
        "appearance": lambda value, at: expect(value, str, at, "text"),
        "labels": parse_labels,
        "emotion_prompts": parse_prompts,
    }
    settings: dict[str, Any] = {}
    for key, value in table.items():
        if key not in checks:
            raise CardError(f"{where}: unknown field {key!r}")
        try:
            settings[key] = checks[key](value, f"{where}: field '{key}'")
        except PersonaError as exc:
            raise CardError(str(exc)) from None
    return settings


def persona_card_data(persona: Persona) -> dict[str, Any]:
    """The persona as a V2/V3 card's data object (unknown fields from the imported card kept)."""
    data: dict[str, Any] = dict(persona.card_extra)
    extensions = dict(data.get("extensions") or {})
    ours: dict[str, Any] = {"labels": list(persona.labels)}
    if persona.face_box:
        ours["face_box"] = list(persona.face_box)
    if persona.appearance:
        ours["appearance"] = persona.appearance
    if persona.emotion_prompts:
        ours["emotion_prompts"] = dict(persona.emotion_prompts)
    extensions[CARD_EXTENSION] = ours
    data["extensions"] = extensions
    for key in TEXT_FIELDS:
        data[key] = getattr(persona, _CARD_TO_PERSONA.get(key, key))
    data["alternate_greetings"] = list(persona.alternate_greetings)
    data["tags"] = list(persona.tags)
    return data
