"""Private roleplay in direct messages, end to end: the unmodified discord.py client, the real engine on
the bundled model, against the local Discord server (which sends DMs only to a bot that asked for them,
offers a DM only the commands allowed there, and applies no member permissions in DMs, as Discord)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bot.core import Engine
from bot.discord.direct import REFUSED
from bot.discord.direct import STRANGER as NO_SERVER_SHARED
from bot.discord.replies import REGENERATE_ID

from .support.discord_server import FakeDiscord, button, callbacks, posts_to
from .support.harness import bot_config, enable_channel, running_bot
from .support.watched import Timed

pytestmark = pytest.mark.slow

ADMIN = FakeDiscord.user("Ada", user_id=2_000_000_000_000_000_011)
MEMBER = FakeDiscord.user("Milo", user_id=2_000_000_000_000_000_012)
STRANGER = FakeDiscord.user("Nobody", user_id=2_000_000_000_000_000_013)
SECRET = "PLUM-4471"


async def stored(engine: Engine, channel: int, count: int) -> list[Any]:
    async with asyncio.timeout(60):
        while len(history := await engine.store.history(channel, "mira")) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return history


async def confirm(server: FakeDiscord, channel: int, user: dict[str, Any], token: str, asked: str) -> None:
    """Press the first button of the question the bot answered `token` with (its 'yes')."""
    [question] = await server.wait_for(lambda r: callbacks(token)(r) and asked in str(r.json))
    yes = question.json["data"]["components"][0]["components"][0]
    await server.press(channel, user, server.last_answer(), yes)


async def test_a_dm_conversation_end_to_end_and_nothing_of_a_server_reaches_it(
    server: FakeDiscord, tmp_path: Path
) -> None:
    config = bot_config(tmp_path, server, None, discord_extra="direct_messages = true\n", cooldown=60.0)
    general = server.channels["general"]
    dm = server.dm_channel(MEMBER)
    watched: list[Timed] = []
    async with running_bot(config, server, lambda engine: watched.append(Timed.watching(engine))) as run:
        assert server.identify_payload["intents"] & (1 << 12)  # DMs asked for: the owner turned them on
        engine = run.engine
        # In the server: the member's secret in the history, a pinned fact and their notes.
        await enable_channel(server, general, ADMIN)
        await engine.store.add_message(
            general,
            role="user",
            author_name="Milo",
            content=f"Mira, my locker code is {SECRET}. Keep it safe.",
            persona="mira",
            author_id=int(MEMBER["id"]),
        )
        await server.say(general, ADMIN, "Mira, what is Milo's locker code?")  # (Ada's: no cooldown for Milo)
        await server.wait_for(posts_to(general))
        await engine.admin.pin(general, f"Milo's locker code is {SECRET}")
        await engine.admin.correct_member_notes(server.guild_id, int(MEMBER["id"]), f"Code {SECRET}")

        asked = await server.say(dm, MEMBER, "Hi Mira, what was my locker code again?")
        [reply] = await server.wait_for(posts_to(dm))
        assert (
            reply.json["content"].strip()
            and str(reply.json["message_reference"]["message_id"]) == asked["id"]
        )
        assert reply.files["expression.png"].startswith(b"\x89PNG")  # the persona's face, as in a channel
        history = await stored(engine, dm, 2)
        assert [m.role for m in history] == ["user", "assistant"]
        dm_prompts = [c.prompt for c in watched[0].calls if c.session == (dm, "mira")]
        assert dm_prompts and "locker code again" in dm_prompts[0]
        assert not any(SECRET in prompt for prompt in dm_prompts)  # no history, pin or note of the server
        assert any(SECRET in c.prompt for c in watched[0].calls if c.session == (general, "mira"))

        # The same cooldown as in channels: a second message at once gets ⏳, not an answer.
        hurried = await server.say(dm, MEMBER, "Mira? Mira!")
        await server.wait_for(
            lambda r: r.method == "PUT" and f"/messages/{hurried['id']}/reactions/" in r.path
        )

        # 🔄 under the DM reply: the asker regenerates it in place.
        message = next(
            m for m in server.messages.values() if m["channel_id"] == str(dm) and m["author"]["bot"]
        )
        token = await server.press(dm, MEMBER, message, button(message, REGENERATE_ID))
        await server.wait_for(
            lambda r: r.method == "PATCH" and token in r.path and "content" in (r.json or {})
        )
        async with asyncio.timeout(60):
            while (await engine.admin.recent_messages(dm, 10))[-1].version == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

        # Admin commands are not offered in a DM, and refused if a client sends one anyway.
        for name in ("manage", "channel", "cast"):
            assert await server.slash(dm, MEMBER, name, [{"name": "enable", "type": 1, "options": []}]) == ""
            assert name in server.hidden_attempts
        forced = await server.slash(
            dm, MEMBER, "channel", [{"name": "enable", "type": 1, "options": []}], forced=True
        )
        [refusal] = await server.wait_for(callbacks(forced))
        assert "server channel" in refusal.json["data"]["content"] and refusal.json["data"]["flags"] & 64
        assert (await engine.admin.channel_settings(dm)).mode == "all"

        # /forget-me in the DM erases the DM whole, and nothing of the server's channel.
        token = await server.slash(dm, MEMBER, "forget-me")
        await confirm(server, dm, MEMBER, token, "our direct messages")
        await server.wait_for(lambda r: r.method == "PATCH" and "Erased our direct messages" in str(r.json))
        assert await engine.store.history(dm, "mira") == []
        assert any(SECRET in m.content for m in await engine.store.history(general, "mira"))


async def test_dm_reset_and_server_forget_me_reach_the_dm(server: FakeDiscord, tmp_path: Path) -> None:
    config = bot_config(tmp_path, server, None, discord_extra="direct_messages = true\n", cooldown=0.0)
    general, dm = server.channels["general"], server.dm_channel(MEMBER)
    async with running_bot(config, server) as run:
        await server.say(dm, MEMBER, "Hello Mira.")
        await stored(run.engine, dm, 2)
        # /reset in a DM: the member's own conversation; no Manage Server needed (Discord applies none).
        token = await server.slash(dm, MEMBER, "reset")
        await confirm(server, dm, MEMBER, token, "of our direct messages")
        await server.wait_for(lambda r: r.method == "PATCH" and "Erased 2 messages" in str(r.json))
        assert await run.engine.store.history(dm, "mira") == []

        await server.say(dm, MEMBER, "Hello again, Mira.")
        await stored(run.engine, dm, 2)
        # /forget-me in the server takes the member's DM conversation too.
        token = await server.slash(general, MEMBER, "forget-me")
        await confirm(server, general, MEMBER, token, "our direct messages (2 messages")
        await server.wait_for(lambda r: r.method == "PATCH" and "our direct messages (2)" in str(r.json))
        assert await run.engine.store.history(dm, "mira") == []


async def test_dms_refused_unless_the_owner_and_the_members_server_allow_them(
    server: FakeDiscord, tmp_path: Path
) -> None:
    dm, general = server.dm_channel(MEMBER), server.channels["general"]
    off = bot_config(tmp_path / "off", server, None, cooldown=0.0)
    async with running_bot(off, server) as run:
        assert not server.identify_payload["intents"] & (1 << 12)  # not even asked for
        await enable_channel(server, general, ADMIN)
        await server.say(dm, MEMBER, "Hello?")
        await server.say(general, MEMBER, "anyone?")  # answered after the DM would have been
        await server.wait_for(posts_to(general))
        assert server.sent(posts_to(dm)) == [] and await run.engine.store.history(dm, "mira") == []

    on = bot_config(tmp_path / "on", server, None, discord_extra="direct_messages = true\n", cooldown=0.0)
    async with running_bot(on, server) as run:
        # This server's admins turn DMs off for its members: a notice, nothing stored.
        token = await server.slash(general, ADMIN, "manage", [dms(False)], admin=True)
        await server.wait_for(callbacks(token))
        await server.say(dm, MEMBER, "Hello?")
        [notice] = await server.wait_for(posts_to(dm))
        assert REFUSED in notice.json["content"]
        assert await run.engine.store.history(dm, "mira") == []
        # Turned back on: answered.
        token = await server.slash(general, ADMIN, "manage", [dms(True)], admin=True)
        await server.wait_for(callbacks(token))
        await server.say(dm, MEMBER, "Hello again?")
        await stored(run.engine, dm, 2)
        # A stranger (no server shared with the bot) is refused even so.
        server.outsiders.add(STRANGER["id"])
        stranger_dm = server.dm_channel(STRANGER)
        await server.say(stranger_dm, STRANGER, "Hi!")
        [notice] = await server.wait_for(posts_to(stranger_dm))
        assert NO_SERVER_SHARED in notice.json["content"]


def dms(allow: bool) -> dict[str, Any]:
    return {"name": "dms", "type": 1, "options": [{"name": "allow", "type": 5, "value": allow}]}
