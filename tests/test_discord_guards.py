"""What members and admins rely on at the bot's edges, end to end on the local Discord server: nobody is
pinged by any send or edit, the per-channel bound on waiting replies is exact, no bot account is ever
answered, and a purge stops the answers to what it removed."""

from __future__ import annotations

import pytest

from bot.core import Engine

from .support.discord_server import FakeDiscord, Request, posts_to
from .support.harness import bot_config, enable_channel, running_bot
from .support.scripted import Scripted

pytestmark = pytest.mark.slow

ADMIN = FakeDiscord.user("Ada", user_id=2_000_000_000_000_000_001)
MEMBER = FakeDiscord.user("Milo", user_id=2_000_000_000_000_000_002)
CROWD = [FakeDiscord.user(f"Guest{n}", user_id=2_000_000_000_000_000_100 + n) for n in range(4)]
STORY = "The lamp flickers as the storm comes in from the west, and the gulls go quiet. " * 4


def busy_notice(channel: int):
    return lambda r: posts_to(channel)(r) and "still answering" in str(r.json)


def replies_in(server: FakeDiscord, channel: int) -> list[Request]:
    return [r for r in server.sent(posts_to(channel)) if "still answering" not in str(r.json)]


async def test_a_streamed_reply_pings_nobody_on_any_edit(server: FakeDiscord, tmp_path) -> None:
    """The preview, each live edit and the final edit all carry AllowedMentions.none(): Discord parses
    an edited text's mentions again, so an edit without them would ping."""
    config = bot_config(tmp_path, server, None, discord_extra="stream_edits = true\n")
    channel = server.channels["general"]
    hostile = f"@everyone <@&{server.admin_role}> <@{ADMIN['id']}> @here " + STORY

    def script(engine: Engine) -> None:
        engine.llm = Scripted(engine.llm, [hostile], pause=0.3)  # type: ignore[assignment]

    async with running_bot(config, server, wrap=script):
        await enable_channel(server, channel, ADMIN)
        await server.say(channel, MEMBER, "Tell me about the storm")

        def edits(r: Request) -> bool:
            return r.method == "PATCH" and r.path.startswith(f"/channels/{channel}/messages/")

        final = await server.wait_for(lambda r: edits(r) and (r.json or {}).get("content") == hostile.strip())
        assert len(server.sent(edits)) >= 2  # live edits, then the final one
        for request in [*server.sent(posts_to(channel)), *server.sent(edits)]:
            allowed = request.json.get("allowed_mentions")
            assert allowed is not None and allowed["parse"] == [], request.path
            assert not (allowed.get("users") or allowed.get("roles") or allowed.get("replied_user"))
        [shown] = [m for m in server.messages.values() if m["content"] == hostile.strip()]
        assert shown["mentions"] == [] and shown["mention_roles"] == [] and not shown["mention_everyone"]
        assert final[-1].files
    assert server.pings == []


async def test_the_bound_on_waiting_replies_is_exact(server: FakeDiscord, tmp_path) -> None:
    """With max_pending_per_channel = 2, one reply being written and one waiting: a third is refused
    (not stored, not answered) with the busy notice, and the channel answers again once free."""
    config = bot_config(tmp_path, server, None, cooldown=0.0)
    assert config.discord.max_pending_per_channel == 2
    channel = server.channels["general"]

    def script(engine: Engine) -> None:
        replies = [STORY, "Second.", "Third.", "Fourth."]
        engine.llm = Scripted(engine.llm, replies, pause=0.3)  # type: ignore[assignment]

    async with running_bot(config, server, wrap=script) as run:
        await enable_channel(server, channel, ADMIN)
        for guest in CROWD[:3]:
            await server.say(channel, guest, f"Hello from {guest['global_name']}")
        await server.wait_for(busy_notice(channel))
        await server.wait_for(lambda r: r in replies_in(server, channel), count=2)
        await server.say(channel, CROWD[3], "Anyone home now?")  # after the wait: answered again
        await server.wait_for(lambda r: r in replies_in(server, channel), count=3)
        history = await run.engine.admin.recent_messages(channel, 20)
        asked = [m.author_name for m in history if m.role == "user"]
        assert asked == ["Guest0", "Guest1", "Guest3"]  # the third was refused whole
        assert [m.content for m in history if m.role == "assistant"] == [STORY.strip(), "Second.", "Third."]
        assert len(server.sent(busy_notice(channel))) == 1


