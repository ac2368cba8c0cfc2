"""Reads a GGUF file's metadata header (scalars only) without loading the model, so that settings can be
checked against the model before llama.cpp allocates anything."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

from bot.errors import ModelError

GGUF_MAGIC = b"GGUF"
MAX_KEYS = 100_000
MAX_STRING = 1 << 26  # a key or a string value longer than 64 MB means a broken file

# GGUF value types: id -> struct format (None: string, array)
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


def _read(handle: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = handle.read(size)
    if len(data) != size:
        raise ValueError("the file ends inside its header")
    return struct.unpack(fmt, data)[0]


def _string(handle: BinaryIO) -> str:
    length = _read(handle, "<Q")
    if length > MAX_STRING:
        raise ValueError(f"a string of {length} bytes in the header")
    data = handle.read(length)
    if len(data) != length:
        raise ValueError("the file ends inside its header")
    return data.decode("utf-8", errors="replace")


def _value(handle: BinaryIO, kind: int) -> Any:
    if kind in _SCALARS:
        return _read(handle, _SCALARS[kind])
    if kind == _STRING:
        return _string(handle)
    if kind == _ARRAY:
        item_kind, count = _read(handle, "<I"), _read(handle, "<Q")
        if item_kind in _SCALARS:
            handle.seek(struct.calcsize(_SCALARS[item_kind]) * count, 1)  # skipped: not needed
        else:
            for _ in range(count):
                _value(handle, item_kind)
        return None
    raise ValueError(f"unknown value type {kind} in the header")


def read_metadata(path: Path) -> dict[str, Any]:
    """The scalar and string metadata of a GGUF file (arrays such as the vocabulary are skipped)."""
    try:
        with path.open("rb") as handle:
            if handle.read(4) != GGUF_MAGIC:
                raise ModelError(f"{path} is not a GGUF model file (wrong magic bytes)")
            version = _read(handle, "<I")
            if version < 2:
                raise ModelError(f"{path} is a GGUF version {version} file; llama.cpp needs version 2 or 3")
            _read(handle, "<Q")  # tensor count
            count = _read(handle, "<Q")
            if count > MAX_KEYS:
                raise ValueError(f"{count} metadata keys")
            metadata: dict[str, Any] = {}
            for _ in range(count):
                key = _string(handle)
                value = _value(handle, _read(handle, "<I"))
                if value is not None:
                    metadata[key] = value
            return metadata
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model file: {exc.strerror}") from None
    except (ValueError, struct.error) as exc:
        raise ModelError(f"{path}: broken GGUF header: {exc}") from None


def context_cache_bytes(metadata: dict[str, Any], n_ctx: int) -> int:
    """Bytes of llama.cpp's f16 key/value cache for n_ctx tokens (0 when the header does not say)."""
    arch = metadata.get("general.architecture", "")
    layers = int(metadata.get(f"{arch}.block_count", 0))
    width = int(metadata.get(f"{arch}.embedding_length", 0))
    heads = int(metadata.get(f"{arch}.attention.head_count", 0))
    kv_heads = int(metadata.get(f"{arch}.attention.head_count_kv", heads))
    if not (layers and width and heads):
        return 0
    return 2 * layers * n_ctx * (width // heads) * kv_heads * 2  # keys and values, 2 bytes each
