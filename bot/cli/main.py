"""Command line: run | chat | studio | setup | persona … | expressions … (benchmarks: `./run bench`).

This module parses the arguments and hands each command to its front-end: Discord, the terminal chat, or
the persona and expression commands beside it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bot.config import Config, load_config
from bot.errors import BotError, ConfigError
from bot.terminal.safe import SafeFormatter, echo

if TYPE_CHECKING:
    from bot.discord.client import Alongside

EXIT_USAGE = 2
DESCRIPTION = (
    "A Discord roleplay bot whose portrait changes expression with the conversation. "
    "Also: ./run test (lint, types, tests) and ./run bench (benchmarks)."
)
# Model threads (llama.cpp, torch) run Python between native calls; with the default 5 ms GIL switch
# interval the event loop can wait 10-20 ms for the GIL. 1 ms halves the worst loop lag (bench discord).
GIL_SWITCH_INTERVAL = 0.001


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="./run", description=DESCRIPTION)
    parser.add_argument("--config", default="config.toml", help="settings file (default: config.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve Discord (needs DISCORD_TOKEN)")
    run.add_argument("--studio", action="store_true", help="serve the studio page alongside (see `studio`)")
    _studio_address(run)

    studio = sub.add_parser("studio", help="the local web page for personas, faces and channels")
    _studio_address(studio)

    setup = sub.add_parser("setup", help="pick, download and configure models that fit your GPU")
    setup.add_argument("--yes", action="store_true", help="download without asking")
    setup.add_argument("--models", help="where to put them (default: models/ beside the config file)")

    chat = sub.add_parser("chat", help="roleplay in the terminal on the same engine and history")
    chat.add_argument("--persona", help="switch this channel to a persona first")
    chat.add_argument("--channel", type=int, default=0, help="history channel id (default 0: the terminal)")
    chat.add_argument(
        "--user", default=_account_name(), help="your name in the story (default: your login name)"
    )
    chat.add_argument(
        "--no-images", action="store_true", help="print the face's file path instead of drawing the face"
    )
    chat.add_argument(
        "--face-width",
        type=int,
        help="the face's width in terminal columns (default: [expressions] terminal_face_width)",
    )

    persona = sub.add_parser("persona", help="list, show, import and export personas")
    psub = persona.add_subparsers(dest="action", required=True)
    psub.add_parser("list", help="every persona, with its display name")
    show = psub.add_parser("show", help="a persona's description, greeting, emotions and portrait")
    show.add_argument("name")
    imp = psub.add_parser("import", help="import a character card (PNG or JSON, V1/V2/V3)")
    imp.add_argument("file", type=Path)
    imp.add_argument("--name", help="persona id to use (default: from the card's name)")
    imp.add_argument("--force", action="store_true", help="replace an existing persona of that id")
    exp = psub.add_parser("export", help="export a persona as a card PNG SillyTavern imports")
    exp.add_argument("name")
    exp.add_argument("out", type=Path)
    exp.add_argument("--spec", choices=["v2", "v3"], default="v3")
    face = psub.add_parser("face", help="preview a persona's face region on its portrait, or set it")
    face.add_argument("name")
    where = face.add_mutually_exclusive_group()
    where.add_argument("--box", type=int, nargs=4, metavar=("X", "Y", "W", "H"), help="set the face region")
    where.add_argument(
        "--detect", action="store_true", help="find the face and save it when the match is strong"
    )
    face.add_argument("--out", type=Path, help="preview PNG (default: data/NAME-face.png)")

    expressions = sub.add_parser("expressions", help="pre-render faces, sprite packs")
    esub = expressions.add_subparsers(dest="action", required=True)
    render = esub.add_parser("render", help="render a persona's expressions and a contact sheet")
    render.add_argument("--persona", required=True)
    render.add_argument("--labels", nargs="*", help="only these labels")
    render.add_argument("--variants", type=int, default=1, help="renders per label (different seeds)")
    render.add_argument("--sheet", type=Path, help="contact sheet path (default: cache folder)")
    spi = esub.add_parser("import", help="import a sprite pack (folder or zip of label.png files)")
    spi.add_argument("--persona", required=True)
    spi.add_argument("source", type=Path)
    spe = esub.add_parser("export", help="export a persona's faces as a sprite pack zip")
    spe.add_argument("--persona", required=True)
    spe.add_argument("out", type=Path)

    return parser


def _studio_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="the studio's address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="the studio's port (default: 8765)")


async def _studio(config: Config, args: argparse.Namespace) -> int:
    from bot.core.app import open_engine
    from bot.studio.server import studio_running

    async with open_engine(config) as engine, studio_running(engine, args.host, args.port):
        echo("studio: Ctrl-C stops it")
        await asyncio.Event().wait()  # until Ctrl-C
    return 0


def _alongside(args: argparse.Namespace) -> Alongside | None:
    """What `run --studio` serves beside Discord, on the same engine."""
    if not args.studio:
        return None
    from bot.studio.server import check_host, studio_running

    check_host(args.host)  # before Discord logs in
    return lambda engine: studio_running(engine, args.host, args.port)


def _account_name() -> str:
    """The system account's name, as the story's default name for the person at the terminal."""
    import getpass

    try:
        name = getpass.getuser().strip()
    except (OSError, KeyError):  # no login name (some containers)
        name = ""
    return name[:1].upper() + name[1:] if name else "You"


async def _chat(config: Config, args: argparse.Namespace) -> int:
    from bot.core.app import open_engine
    from bot.terminal.console import Console

    async with open_engine(config) as engine:
        if args.persona:
            await engine.admin.set_persona(args.channel, args.persona)
        history = config.resolve(config.store.path).parent / "chat-history"
        width = args.face_width or config.expressions.terminal_face_width
        console = Console(
            engine, args.channel, args.user, images=not args.no_images, history_file=history, face_width=width
        )
        await console.run()
    return 0


SQLITE_MAX_INT = 2**63 - 1  # ids are stored as SQLite integers
MAX_VARIANTS = 16  # renders per label from one command


def check_numbers(args: argparse.Namespace) -> None:
    """Integer arguments within what the bot can store or do, as one line each."""
    channel = getattr(args, "channel", 0)
    if not 0 <= channel <= SQLITE_MAX_INT:
        raise BotError(f"--channel must be between 0 and {SQLITE_MAX_INT}, not {channel}")
    variants = getattr(args, "variants", 1)
    if not 1 <= variants <= MAX_VARIANTS:
        raise BotError(f"--variants must be between 1 and {MAX_VARIANTS}, not {variants}")
    port = getattr(args, "port", 0)
    if not 0 <= port <= 65535:
        raise BotError(f"--port must be between 0 (any free port) and 65535, not {port}")
    width = getattr(args, "face_width", None)
    if width is not None and not 8 <= width <= 160:
        raise BotError(f"--face-width must be between 8 and 160 columns, not {width}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose
        else logging.WARNING
        if args.command in ("chat", "setup")
        else logging.INFO,
        handlers=[handler],
    )
    try:
        check_numbers(args)
        if args.command == "setup":  # before the config is loaded: it may point at models not there yet
            from bot.cli.setup import setup_command

            return setup_command(Path(args.config), args)
        config = load_config(args.config)
        if args.command == "chat":
            return asyncio.run(_chat(config, args))
        if args.command == "persona":
            from bot.cli.persona import persona_command

            return persona_command(config, args)
        if args.command == "run":
            from bot.discord.client import run_bot

            return run_bot(config, _alongside(args))
        if args.command == "expressions":
            from bot.cli.expressions import expressions_command

            return asyncio.run(expressions_command(config, args))
        if args.command == "studio":
            return asyncio.run(_studio(config, args))
    except ConfigError as exc:
        echo(f"config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BotError as exc:
        echo(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
