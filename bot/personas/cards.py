"""Character Card V1/V2/V3: read from JSON or PNG (tEXt 'chara' / 'ccv3'), write V2/V3 PNGs.

Cards are untrusted uploads. Size is checked before parsing, PNG chunks are walked by hand with bounds
checks (no decoding of compressed text), and the picture's pixel count is checked from its header before
any pixel is decoded, so a decompression bomb is refused cheaply.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image, PngImagePlugin

from bot.errors import CardError
from bot.images import PNG_SIGNATURE, decode_image

V2_SPEC = "chara_card_v2"
V3_SPEC = "chara_card_v3"

# Text fields every V2/V3 card has; V1 cards name some of them differently (same names as V2 data).
TEXT_FIELDS = (
    "name",
    "description",
    "personality",
    "scenario",
    "first_mes",
    "mes_example",
    "creator_notes",
    "system_prompt",
    "post_history_instructions",
    "creator",
    "character_version",
)

Spec = Literal["v1", "v2", "v3"]


@dataclass
class Card:
    """A parsed card: its spec, its `data` object in V2/V3 shape, and the PNG's picture if any."""

    spec: Spec
    data: dict[str, Any]
    portrait: Image.Image | None = None


def _png_text_chunks(raw: bytes) -> dict[str, str]:
    """tEXt chunks of a PNG, keyword -> text. Raises CardError on a truncated or malformed file."""
    chunks: dict[str, str] = {}
    pos = len(PNG_SIGNATURE)
    while pos < len(raw):
        if pos + 8 > len(raw):
            raise CardError("PNG file is truncated (incomplete chunk header)")
        length, kind = struct.unpack(">I4s", raw[pos : pos + 8])
        end = pos + 8 + length + 4
        if end > len(raw):
            raise CardError(f"PNG file is truncated (chunk {kind!r} runs past the end)")
        body = raw[pos + 8 : pos + 8 + length]
        crc = struct.unpack(">I", raw[pos + 8 + length : end])[0]
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise CardError(f"PNG file is corrupt (bad checksum in chunk {kind.decode('latin-1')!r})")
        if kind == b"tEXt":
            keyword, _, text = body.partition(b"\0")
            chunks[keyword.decode("latin-1").lower()] = text.decode("latin-1")
        if kind == b"IEND":
            break
        pos = end
    return chunks


def _decode_payload(text: str, chunk: str) -> Any:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise CardError(f"the PNG's '{chunk}' chunk is not valid base64") from None
    return _parse_json(raw, f"the PNG's '{chunk}' chunk")


MAX_JSON_DEPTH = 32  # real cards nest 4-6 levels; deeper is an attack on the parser
MAX_NUMBER_DIGITS = 30


