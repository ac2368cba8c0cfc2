"""End to end: a cast of two personas in one channel, through the bot's webhook, and the reply controls;
the unmodified discord.py client, the real engine and store, against the strict local Discord server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from bot.config import Config
from bot.core import Engine
from bot.discord.replies import FACE_ID, NEXT_ID, NOT_YOURS, PREVIOUS_ID, REGENERATE_ID

from .support.configs import add_persona
from .support.discord_server import FakeDiscord, Request, button, callbacks, posts_to
from .support.harness import bot_config, enable_channel, running_bot
from .support.scripted import Scripted

pytestmark = pytest.mark.slow

ADMIN = FakeDiscord.user("Ada", user_id=2_000_000_000_000_000_001)
MEMBER = FakeDiscord.user("Milo", user_id=2_000_000_000_000_000_002)
OTHER = FakeDiscord.user("Nia", user_id=2_000_000_000_000_000_003)
SECOND = "Oh, what joy! I am so happy!"  # a regenerated reply whose face (joy) is not rendered yet
ROOK_ICON = "https://example.org/cards/rook.png"  # his card's V3 icon asset: a stable, public avatar


@pytest.fixture
def config(tmp_path: Path, server: FakeDiscord, tiny_pipeline_dir: Path) -> Config:
    # Turn order: a persona speaks after another only when named, so the script decides who speaks.
    built = bot_config(tmp_path, server, tiny_pipeline_dir, '[cast]\nnext_speaker = "order"\n', cooldown=0.0)
    add_persona(tmp_path, "rook", "Rook", icon_url=ROOK_ICON)
    return built


def scripted(replies: Sequence[str]) -> Callable[[Engine], None]:
    def wrap(engine: Engine) -> None:
        engine.llm = Scripted(engine.llm, list(replies))  # type: ignore[assignment]

    return wrap


async def command(server: FakeDiscord, channel: int, name: str, sub: str, value: str | None = None) -> str:
    """An admin runs /name sub [value]; returns the text the bot answered with."""
    options = [{"name": "name", "type": 3, "value": value}] if value is not None else []
    token = await server.slash(
        channel, ADMIN, name, [{"name": sub, "type": 1, "options": options}], admin=True
    )
    answers = await server.wait_for(lambda r: callbacks(token)(r) and bool(_text(r)))
    return " ".join(_text(r) for r in answers)


def _text(request: Request) -> str:
    body = request.json or {}
    return str((body.get("data") or body).get("content") or "")


async def cast_of_two(server: FakeDiscord, channel: int, mode: str = "all") -> str:
    await enable_channel(server, channel, ADMIN, mode)
    return await command(server, channel, "cast", "add", "rook")


async def test_two_personas_post_through_the_webhook_with_their_own_names_and_faces(
    server: FakeDiscord, config: Config
) -> None:
    channel = server.channels["roleplay"]
    replies = ["Aye, a schooner.", "She rode low in the water.", "The lamp saw it too."]
    async with running_bot(config, server, scripted(replies)) as run:
        answer = await cast_of_two(server, channel)
        assert "Mira" in answer and "Rook" in answer and "Manage Webhooks" not in answer
        posts = server.webhook_posts(channel)

        await server.say(channel, MEMBER, "Rook, did you see the ship?")  # addressed by name
        await server.wait_for(posts)
        rook_message = max(
            (m for m in server.messages.values() if "webhook_id" in m), key=lambda m: int(m["id"])
        )
        await server.say(channel, MEMBER, "How big was she?", reply_to=rook_message)  # by a reply
        await server.wait_for(posts, count=2)
        await server.say(channel, MEMBER, "Mira, did you?")
        sent = await server.wait_for(posts, count=3)

        assert [r.json["username"] for r in sent] == ["Rook", "Rook", "Mira"]
        assert [r.json["content"] for r in sent] == replies
        for request in sent:
            assert request.json["allowed_mentions"]["parse"] == []
            assert request.json["embeds"][0]["image"]["url"] == "attachment://expression.png"
            assert request.files["expression.png"].startswith(b"\x89PNG")
            assert request.query.get("wait") in ("1", "true")
        assert sent[0].files["expression.png"] != sent[2].files["expression.png"]  # each its own face
        # Rook's card names a public icon: his avatar; Mira's names none (Discord needs a URL for one).
        assert [r.json.get("avatar_url") for r in sent] == [ROOK_ICON, ROOK_ICON, None]
        # One webhook, made once and reused; nothing posted as the bot itself.
        assert len(server.sent(lambda r: r.method == "POST" and r.path.endswith("/webhooks"))) == 1
        assert server.sent(posts_to(channel)) == []
        # The webhook's own messages (mode "all" answers everything else) were never answered, nor stored
        # as someone's words: three messages, three replies.
        history = await run.engine.admin.recent_messages(channel, 20)
        assert [(m.role, m.author_name) for m in history] == [
            ("user", "Milo"),
            ("assistant", "Rook"),
            ("user", "Milo"),
            ("assistant", "Rook"),
            ("user", "Milo"),
            ("assistant", "Mira"),
        ]


async def test_persona_turns_after_one_message_are_bounded_and_rate_limits_respected(
    server: FakeDiscord, config: Config
) -> None:
    channel = server.channels["roleplay"]
    endless = ["Rook, your turn.", "Mira, yours.", "Rook, again!", "Mira, again!", "Quiet now."]
    server.rate_limit, server.rate_window = 1, 0.5  # one webhook post per half second
    async with running_bot(config, server, scripted(endless)) as run:
        await cast_of_two(server, channel)
        posts = server.webhook_posts(channel)
        await server.say(channel, MEMBER, "Mira, start us off.")
        await server.wait_for(posts, count=2)
        await server.say(channel, MEMBER, "And then?")  # answered after the first message's replies
        history = await stored(run.engine, channel, 6)
        # [cast] max_turns = 2: Mira, then Rook (named), and no third reply to either message.
        assert [m.author_name for m in history] == ["Milo", "Mira", "Rook", "Milo", "Mira", "Rook"]
        assert [r.json["username"] for r in server.sent(posts)] == ["Mira", "Rook", "Mira", "Rook"]
        assert server.throttled >= 1  # a 429 was given, and the reply still arrived


async def stored(engine: Engine, channel: int, count: int) -> list[Any]:
    async with asyncio.timeout(30):
        # The store has no change notification; polling the test's database is fine.
        while len(history := await engine.admin.recent_messages(channel, 50)) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return history


async def test_without_manage_webhooks_the_cast_posts_as_the_bot(server: FakeDiscord, config: Config) -> None:
    channel = server.channels["roleplay"]
    server.bot_manage_webhooks = False
    async with running_bot(config, server, scripted(["Aye.", "Hello, Milo."])):
        answer = await cast_of_two(server, channel, mode="mention")
        assert "Manage Webhooks" in answer  # said once, to the admin who made the cast
        await server.say(channel, MEMBER, "Nice weather today.")  # mention mode: not for the cast
        await server.say(channel, MEMBER, "Rook, hello!")  # naming a cast member is a mention
        await server.say(channel, MEMBER, "Mira, hello!")
        first, second = await server.wait_for(posts_to(channel), count=2)
        assert (
            first.json["content"] == "**Rook:** Aye." and second.json["content"] == "**Mira:** Hello, Milo."
        )
        assert first.files["expression.png"].startswith(b"\x89PNG")
        assert not server.sent(lambda r: "/webhooks" in r.path and r.path.startswith("/channels"))


async def test_a_deleted_webhook_is_made_again(server: FakeDiscord, config: Config) -> None:
    channel = server.channels["roleplay"]
    async with running_bot(config, server, scripted(["One.", "Two."])) as run:
        await cast_of_two(server, channel)
        posts = server.webhook_posts(channel)
        await server.say(channel, MEMBER, "Rook?")
        await server.wait_for(posts)
        server.delete_webhooks(channel)  # an admin deletes it in the channel settings
        await server.say(channel, MEMBER, "Rook, still there?")
        second = (await server.wait_for(posts, count=2))[-1]
        assert second.json["username"] == "Rook" and second.json["content"] == "Two."
        assert len(server.sent(lambda r: r.method == "POST" and r.path.endswith("/webhooks"))) == 2
        # A new scene with one persona ends the cast, and says so.
        assert "The cast of 2 ended" in await command(server, channel, "manage", "persona", "mira")
        assert [p.slug for p in await run.engine.admin.cast(channel)] == ["mira"]


async def test_the_cast_posts_only_through_the_bots_own_webhook(server: FakeDiscord, config: Config) -> None:
    """The channel already has another integration's webhook (its token visible to a Manage Webhooks
    holder): the cast makes and uses its own, and never posts through the other."""
    channel = server.channels["roleplay"]
    other = server.new_id()
    server.webhooks[other] = {
        "id": str(other),
        "type": 1,
        "guild_id": str(server.guild_id),
        "channel_id": str(channel),
        "user": FakeDiscord.user("Ada"),  # an admin made it for their RSS feed
        "name": "News feed",
        "avatar": None,
        "token": f"webhook-token-{other}",
        "application_id": None,
    }
    server.webhook_channels[str(other)] = str(channel)
    async with running_bot(config, server, scripted(["Aye."])):
        await cast_of_two(server, channel)
        await server.say(channel, MEMBER, "Rook, are you there?")
        [post] = await server.wait_for(server.webhook_posts(channel))
    assert not post.path.startswith(f"/webhooks/{other}/")
    assert len(server.sent(lambda r: r.method == "POST" and r.path.endswith("/webhooks"))) == 1
    assert server.webhooks[other]["name"] == "News feed"  # left as it was


async def test_regenerate_browse_and_face_work_for_the_asker_and_after_a_restart(
    server: FakeDiscord, config: Config
) -> None:
    channel = server.channels["roleplay"]
    async with running_bot(config, server, scripted(["First try.", SECOND])) as run:
        await cast_of_two(server, channel)
        pressed: list[str] = []
        posted: list[dict[str, Any]] = []

        async def press_at_once(message: dict[str, Any]) -> None:
            # 🔄 the moment the reply appears, before the bot has even heard back that it was posted
            # (so before the reply is stored); the press is acknowledged all the same.
            if "webhook_id" not in message:
                return
            server.on_bot_message = None
            posted.append(message)
            pressed.append(await server.press(channel, MEMBER, message, button(message, REGENERATE_ID)))
            await server.wait_for(callbacks(pressed[0]))

        server.on_bot_message = press_at_once
        await server.say(channel, MEMBER, "Rook, say something.")
        edits = await server.wait_for(lambda r: r.method == "PATCH" and any(t in r.path for t in pressed))
        [reply] = posted
        assert reply["webhook_id"] and reply["components"]
        assert edits[-1].json["content"] == SECOND
        assert edits[-1].files["expression.png"].startswith(b"\x89PNG")
        assert reply["content"] == SECOND  # edited in place, as Discord shows it
        assert button(reply, REGENERATE_ID)["label"] == "2/2"
        # The new version is stored once its edit succeeded: right after the edit, not before.
        async with asyncio.timeout(30):
            while (history := await run.engine.admin.recent_messages(channel, 10))[-1].version == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert [m.content for m in history] == ["Rook, say something.", SECOND]
        # Its face was not rendered yet: the best one now, then the fresh render, swapped in.
        assert history[-1].emotion == "joy"
        swapped = await server.wait_for(
            lambda r: r.method == "PATCH" and pressed[0] in r.path and "content" not in (r.json or {})
        )
        assert swapped[-1].files["expression.png"] != edits[-1].files["expression.png"]
        assert swapped[-1].json["embeds"][0]["image"]["url"] == "attachment://expression.png"

        refused = await server.press(channel, OTHER, reply, button(reply, REGENERATE_ID))
        [refusal] = await server.wait_for(callbacks(refused))
        assert refusal.json["data"]["content"] == NOT_YOURS and refusal.json["data"]["flags"] & 64
        assert reply["content"] == SECOND

        token = await server.press(channel, MEMBER, reply, button(reply, PREVIOUS_ID))
        await server.wait_for(lambda r: r.method == "PATCH" and token in r.path)
        assert reply["content"] == "First try."
        assert (await run.engine.admin.recent_messages(channel, 10))[-1].content == "First try."

    # Restarted: the buttons on the old message still work (persistent controls).
    async with running_bot(config, server) as run:
        token = await server.press(channel, MEMBER, reply, button(reply, NEXT_ID))
        await server.wait_for(lambda r: r.method == "PATCH" and token in r.path)
        assert reply["content"] == SECOND
        menu = button(reply, FACE_ID)
        face_before = (await run.engine.admin.recent_messages(channel, 10))[-1].emotion
        other_face = "sadness" if face_before != "sadness" else "anger"
        refused = await server.choose(channel, OTHER, reply, menu, [other_face])  # another member may not
        [refusal] = await server.wait_for(callbacks(refused))
        assert refusal.json["data"]["content"] == NOT_YOURS and refusal.json["data"]["flags"] & 64
        assert (await run.engine.admin.recent_messages(channel, 10))[-1].emotion == face_before
        token = await server.choose(channel, ADMIN, reply, menu, ["joy"], admin=True)  # a manager may
        [edit] = await server.wait_for(lambda r: r.method == "PATCH" and token in r.path)
        assert edit.files["expression.png"].startswith(b"\x89PNG")
        assert (await run.engine.admin.recent_messages(channel, 10))[-1].emotion == "joy"


async def test_streaming_in_a_cast_previews_each_reply_under_its_persona(
    server: FakeDiscord, tmp_path: Path, tiny_pipeline_dir: Path
) -> None:
    config = bot_config(
        tmp_path,
        server,
        tiny_pipeline_dir,
        '[cast]\nnext_speaker = "order"\n',
        discord_extra="stream_edits = true\n",
        cooldown=0.0,
    )
    add_persona(tmp_path, "rook", "Rook")
    channel = server.channels["roleplay"]
    story = "The gulls went quiet before the storm, Mira. " * 6
    answer = "So they did, and the lamp is ready. " * 8

    def script(engine: Engine) -> None:
        engine.llm = Scripted(engine.llm, [story, answer], pause=0.3)  # type: ignore[assignment]

    async with running_bot(config, server, script):
        await cast_of_two(server, channel)
        await server.say(channel, MEMBER, "Rook, what did you see?")  # Rook names Mira: she answers him
        posts = server.webhook_posts(channel)
        first, second = await server.wait_for(posts, count=2)
        assert [first.json["username"], second.json["username"]] == ["Rook", "Mira"]
        assert first.json["content"].endswith(" …") and second.json["content"].endswith(" …")

        def final(text: str) -> Callable[[Request], bool]:
            return lambda r: r.method == "PATCH" and (r.json or {}).get("content") == text.strip()

        [rook] = await server.wait_for(final(story))
        [mira] = await server.wait_for(final(answer))
        for edit in (rook, mira):
            assert edit.path.startswith("/webhooks/")  # the preview, edited in place through the webhook
            assert edit.json["embeds"][0]["image"]["url"] == "attachment://expression.png"
            assert edit.json["components"]  # the controls arrive with the final text
        assert len(server.sent(posts)) == 2 and server.sent(posts_to(channel)) == []
