"""Memory in Discord, end to end on the strict local Discord server: /memory show for everyone, /manage
memory edit|pin|unpin for admins only, pinned facts in the model's prompt, and /forget-me taking a
member's words out of what is recalled and shown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bot.core import Engine

from .support.discord_server import FakeDiscord, callbacks, posts_to
from .support.harness import bot_config, enable_channel, forget_me, running_bot
from .support.scripted import Scripted

pytestmark = pytest.mark.slow

ADMIN = FakeDiscord.user("Ada", user_id=2_000_000_000_000_000_001)
MEMBER_ID = 2_000_000_000_000_000_002
MEMBER = FakeDiscord.user("Milo", user_id=MEMBER_ID)


def memory_command(action: str, **values: Any) -> list[dict[str, Any]]:
    kinds = {int: 4, str: 3}
    options = [{"name": k, "type": kinds[type(v)], "value": v} for k, v in values.items()]
    return [{"name": "memory", "type": 2, "options": [{"name": action, "type": 1, "options": options}]}]


async def answer(server: FakeDiscord, token: str, has: str) -> str:
    [reply] = await server.wait_for(lambda r: callbacks(token)(r) and has in str(r.json), limit=60)
    body = reply.json or {}
    return str((body.get("data") or body).get("content"))


async def test_memory_commands_show_and_correct_what_the_bot_remembers(
    server: FakeDiscord, tmp_path: Path
) -> None:
    config = bot_config(tmp_path, server, None, cooldown=0.0)
    general = server.channels["general"]
    scripted: list[Scripted] = []

    def script(engine: Engine) -> None:
        scripted.append(Scripted(engine.llm, ["Aye, I will remember.", "The vault, yes."]))
        engine.llm = scripted[0]

    async with running_bot(config, server, script) as run:
        await enable_channel(server, general, ADMIN)
        # Members cannot even see the admin group; its commands are checked in code as well.
        assert await server.slash(general, MEMBER, "manage", memory_command("pin", text="x")) == ""
        token = await server.slash(
            general, ADMIN, "manage", memory_command("pin", text="The vault code is 7741."), admin=True
        )
        assert "1. The vault code is 7741." in await answer(server, token, "Pinned facts")
        await server.say(general, MEMBER, "My secret: the key is under the lighthouse mat.")
        await server.wait_for(posts_to(general))
        assert "Facts to remember:\n- The vault code is 7741." in scripted[0].prompts[-1]

        token = await server.slash(
            general,
            ADMIN,
            "manage",
            memory_command("edit", text="Milo hid a key at the lighthouse."),
            admin=True,
        )
        assert "Mira's summary here is kept as you wrote it" in await answer(server, token, "summary")
        token = await server.slash(general, MEMBER, "memory", [{"name": "show", "type": 1, "options": []}])
        shown = await answer(server, token, "summary")
        assert "**Mira's summary (corrected by an admin):**\nMilo hid a key at the lighthouse." in shown
        assert "1. The vault code is 7741." in shown

        token = await server.slash(general, ADMIN, "manage", memory_command("unpin", number=1), admin=True)
        assert "none" in await answer(server, token, "Pinned facts")
        token = await server.slash(general, ADMIN, "manage", memory_command("unpin", number=3), admin=True)
        assert "there is no pinned fact 3" in await answer(server, token, "pinned fact")

        # /forget-me: the member's line leaves the index (nothing of it can be recalled again).
        assert await run.engine.store.index_holds('"lighthouse" AND "mat"') == 1
        await forget_me(server, general, MEMBER, 1)
        assert await run.engine.store.index_holds('"lighthouse" AND "mat"') == 0


def me_command(**values: Any) -> list[dict[str, Any]]:
    kinds = {bool: 5, str: 3}
    options = [{"name": k, "type": kinds[type(v)], "value": v} for k, v in values.items()]
    return [{"name": "me", "type": 1, "options": options}]


async def test_a_members_notes_follow_them_across_channels_and_they_correct_and_erase_them(
    server: FakeDiscord, tmp_path: Path
) -> None:
    """Milo tells something about himself in #general; in #roleplay the prompt holds the persona's note
    on it; /memory me shows it, corrects it and erases it; an admin turns notes off for the server;
    /forget-me takes the notes with the messages."""
    config = bot_config(tmp_path, server, None, cooldown=0.0)
    general, roleplay = server.channels["general"], server.channels["roleplay"]
    scripted: list[Scripted] = []

    def script(engine: Engine) -> None:
        replies = ["Welcome, Milo.", "- Milo's cat is called Pickle", "Of course.", "Aye.", "Aye."]
        scripted.append(Scripted(engine.llm, replies))
        engine.llm = scripted[0]

    async with running_bot(config, server, script) as run:
        await enable_channel(server, general, ADMIN)
        await enable_channel(server, roleplay, ADMIN)
        writer = run.engine.models.memory.notes
        await server.say(general, MEMBER, "My cat is called Pickle and she hates rain.")
        await server.wait_for(posts_to(general))
        await writer.stored.wait()
        await server.say(roleplay, MEMBER, "Good evening!")
        await server.wait_for(posts_to(roleplay))
        prompt = scripted[0].prompts[-1]
        assert (
            "What Milo has told you about themselves (your notes):\n- Milo's cat is called Pickle" in prompt
        )

        token = await server.slash(roleplay, MEMBER, "memory", me_command())
        assert "- Milo's cat is called Pickle" in await answer(server, token, "noted about you")
        token = await server.slash(roleplay, MEMBER, "memory", me_command(correct="My cat is Pickle; he/him"))
        shown = await answer(server, token, "noted about you")
        assert "(as you wrote them):**\n- My cat is Pickle\n- he/him" in shown
        token = await server.slash(roleplay, MEMBER, "memory", me_command(forget=True))
        assert "No notes on you here yet" in await answer(server, token, "No notes")

        # Admins only: the switch for the server.
        switch = [{"name": "memory", "type": 2, "options": [{"name": "members", "type": 1, "options": [
            {"name": "keep", "type": 5, "value": False}]}]}]  # fmt: skip
        assert await server.slash(general, MEMBER, "manage", switch) == ""
        token = await server.slash(general, ADMIN, "manage", switch, admin=True)
        assert "keeps no notes on members" in await answer(server, token, "notes on members")
        token = await server.slash(roleplay, MEMBER, "memory", me_command())
        assert "keeps no notes on members in this server" in await answer(server, token, "no notes")

        await run.engine.admin.correct_member_notes(server.guild_id, MEMBER_ID, "- Milo sings in a choir")
        await forget_me(server, general, MEMBER, 2)
        notes, _ = await run.engine.admin.member_notes(server.guild_id, MEMBER_ID)
        assert notes is None
