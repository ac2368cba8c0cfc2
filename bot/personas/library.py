"""The persona folder (persona/*.toml) and the avatars folder: load, save, import and export cards.

A persona's id (its slug) is the file stem and the only thing ever joined to a path; display names from
cards are free text and never touch the filesystem.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import tomli_w
from PIL import Image

from bot.config import Config
from bot.errors import AlreadyImported, CardError, PersonaError
from bot.files import atomic_write, png_bytes, write_all
from bot.images import decode_image
from bot.personas.card_data import persona_card_data, persona_from_card
from bot.personas.cards import read_card, write_card_png
from bot.personas.persona import SLUG_RE, Persona, persona_from_toml, persona_to_toml

_log = logging.getLogger(__name__)
EDITABLE = frozenset({"name", "description", "greeting", "labels", "prompts"})


def check_slug(name: str) -> str:
    """A persona id as typed by a person, validated; never trusted as a path otherwise."""
    slug = name.strip().lower()
    if not SLUG_RE.match(slug):
        raise PersonaError(
            f"{name!r} is not a valid persona name (use lowercase letters, digits, '-' and '_', up to 48)"
        )
    return slug


# What card sites put between a character's name and its tagline: "Amanda || Blunt, Depressed Rogue".
TITLE_SEPARATORS = re.compile(r"\s*\|\|?\s*|\s+[~•—–-]\s+")
MAX_NAME_CHARS = 32  # longer, a card's "name" is usually a title


def shorter_name(name: str) -> str | None:
    """The name a card's title-like display name holds ("Amanda" in "Amanda || Blunt, Depressed Rogue"),
    or None when the name reads as a name."""
    head = TITLE_SEPARATORS.split(name.strip(), maxsplit=1)[0].strip()
    if head and head != name.strip():
        return head
    if len(name.strip()) > MAX_NAME_CHARS:
        return " ".join(name.split()[:2])
    return None


def _words(text: object) -> str:
    return " ".join(str(text).split())


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-")
    return slug or "persona"


# How to say which, where the card came in from the command line (the other front-ends word their own).
REIMPORT_HOW = "--force replaces it, --name NEW keeps both"


class PersonaLibrary:
    """The persona folder and the avatars folder, read and written safely."""

    def __init__(self, persona_dir: Path, avatars_dir: Path, *, max_card_bytes: int, max_pixels: int) -> None:
        self.dir = persona_dir
        self.avatars = avatars_dir
        self.max_card_bytes = max_card_bytes
        self.max_pixels = max_pixels

    @classmethod
    def from_config(cls, config: Config) -> PersonaLibrary:
        persona = config.persona
        return cls(
            config.resolve(persona.dir),
            config.resolve(persona.avatars_dir),
            max_card_bytes=persona.max_card_bytes,
            max_pixels=persona.max_portrait_pixels,
        )

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
            names = self.names()
            close = difflib.get_close_matches(slug, names, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise PersonaError(f"no persona named {slug!r} ({hint}available: {', '.join(names) or 'none'})")
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
        if not slug:
            same = self._imported_as(card.data)
            if same is not None and not force:
                raise AlreadyImported(filename, same, REIMPORT_HOW)
            slug = same or slugify(card.data["name"])
        slug = check_slug(slug)
        portrait_file = f"{slug}.png" if card.portrait is not None else ""
        try:
            persona = persona_from_card(card, slug, portrait_file)
        except PersonaError as exc:
            raise CardError(f"{filename}: {exc}") from None
        self.save(persona, card.portrait)
        # Debug: each front-end tells the person itself (the command line would say it twice).
        _log.debug("imported %s card %r as persona %s", card.spec, persona.name, slug)
        return persona

    def _imported_as(self, data: Mapping[str, Any]) -> str | None:
        """The persona a card already is: the one its name makes, or one with the same character (its
        description and greeting, whatever it was renamed to since), so a card is never silently
        imported twice."""
        base = slugify(str(data.get("name", "")))
        names = self.names()
        if base in names:
            return base
        wanted = (_words(data.get("description", "")), _words(data.get("first_mes", "")))
        if not any(wanted):
            return None
        for slug in names:
            try:
                persona = self.load(slug)
            except PersonaError:
                continue
            if (_words(persona.description), _words(persona.greeting)) == wanted:
                return slug
        return None

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

    def set_portrait(self, persona: Persona, portrait: Image.Image) -> Persona:
        """Give a persona a new portrait (saved as `<slug>.png`, re-encoded: nothing but its pixels
        travels). The old face region belonged to the old picture, so it goes with it."""
        updated = dataclasses.replace(
            persona, portrait=f"{check_slug(persona.slug)}.png", face_box=None, face_mask=""
        )
        self.save(updated, portrait)
        return self.load(persona.slug)

    def update(self, persona: Persona, changes: Mapping[str, Any]) -> Persona:
        """Change some of a persona's name, description, greeting, emotion labels and their prompt words
        (`labels`, `prompts`), validated as its file would be; all of it is written, or none."""
        unknown = set(changes) - EDITABLE
        if unknown:
            raise PersonaError(f"these cannot be edited here: {', '.join(sorted(unknown))}")
        table = persona_to_toml(persona)
        for key in ("name", "description", "greeting"):
            if key in changes:
                table[key] = changes[key]
        emotions = table["emotions"]
        if "labels" in changes:
            emotions["labels"] = changes["labels"]
        if "prompts" in changes:
            prompts = changes["prompts"]
            if isinstance(prompts, dict):  # an emptied box hands its label back to the default words
                prompts = {k: v for k, v in prompts.items() if not (isinstance(v, str) and not v.strip())}
            emotions["prompts"] = prompts
        updated = persona_from_toml(persona.slug, table, f"persona '{persona.slug}'", persona.card_extra)
        if set(updated.emotion_prompts) - set(updated.labels):
            stray = sorted(set(updated.emotion_prompts) - set(updated.labels))
            raise PersonaError(f"prompt words for labels the persona does not have: {', '.join(stray)}")
        self.save(updated)
        return updated

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
