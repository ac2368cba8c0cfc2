"""`python -m bot persona list|show|import|export|face`: the persona folder from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from bot.config import Config
from bot.errors import BotError
from bot.files import check_input, check_output, png_bytes, write_output
from bot.personas import PersonaLibrary
from bot.terminal.safe import echo


def persona_command(config: Config, args: argparse.Namespace) -> int:
    library = PersonaLibrary.from_config(config)
    if args.action == "list":
        for slug in library.names():
            try:
                echo(f"{slug:20} {library.load(slug).name}")
            except BotError as exc:
                echo(f"{slug:20} (broken: {exc})")
    elif args.action == "show":
        persona = library.load(args.name)
        echo(f"{persona.name} ({persona.slug})\n\n{persona.description}\n\nGreeting: {persona.greeting}")
        echo(f"Labels: {', '.join(persona.labels)}\nPortrait: {library.portrait_path(persona)}")
        echo(f"Lorebook entries: {len(persona.lorebook)}")
    elif args.action == "import":
        raw = _read_limited(args.file, config.persona.max_card_bytes)
        persona = library.import_card(raw, args.file.name, slug=args.name, force=args.force)
        echo(f"imported {persona.name!r} as persona '{persona.slug}' ({library.path_of(persona.slug)})")
    elif args.action == "export":
        persona = library.load(args.name)
        write_output(args.out, library.export_card(persona, args.spec))
        echo(f"wrote {args.out} ({args.spec} card)")
    elif args.action == "face":
        return _face_command(config, args)
    return 0


def _face_command(config: Config, args: argparse.Namespace) -> int:
    """Show where a persona's face is (the only part a render redraws), and optionally set it."""
    from bot.expressions import check_face_box, face_mask, face_preview
    from bot.images import decode_image
    from bot.personas import PersonaLibrary

    library = PersonaLibrary.from_config(config)
    persona = library.load(args.name)
    path = library.portrait_path(persona)
    if path is None or not path.is_file():
        raise BotError(f"persona '{persona.slug}' has no portrait file (set [portrait] image)")
    portrait = decode_image(
        path.read_bytes(), f"portrait {path}", max_pixels=config.persona.max_portrait_pixels, error=BotError
    )
    out = args.out or config.resolve(config.store.path).parent / f"{persona.slug}-face.png"
    if args.out is None:
        out.parent.mkdir(parents=True, exist_ok=True)
    check_output(out)  # before the box is saved: a bad --out changes nothing
    if args.box:
        box = (args.box[0], args.box[1], args.box[2], args.box[3])
        check_face_box(box, portrait.size, f"persona '{persona.slug}'")
        echo(f"face_box = {list(box)} saved in {library.set_face_box(persona, box)}")
        persona = library.load(persona.slug)
    settings = config.expressions
    mask = face_mask(persona, portrait.size, library.avatars, settings.mask_dilate, settings.mask_blur)
    write_output(out, png_bytes(face_preview(portrait, mask)))
    where = f"face_box = {list(persona.face_box)}" if persona.face_box else "automatic detection"
    echo(f"{persona.name}: {where}; preview (dimmed outside what a render may redraw): {out}")
    return 0


def _read_limited(path: Path, limit: int) -> bytes:
    check_input(path)
    try:
        size = path.stat().st_size
        if size > limit:
            raise BotError(f"{path}: {size} bytes, more than the {limit} allowed for a card")
        return path.read_bytes()
    except OSError as exc:
        raise BotError(f"{path}: cannot read: {exc.strerror}") from None
