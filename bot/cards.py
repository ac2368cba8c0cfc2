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
import struct
import zlib
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


def _parse_json(raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise CardError(f"{what} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise CardError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno})") from None


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
    for key in TEXT_FIELDS:
        value = data.get(key, "")
        if value is None:
            data[key] = ""
        elif not isinstance(value, str):
            raise CardError(f"card field '{key}' must be text, got {type(value).__name__}")
    if not data.get("name", "").strip():
        raise CardError("card field 'name' is missing or empty")
    for key in ("alternate_greetings", "tags", "group_only_greetings"):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CardError(f"card field '{key}' must be a list of text")
    if not isinstance(data.get("extensions", {}), dict):
        raise CardError("card field 'extensions' must be an object")
    book = data.get("character_book")
    if book is not None:
        if not isinstance(book, dict) or not isinstance(book.get("entries", []), list):
            raise CardError("card field 'character_book' must be an object with an 'entries' list")
        for i, entry in enumerate(book.get("entries", [])):
            if not isinstance(entry, dict):
                raise CardError(f"character_book entry {i} must be an object")
            keys = entry.get("keys", [])
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise CardError(f"character_book entry {i}: 'keys' must be a list of text")
            if not isinstance(entry.get("content", ""), str):
                raise CardError(f"character_book entry {i}: 'content' must be text")
    return Card(spec, data)


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
        return _validate(_parse_json(raw, "card file"))
    except CardError as exc:
        raise CardError(f"{filename}: {exc}") from None


def card_json(data: dict[str, Any], spec: Literal["v2", "v3"]) -> dict[str, Any]:
    """Wrap a card's data object in the V2 or V3 envelope."""
    data = dict(data)
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
