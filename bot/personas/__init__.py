"""Personas (the characters the bot plays) and the character cards they come from and go to."""

from __future__ import annotations

from bot.personas.card_data import CARD_EXTENSION
from bot.personas.library import PersonaLibrary, check_slug, shorter_name
from bot.personas.persona import DEFAULT_SYSTEM_PROMPT, LoreEntry, Persona

__all__ = [
    "CARD_EXTENSION",
    "DEFAULT_SYSTEM_PROMPT",
    "LoreEntry",
    "Persona",
    "PersonaLibrary",
    "check_slug",
    "shorter_name",
]
