"""What a member saw on Discord stays in the story after a crash: the bot process killed (SIGKILL) the
moment its reply reached Discord, before Discord's answer came back, so before the bot could store it.
At its next start the reply is found in the channel and filed with the posted message's id; a reply that
never reached Discord is not."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.store import Store

from .support.configs import REPO
from .support.discord_server import FakeDiscord, posts_to
from .support.harness import bot_config, enable_channel, running_bot

pytestmark = pytest.mark.slow

ADMIN = FakeDiscord.user("Ada", user_id=2_000_000_000_000_000_001)
MEMBER = FakeDiscord.user("Milo", user_id=2_000_000_000_000_000_002)


def start_bot(config_path: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bot", "--config", str(config_path), "run"],
            cwd=REPO,
            env={**os.environ, "DISCORD_TOKEN": "local-test-token"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def history(config_path: Path, channel: int) -> list[tuple[str, str, int | None]]:
    store = await Store.open(config_path.parent / "data" / "test.sqlite3")
    try:
        return [(m.role, m.content, m.discord_id) for m in await store.history(channel, "mira", 50)]
    finally:
        await store.close()


async def test_a_reply_posted_just_before_a_crash_is_filed_at_the_next_start(
    server: FakeDiscord, tmp_path: Path
) -> None:
    config = bot_config(tmp_path, server, None, cooldown=0.0)
    config_path = tmp_path / "config.toml"
    channel = server.channels["general"]
    log = tmp_path / "bot.log"
    bot = start_bot(config_path, log)
    posted: list[dict[str, Any]] = []
    try:
        await asyncio.wait_for(server.identified.wait(), 60)
        await enable_channel(server, channel, ADMIN)
        await server.say(channel, MEMBER, "Hello, Mira.")
        [first] = await server.wait_for(posts_to(channel), limit=60)  # a turn as usual

        async def crash(message: dict[str, Any]) -> None:
            # Discord has the message; the bot never hears back: it dies here, before storing it.
            if message["channel_id"] == str(channel) and not posted:
                posted.append(message)
                bot.send_signal(signal.SIGKILL)

        server.on_bot_message = crash
        await server.say(channel, MEMBER, "Tell me about the lighthouse.")
        await asyncio.to_thread(bot.wait, 60)
    finally:
        if bot.poll() is None:
            bot.kill()
            bot.wait()
        server.on_bot_message = None
        await server.drop_connections()
    assert bot.returncode == -signal.SIGKILL and posted, log.read_text()
    before = await history(config_path, channel)
    assert [role for role, _, _ in before] == ["user", "assistant", "user"]  # the reply is not stored yet
    assert before[1][1] == first.json["content"] and before[1][2] is not None

    # The next start files it, with the id Discord gave it, before it handles any message.
    async with running_bot(config, server):
        pass
    after = await history(config_path, channel)
    assert [role for role, _, _ in after] == ["user", "assistant", "user", "assistant"]
    assert after[-1][1] == posted[0]["content"] and after[-1][2] == int(posted[0]["id"])
    assert after[:3] == before


async def test_a_reply_that_never_reached_discord_is_not_filed(server: FakeDiscord, tmp_path: Path) -> None:
    """The outbox also holds replies whose post never happened (the bot died before it): the next start
    finds nothing in the channel and drops them."""
    config = bot_config(tmp_path, server, None, cooldown=0.0)
    channel = server.channels["general"]
    store = await Store.open(config.resolve(config.store.path))
    try:
        member_line = server._message(channel, MEMBER, "Are you there?")  # on Discord, and stored
        await store.add_message(
            channel,
            role="user",
            author_name="Milo",
            content="Are you there?",
            persona="mira",
            discord_id=int(member_line["id"]),
        )
        await store.expect_reply(
            channel,
            persona="mira",
            author_name="Mira",
            content="A reply nobody ever saw.",
            emotion="joy",
            prompt_id=1,
            answers=int(member_line["id"]),
        )
        server._message(channel, MEMBER, "Hello?")  # later lines, none of them the bot's
    finally:
        await store.close()
    async with running_bot(config, server):
        pass
    assert [content for _, content, _ in await history(tmp_path / "config.toml", channel)] == [
        "Are you there?"
    ]
    store = await Store.open(config.resolve(config.store.path))
    try:
        assert await store.unsent_replies() == []
    finally:
        await store.close()


async def test_a_reply_discord_refused_leaves_nothing_behind(tmp_path: Path) -> None:
    """A post that fails (Discord refused it) drops the reply from the outbox: nothing to look for at the
    next start, nothing in the history."""
    from bot.config import load_config
    from bot.core.app import open_engine

    from .support.configs import write_config

    config = load_config(write_config(tmp_path))

    async def refused(result: object) -> int:
        raise RuntimeError("Discord said no")

    async with open_engine(config) as engine:
        with pytest.raises(RuntimeError, match="Discord said no"):
            await engine.turn(5, "Milo", "Hello?", discord_id=1234, deliver=refused)
        assert await engine.replies.unsent() == []
        assert [m.role for m in await engine.admin.recent_messages(5, 10)] == ["user"]
