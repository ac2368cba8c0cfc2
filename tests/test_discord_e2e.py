"""End to end: the unmodified discord.py client, the real engine on the bundled model and the tiny
inpainting pipeline, against the local Discord server."""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from discord import app_commands

from bot.core import Engine

from .support.cardfiles import V2_CARD, b64json, plain_png, with_text_chunks
from .support.discord_server import FakeDiscord, Request, callbacks, posts_to, typing_in
from .support.harness import bot_config, enable_channel, forget_me, running_bot
from .support.model_server import model_server
from .support.scripted import Scripted

pytestmark = pytest.mark.slow

ADMIN = FakeDiscord.user("Ada", user_id=2_000_000_000_000_000_001)
MEMBER = FakeDiscord.user("Milo", user_id=2_000_000_000_000_000_002)


def pings_nobody(request: Request) -> bool:
    """Discord pings only what allowed_mentions permits: here nothing, not even the replied-to user."""
    allowed = request.json["allowed_mentions"]
    return (
        allowed["parse"] == []
        and not allowed.get("users")
        and not allowed.get("roles")
        and not allowed.get("replied_user")
    )


@pytest.fixture(scope="module", params=["llamacpp", "openai"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """[model] lines for each backend: the suite runs once in-process and once through a model server
    (llama-cpp-python's own, in its own process)."""
    if request.param == "llamacpp":
        yield ""
        return
    with model_server(log=tmp_path_factory.mktemp("model-server") / "server.log") as base_url:
        yield f'backend = "openai"\nbase_url = "{base_url}"\n'


@pytest.fixture
def config(tmp_path: Path, server: FakeDiscord, tiny_pipeline_dir: Path, backend: str):
    return bot_config(tmp_path, server, tiny_pipeline_dir, model=backend)


async def enable(server: FakeDiscord, channel: int, mode: str = "all") -> None:
    await enable_channel(server, channel, ADMIN, mode)


async def stored(engine: Engine, channel: int, persona: str, count: int) -> list[Any]:
    """The channel's history once it holds `count` messages: a reply is stored right after it is sent."""
    async with asyncio.timeout(30):
        # The store has no change notification; polling the test's database is fine.
        while len(history := await engine.store.history(channel, persona)) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return history


async def set_persona(server: FakeDiscord, channel: int, user: dict[str, Any], name: str, admin: bool) -> str:
    option = {"name": "persona", "type": 1, "options": [{"name": "name", "type": 3, "value": name}]}
    return await server.slash(channel, user, "manage", [option], admin=admin)


async def import_card(
    server: FakeDiscord, channel: int, name: str, data: bytes, extra: list[dict[str, Any]] | None = None
) -> str:
    """An admin runs /persona import with `data` attached as `name` (and `extra` options)."""
    upload = server.upload(name, data)
    options = [{"name": "card", "type": 11, "value": upload["id"]}, *(extra or [])]
    option = {"name": "import", "type": 1, "options": options}
    return await server.slash(
        channel, ADMIN, "manage", [option], admin=True, resolved={"attachments": {upload["id"]: upload}}
    )


def callback_text(server: FakeDiscord, token: str) -> tuple[str, int]:
    """Content and flags of everything the bot answered to one interaction."""
    parts = [r.json or {} for r in server.sent(callbacks(token))]
    texts = [(p.get("data") or p).get("content") or "" for p in parts]
    flags = [(p.get("data") or p).get("flags") or 0 for p in parts]
    return " ".join(t for t in texts if t), max(flags, default=0)


async def test_enabled_channel_gets_reply_with_face_disabled_gets_nothing(
    server: FakeDiscord, config
) -> None:
    general, quiet = server.channels["general"], server.channels["quiet"]
    async with running_bot(config, server) as run:
        assert server.identify_payload["intents"] & (
            1 << 15
        )  # message content intent, and nothing privileged else
        assert not server.identify_payload["intents"] & ((1 << 1) | (1 << 8))  # no members, no presences
        await enable(server, general)
        await server.say(quiet, MEMBER, "anyone there?")
        user_message = await server.say(general, MEMBER, "Hello Mira! What a storm.")
        [reply] = await server.wait_for(posts_to(general))
        assert reply.json["content"].strip()
        assert pings_nobody(reply)
        assert str(reply.json["message_reference"]["message_id"]) == user_message["id"]
        assert list(reply.files) == ["expression.png"] and reply.files["expression.png"].startswith(
            b"\x89PNG"
        )
        typing = server.sent(typing_in(general))
        assert typing and typing[0].at < reply.at
        assert server.sent(posts_to(quiet)) == [] and server.sent(typing_in(quiet)) == []
        history = await stored(run.engine, general, "mira", 2)
        assert [m.role for m in history] == ["user", "assistant"]
        assert (
            history[0].discord_id == int(user_message["id"])
            and history[1].emotion in run.engine.personas.load("mira").labels
        )
        # The fresh render of the face replaces the image in the sent reply when it lands.
        edit = await server.wait_for(
            lambda r: r.method == "PATCH" and r.path.startswith(f"/channels/{general}/messages/")
        )
        assert edit[0].files and next(iter(edit[0].files.values())).startswith(b"\x89PNG")
        # Edits and deletions of the user's message reach the stored history.
        await server.edit(user_message, "Hello Mira! What a dreadful storm.")
        await server.delete(await server.say(general, MEMBER, "oops, wrong channel"))
        await asyncio.sleep(0.5)
        texts = [m.content for m in await run.engine.store.history(general, "mira")]
        assert "Hello Mira! What a dreadful storm." in texts and "oops, wrong channel" not in texts


async def test_mention_mode(server: FakeDiscord, tmp_path: Path) -> None:
    # No cooldown: an answer to the plain message could not hide behind it.
    config = bot_config(tmp_path, server, None, cooldown=0.0)
    channel = server.channels["roleplay"]
    async with running_bot(config, server):
        await enable(server, channel, mode="mention")
        await server.say(channel, MEMBER, "just chatting with friends")
        mention = await server.say(channel, MEMBER, "are you awake?", mention_bot=True)
        # Turns in a channel are answered in order: an answer to the plain message would come first.
        [reply] = await server.wait_for(posts_to(channel))
        assert str(reply.json["message_reference"]["message_id"]) == mention["id"]
        assert pings_nobody(reply)
        bot_message = server.messages[max(server.messages)]
        await server.say(channel, MEMBER, "just chatting again")
        answer = await server.say(channel, MEMBER, "and what about now?", reply_to=bot_message)
        replies = await server.wait_for(posts_to(channel), count=2)
        assert str(replies[1].json["message_reference"]["message_id"]) == answer["id"]
        assert len(replies) == 2  # the plain messages got no answer


async def test_persona_admin_commands(server: FakeDiscord, config) -> None:
    channel = server.channels["general"]
    card = with_text_chunks(plain_png(), {"chara": b64json(V2_CARD)})
    async with running_bot(config, server) as run:
        await enable(server, channel)
        # Discord does not even offer /manage to a member without Manage Server...
        assert await set_persona(server, channel, MEMBER, "mira", admin=False) == ""
        assert server.hidden_attempts == ["manage"]
        # ...and where a server admin opened it to everyone, the check in code still refuses.
        server.command_overrides.add("manage")
        token = await set_persona(server, channel, MEMBER, "mira", admin=False)
        await server.wait_for(callbacks(token))
        text, flags = callback_text(server, token)
        assert "Manage Server" in text and flags & 64
        server.command_overrides.clear()
        # An admin imports a card from an attachment...
        token = await import_card(server, channel, "rook.png", card)
        await server.wait_for(lambda r: callbacks(token)(r) and "Imported" in str(r.json), limit=30)
        # ...swaps to it: nickname, greeting posted without pings, and the next reply is Rook's.
        token = await set_persona(server, channel, ADMIN, "captain-rook", admin=True)
        [greeting] = await server.wait_for(posts_to(channel))
        assert greeting.json["content"].startswith("*Captain Rook grips the wheel.* Hold on, Ada!")
        assert pings_nobody(greeting)
        assert server.nickname == "Captain Rook"
        await server.say(channel, MEMBER, "Where are we flying, captain?")
        await server.wait_for(posts_to(channel), count=2)
        history = await stored(run.engine, channel, "captain-rook", 2)
        assert [m.author_name for m in history] == ["Milo", "Captain Rook"]
        # The same card again: asked, never a silent copy; then kept beside it under another id.
        token = await import_card(server, channel, "rook.png", card)
        await server.wait_for(lambda r: callbacks(token)(r) and "already imported" in str(r.json), limit=30)
        assert "already imported as `captain-rook`: `replace:True`" in callback_text(server, token)[0]
        token = await import_card(
            server, channel, "rook.png", card, [{"name": "name", "type": 3, "value": "rook-too"}]
        )
        await server.wait_for(lambda r: callbacks(token)(r) and "Imported" in str(r.json), limit=30)
        assert "as `rook-too`" in callback_text(server, token)[0]
        # A corrupt card is refused with a message that says what is wrong.
        token = await import_card(server, channel, "broken.png", b"GIF89a nope")
        await server.wait_for(lambda r: callbacks(token)(r) and "not a PNG" in str(r.json), limit=30)
        # An oversized one is refused before it is downloaded.
        token = await import_card(server, channel, "huge.png", b"\x89PNG" + b"\0" * 300_000)
        await server.wait_for(callbacks(token))
        assert "300,004 bytes" in callback_text(server, token)[0]
        assert not server.sent(lambda r: r.path == "/attachments/huge.png")
        # Read-only commands work for members.
        token = await server.slash(channel, MEMBER, "status")
        await server.wait_for(callbacks(token))
        status = callback_text(server, token)[0]
        assert "SmolLM2" in status and "**Emotion judge**: classifier" in status


LONG = (
    "The storm rolls on. " * 60
    + "\n\n```python\n"
    + "print('lighthouse')\n" * 40
    + "```\n\n"
    + "Mira hums a tune while the kettle sings. " * 40
)


async def test_hostile_and_long_output(server: FakeDiscord, config) -> None:
    channel = server.channels["general"]
    hostile = f"@everyone look! <@&{server.admin_role}> and <@{ADMIN['id']}> come here @here"

    def script(engine: Engine) -> None:
        engine.llm = Scripted(engine.llm, [hostile, LONG])  # type: ignore[assignment]

    async with running_bot(config, server, wrap=script):
        await enable(server, channel)
        await server.say(channel, MEMBER, "say hi to everyone")
        [reply] = await server.wait_for(posts_to(channel))
        assert reply.json["content"] == hostile
        assert pings_nobody(reply)
        # What Discord makes of it: the server computes who is pinged from the text and allowed_mentions.
        [posted] = [m for m in server.messages.values() if m["content"] == hostile]
        assert posted["mentions"] == [] and posted["mention_roles"] == [] and not posted["mention_everyone"]
        await asyncio.sleep(2.1)
        await server.say(channel, MEMBER, "tell me a long story")
        await server.wait_for(posts_to(channel), count=4)
        await asyncio.sleep(0.5)
        parts = [r.json["content"] for r in server.sent(posts_to(channel))[1:]]
        assert len(parts) >= 3 and all(len(p) <= 2000 for p in parts)
        assert all(p.count("```") % 2 == 0 for p in parts)
        assert "".join(parts).replace("\n", "").replace(" ", "") == LONG.replace("\n", "").replace(" ", "")
        assert all(pings_nobody(r) for r in server.sent(posts_to(channel)))
        assert server.sent(posts_to(channel))[1].files  # the face rides on the first part


async def test_history_survives_restart(server: FakeDiscord, config) -> None:
    channel = server.channels["side"]
    async with running_bot(config, server):
        await enable(server, channel)
        await server.say(channel, MEMBER, "Remember: my ship is called the Gull.")
        await server.wait_for(posts_to(channel))
    async with running_bot(config, server) as run:  # a new process: new engine, new store connection
        before = await run.engine.store.history(channel, "mira")
        assert before[0].content == "Remember: my ship is called the Gull."
        await server.say(channel, MEMBER, "What is my ship called?")
        await server.wait_for(posts_to(channel), count=2)
        after = await stored(run.engine, channel, "mira", 4)
        assert len(after) == 4 and after[:2] == before


async def test_burst_gets_cooldown_not_thirty_generations(
    server: FakeDiscord, tmp_path: Path, tiny_pipeline_dir: Path
) -> None:
    # A cooldown far longer than the burst takes, however slow the machine running the test.
    config = bot_config(tmp_path, server, tiny_pipeline_dir, cooldown=120.0)
    channel = server.channels["general"]
    async with running_bot(config, server) as run:
        await enable(server, channel)
        for i in range(30):
            await server.say(channel, MEMBER, f"spam {i}")
        reactions = await server.wait_for(lambda r: r.method == "PUT" and "/reactions/" in r.path, count=29)
        assert len(reactions) == 29
        await server.wait_for(posts_to(channel))
        await asyncio.sleep(1.0)
        assert len(server.sent(posts_to(channel))) == 1
        assert await run.engine.store.count_messages(channel) == 2  # one turn, not thirty
        # Several users at once: beyond the per-channel bound the bot says it is busy.
        crowd = [FakeDiscord.user(f"User{i}", user_id=3_000_000_000_000_000_000 + i) for i in range(6)]
        for user in crowd:
            await server.say(channel, user, "hello there")
        busy = await server.wait_for(lambda r: posts_to(channel)(r) and "still answering" in str(r.json))
        assert pings_nobody(busy[0])


def _is_reset_prompt(token: str):
    return lambda r: callbacks(token)(r) and "Erase all" in str(r.json)


async def test_reset_asks_for_confirmation(server: FakeDiscord, config) -> None:
    channel = server.channels["general"]
    async with running_bot(config, server) as run:
        await enable(server, channel)
        await server.say(channel, MEMBER, "hello")
        await server.wait_for(posts_to(channel))
        token = await server.slash(channel, ADMIN, "reset", admin=True)
        [prompt] = await server.wait_for(_is_reset_prompt(token))
        assert await run.engine.store.count_messages(channel) == 2  # nothing erased before confirming
        button = prompt.json["data"]["components"][0]["components"][0]
        await server.press(channel, ADMIN, server.last_answer(), button, admin=True)
        await server.wait_for(lambda r: r.method == "PATCH" and "Erased 2 messages" in str(r.json))
        assert await run.engine.store.count_messages(channel) == 0


async def test_streaming_shows_the_reply_while_it_is_written(
    server: FakeDiscord, tmp_path: Path, tiny_pipeline_dir
) -> None:
    config = bot_config(tmp_path, server, tiny_pipeline_dir, discord_extra="stream_edits = true\n")
    channel = server.channels["general"]
    story = "The lamp flickers as the storm comes in from the west. " * 6

    def script(engine: Engine) -> None:
        engine.llm = Scripted(engine.llm, [story], pause=0.35)  # type: ignore[assignment]

    async with running_bot(config, server, wrap=script):
        await enable(server, channel)
        await server.say(channel, MEMBER, "Tell me about the storm")
        [preview] = await server.wait_for(posts_to(channel))
        assert preview.json["content"].endswith(" …") and len(preview.json["content"]) < len(story)
        assert pings_nobody(preview)

        def edits(r: Request) -> bool:
            return r.method == "PATCH" and r.path.startswith(f"/channels/{channel}/messages/")

        final = await server.wait_for(lambda r: edits(r) and (r.json or {}).get("content") == story.strip())
        # Live previews: the first post, then edits at most once a second (the bot sleeps between them).
        previews = [preview] + [
            r for r in server.sent(edits) if str((r.json or {}).get("content")).endswith(" …")
        ]
        assert len(previews) >= 2
        assert all(b.at - a.at >= 0.9 for a, b in itertools.pairwise(previews))
        assert final[-1].files
        assert len(server.sent(posts_to(channel))) == 1  # one message, edited in place


async def test_shipped_faces_follow_the_emotion_without_a_diffusion_model(
    server: FakeDiscord, tmp_path: Path
) -> None:
    """A new user's set-up: no inpainting model, the example persona's drawn expression set."""
    config = bot_config(tmp_path, server, None, cooldown=0.0)
    sprites = tmp_path / "avatars" / "sprites" / "mira"
    channel = server.channels["general"]
    replies = {
        "amusement": "*She bursts out laughing.* Haha, LOL! That's hilarious, you fell right in!",
        "sadness": "*Her eyes fill with tears.* I miss him so much. I feel so sad and alone tonight.",
        "anger": "*She slams the door.* How dare you! I am furious with you. Get out!",
    }

    def script(engine: Engine) -> None:
        engine.llm = Scripted(engine.llm, list(replies.values()))  # type: ignore[assignment]

    async with running_bot(config, server, wrap=script) as run:
        await enable(server, channel)
        for n, label in enumerate(replies, 1):
            await server.say(channel, MEMBER, f"What now? ({n})")
            posts = await server.wait_for(posts_to(channel), count=n)
            [face] = posts[-1].files.values()
            assert face == (sprites / f"{label}.png").read_bytes(), label  # the face of the judged emotion
            history = await stored(run.engine, channel, "mira", 2 * n)
            assert history[-1].emotion == label
        # No renderer was configured: nothing is edited in later.
        assert not [r for r in server.sent(lambda r: r.method == "PATCH") if r.path.startswith("/channels/")]


async def test_a_display_name_is_text_not_a_pattern(server: FakeDiscord, tmp_path: Path) -> None:
    config = bot_config(tmp_path, server, None, cooldown=0.0)
    channel = server.channels["general"]
    odd = FakeDiscord.user("Odd", user_id=2_000_000_000_000_000_003)
    odd["global_name"] = r"\1 \g<0> \\"  # would be group references in a regex replacement
    async with running_bot(config, server) as run:
        await enable(server, channel)
        await server.say(channel, MEMBER, "have you met this one?", mentions=[odd])
        [reply] = await server.wait_for(posts_to(channel))
        assert reply.json["content"].strip()
        history = await stored(run.engine, channel, "mira", 2)
        assert history[0].content == r"@\1 \g<0> \\ have you met this one?"


async def test_a_cancelled_streamed_reply_takes_its_preview_down(server: FakeDiscord, tmp_path: Path) -> None:
    config = bot_config(tmp_path, server, None, discord_extra="stream_edits = true\n")
    channel = server.channels["general"]
    story = "The lamp flickers as the storm comes in from the west. " * 8

    def script(engine: Engine) -> None:
        engine.llm = Scripted(engine.llm, [story], pause=0.35)  # type: ignore[assignment]

    async with running_bot(config, server, wrap=script) as run:
        await enable(server, channel)
        question = await server.say(channel, MEMBER, "Tell me about the storm")
        [preview] = await server.wait_for(posts_to(channel))
        assert preview.json["content"].endswith(" …")
        [preview_id] = [m["id"] for m in server.messages.values() if m["content"].endswith(" …")]
        await server.delete(question)  # the member takes the question back while it is answered
        await server.wait_for(
            lambda r: r.method == "DELETE" and r.path == f"/channels/{channel}/messages/{preview_id}"
        )
        assert all(m.role == "user" for m in await run.engine.store.history(channel, "mira"))  # no half reply


async def test_state_changing_commands_are_hidden_by_discord_itself(
    server: FakeDiscord, tmp_path: Path
) -> None:
    """Top-level commands that only change things carry Manage Server as their default permission, so
    Discord hides them from other members (the check in code stays too)."""
    config = bot_config(tmp_path, server, None)
    async with running_bot(config, server) as run:
        await server.wait_for(lambda r: r.method == "PUT" and "/commands" in r.path)
        synced = {command["name"]: command for command in server.commands}
        # Every command under a hidden one checks Manage Server in code too: a server admin can open a
        # command to everyone in Discord's settings, and that must not open the change itself.
        from bot.discord.cogs.admin import require_manager, require_manager_in_servers

        checks = {require_manager, require_manager_in_servers}  # (the second: /reset, also in a DM)
        unchecked = []
        for top in run.bot.tree.get_commands():
            hidden = top.default_permissions is not None and top.default_permissions.manage_guild
            leaves = [top] if isinstance(top, app_commands.Command) else list(top.walk_commands())
            for leaf in leaves:
                if isinstance(leaf, app_commands.Command) and hidden and not checks & set(leaf.checks):
                    unchecked.append(leaf.qualified_name)
        assert unchecked == ["cast list"]  # it only reads: open to whoever the server opens /cast to
        assert "manage memory edit" in {
            c.qualified_name
            for top in run.bot.tree.get_commands()
            if isinstance(top, app_commands.Group)
            for c in top.walk_commands()
        }
        # Everything that changes state sits in a command Discord hides from members without Manage
        # Server; what stays visible to everyone only reads.
        for name in ("channel", "reset", "manage"):
            assert int(synced[name]["default_member_permissions"]) == 1 << 5, name  # MANAGE_GUILD
        for name in ("persona", "expression", "status", "memory"):
            assert synced[name].get("default_member_permissions") is None, name
        assert {o["name"] for o in synced["persona"]["options"]} == {"list", "show", "export"}
        assert {o["name"] for o in synced["expression"]["options"]} == {"show"}
        # /memory me changes only the member's own notes (as /forget-me erases only their own words).
        assert {o["name"] for o in synced["memory"]["options"]} == {"show", "me"}
        manage = {o["name"]: o for o in synced["manage"]["options"]}
        assert set(manage) == {"persona", "import", "render", "face", "memory", "dms"}
        assert {o["name"] for o in manage["memory"]["options"]} == {"edit", "pin", "unpin", "members"}


def subcommand(command: str, **values: str) -> list[dict[str, Any]]:
    options = [{"name": k, "type": 3, "value": v} for k, v in values.items()]
    return [{"name": command, "type": 1, "options": options}]


async def test_reset_keep_it_and_only_its_owner_answers(server: FakeDiscord, config) -> None:
    channel = server.channels["general"]
    other_admin = FakeDiscord.user("Bea", user_id=2_000_000_000_000_000_003)
    async with running_bot(config, server) as run:
        await enable(server, channel)
        await server.say(channel, MEMBER, "hello")
        await server.wait_for(posts_to(channel))
        token = await server.slash(channel, ADMIN, "reset", admin=True)
        [prompt] = await server.wait_for(_is_reset_prompt(token))
        erase, keep = prompt.json["data"]["components"][0]["components"]
        question = server.last_answer()

        # Another admin cannot answer someone else's confirmation.
        refused = await server.press(channel, other_admin, question, erase, admin=True)
        await server.wait_for(
            lambda r: callbacks(refused)(r) and "Only the admin who ran /reset" in str(r.json)
        )
        assert await run.engine.store.count_messages(channel) == 2
        await server.press(channel, ADMIN, question, keep, admin=True)
        await server.wait_for(lambda r: r.method == "PATCH" and "History kept." in str(r.json))
        assert await run.engine.store.count_messages(channel) == 2


async def test_channel_disable_stops_answers(server: FakeDiscord, config) -> None:
    general, roleplay = server.channels["general"], server.channels["roleplay"]
    async with running_bot(config, server):
        await enable(server, general)
        await enable(server, roleplay)
        token = await server.slash(general, ADMIN, "channel", subcommand("disable"), admin=True)
        await server.wait_for(lambda r: callbacks(token)(r) and "Disabled here." in str(r.json))
        await server.say(general, MEMBER, "anyone?")
        await server.say(roleplay, MEMBER, "hello there")
        # Messages are handled in order: once the later one is answered, the earlier one was passed over.
        await server.wait_for(posts_to(roleplay))
        assert server.sent(posts_to(general)) == [] and server.sent(typing_in(general)) == []


async def test_persona_list_show_and_export_work_for_members(server: FakeDiscord, config) -> None:
    from bot.personas.cards import read_card

    channel = server.channels["general"]
    async with running_bot(config, server):
        token = await server.slash(channel, MEMBER, "persona", subcommand("list"))
        await server.wait_for(callbacks(token))
        assert "`mira`: Mira (rendered, drawn faces)" in callback_text(server, token)[0]
        token = await server.slash(channel, MEMBER, "persona", subcommand("show"))
        [shown] = await server.wait_for(callbacks(token))
        embed = shown.json["data"]["embeds"][0]
        assert embed["title"] == "Mira" and "lighthouse" in embed["description"].lower()
        token = await server.slash(channel, MEMBER, "persona", subcommand("export", spec="v2"))
        [exported] = await server.wait_for(lambda r: callbacks(token)(r) and bool(r.files))
        card = read_card(exported.files["mira.png"], "mira.png", max_bytes=10**7, max_pixels=10**8)
        assert card.spec == "v2" and card.data["name"] == "Mira"
        token = await server.slash(channel, MEMBER, "persona", subcommand("show", name="nobody"))
        await server.wait_for(lambda r: callbacks(token)(r) and "nobody" in str(r.json))


async def test_expression_show_and_render(server: FakeDiscord, config) -> None:
    from PIL import Image

    channel = server.channels["general"]
    async with running_bot(config, server):
        token = await server.slash(channel, MEMBER, "expression", subcommand("show", label="joy"))
        [shown] = await server.wait_for(lambda r: callbacks(token)(r) and bool(r.files))
        assert "Mira: *joy*" in callback_text(server, token)[0]
        assert shown.files["expression.png"].startswith(b"\x89PNG")
        token = await server.slash(channel, MEMBER, "expression", subcommand("show", label="smug"))
        await server.wait_for(
            lambda r: callbacks(token)(r) and "is not one of Mira's emotions" in str(r.json)
        )
        # Rendering every face is for managers; it ends with a contact sheet of all ten.
        assert await server.slash(channel, MEMBER, "manage", subcommand("render")) == ""  # hidden
        token = await server.slash(channel, ADMIN, "manage", subcommand("render"), admin=True)
        [done] = await server.wait_for(
            lambda r: r.method == "PATCH" and "Rendered 10 faces of Mira" in str(r.json), limit=120
        )
        with Image.open(io.BytesIO(done.files["contact-sheet.png"])) as sheet:
            assert sheet.size == (5 * 256, 2 * (256 + 24))


async def test_shutdown_lets_answers_finish_and_cancels_late_ones(server: FakeDiscord, config) -> None:
    channel = server.channels["general"]
    story = "The lamp holds through the night, as it always has. " * 4

    def script(engine: Engine) -> None:
        engine.llm = Scripted(engine.llm, [story, story * 20], pause=0.2)  # type: ignore[assignment]

    async with running_bot(config, server, wrap=script) as run:
        await enable(server, channel)
        await server.say(channel, MEMBER, "Will the lamp hold?")
        await server.wait_for(typing_in(channel))
        await run.bot.close()  # the answer in progress gets its grace period and is delivered whole
        [reply] = server.sent(posts_to(channel))
        assert reply.json["content"] == story.strip()
        assert [m.role for m in await run.engine.store.history(channel, "mira")] == ["user", "assistant"]

    async with running_bot(config, server, wrap=script) as run:
        run.bot.get_cog("Chat").shutdown_grace = 0.3  # type: ignore[union-attr]
        run.engine.llm._replies = [story * 20]  # type: ignore[attr-defined]
        await server.say(channel, MEMBER, "Tell me everything.")
        await server.wait_for(typing_in(channel), count=2)
        await run.bot.close()  # past the grace period: cancelled, and nothing half-saved
        assert len(server.sent(posts_to(channel))) == 1
        roles = [m.role for m in await run.engine.store.history(channel, "mira")]
        assert roles == ["user", "assistant", "user"]


def command_syncs(server: FakeDiscord) -> list[Request]:
    return server.sent(lambda r: r.method == "PUT" and r.path.endswith("/commands"))


async def test_commands_are_synced_only_when_they_change(
    server: FakeDiscord, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.discord.client")
    config = bot_config(tmp_path, server, None)
    async with running_bot(config, server):
        pass
    [first] = command_syncs(server)
    assert first.path == f"/applications/{server.app_id}/commands"  # global by default
    async with running_bot(config, server):  # a restart with the same commands: no sync
        pass
    assert len(command_syncs(server)) == 1 and "slash commands unchanged" in caplog.text
    # One server only, for instant availability: that is a change, so it syncs there.
    guild_config = bot_config(tmp_path, server, None, discord_extra=f"command_guild = {server.guild_id}\n")
    async with running_bot(guild_config, server):
        pass
    assert (
        command_syncs(server)[-1].path == f"/applications/{server.app_id}/guilds/{server.guild_id}/commands"
    )


async def test_a_refused_sync_is_one_line_and_chat_goes_on(
    server: FakeDiscord, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.refuse_command_sync = True
    config = bot_config(
        tmp_path, server, None, discord_extra='enable_new_channels = true\ndefault_mode = "all"\n'
    )
    channel = server.channels["general"]
    async with running_bot(config, server):
        await server.say(channel, MEMBER, "Hello Mira!")
        await server.wait_for(posts_to(channel))
    refusals = [r for r in caplog.records if "could not register slash commands" in r.getMessage()]
    assert len(refusals) == 1 and "50035" in refusals[0].getMessage() and refusals[0].exc_info is None


OTHER = FakeDiscord.user("Nell", user_id=2_000_000_000_000_000_004)
MILO = int(MEMBER["id"])
ELSEWHERE = 9_000_000_000_000_000_001  # a channel of another server


async def until(check: Callable[[], Awaitable[bool]], limit: float = 30) -> None:
    async with asyncio.timeout(limit):
        # The store has no change notification; polling the test's database is fine.
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def first_content(engine: Engine, channel: int, text: str) -> bool:
    return (await engine.store.history(channel, "mira"))[0].content == text


async def history_length(engine: Engine, channel: int, count: int) -> bool:
    return len(await engine.store.history(channel, "mira")) == count


async def test_edits_are_cleaned_like_new_messages_and_purges_are_forgotten(
    server: FakeDiscord, tmp_path: Path
) -> None:
    config = bot_config(tmp_path, server, None, cooldown=0.0)
    channel = server.channels["general"]
    async with running_bot(config, server) as run:
        await enable(server, channel)
        first = await server.say(channel, MEMBER, "meet my friend", mentions=[OTHER])
        await server.wait_for(posts_to(channel))
        history = await stored(run.engine, channel, "mira", 2)
        assert history[0].content == "@Nell meet my friend"
        # Edited with the bot's own mention and another member's: stored as a new message would be.
        await server.edit(first, f"<@{server.bot_user['id']}> meet my friend <@{OTHER['id']}> again")
        edited = "meet my friend @Nell again"
        await until(lambda: first_content(run.engine, channel, edited))
        second = await server.say(channel, MEMBER, "and the weather?")
        third = await server.say(channel, MEMBER, "stormy, isn't it?")
        await server.wait_for(posts_to(channel), count=3)
        await stored(run.engine, channel, "mira", 6)
        await server.bulk_delete([second, third])  # a moderator's purge
        await until(lambda: history_length(run.engine, channel, 4))
        texts = [m.content for m in await run.engine.store.history(channel, "mira")]
        assert "and the weather?" not in texts and "stormy, isn't it?" not in texts


async def test_forget_me_erases_only_that_members_messages(server: FakeDiscord, tmp_path: Path) -> None:
    config = bot_config(tmp_path, server, None, cooldown=0.0)
    general, roleplay = server.channels["general"], server.channels["roleplay"]
    async with running_bot(config, server) as run:
        await enable(server, general)
        await enable(server, roleplay)
        await server.say(general, MEMBER, "I am Milo, and I fear the sea.")
        await server.say(roleplay, MEMBER, "Milo again, in another channel.")
        await server.say(general, OTHER, "Nell here.")
        await server.wait_for(posts_to(general), count=2)
        await server.wait_for(posts_to(roleplay))
        await stored(run.engine, general, "mira", 4)
        await stored(run.engine, roleplay, "mira", 2)
        # The same member in another server the bot serves: /forget-me here leaves that alone.
        await run.engine.store.add_message(
            ELSEWHERE,
            role="user",
            author_name="Milo",
            content="Elsewhere.",
            persona="mira",
            author_id=MILO,
        )
        await forget_me(server, general, MEMBER, 2)
        remaining = [
            m.author_name
            for c in (general, roleplay)
            for m in await run.engine.store.history(c, "mira")
            if m.role == "user"
        ]
        assert remaining == ["Nell"]
        assert [m.content for m in await run.engine.store.history(ELSEWHERE, "mira")] == ["Elsewhere."]


async def test_an_unreachable_discord_is_one_line_per_try_until_it_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Started while the network is down: a short line per try, no traceback, and the bot logs in as
    soon as Discord answers."""
    from bot.core.app import open_engine
    from bot.discord.client import RoleplayBot, login_with_retry

    from .support.local_http import free_port

    port = free_port()
    down = FakeDiscord()
    down.port = port  # where it will listen, once it is up
    config = bot_config(tmp_path, down, None)
    async with open_engine(config) as engine:
        bot = RoleplayBot(config, engine)
        logging_in = asyncio.create_task(login_with_retry(bot, "local-test-token", [], delays=(0.05,)))
        async with asyncio.timeout(30):
            while len([r for r in caplog.records if "cannot reach Discord" in r.getMessage()]) < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        await down.start(port)
        try:
            assert await asyncio.wait_for(logging_in, 30) is True
            tries = [r for r in caplog.records if "cannot reach Discord" in r.getMessage()]
            assert tries and all(r.exc_info is None and "\n" not in r.getMessage() for r in tries)
            await bot.close()
        finally:
            await down.stop()


async def test_a_render_outliving_the_interaction_token_ends_in_the_channel(
    server: FakeDiscord, config
) -> None:
    """Ten faces on a slow machine can take longer than an interaction token lives (15 minutes): the
    result then comes as a channel message. Both lives are shortened here: the bot counts from its
    acknowledgement, Discord from the command, so the bot's must end first (it keeps a margin)."""
    server.token_life = 1.0
    channel = server.channels["general"]
    async with running_bot(config, server) as run:
        run.bot.get_cog("Admin").token_life = 0.05  # type: ignore[union-attr]
        await server.slash(channel, ADMIN, "manage", subcommand("render"), admin=True)
        [done] = await server.wait_for(
            lambda r: posts_to(channel)(r) and "Rendered 10 faces of Mira" in str(r.json), limit=40
        )
        assert "contact-sheet.png" in done.files and pings_nobody(done)


async def test_a_burst_that_meets_rate_limits_loses_no_reply(server: FakeDiscord, tmp_path: Path) -> None:
    """Discord answers 429 with retry_after when a route is hammered; every reply still arrives, once."""
    server.rate_limit, server.rate_window = 1, 1.0
    config = bot_config(tmp_path, server, None, cooldown=0.0)
    channels = [server.channels["general"], server.channels["roleplay"]]
    async with running_bot(config, server) as run:
        for channel in channels:
            await enable(server, channel)
        for n in range(2):
            for channel in channels:
                guest = FakeDiscord.user(f"Guest{n}", user_id=3_000_000_000_000_000_000 + n)
                await server.say(channel, guest, f"hello from guest {n}")
        for channel in channels:
            history = await stored(run.engine, channel, "mira", 4)  # stored only once delivered
            assert [m.role for m in history].count("assistant") == 2
        assert server.throttled > 0  # the burst did meet Discord's limits
        for channel in channels:
            replies = [r for r in server.sent(posts_to(channel)) if (r.json or {}).get("message_reference")]
            answered = [str(r.json["message_reference"]["message_id"]) for r in replies]
            assert len(set(answered)) == 2
