"""Runs the real bot (real engine, bundled model, tiny inpainting pipeline) against FakeDiscord."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from bot.config import Config, load_config
from bot.core import Engine
from bot.core.app import open_engine
from bot.discord.client import RoleplayBot

from .configs import expression_settings, write_config
from .discord_server import FakeDiscord, callbacks


def bot_config(
    folder: Path,
    server: FakeDiscord,
    pipeline: Path | None,
    extra: str = "",
    discord_extra: str = "",
    cooldown: float = 2.0,
    model: str = "",
) -> Config:
    expressions = expression_settings(pipeline) if pipeline else ""  # none: shipped sprites only
    discord = (
        f'[discord]\napi_base = "{server.api_base}"\ngateway_url = "{server.gateway_url}"\n'
        f"cooldown_seconds = {cooldown}\n"
        "max_pending_per_channel = 2\nmax_attachment_bytes = 200000\n" + discord_extra
    )
    return load_config(
        write_config(folder, expressions + discord + extra, sprites=pipeline is None, model=model)
    )


@dataclass
class Running:
    bot: RoleplayBot
    engine: Engine
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def running_bot(
    config: Config, server: FakeDiscord, wrap: Callable[[Engine], None] | None = None
) -> AsyncIterator[Running]:
    """The bot process: engine opened, bot connected and ready; everything closed on exit."""
    async with open_engine(config) as engine:
        if wrap is not None:
            wrap(engine)
        bot = RoleplayBot(config, engine)
        task = asyncio.create_task(bot.start("local-test-token"))
        try:
            ready = asyncio.create_task(bot.wait_until_ready())
            await asyncio.wait({ready, task}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                task.result()  # start-up failed: raise its error here, not a timeout later
            if not ready.done():
                ready.cancel()
                raise TimeoutError("the bot did not become ready within 60 s")
            yield Running(bot, engine, task)
        finally:
            await bot.close()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 10)
            await server.drop_connections()


async def enable_channel(
    server: FakeDiscord, channel: int, admin: dict[str, object], mode: str = "all"
) -> None:
    """An admin runs /channel enable, then /channel mode `mode`, and both are answered."""
    for option in (
        {"name": "enable", "type": 1, "options": []},
        {"name": "mode", "type": 1, "options": [{"name": "mode", "type": 3, "value": mode}]},
    ):
        token = await server.slash(channel, admin, "channel", [option], admin=True)
        await server.wait_for(callbacks(token))


async def forget_me(server: FakeDiscord, channel: int, member: dict[str, object], count: int) -> None:
    """A member runs /forget-me, is asked about `count` messages, confirms, and is told they are erased."""
    token = await server.slash(channel, member, "forget-me")
    [prompt] = await server.wait_for(
        lambda r: callbacks(token)(r) and f"Erase the {count} messages" in str(r.json)
    )
    erase = prompt.json["data"]["components"][0]["components"][0]
    await server.press(channel, member, server.last_answer(), erase)
    await server.wait_for(lambda r: r.method == "PATCH" and f"Erased {count} of your messages" in str(r.json))
