"""A persona: the character as the bot plays it, and its TOML form (persona/NAME.toml), validated field by
field: a persona file may come from anywhere."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.config import DEFAULT_LABELS
from bot.errors import PersonaError
from bot.personas.cards import LoreEntry, lore_entries

_log = logging.getLogger(__name__)
MAX_AVATAR_URL = 2048  # characters; longer addresses are not avatars but mistakes (or abuse)

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")
LABEL_RE = re.compile(r"^[a-z][a-z_-]{0,31}$")
DEFAULT_SYSTEM_PROMPT = (
    "You are {{char}} in a roleplay chat on Discord. Stay in character. Write only {{char}}'s next reply: "
    "short, vivid, in the first person, never speaking for the other participants."
)
_MACRO_RE = re.compile(r"\{\{\s*(char|user)\s*\}\}|<(BOT|USER)>", re.IGNORECASE)


@dataclass(frozen=True)
class Persona:
    slug: str
    name: str
    description: str = ""
    personality: str = ""
    scenario: str = ""
    greeting: str = ""
    alternate_greetings: tuple[str, ...] = ()
    example_dialogue: str = ""
    system_prompt: str = ""
    post_history_instructions: str = ""
    creator_notes: str = ""
    creator: str = ""
    character_version: str = ""
    tags: tuple[str, ...] = ()
    portrait: str = ""  # file in avatars/
    face_box: tuple[int, int, int, int] | None = None  # x, y, width, height
    face_mask: str = ""  # file in avatars/ (white = face)
    appearance: str = ""  # base prompt for redrawing the face
    labels: tuple[str, ...] = DEFAULT_LABELS
    emotion_prompts: Mapping[str, str] = field(default_factory=dict)
    lorebook: tuple[LoreEntry, ...] = ()
    card_extra: Mapping[str, Any] = field(default_factory=dict)  # unknown card fields, kept verbatim

    def fill(self, text: str, user: str = "User") -> str:
        """Expand {{char}} / {{user}} (and V1's <BOT> / <USER>)."""
        return _MACRO_RE.sub(
            lambda m: self.name if (m.group(1) or m.group(2)).lower() in ("char", "bot") else user, text
        )

    def system_text(self) -> str:
        """The system prompt, with {{original}} standing for the bot's default one."""
        own = self.system_prompt.strip()
        if not own:
            return DEFAULT_SYSTEM_PROMPT
        return own.replace("{{original}}", DEFAULT_SYSTEM_PROMPT)

    def avatar_url(self) -> str | None:
        """A public picture of the character, where its card names one: a V3 card's icon asset at an
        https address. Discord shows it as the avatar of the persona's webhook posts (it takes avatars
        only by URL, so a local portrait cannot be one)."""
        assets = self.card_extra.get("assets")
        for asset in assets if isinstance(assets, list) else []:
            uri = asset.get("uri") if isinstance(asset, dict) and asset.get("type") == "icon" else None
            if isinstance(uri, str) and uri.startswith("https://") and len(uri) <= MAX_AVATAR_URL:
                return uri
        return None

    def post_history_text(self) -> str:
        # The bot has no default post-history instruction, so {{original}} expands to nothing.
        return self.post_history_instructions.replace("{{original}}", "").strip()


# -- TOML <-> Persona ---------------------------------------------------------------------------------

_TOP_TEXT = (
    "name",
    "description",
    "personality",
    "scenario",
    "greeting",
    "example_dialogue",
    "system_prompt",
    "post_history_instructions",
    "creator_notes",
    "creator",
    "character_version",
)
_TOP_LISTS = ("alternate_greetings", "tags")
_TABLES = {
    "portrait": ("image", "face_box", "face_mask", "appearance"),
    "emotions": ("labels", "prompts"),
    "card": ("extra",),
}


def expect(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise PersonaError(f"{where} must be {what}, got {type(value).__name__}")
    return value


def _text_list(value: Any, where: str) -> tuple[str, ...]:
    expect(value, list, where, "a list of text")
    return tuple(expect(v, str, where, "a list of text") for v in value)


def parse_face_box(value: Any, where: str) -> tuple[int, int, int, int]:
    if not (
        isinstance(value, list)
        and len(value) == 4
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    ):
        raise PersonaError(f"{where} must be four non-negative integers [x, y, width, height]")
    return (value[0], value[1], value[2], value[3])


def parse_labels(value: Any, where: str) -> tuple[str, ...]:
    labels = _text_list(value, where)
    bad = [label for label in labels if not LABEL_RE.match(label)]
    if bad or len(labels) < 2 or len(set(labels)) != len(labels):
        raise PersonaError(f"{where} needs 2+ distinct lowercase words, bad: {bad or labels}")
    return labels


def parse_prompts(value: Any, where: str) -> dict[str, str]:
    expect(value, dict, where, "a table")
    for label, words in value.items():
        expect(words, str, f"{where[:-1]}.{label}'", "text")
    return dict(value)


def persona_from_toml(slug: str, table: dict[str, Any], source: str, extra: Mapping[str, Any]) -> Persona:
    """Validate a persona table (already parsed). Raises PersonaError naming the file and key."""
    known = set(_TOP_TEXT) | set(_TOP_LISTS) | set(_TABLES)
    for key in table:
        if key not in known:
            raise PersonaError(f"{source}: unknown key '{key}'")
    kwargs: dict[str, Any] = {}
    for key in _TOP_TEXT:
        if key in table:
            kwargs[key] = expect(table[key], str, f"{source}: key '{key}'", "text")
    for key in _TOP_LISTS:
        if key in table:
            kwargs[key] = _text_list(table[key], f"{source}: key '{key}'")
    for name, keys in _TABLES.items():
        sub = expect(table.get(name, {}), dict, f"{source}: [{name}]", "a table")
        for key in sub:
            if key not in keys:
                raise PersonaError(f"{source}: unknown key '{name}.{key}'")
    portrait = table.get("portrait", {})
    kwargs["portrait"] = expect(portrait.get("image", ""), str, f"{source}: key 'portrait.image'", "text")
    kwargs["face_mask"] = expect(
        portrait.get("face_mask", ""), str, f"{source}: key 'portrait.face_mask'", "text"
    )
    kwargs["appearance"] = expect(
        portrait.get("appearance", ""), str, f"{source}: key 'portrait.appearance'", "text"
    )
    if "face_box" in portrait:
        kwargs["face_box"] = parse_face_box(portrait["face_box"], f"{source}: key 'portrait.face_box'")
    emotions = table.get("emotions", {})
    if "labels" in emotions:
        kwargs["labels"] = parse_labels(emotions["labels"], f"{source}: key 'emotions.labels'")
    kwargs["emotion_prompts"] = parse_prompts(
        emotions.get("prompts", {}), f"{source}: key 'emotions.prompts'"
    )
    if not kwargs.get("name", "").strip():
        raise PersonaError(f"{source}: key 'name' is missing or empty")
    kwargs["lorebook"] = tuple(
        parse_lorebook(extra.get("character_book"), f"{source}: card data 'character_book'")
    )
    return Persona(slug=slug, card_extra=dict(extra), **kwargs)


def parse_lorebook(book: Any, where: str, error: type[PersonaError] = PersonaError) -> Iterable[LoreEntry]:
    for entry in lore_entries(book, where, error):
        if entry.use_regex:
            # Regex keys from an untrusted card could hang the bot (catastrophic backtracking).
            _log.warning("lorebook entry %r uses regex keys; skipped", entry.keys[:3])
            continue
        yield entry


def persona_to_toml(persona: Persona, extra_file: str = "") -> dict[str, Any]:
    table: dict[str, Any] = {key: getattr(persona, key) for key in _TOP_TEXT if getattr(persona, key)}
    table["name"] = persona.name
    for key in _TOP_LISTS:
        if getattr(persona, key):
            table[key] = list(getattr(persona, key))
    portrait: dict[str, Any] = {"image": persona.portrait}
    if persona.face_box:
        portrait["face_box"] = list(persona.face_box)
    if persona.face_mask:
        portrait["face_mask"] = persona.face_mask
    if persona.appearance:
        portrait["appearance"] = persona.appearance
    table["portrait"] = portrait
    table["emotions"] = {"labels": list(persona.labels), "prompts": dict(persona.emotion_prompts)}
    if extra_file:
        table["card"] = {"extra": extra_file}
    return table
