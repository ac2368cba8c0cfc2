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
MEMBER = FakeDiscord.user("Milo", user_id=2_000_000_000_000_000_002)


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
