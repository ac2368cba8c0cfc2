"""`python -m bot expressions render|import|export`: pre-render faces, contact sheets, sprite packs."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from bot.config import Config
from bot.errors import BotError, ExpressionError
from bot.expressions import ExpressionService, contact_sheet
from bot.expressions.packs import open_pack, write_pack
from bot.expressions.recipe import check_labels
from bot.files import png_bytes, write_output
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


async def expressions_command(config: Config, args: argparse.Namespace) -> int:
    library = PersonaLibrary.from_config(config)
    persona = library.load(args.persona)
    store = await Store.open(config.resolve(config.store.path))
    service = ExpressionService(config, store, library)
    try:
        if args.action == "render":
            check_labels(persona, args.labels or [])
            try:
                faces = await service.render_all(
                    persona,
                    list(args.labels or persona.labels),
                    args.variants,
                    progress_bar(time.perf_counter()),
                )
            except BotError:
                sys.stderr.write("\n")  # the error's line starts after the progress bar, not on it
                raise
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
