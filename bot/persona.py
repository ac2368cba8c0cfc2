"""Personas: TOML files in persona/, imported from and exported to character cards.

A persona's id (its slug) is the file stem and the only thing ever joined to a path; display names from
cards are free text and never touch the filesystem.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w
from PIL import Image

from bot.cards import TEXT_FIELDS, Card, LoreEntry, lore_entries, read_card, write_card_png
from bot.config import DEFAULT_LABELS
from bot.errors import CardError, PersonaError
from bot.files import atomic_write, png_bytes, write_all
from bot.images import decode_image

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


def _expect(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise PersonaError(f"{where} must be {what}, got {type(value).__name__}")
    return value


def _text_list(value: Any, where: str) -> tuple[str, ...]:
    _expect(value, list, where, "a list of text")
    return tuple(_expect(v, str, where, "a list of text") for v in value)


def _face_box(value: Any, where: str) -> tuple[int, int, int, int]:
    if not (
        isinstance(value, list)
        and len(value) == 4
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    ):
        raise PersonaError(f"{where} must be four non-negative integers [x, y, width, height]")
    return (value[0], value[1], value[2], value[3])


def _labels(value: Any, where: str) -> tuple[str, ...]:
    labels = _text_list(value, where)
    bad = [label for label in labels if not LABEL_RE.match(label)]
    if bad or len(labels) < 2 or len(set(labels)) != len(labels):
        raise PersonaError(f"{where} needs 2+ distinct lowercase words, bad: {bad or labels}")
    return labels


def _prompts(value: Any, where: str) -> dict[str, str]:
    _expect(value, dict, where, "a table")
    for label, words in value.items():
        _expect(words, str, f"{where[:-1]}.{label}'", "text")
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
            kwargs[key] = _expect(table[key], str, f"{source}: key '{key}'", "text")
    for key in _TOP_LISTS:
        if key in table:
            kwargs[key] = _text_list(table[key], f"{source}: key '{key}'")
    for name, keys in _TABLES.items():
        sub = _expect(table.get(name, {}), dict, f"{source}: [{name}]", "a table")
        for key in sub:
            if key not in keys:
                raise PersonaError(f"{source}: unknown key '{name}.{key}'")
    portrait = table.get("portrait", {})
    kwargs["portrait"] = _expect(portrait.get("image", ""), str, f"{source}: key 'portrait.image'", "text")
    kwargs["face_mask"] = _expect(
        portrait.get("face_mask", ""), str, f"{source}: key 'portrait.face_mask'", "text"
    )
    kwargs["appearance"] = _expect(
        portrait.get("appearance", ""), str, f"{source}: key 'portrait.appearance'", "text"
    )
    if "face_box" in portrait:
        kwargs["face_box"] = _face_box(portrait["face_box"], f"{source}: key 'portrait.face_box'")
    emotions = table.get("emotions", {})
    if "labels" in emotions:
        kwargs["labels"] = _labels(emotions["labels"], f"{source}: key 'emotions.labels'")
    kwargs["emotion_prompts"] = _prompts(emotions.get("prompts", {}), f"{source}: key 'emotions.prompts'")
    if not kwargs.get("name", "").strip():
        raise PersonaError(f"{source}: key 'name' is missing or empty")
    kwargs["lorebook"] = tuple(
        _lore_entries(extra.get("character_book"), f"{source}: card data 'character_book'")
    )
    return Persona(slug=slug, card_extra=dict(extra), **kwargs)


def _lore_entries(book: Any, where: str, error: type[PersonaError] = PersonaError) -> Iterable[LoreEntry]:
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


# -- cards <-> Persona --------------------------------------------------------------------------------

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
        lorebook=tuple(_lore_entries(data.get("character_book"), "card field 'character_book'", CardError)),
        card_extra=extra,
        **kwargs,
    )


def _face_settings(table: Any) -> dict[str, Any]:
    """This project's card extension, validated like a persona file (a card is untrusted)."""
    where = f"card extension '{CARD_EXTENSION}'"
    if not isinstance(table, dict):
        raise CardError(f"{where} must be an object, got {type(table).__name__}")
    checks = {
        "face_box": _face_box,
        "appearance": lambda value, at: _expect(value, str, at, "text"),
        "labels": _labels,
        "emotion_prompts": _prompts,
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


# -- the persona folder -------------------------------------------------------------------------------


def check_slug(name: str) -> str:
    """A persona id as typed by a person, validated; never trusted as a path otherwise."""
    slug = name.strip().lower()
    if not SLUG_RE.match(slug):
        raise PersonaError(
            f"{name!r} is not a valid persona name (use lowercase letters, digits, '-' and '_', up to 48)"
        )
    return slug


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-")
    return slug or "persona"


class PersonaLibrary:
    """The persona folder and the avatars folder, read and written safely."""

    def __init__(self, persona_dir: Path, avatars_dir: Path, *, max_card_bytes: int, max_pixels: int) -> None:
        self.dir = persona_dir
        self.avatars = avatars_dir
        self.max_card_bytes = max_card_bytes
        self.max_pixels = max_pixels

    def names(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.stem for p in self.dir.glob("*.toml") if SLUG_RE.match(p.stem))

    def path_of(self, slug: str) -> Path:
        return self.dir / f"{check_slug(slug)}.toml"

    def load(self, name: str) -> Persona:
        slug = check_slug(name)
        path = self.dir / f"{slug}.toml"
        if not path.is_file():
            known = ", ".join(self.names()) or "none"
            raise PersonaError(f"no persona named {slug!r} (available: {known})")
        try:
            table = tomllib.loads(path.read_text("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise PersonaError(f"{path}: not valid TOML: {exc}") from None
        extra: dict[str, Any] = {}
        extra_name = table.get("card", {}).get("extra", "") if isinstance(table.get("card"), dict) else ""
        if extra_name:
            extra_path = self.dir / Path(str(extra_name)).name  # never leave the persona folder
            try:
                extra = json.loads(extra_path.read_text("utf-8"))
            except (OSError, ValueError, RecursionError) as exc:
                raise PersonaError(f"{path}: card data file {extra_path.name} unreadable: {exc}") from None
            if not isinstance(extra, dict):
                raise PersonaError(f"{path}: card data file {extra_path.name} must hold a JSON object")
        return persona_from_toml(slug, table, str(path), extra)

    def portrait_path(self, persona: Persona) -> Path | None:
        """Where the persona's portrait is meant to be (the file may be missing)."""
        if not persona.portrait:
            return None
        return self.avatars / Path(persona.portrait).name

    def existing_portrait(self, persona: Persona) -> Path | None:
        """The persona's portrait file, or None if it has none or the file is missing."""
        path = self.portrait_path(persona)
        return path if path is not None and path.is_file() else None

    def import_card(
        self, raw: bytes, filename: str, *, slug: str | None = None, force: bool = False
    ) -> Persona:
        """Make a persona from a card file. Nothing is written unless the whole card is valid. A
        chosen `slug` that is taken is replaced only with `force`; without a slug, a free one is made."""
        card = read_card(raw, filename, max_bytes=self.max_card_bytes, max_pixels=self.max_pixels)
        if slug and check_slug(slug) in self.names() and not force:
            raise PersonaError(
                f"persona '{check_slug(slug)}' already exists; import with --force to replace it"
            )
        slug = check_slug(slug) if slug else self._free_slug(slugify(card.data["name"]))
        portrait_file = f"{slug}.png" if card.portrait is not None else ""
        try:
            persona = persona_from_card(card, slug, portrait_file)
        except PersonaError as exc:
            raise CardError(f"{filename}: {exc}") from None
        self.save(persona, card.portrait)
        _log.info("imported %s card %r as persona %s", card.spec, persona.name, slug)
        return persona

    def _free_slug(self, base: str) -> str:
        taken = set(self.names())
        if base not in taken:
            return base
        n = 2
        while f"{base}-{n}" in taken:
            n += 1
        return f"{base}-{n}"

    def save(self, persona: Persona, portrait: Image.Image | None = None) -> Path:
        """Write a persona (and its portrait): all of it or, if anything fails, none of it. Every file's
        bytes are made before the first is written; each file is replaced atomically."""
        slug = check_slug(persona.slug)
        extra_file = f"{slug}.card.json" if persona.card_extra else ""
        path = self.dir / f"{slug}.toml"
        writes: list[tuple[Path, bytes]] = []
        try:
            if extra_file:
                text = json.dumps(persona.card_extra, ensure_ascii=False, indent=1)
                writes.append((self.dir / extra_file, text.encode("utf-8")))
            if portrait is not None:
                writes.append((self.avatars / Path(persona.portrait).name, png_bytes(portrait)))
            writes.append((path, tomli_w.dumps(persona_to_toml(persona, extra_file)).encode("utf-8")))
        except (UnicodeEncodeError, ValueError, TypeError) as exc:
            raise PersonaError(f"persona '{slug}' cannot be saved: {exc}") from None
        self.dir.mkdir(parents=True, exist_ok=True)
        self.avatars.mkdir(parents=True, exist_ok=True)
        write_all(writes)
        return path

    def set_face_box(self, persona: Persona, box: tuple[int, int, int, int]) -> Path:
        """Record a persona's face region. Only the face_box line of its file changes where there is one,
        so the file's comments and layout stay; otherwise the file is rewritten."""
        path = self.path_of(persona.slug)
        updated = dataclasses.replace(persona, face_box=box)
        text = path.read_text("utf-8") if path.is_file() else ""
        line = re.compile(r"^face_box\s*=\s*\[[^\]\n]*\]", re.MULTILINE)
        if len(line.findall(text)) == 1:
            edited = line.sub(f"face_box = [{', '.join(map(str, box))}]", text)
            table = tomllib.loads(edited)
            if table.get("portrait", {}).get("face_box") == list(box):
                atomic_write(path, edited.encode("utf-8"))
                return path
        return self.save(updated)

    def export_card(self, persona: Persona, spec: Literal["v2", "v3"] = "v3") -> bytes:
        """A card PNG SillyTavern can import: the portrait with the persona embedded."""
        path = self.portrait_path(persona)
        if path is not None and path.is_file():
            portrait = decode_image(
                path.read_bytes(), f"portrait {path}", max_pixels=self.max_pixels, error=PersonaError
            )
        else:
            portrait = Image.new("RGB", (400, 600), (40, 40, 48))
        return write_card_png(portrait, persona_card_data(persona), spec)
