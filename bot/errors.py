"""Errors a person can act on. Each message names the thing that is wrong and, where useful, the fix."""

from __future__ import annotations


class BotError(Exception):
    """Base class: the message is written for the person running or using the bot."""


class ConfigError(BotError):
    """config.toml is missing or wrong."""


class PersonaError(BotError):
    """A persona file, name or character card is unusable."""


class CardError(PersonaError):
    """An uploaded or imported character card is malformed."""


class AlreadyImported(PersonaError):
    """A card that is already a persona (the same name, or the same character), imported again without
    saying whether to replace it or keep both. `slug` is the persona it already is."""

    def __init__(self, filename: str, slug: str, how: str) -> None:
        super().__init__(f"{filename}: already imported as '{slug}'; {how}")
        self.slug = slug


class InputError(BotError):
    """A chat message cannot be used as a turn (empty, or longer than the context)."""


class StoreError(BotError):
    """The history database cannot be opened or used (wrong path, not SQLite, newer schema)."""


class ModelError(BotError):
    """The model file is missing, unreadable or not a GGUF."""


class BusyError(BotError):
    """The model's queue is full; the caller should say so instead of waiting."""


class GenerationTimeout(BotError):
    """A model call ran past its timeout."""


class GaveWay(BotError):
    """Unprompted work (a persona speaking up on its own) stopped because a member's reply needs the
    model: nothing was posted or stored, and nothing needs saying."""


class ExpressionError(BotError):
    """A face region, portrait or inpainting model is unusable."""


MAX_DIGITS = 9  # a whole number typed by a person: a line number, a pixel; more is a mistake


def whole_number(text: str) -> int | None:
    """`text` as a whole number written with the digits 0-9, or None. str.isdigit() alone also accepts
    "²" and other digits int() refuses."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_DIGITS:
        return None
    return int(text)
