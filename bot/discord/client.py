"""The discord.py Bot: safe defaults at construction, engine and store passed in, cogs wired in setup_hook."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import signal
import sys
from collections.abc import Callable

import aiohttp
import discord
import yarl
from discord.ext import commands

from bot.config import Config, discord_token
from bot.core import Engine
from bot.discord.outbox import file_unsent_replies
from bot.errors import BotError
from bot.files import atomic_write

_log = logging.getLogger(__name__)

EXTENSIONS = (
    "bot.discord.cogs.chat",
    "bot.discord.cogs.admin",
    "bot.discord.cogs.cast",
    "bot.discord.cogs.memory",
    "bot.discord.cogs.privacy",
    "bot.discord.cogs.presence",
    "bot.discord.replies",
)
RETRY_DELAYS = (2.0, 5.0, 10.0, 30.0, 60.0)  # seconds between tries while Discord is unreachable
COMMAND_STAMP = "slash-commands.sha256"  # beside the database: the command tree last registered


def point_at(api_base: str, gateway_url: str) -> None:
    """Use a Discord-compatible server other than discord.com (self-hosted servers, the test server).
    discord.py keeps both as class attributes, so this applies to every client in the process."""
    if api_base:
        discord.http.Route.BASE = api_base.rstrip("/")
    if gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


class RoleplayBot(commands.Bot):
    """Slash commands and channel chat over one Engine."""

    def __init__(self, config: Config, engine: Engine) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        intents.guild_messages = True
        intents.message_content = True  # privileged: enable it in the developer portal (see README)
        intents.dm_messages = config.discord.direct_messages  # otherwise Discord never sends the bot DMs
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            allowed_mentions=discord.AllowedMentions.none(),  # the LLM can never ping anyone
            help_command=None,
            max_messages=None,
        )
        self.config = config
        self.engine = engine
        point_at(config.discord.api_base, config.discord.gateway_url)

    async def setup_hook(self) -> None:
        # Before any message is handled: replies posted just before a crash join the history first.
        try:
            await file_unsent_replies(self)
        except BotError as exc:  # the database: the chat says so itself; the start goes on
            _log.warning("could not file the replies posted before the last stop: %s", exc)
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        if self.config.discord.sync_commands:
            await self.sync_commands()

    async def sync_commands(self) -> bool:
        """Register the slash commands with Discord when they differ from the last registration (kept as
        a digest beside the database). A refused sync is one log line: chat keeps working."""
        settings = self.config.discord
        guild = discord.Object(settings.command_guild) if settings.command_guild else None
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        commands_now = [command.to_dict(self.tree) for command in self.tree.get_commands(guild=guild)]
        digest = hashlib.sha256(
            json.dumps({"guild": settings.command_guild, "commands": commands_now}, sort_keys=True).encode()
        ).hexdigest()
        stamp = self.config.resolve(self.config.store.path).parent / COMMAND_STAMP
        with contextlib.suppress(OSError):
            if stamp.read_text().strip() == digest:
                _log.info("slash commands unchanged since the last sync; not syncing")
                return False
        where = f"server {settings.command_guild}" if guild is not None else "all servers"
        try:
            synced = await self.tree.sync(guild=guild)
        except discord.HTTPException as exc:
            _log.error(
                "could not register slash commands in %s (HTTP %s, code %s: %s); chat keeps working",
                where,
                exc.status,
                exc.code,
                exc.text[:200],
            )
            return False
        stamp.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(stamp, digest.encode())
        _log.info("registered %d slash commands in %s", len(synced), where)
        return True

    async def on_message(self, message: discord.Message) -> None:
        # Text commands are not used: chat is handled by the chat cog's listener.
        return

    async def close(self) -> None:
        chat = self.get_cog("Chat")
        if chat is not None:
            await chat.shutdown()  # type: ignore[attr-defined]
        await super().close()

    async def on_ready(self) -> None:
        _log.info("connected as %s to %d servers", self.user, len(self.guilds))


async def login_with_retry(
    bot: RoleplayBot, token: str, stopping: list[asyncio.Task[None]], delays: tuple[float, ...] = RETRY_DELAYS
) -> bool:
    """Log in, retrying with growing pauses while Discord cannot be reached (one log line per try, no
    traceback). False if the bot was asked to stop meanwhile."""
    attempt = 0
    while not stopping:
        try:
            await bot.login(token)
            return True
        except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
            delay = delays[min(attempt, len(delays) - 1)]
            attempt += 1
            _log.error("cannot reach Discord (%s); trying again in %g s", exc or type(exc).__name__, delay)
            await asyncio.sleep(delay)
    return False


Alongside = Callable[[Engine], contextlib.AbstractAsyncContextManager[object]]


async def serve(config: Config, token: str, alongside: Alongside | None = None) -> None:
    """Serve Discord on a new engine; `alongside` (the studio, say) runs on the same engine meanwhile."""
    from bot.core.app import open_engine

    async with open_engine(config) as engine, alongside(engine) if alongside else contextlib.nullcontext():
        bot = RoleplayBot(config, engine)
        stopping: list[asyncio.Task[None]] = []

        def stop(signum: int) -> None:
            # docker stop and systemd send SIGTERM, Ctrl-C sends SIGINT: both drain like a normal close
            # (answers being written finish or are cancelled cleanly, replies are stored).
            if not stopping:
                _log.info("%s received: shutting down", signal.Signals(signum).name)
                stopping.append(asyncio.create_task(bot.close()))

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            # Not available on Windows' event loop: there Ctrl-C ends the process as before.
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop, signum)
        async with bot:
            if await login_with_retry(bot, token, stopping):
                await bot.connect()  # discord.py reconnects by itself once connected


def run_bot(config: Config, alongside: Alongside | None = None) -> int:
    token = discord_token()
    if token is None:
        print(
            "DISCORD_TOKEN is not set. Create a bot at https://discord.com/developers/applications, then\n"
            "  DISCORD_TOKEN=... ./run run\n"
            "To chat without Discord, try the terminal: ./run chat",
            file=sys.stderr,
        )
        return 2
    try:
        asyncio.run(serve(config, token, alongside))
    except discord.LoginFailure:
        print(
            "Discord refused the token in DISCORD_TOKEN (LoginFailure): check it and try again",
            file=sys.stderr,
        )
        return 2
    except discord.PrivilegedIntentsRequired:
        print(
            "Enable the Message Content intent for the bot in the developer portal (see README)",
            file=sys.stderr,
        )
        return 2
    return 0
