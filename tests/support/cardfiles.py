"""Character card files built byte by byte, the way other tools (SillyTavern, Chub) write them,
without this project's writer, so import is tested against independent output."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from typing import Any

from PIL import Image


def chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def plain_png(size: tuple[int, int] = (64, 96), color: tuple[int, int, int] = (200, 120, 90)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def with_text_chunks(png: bytes, chunks: dict[str, str]) -> bytes:
    """Insert tEXt chunks just before IEND, as SillyTavern's png-chunks-encode does."""
    iend = png.rindex(b"IEND") - 4
    extra = b"".join(
        chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))
        for key, value in chunks.items()
    )
    return png[:iend] + extra + png[iend:]


def b64json(payload: Any) -> str:
    return base64.b64encode(json.dumps(payload).encode("utf-8")).decode("ascii")


V2_CARD: dict[str, Any] = {
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "data": {
        "name": "Captain Rook",
        "description": "{{char}} is an old airship captain who distrusts {{user}}.",
        "personality": "gruff, loyal",
        "scenario": "A storm over the cloud sea.",
        "first_mes": "*{{char}} grips the wheel.* Hold on, {{user}}!",
        "mes_example": "<START>\n{{user}}: Hi\n{{char}}: Hmph.",
        "creator_notes": "made by hand",
        "system_prompt": "{{original}} Keep replies under three sentences.",
        "post_history_instructions": "{{original}} Stay gruff.",
        "alternate_greetings": ["Another day, another storm."],
        "tags": ["pirate", "airship"],
        "creator": "someone",
        "character_version": "3",
        "extensions": {"depth_prompt": {"prompt": "x", "depth": 4}, "talkativeness": "0.5", "fav": False},
        "character_book": {
            "name": "Rook's world",
            "scan_depth": 4,
            "token_budget": 200,
            "extensions": {},
            "entries": [
                {
                    "keys": ["Aurora"],
                    "content": "The Aurora is Rook's airship.",
                    "extensions": {},
                    "enabled": True,
                    "insertion_order": 1,
                    "id": 0,
                },
                {
                    "keys": ["storm"],
                    "content": "Storms here are violet.",
                    "extensions": {},
                    "enabled": True,
                    "insertion_order": 2,
                    "selective": True,
                    "secondary_keys": ["sky"],
                    "id": 1,
                },
            ],
        },
    },
}

V3_CARD: dict[str, Any] = {
    "spec": "chara_card_v3",
    "spec_version": "3.0",
    "data": {
        **V2_CARD["data"],
        "name": "Captain Rook V3",
        "nickname": "Rook",
        "group_only_greetings": ["Crew, to me!"],
        "assets": [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}],
        "creation_date": 1700000000,
        "source": ["https://example.invalid/rook"],
    },
}