def _number(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise CardError(f"a number in the card has {len(text)} digits")
    return int(text)


def _not_finite(name: str) -> float:
    raise CardError(f"the card holds {name}, which is not a JSON number")


def _check_values(value: Any, path: str = "card", depth: int = 0) -> None:
    """Every string encodable as UTF-8 (no lone surrogates) and nesting within MAX_JSON_DEPTH."""
    if depth > MAX_JSON_DEPTH:
        raise CardError(f"{path} is nested more than {MAX_JSON_DEPTH} levels deep")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise CardError(f"{path} holds an invalid character (a lone surrogate)") from None
    elif isinstance(value, float) and not math.isfinite(value):
        raise CardError(f"{path} is a number too large for a card ({value}); use a smaller one")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_values(key, f"{path} key", depth + 1)
            _check_values(item, f"{path}.{key}"[:120], depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_values(item, f"{path}[{i}]"[:120], depth + 1)


def _parse_json(raw: bytes, what: str) -> Any:
    try:
        value = json.loads(raw.decode("utf-8-sig"), parse_int=_number, parse_constant=_not_finite)
    except UnicodeDecodeError:
        raise CardError(f"{what} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise CardError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise CardError(f"{what} is nested too deeply") from None
    _check_values(value)
    return value


def _validate(payload: Any) -> Card:
    if not isinstance(payload, dict):
        raise CardError("the card's JSON must be an object")
    spec_name = payload.get("spec")
    if spec_name in (V2_SPEC, V3_SPEC):
        data = payload.get("data")
        if not isinstance(data, dict):
            raise CardError(f"a {spec_name} card needs a 'data' object")
        spec: Spec = "v2" if spec_name == V2_SPEC else "v3"
    elif spec_name is None:
        data, spec = dict(payload), "v1"
    else:
        raise CardError(f"unknown card spec {spec_name!r} (expected {V2_SPEC} or {V3_SPEC})")
    # What SillyTavern accepts is accepted, in the form the spec gives it: null for empty text or lists,
    # a number for character_version, a comma-separated tag string.
    for key in TEXT_FIELDS:
        value = data.get(key, "")
        if value is None:
            data[key] = ""
        elif key == "character_version" and isinstance(value, int | float) and not isinstance(value, bool):
            data[key] = str(value)
        elif not isinstance(value, str):
            raise CardError(f"card field '{key}' must be text, got {type(value).__name__}")
    if not data.get("name", "").strip():
        raise CardError("card field 'name' is missing or empty")
    for key in ("alternate_greetings", "tags", "group_only_greetings"):
        value = data.get(key, [])
        if value is None:
            data[key] = value = []
        elif key == "tags" and isinstance(value, str):
            data[key] = value = [tag.strip() for tag in value.split(",") if tag.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CardError(f"card field '{key}' must be a list of text")
    if data.get("extensions", {}) is None:
        data["extensions"] = {}  # SillyTavern writes null for "none"
    if not isinstance(data.get("extensions", {}), dict):
        raise CardError("card field 'extensions' must be an object")
    lore_entries(data.get("character_book"), "card field 'character_book'", CardError)
    return Card(spec, data)


@dataclass(frozen=True)
class LoreEntry:
    keys: tuple[str, ...]
    content: str
    secondary_keys: tuple[str, ...] = ()
    selective: bool = False
    constant: bool = False
    case_sensitive: bool = False
    insertion_order: int = 100
    enabled: bool = True
    use_regex: bool = False

    def triggered_by(self, text: str) -> bool:
        if not self.enabled:
            return False
        if self.constant:
            return True
        flags = 0 if self.case_sensitive else re.IGNORECASE

        def hit(keys: Iterable[str]) -> bool:
            # Whole-word match, so the key "art" does not fire on "start".
            return any(
                k.strip() and re.search(rf"(?<!\w){re.escape(k.strip())}(?!\w)", text, flags) for k in keys
            )

        return hit(self.keys) and (not self.selective or not self.secondary_keys or hit(self.secondary_keys))


def _key_list(value: Any, where: str, error: type[Exception]) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):  # SillyTavern accepts "a, b" for a list of keys
        return tuple(k.strip() for k in value.split(",") if k.strip())
    if isinstance(value, list) and all(isinstance(k, str) for k in value):
        return tuple(value)
    raise error(f"{where} must be a list of text, got {type(value).__name__}")


def _flag(entry: dict[str, Any], key: str, default: bool, where: str, error: type[Exception]) -> bool:
    value = entry.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise error(f"{where}: '{key}' must be true or false, got {type(value).__name__}")
    return value


def lore_entries(book: Any, where: str, error: type[Exception]) -> list[LoreEntry]:
    """A card's character_book, validated (cards are untrusted, and so is a persona's card data file).
    Raises `error` naming the entry and the field."""
    if book is None:
        return []
    if not isinstance(book, dict):
        raise error(f"{where} must be an object, got {type(book).__name__}")
    raw_entries = book.get("entries") or []
    if isinstance(raw_entries, dict):  # SillyTavern's world-info files key entries by id
        raw_entries = list(raw_entries.values())
    if not isinstance(raw_entries, list):
        raise error(f"{where}: 'entries' must be a list, got {type(raw_entries).__name__}")
    entries = []
    for i, entry in enumerate(raw_entries):
        at = f"{where} entry {i}"
        if not isinstance(entry, dict):
            raise error(f"{at} must be an object, got {type(entry).__name__}")
        content = entry.get("content") or ""
        if not isinstance(content, str):
            raise error(f"{at}: 'content' must be text, got {type(content).__name__}")
        order = entry.get("insertion_order", 100)
        if order is None:
            order = 100
        if isinstance(order, bool) or not isinstance(order, int | float) or not math.isfinite(order):
            raise error(f"{at}: 'insertion_order' must be a number, got {order!r:.40}")
        extensions = entry.get("extensions") or {}
        if not isinstance(extensions, dict):
            raise error(f"{at}: 'extensions' must be an object, got {type(extensions).__name__}")
        entries.append(
            LoreEntry(
                keys=_key_list(entry.get("keys"), f"{at}: 'keys'", error),
                content=content,
                secondary_keys=_key_list(entry.get("secondary_keys"), f"{at}: 'secondary_keys'", error),
                selective=_flag(entry, "selective", False, at, error),
                constant=_flag(entry, "constant", False, at, error),
                case_sensitive=_flag(entry, "case_sensitive", False, at, error),
                insertion_order=int(order),
                enabled=_flag(entry, "enabled", True, at, error),
                use_regex=bool(extensions.get("use_regex") or entry.get("use_regex")),
            )
        )
    return entries


def read_card(raw: bytes, filename: str, *, max_bytes: int, max_pixels: int) -> Card:
    """Parse a card file (PNG or JSON). Raises CardError saying what is wrong with it."""
    if len(raw) > max_bytes:
        raise CardError(f"{filename}: card file is {len(raw)} bytes, more than the {max_bytes} allowed")
    if not raw:
        raise CardError(f"{filename}: card file is empty")
    try:
        if raw.startswith(PNG_SIGNATURE):
            chunks = _png_text_chunks(raw)
            if "ccv3" in chunks:  # V3 wins: it is the newer, richer copy of the same card
                card = _validate(_decode_payload(chunks["ccv3"], "ccv3"))
            elif "chara" in chunks:
                card = _validate(_decode_payload(chunks["chara"], "chara"))
            else:
                raise CardError("PNG has no character data (no 'chara' or 'ccv3' text chunk)")
            card.portrait = decode_image(raw, "the card's picture", max_pixels=max_pixels, error=CardError)
            return card
        if filename.lower().endswith(".png"):
            raise CardError("file is named .png but is not a PNG image")
        if raw.startswith(b"PK\x03\x04"):
            raise CardError(
                "this is a zip (a CHARX card), which is not supported: export the card as PNG or JSON"
            )
        return _validate(_parse_json(raw, "card file"))
    except CardError as exc:
        raise CardError(f"{filename}: {exc}") from None


def card_json(data: dict[str, Any], spec: Literal["v2", "v3"]) -> dict[str, Any]:
    """Wrap a card's data object in the V2 or V3 envelope."""
    data = dict(data)
    if isinstance(data.get("character_book"), dict):
        data["character_book"] = _book_for(data["character_book"], spec)
    if spec == "v3":
        data.setdefault("group_only_greetings", [])
        data.setdefault("assets", [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}])
        return {"spec": V3_SPEC, "spec_version": "3.0", "data": data}
    # V3-only fields do not belong in a V2 card; SillyTavern keeps them in the ccv3 chunk.
    for key in (
        "assets",
        "group_only_greetings",
        "nickname",
        "creator_notes_multilingual",
        "source",
        "creation_date",
        "modification_date",
    ):
        data.pop(key, None)
    return {"spec": V2_SPEC, "spec_version": "2.0", "data": data}


def _book_for(book: dict[str, Any], spec: Literal["v2", "v3"]) -> dict[str, Any]:
    """A lorebook with the fields its spec requires and older cards leave out: `extensions` on the
    book and each entry, and V3's `use_regex` (false for entries upgraded from V2)."""
    book = dict(book)
    book.setdefault("extensions", {})
    entries = book.get("entries") or []
    if isinstance(entries, dict):  # SillyTavern's world-info layout: entries keyed by id
        entries = list(entries.values())
    upgraded = []
    for entry in entries:
        entry = dict(entry)
        entry.setdefault("extensions", {})
        entry.setdefault("enabled", True)
        entry.setdefault("insertion_order", 100)
        if spec == "v3":
            entry.setdefault("use_regex", False)
        upgraded.append(entry)
    book["entries"] = upgraded
    return book


def write_card_png(portrait: Image.Image, data: dict[str, Any], spec: Literal["v2", "v3"]) -> bytes:
    """A PNG of the portrait carrying the card, as SillyTavern writes it ('chara' V2, plus 'ccv3' for V3)."""
    info = PngImagePlugin.PngInfo()

    def encode(payload: dict[str, Any]) -> str:
        return base64.b64encode(json.dumps(payload, ensure_ascii=False).encode("utf-8")).decode("ascii")

    info.add_text("chara", encode(card_json(data, "v2")))
    if spec == "v3":
        info.add_text("ccv3", encode(card_json(data, "v3")))
    out = io.BytesIO()
    portrait.save(out, format="PNG", pnginfo=info)
    return out.getvalue()