async def test_no_bot_account_is_ever_answered(server: FakeDiscord, tmp_path) -> None:
    """Another bot (a webhook relay, a moderation bot, another roleplay bot) is never answered, even in a
    channel that answers everything: two bots answering each other would never stop."""
    config = bot_config(tmp_path, server, None, cooldown=0.0)
    channel = server.channels["general"]
    other_bot = FakeDiscord.user("Relay", bot=True, user_id=2_000_000_000_000_000_200)
    async with running_bot(config, server) as run:
        await enable_channel(server, channel, ADMIN)
        await server.say(channel, other_bot, "Mira, answer me!")
        asked = await server.say(channel, MEMBER, "Good evening, Mira.")
        [reply] = await server.wait_for(posts_to(channel))
        assert str(reply.json["message_reference"]["message_id"]) == asked["id"]
        history = await run.engine.admin.recent_messages(channel, 10)
        assert [m.author_name for m in history if m.role == "user"] == ["Milo"]


async def test_a_purge_stops_the_answers_to_what_it_removed(server: FakeDiscord, tmp_path) -> None:
    """A moderator's bulk delete while the bot is writing the answer to one of those messages: the
    answer stops, its preview is taken down, nothing of it is stored, and the channel goes on."""
    config = bot_config(tmp_path, server, None, cooldown=0.0, discord_extra="stream_edits = true\n")
    channel = server.channels["general"]

    def script(engine: Engine) -> None:
        engine.llm = Scripted(engine.llm, [STORY * 2, "Still here."], pause=0.3)  # type: ignore[assignment]

    async with running_bot(config, server, wrap=script) as run:
        await enable_channel(server, channel, ADMIN)
        spam = await server.say(channel, MEMBER, "Tell me the longest story you know")
        [preview] = await server.wait_for(posts_to(channel))  # the answer is being written
        [preview_id] = [m["id"] for m in server.messages.values() if m["content"].endswith(" …")]
        await server.bulk_delete([spam])
        asked = await server.say(channel, MEMBER, "Are you there?")
        replies = await server.wait_for(posts_to(channel), count=2)
        assert replies[-1].json["content"] == "Still here."
        assert str(replies[-1].json["message_reference"]["message_id"]) == asked["id"]
        await server.wait_for(
            lambda r: r.method == "DELETE" and r.path == f"/channels/{channel}/messages/{preview_id}"
        )
        history = await run.engine.admin.recent_messages(channel, 10)
        assert [m.content for m in history] == ["Are you there?", "Still here."]
        assert preview.json["content"].endswith(" …")


async def test_a_database_failure_is_told_to_the_channel_once_in_a_while(
    server: FakeDiscord, tmp_path
) -> None:
    """The database file replaced under the running bot (a deleted one is written back): the member
    hears why their message was not answered, in one line; further messages get the busy reaction, not
    a flood of the same notice."""
    import sqlite3
    from pathlib import Path

    config = bot_config(tmp_path, server, None, cooldown=0.0)
    channel = server.channels["general"]

    def could_not_save(r: Request) -> bool:
        return posts_to(channel)(r) and "could not save" in str(r.json)

    async with running_bot(config, server):
        await enable_channel(server, channel, ADMIN)
        await server.say(channel, MEMBER, "Hello, Mira.")
        await server.wait_for(posts_to(channel))
        database = config.resolve(config.store.path)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
        with sqlite3.connect(database) as other:  # another program's file now has the name
            other.execute("CREATE TABLE notes (x)")
        await server.say(channel, MEMBER, "Still there?")
        [notice] = await server.wait_for(could_not_save)
        assert "the database file was replaced" in notice.json["content"]
        await server.say(channel, MEMBER, "Hello?")
        await server.wait_for(lambda r: r.method == "PUT" and "/reactions/" in r.path)
        assert len(server.sent(could_not_save)) == 1
    with sqlite3.connect(database) as other:  # the other file was left alone
        assert [r[0] for r in other.execute("SELECT name FROM sqlite_master")] == ["notes"]
