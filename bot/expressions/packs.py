"""Sprite packs as files: a folder or a zip of `label.png` pictures read in (counted and sized before
anything is decompressed, each picture read only when asked for), and a zip written out."""

from __future__ import annotations

import contextlib
import functools
import io
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from bot.errors import ExpressionError
from bot.expressions.sprites import MAX_PACK_BYTES, MAX_PACK_FILES, MAX_SPRITE_BYTES
from bot.files import check_input

PackFiles = list[tuple[str, Callable[[], bytes]]]


@contextlib.contextmanager
def open_pack(source: Path) -> Iterator[PackFiles]:
    """The PNG files of a sprite pack (a folder or a zip), each read only when asked for, so that an
    import holds one picture at a time. Counts and sizes are checked before anything is decompressed,
    and each read stops at the size limit whatever the zip's header claims."""
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() == ".png")
        for path in paths:  # a link to nowhere, a folder or a pipe named like a picture
            if not path.is_file():
                raise ExpressionError(f"{path}: not a regular file; remove it from the pack")
        _check_sizes(source.name, [(p.name, p.stat().st_size) for p in paths])
        yield [(p.name, functools.partial(_read_file, p)) for p in paths]
        return
    check_input(source)  # neither a folder nor a file (a pipe would block the import for good)
    with _zip_members(source, source.name) as files:
        yield files


@contextlib.contextmanager
def open_pack_bytes(raw: bytes, name: str) -> Iterator[PackFiles]:
    """The PNG files of an uploaded zip, with the same checks as `open_pack`."""
    if len(raw) > MAX_PACK_BYTES:
        raise ExpressionError(f"{name}: {len(raw)} bytes, more than the {MAX_PACK_BYTES} allowed for a pack")
    with _zip_members(io.BytesIO(raw), name) as files:
        yield files


@contextlib.contextmanager
def _zip_members(source: Path | io.BytesIO, name: str) -> Iterator[PackFiles]:
    try:
        pack = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ExpressionError(f"{name}: not a folder or a readable zip file ({exc})") from None
    with pack:
        members = [m for m in pack.infolist() if not m.is_dir() and m.filename.lower().endswith(".png")]
        _check_sizes(name, [(m.filename, m.file_size) for m in members])
        # Only the base name is used: a member named ../../x.png cannot escape the sprite folder.
        yield [(Path(m.filename).name, functools.partial(_read_member, pack, m)) for m in members]


def _check_sizes(pack: str, sizes: list[tuple[str, int]]) -> None:
    if len(sizes) > MAX_PACK_FILES:
        raise ExpressionError(f"{pack} has {len(sizes)} images, more than {MAX_PACK_FILES}")
    for name, size in sizes:
        if size > MAX_SPRITE_BYTES:
            raise ExpressionError(f"{name} unpacks to more than {MAX_SPRITE_BYTES} bytes")
    total = sum(size for _, size in sizes)
    if total > MAX_PACK_BYTES:
        raise ExpressionError(f"{pack} unpacks to {total} bytes, more than {MAX_PACK_BYTES}")


def _read_file(path: Path) -> bytes:
    with path.open("rb") as handle:
        return _bounded(handle.read(MAX_SPRITE_BYTES + 1), path.name)


def _read_member(pack: zipfile.ZipFile, member: zipfile.ZipInfo) -> bytes:
    try:
        with pack.open(member) as handle:
            return _bounded(handle.read(MAX_SPRITE_BYTES + 1), member.filename)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise ExpressionError(f"{member.filename}: cannot be unpacked ({exc})") from None
    except NotImplementedError as exc:  # a compression zipfile cannot decode (PPMd); before RuntimeError,
        # of which it is a kind
        why = f"{member.filename}: cannot be unpacked ({exc}); pack it with Deflate"
        raise ExpressionError(why) from None
    except RuntimeError as exc:  # zipfile's word for an encrypted member
        why = f"{member.filename}: cannot be unpacked ({exc}); pack it without a password"
        raise ExpressionError(why) from None


def _bounded(data: bytes, name: str) -> bytes:
    if len(data) > MAX_SPRITE_BYTES:
        raise ExpressionError(f"{name} unpacks to more than {MAX_SPRITE_BYTES} bytes")
    return data


def write_pack(files: dict[str, Path]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as pack:  # PNGs do not compress further
        for name, path in files.items():
            pack.write(path, name)
    return out.getvalue()
