"""`python -m bot persona list|show|import|export|face`: the persona folder from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from bot.config import Config
from bot.errors import BotError
from bot.expressions.detect import FaceReport, locate_face, needs_looking_for
from bot.files import check_input, check_output, write_output
from bot.personas import PersonaLibrary, shorter_name
from bot.terminal.safe import echo


def persona_command(config: Config, args: argparse.Namespace) -> int:
    library = PersonaLibrary.from_config(config)
    if args.action == "list":
        slugs = library.names()
        width = max((len(slug) for slug in slugs), default=0) + 2  # columns that hold the longest id
        for slug in slugs:
            try:
                echo(f"{slug:{width}}{library.load(slug).name}")
            except BotError as exc:
                echo(f"{slug:{width}}(broken: {exc})")
    elif args.action == "show":
        persona = library.load(args.name)
        echo(f"{persona.name} ({persona.slug})\n\n{persona.description}\n\nGreeting: {persona.greeting}")
        echo(f"Labels: {', '.join(persona.labels)}\nPortrait: {library.portrait_path(persona)}")
        echo(f"Lorebook entries: {len(persona.lorebook)}")
    elif args.action == "import":
        raw = _read_limited(args.file, config.persona.max_card_bytes)
        persona = library.import_card(raw, args.file.name, slug=args.name, force=args.force)
        echo(f"imported {persona.name!r} as persona '{persona.slug}' ({library.path_of(persona.slug)})")
        if (short := shorter_name(persona.name)) is not None:
            echo(
                f"{persona.name!r} reads like a title: the persona says it and Discord shows it as its"
                f" nickname. A shorter name, such as {short!r}: edit `name` in the studio (./run studio)"
                f" or in {library.path_of(persona.slug)}"
            )
        if needs_looking_for(library, persona):
            try:
                found = locate_face(
                    library, persona, config.expressions, config.persona.max_portrait_pixels, detect=True
                )
            except BotError as exc:  # the card is imported; only its face could not be looked for
                echo(f"{persona.name}: its face could not be looked for: {exc}")
            else:
                _say_where(found, _preview_path(config, persona.slug))
    elif args.action == "export":
        persona = library.load(args.name)
        write_output(args.out, library.export_card(persona, args.spec))
        echo(f"wrote {args.out} ({args.spec} card)")
    elif args.action == "face":
        return _face_command(config, args)
    return 0


HOW_TO_SET = (
    "drag the box over it in the studio (./run studio), or run `./run persona face {slug} --box {{box}}`"
)


def _face_command(config: Config, args: argparse.Namespace) -> int:
    """Show where a persona's face is (where a render redraws and drawn marks go); find or set it."""
    library = PersonaLibrary.from_config(config)
    persona = library.load(args.name)
    out = args.out or _preview_path(config, persona.slug)
    check_output(out)  # before the box is saved: a bad --out changes nothing
    box = (args.box[0], args.box[1], args.box[2], args.box[3]) if args.box else None
    report = locate_face(
        library, persona, config.expressions, config.persona.max_portrait_pixels, box=box, detect=args.detect
    )
    _say_where(report, out)
    return 0


def _preview_path(config: Config, slug: str) -> Path:
    out = config.resolve(config.store.path).parent / f"{slug}-face.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _say_where(report: FaceReport, out: Path) -> None:
    """One line on what was found or set, and where the preview is."""
    persona, how = report.persona, HOW_TO_SET.format(slug=report.persona.slug)
    kept = "the face region stays as it was" if report.preview is not None else "faces show as a badge"
    if report.preview is not None:
        write_output(out, report.preview)
    shown = f"preview: {out}" if report.preview is not None else ""
    if report.finding is not None:
        saved = f", saved in {report.saved}" if report.saved is not None else ""
        echo(f"{persona.name}: {report.finding.describe(how, kept)}{saved}" + (f"; {shown}" if saved else ""))
        if saved or report.preview is None:
            return
    elif report.saved is not None:
        echo(f"face_box = {list(persona.face_box or ())} saved in {report.saved}; {shown}")
        return
    if report.preview is None:
        echo(
            f"{persona.name} has no face region: its faces are drawn on a corner badge. Find it with"
            f" `./run persona face {persona.slug} --detect`, or {how.format(box='X Y WIDTH HEIGHT')}"
        )
        return
    region = (
        f"face_box = {list(persona.face_box)}" if persona.face_box else f"face_mask = {persona.face_mask}"
    )
    echo(f"{persona.name}: {region}; {shown} (dimmed outside the face region)")


def _read_limited(path: Path, limit: int) -> bytes:
    check_input(path)
    try:
        size = path.stat().st_size
        if size > limit:
            raise BotError(f"{path}: {size} bytes, more than the {limit} allowed for a card")
        return path.read_bytes()
    except OSError as exc:
        raise BotError(f"{path}: cannot read: {exc.strerror}") from None
