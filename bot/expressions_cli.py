"""`python -m bot expressions render|import|export`: pre-render faces, contact sheets, sprite packs."""

from __future__ import annotations

import argparse
import io
import sys
import time
import zipfile
from pathlib import Path

from bot.app import persona_library
from bot.config import Config
from bot.errors import ExpressionError
from bot.expressions import MAX_PACK_FILES, MAX_SPRITE_BYTES, ExpressionService, contact_sheet, sprite_name
from bot.persona import Persona
from bot.store import Store


def progress(done: int, total: int, started: float, label: str) -> None:
    width = 30
    filled = width * done // max(total, 1)
    elapsed = time.perf_counter() - started
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {elapsed:5.1f}s {label:<16}")
    sys.stderr.flush()


async def render_all(
    service: ExpressionService, persona: Persona, labels: list[str], variants: int
) -> list[tuple[str, Path]]:
    """Render every label x variant (cached ones come straight back), showing progress."""
    jobs = [(label, v) for label in labels for v in range(variants)]
    faces: list[tuple[str, Path]] = []
    started = time.perf_counter()
    for i, (label, variant) in enumerate(jobs):
        progress(i, len(jobs), started, label)
        path = service.sprite(persona, label, variant) or await service.render(persona, label, variant)
        faces.append((sprite_name(label, variant).removesuffix(".png"), path))
    progress(len(jobs), len(jobs), started, "done")
    sys.stderr.write("\n")
    return faces


def read_pack(source: Path) -> list[tuple[str, bytes]]:
    """Sprite files from a folder or a zip; sizes are checked before anything is decompressed."""
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() == ".png")[: MAX_PACK_FILES + 1]
        for path in paths:
            if path.stat().st_size > MAX_SPRITE_BYTES:
                raise ExpressionError(f"{path.name} is larger than {MAX_SPRITE_BYTES} bytes")
        return [(p.name, p.read_bytes()) for p in paths]
    try:
        with zipfile.ZipFile(source) as pack:
            members = [m for m in pack.infolist() if not m.is_dir() and m.filename.lower().endswith(".png")]
            if len(members) > MAX_PACK_FILES:
                raise ExpressionError(f"{source.name} has more than {MAX_PACK_FILES} images")
            for member in members:
                if member.file_size > MAX_SPRITE_BYTES:
                    raise ExpressionError(f"{member.filename} unpacks to more than {MAX_SPRITE_BYTES} bytes")
            # Only the base name is used: a member named ../../x.png cannot escape the sprite folder.
            return [(Path(m.filename).name, pack.read(m)) for m in members]
    except (zipfile.BadZipFile, OSError) as exc:
        raise ExpressionError(f"{source}: not a folder or a readable zip file ({exc})") from None


def write_pack(files: dict[str, Path]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as pack:  # PNGs do not compress further
        for name, path in files.items():
            pack.write(path, name)
    return out.getvalue()


async def expressions_command(config: Config, args: argparse.Namespace) -> int:
    library = persona_library(config)
    persona = library.load(args.persona)
    store = await Store.open(config.resolve(config.store.path))
    service = ExpressionService(config, store, library)
    try:
        if args.action == "render":
            unknown = [label for label in args.labels or [] if label not in persona.labels]
            if unknown:
                raise ExpressionError(f"labels not in {persona.slug}'s set: {', '.join(unknown)}")
            faces = await render_all(
                service, persona, list(args.labels or persona.labels), max(1, args.variants)
            )
            sheet_path = args.sheet or service.cache_dir / persona.slug / "contact-sheet.png"
            sheet_path.parent.mkdir(parents=True, exist_ok=True)
            contact_sheet(faces).save(sheet_path)
            print(f"rendered {len(faces)} faces; contact sheet: {sheet_path}")
        elif args.action == "import":
            plan = service.import_sprites(persona, read_pack(args.source))
            renamed = [f"{src} as {dst}" if src != dst else src for src, dst in plan.stored.items()]
            print(f"imported {len(plan.stored)} sprites for {persona.slug}: {', '.join(renamed)}")
            for name, why in plan.unused.items():
                print(f"  not used: {name}: {why}")
        elif args.action == "export":
            files = await service.pack_files(persona)
            if not files:
                raise ExpressionError(f"{persona.slug} has no rendered or imported faces yet")
            args.out.write_bytes(write_pack(files))
            print(f"wrote {len(files)} sprites to {args.out}")
    finally:
        await service.close()
        await store.close()
    return 0
