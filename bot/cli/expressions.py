"""`python -m bot expressions render|import|export`: pre-render faces, contact sheets, sprite packs."""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import sys
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from bot.config import Config
from bot.errors import ExpressionError
from bot.expressions import (
    MAX_PACK_BYTES,
    MAX_PACK_FILES,
    MAX_SPRITE_BYTES,
    ExpressionService,
    contact_sheet,
)
from bot.files import check_input, png_bytes, write_output
from bot.personas import PersonaLibrary
from bot.store import Store
from bot.terminal.safe import echo


def progress_bar(started: float) -> Callable[[int, int, str], None]:
    """A one-line progress bar on standard error for `ExpressionService.render_all`."""

    def show(done: int, total: int, label: str) -> None:
        _draw(done, total, started, label)
        if done == total:
            sys.stderr.write("\n")

    return show


def _draw(done: int, total: int, started: float, label: str) -> None:
    width = 30
    filled = width * done // max(total, 1)
    elapsed = time.perf_counter() - started
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {elapsed:5.1f}s {label:<16}")
    sys.stderr.flush()


@contextlib.contextmanager
def open_pack(source: Path) -> Iterator[list[tuple[str, Callable[[], bytes]]]]:
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
    try:
        pack = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ExpressionError(f"{source}: not a folder or a readable zip file ({exc})") from None
    with pack:
        members = [m for m in pack.infolist() if not m.is_dir() and m.filename.lower().endswith(".png")]
        _check_sizes(source.name, [(m.filename, m.file_size) for m in members])
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


async def expressions_command(config: Config, args: argparse.Namespace) -> int:
    library = PersonaLibrary.from_config(config)
    persona = library.load(args.persona)
    store = await Store.open(config.resolve(config.store.path))
    service = ExpressionService(config, store, library)
    try:
        if args.action == "render":
            unknown = [label for label in args.labels or [] if label not in persona.labels]
            if unknown:
                raise ExpressionError(f"labels not in {persona.slug}'s set: {', '.join(unknown)}")
            faces = await service.render_all(
                persona,
                list(args.labels or persona.labels),
                args.variants,
                progress_bar(time.perf_counter()),
            )
            sheet_path = args.sheet or service.cache_dir / persona.slug / "contact-sheet.png"
            if args.sheet is None:
                sheet_path.parent.mkdir(parents=True, exist_ok=True)
            write_output(sheet_path, png_bytes(contact_sheet(faces)))
            echo(f"rendered {len(faces)} faces; contact sheet: {sheet_path}")
        elif args.action == "import":
            with open_pack(args.source) as files:
                plan = service.import_sprites(persona, files)
            renamed = [f"{src} as {dst}" if src != dst else src for src, dst in plan.stored.items()]
            echo(f"imported {len(plan.stored)} sprites for {persona.slug}: {', '.join(renamed)}")
            for name, why in plan.unused.items():
                echo(f"  not used: {name}: {why}")
        elif args.action == "export":
            pack = await service.pack_files(persona)
            if not pack:
                raise ExpressionError(f"{persona.slug} has no rendered or imported faces yet")
            write_output(args.out, write_pack(pack))
            echo(f"wrote {len(pack)} sprites to {args.out}")
    finally:
        await service.close()
        await store.close()
    return 0
