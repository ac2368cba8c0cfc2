"""A persona that speaks up on its own, bounded: the decisions over a clock (core/autonomy.py), then end
to end on the local Discord server with the real engine and the bundled model."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from bot.config_chat import AutonomyConfig
from bot.core import Engine
from bot.core.autonomy import Autonomy, settings_of
from bot.store import AutonomyRow

from .support.configs import add_persona
from .support.discord_server import SEND_MESSAGES, FakeDiscord, callbacks, posts_to
from .support.harness import Running, bot_config, enable_channel, running_bot
from .support.scripted import Scripted
from .support.watched import Call, Timed

ADMIN = FakeDiscord.user("Ada", user_id=2_000_000_000_000_000_021)
MEMBER = FakeDiscord.user("Milo", user_id=2_000_000_000_000_000_022)
FRIEND = FakeDiscord.user("Sam", user_id=2_000_000_000_000_000_023)
OTHER_BOT = FakeDiscord.user("EchoBot", bot=True, user_id=2_000_000_000_000_000_024)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def on(**changes: Any) -> Any:
    return settings_of(AutonomyRow(True), AutonomyConfig(**changes))


def test_never_above_the_cap_in_any_hour() -> None:
    clock = Clock()
    autonomy = Autonomy(clock, random.Random(1))
    settings = on(max_per_hour=3, chance=1.0, member_seconds=10_000.0)
    acted = []
    for _ in range(200):  # members chat every 30 s for 100 minutes
        clock.now += 30
        autonomy.member_spoke(7)
        if autonomy.chime_in(7, settings) is not None:
            autonomy.acted(7)
            acted.append(clock.now)
    assert len(acted) > 3
    assert all(sum(1 for t in acted if start <= t < start + 3600) <= 3 for start in acted)


def test_a_quiet_spell_brings_one_line_per_member_message_and_none_without_members() -> None:
    clock = Clock()
    autonomy = Autonomy(clock)
    settings = on(quiet_seconds=60.0, member_seconds=600.0)
    assert not autonomy.quiet_due(1, settings)  # nobody ever spoke here
    autonomy.member_spoke(1)
    clock.now += 59
    assert not autonomy.quiet_due(1, settings)
    clock.now += 2
    assert autonomy.quiet_due(1, settings)
    autonomy.acted(1, quiet_spell=True)
    clock.now += 120
    assert not autonomy.quiet_due(1, settings)  # one line per member message, however long the quiet
    autonomy.member_spoke(1)
    clock.now += 601
    assert not autonomy.quiet_due(1, settings)  # members silent too long: the channel stays silent
    chatty = on(quiet_seconds=60.0, member_seconds=600.0, chance=1.0)
    assert autonomy.room(1, settings) == 0 and autonomy.chime_in(1, chatty) is None
    assert autonomy.room(1, settings_of(AutonomyRow(False), AutonomyConfig())) == 0  # off: never


def test_the_persona_s_own_replies_end_a_quiet_spell() -> None:
    clock = Clock()
    autonomy = Autonomy(clock)
    settings = on(quiet_seconds=60.0)
    autonomy.member_spoke(1)
    clock.now += 50
    autonomy.persona_spoke(1)
    clock.now += 50
    assert not autonomy.quiet_due(1, settings)
    clock.now += 11
    assert autonomy.quiet_due(1, settings)


# -- end to end -------------------------------------------------------------------------------------------


def autonomy_option(**values: Any) -> dict[str, Any]:
    kinds = {"on": 5, "per_hour": 4, "quiet_minutes": 10, "chance": 10}
    options = [{"name": k, "type": kinds[k], "value": v} for k, v in values.items()]
    return {"name": "autonomy", "type": 1, "options": options}


def config_for(tmp_path: Path, server: FakeDiscord, extra: str = "", **autonomy: float) -> Any:
    settings = {"quiet_seconds": 0.6, "member_seconds": 120.0, "chance": 0.0, "react_share": 0.0} | autonomy
    table = "[autonomy]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
    return bot_config(tmp_path, server, None, extra=table + extra, cooldown=0.0)


async def turn_on(server: FakeDiscord, channel: int, mode: str = "all", **values: Any) -> None:
    await enable_channel(server, channel, ADMIN, mode)
    token = await server.slash(channel, ADMIN, "channel", [autonomy_option(on=True, **values)], admin=True)
    [answer] = await server.wait_for(callbacks(token))
    assert "speak up here on its own" in answer.json["data"]["content"]


def unprompted(channel: int) -> Any:
    """The bot's posts in `channel` that answer no message."""
    return lambda r: posts_to(channel)(r) and not (r.json or {}).get("message_reference")


async def looks(run: Running, count: int) -> None:
    """Wait until the presence cog has looked at the channels (or rolled for chatter) `count` more times."""
    presence: Any = run.bot.get_cog("Presence")  # (an extension's own copy of the Presence class)
    async with presence.changed:
        target = presence.looked + count
        await asyncio.wait_for(presence.changed.wait_for(lambda: presence.looked >= target), 60)


@pytest.mark.slow
async def test_after_a_quiet_spell_one_line_then_silence(server: FakeDiscord, tmp_path: Path) -> None:
    channel, untouched, muted = server.channels["roleplay"], server.channels["side"], server.channels["quiet"]
    # The bot may read but not post in `muted` (its role denied Send Messages there).
    server.channel_overwrites[muted] = [
        {"id": str(server.bot_role), "type": 0, "allow": "0", "deny": str(SEND_MESSAGES)}
    ]
    async with running_bot(config_for(tmp_path, server, chance=1.0), server) as run:
        await turn_on(server, channel)
        await turn_on(server, untouched)  # on, but no member ever speaks there
        await turn_on(server, muted, mode="mention")
        await server.say(
            muted, MEMBER, "Sam, have you seen the harbour today?"
        )  # chatter: a line, if it could
        await server.say(channel, MEMBER, "Mira, the storm is finally over.")
        [line] = await server.wait_for(unprompted(channel), limit=90)
        assert line.json["content"].strip() and line.files["expression.png"].startswith(b"\x89PNG")
        history = await run.engine.store.history(channel, "mira")
        async with asyncio.timeout(30):
            while len(history := await run.engine.store.history(channel, "mira")) < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert [m.role for m in history] == ["user", "assistant", "assistant"]
        assert history[-1].prompt_id is None  # answers no message
        await looks(run, 20)  # many quiet spells' worth of looks: no second line, nothing where nobody spoke
        assert len(server.sent(unprompted(channel))) == 1
        assert server.sent(posts_to(untouched)) == [] and server.sent(posts_to(muted)) == []


@pytest.mark.slow
async def test_chatter_never_brings_more_than_the_cap(server: FakeDiscord, tmp_path: Path) -> None:
    channel = server.channels["roleplay"]
    config = config_for(tmp_path, server, chance=1.0, quiet_seconds=3600.0, member_seconds=7200.0)
    async with running_bot(config, server) as run:
        await turn_on(server, channel, mode="mention", per_hour=2)
        for i in range(2):
            await server.say(channel, MEMBER, f"Sam, did you see the game last night? ({i})")
            await server.wait_for(unprompted(channel), count=i + 1, limit=90)
        for i in range(4):
            await server.say(channel, FRIEND, f"Yes Milo, what a finish! ({i})")
        await looks(run, 6)
        assert len(server.sent(unprompted(channel))) == 2


@pytest.mark.slow
async def test_reactions_fit_and_count_toward_the_cap(server: FakeDiscord, tmp_path: Path) -> None:
    channel = server.channels["roleplay"]
    config = config_for(
        tmp_path, server, chance=1.0, react_share=1.0, quiet_seconds=3600.0, member_seconds=7200.0
    )
    async with running_bot(config, server) as run:
        await turn_on(server, channel, mode="mention", per_hour=1)
        said = await server.say(channel, MEMBER, "Sam, I am so happy, I passed my exam! This is wonderful!")
        [reaction] = await server.wait_for(
            lambda r: r.method == "PUT" and f"/messages/{said['id']}/reactions/" in r.path
        )
        assert "%F0%9F%98%84" in reaction.path or "😄" in reaction.path  # joy
        await server.say(channel, MEMBER, "Sam, and then I fell asleep on the bus.")
        await looks(run, 4)
        assert len(server.sent(lambda r: r.method == "PUT" and "/reactions/" in r.path)) == 1


@pytest.mark.slow
async def test_no_loop_with_another_bot(server: FakeDiscord, tmp_path: Path) -> None:
    """Another bot in the channel answers every post of ours at once (the worst neighbour): neither its
    posts nor ours wake the persona, so one member message brings one unprompted line, not a loop."""
    channel = server.channels["roleplay"]
    config = config_for(tmp_path, server, chance=1.0, member_seconds=120.0)
    echoes: list[dict[str, Any]] = []

    async def echo(message: dict[str, Any]) -> None:
        if message["channel_id"] == str(channel) and len(echoes) < 50:
            echoes.append(await server.say(channel, OTHER_BOT, "EchoBot heard that!", mention_bot=True))

    async with running_bot(config, server) as run:
        await turn_on(server, channel, mode="mention", per_hour=10)  # (the other bot mentions ours)
        server.on_bot_message = echo
        await server.say(channel, MEMBER, "Sam, look at the sky.")  # chatter: one line, then a quiet line
        await server.wait_for(unprompted(channel), count=1, limit=90)
        await looks(run, 30)
        lines = server.sent(unprompted(channel))
        assert 1 <= len(lines) <= 2 and len(echoes) == len(server.sent(posts_to(channel)))
        assert not any(r.json.get("message_reference") for r in server.sent(posts_to(channel)))


async def quiet_line_being_written(server: FakeDiscord, timed: Timed, channel: int) -> Call:
    """A member's message is answered; then the quiet spell starts an unprompted line: it, once under way."""
    await server.say(channel, MEMBER, "Mira, tell me a long story about the sea.")
    await server.wait_for(posts_to(channel))
    return await timed.writing((channel, "mira"), len(timed.calls))


@pytest.mark.slow
async def test_a_reply_to_a_member_never_waits_for_an_unprompted_line(
    server: FakeDiscord, tmp_path: Path
) -> None:
    channel, other = server.channels["roleplay"], server.channels["general"]
    config = config_for(tmp_path, server, quiet_seconds=0.3)
    timed: list[Timed] = []
    async with running_bot(config, server, lambda engine: timed.append(Timed.watching(engine))) as run:
        await turn_on(server, channel)
        await enable_channel(server, other, ADMIN)
        # A member speaks in another channel while the line is being written: the model gives way.
        line = await quiet_line_being_written(server, timed[0], channel)
        await server.say(other, FRIEND, "Mira, quick question: are you there?")
        [reply] = await server.wait_for(posts_to(other), limit=90)
        presence: Any = run.bot.get_cog("Presence")
        assert presence.gave_way >= 1
        asked = next(c for c in timed[0].calls if c.session == (other, "mira")).asked
        assert len([t for t in line.tokens if t > asked]) <= 1  # gave way within one token
        # Nothing half-written was posted: a line comes (the quiet spell tries again) only after the reply.
        assert all(post.at > reply.at for post in server.sent(unprompted(channel)))


@pytest.mark.slow
async def test_a_member_speaking_where_a_line_is_written_goes_first(
    server: FakeDiscord, tmp_path: Path
) -> None:
    channel = server.channels["roleplay"]
    config = config_for(tmp_path, server, quiet_seconds=0.3)
    timed: list[Timed] = []
    async with running_bot(config, server, lambda engine: timed.append(Timed.watching(engine))):
        await turn_on(server, channel)
        line = await quiet_line_being_written(server, timed[0], channel)
        calls = len(timed[0].calls)
        said = await server.say(channel, FRIEND, "Mira, wait, I have a question!")
        [reply] = await server.wait_for(
            lambda r: (
                posts_to(channel)(r)
                and str((r.json.get("message_reference") or {}).get("message_id")) == said["id"]
            )
        )
        answer = next(c for c in timed[0].calls[calls:] if c.session == (channel, "mira"))
        assert not [t for t in line.tokens if t > answer.asked]  # the line was dropped before it
        assert all(post.at > reply.at for post in server.sent(unprompted(channel)))


@pytest.mark.slow
async def test_in_a_cast_personas_answer_each_other_a_bounded_number_of_lines(
    server: FakeDiscord, tmp_path: Path
) -> None:
    channel = server.channels["roleplay"]
    # Turn order: one reply to the member (Mira's), then Rook and Mira unprompted.
    config = config_for(tmp_path, server, '[cast]\nnext_speaker = "order"\n', cast_turns=2)
    add_persona(tmp_path, "rook", "Rook")
    lines = ["Welcome aboard, Milo.", "The sea is calm tonight.", "Calm? Rook, you never trust calm seas."]
    lines += ["(a line past the bound)", "(another)"]

    scripted: list[Scripted] = []

    def wrap(engine: Engine) -> None:
        scripted.append(Scripted(engine.llm, lines))
        engine.llm = scripted[0]  # type: ignore[assignment]

    async with running_bot(config, server, wrap) as run:
        await turn_on(server, channel)
        token = await server.slash(
            channel,
            ADMIN,
            "cast",
            [{"name": "add", "type": 1, "options": [{"name": "name", "type": 3, "value": "rook"}]}],
            admin=True,
        )
        await server.wait_for(callbacks(token))
        await server.say(channel, MEMBER, "Hello, Mira!")
        posts = await server.wait_for(server.webhook_posts(channel), count=3, limit=90)
        unprompted_posts = posts[1:]
        assert [p.json["username"] for p in unprompted_posts] == ["Rook", "Mira"]
        assert [p.json["content"] for p in unprompted_posts] == lines[1:3]
        # The quiet spell is told to the first unprompted line's prompt only; it is never stored.
        prompts = scripted[0].prompts
        assert "A while passes in silence. Rook speaks up" in prompts[1]
        assert "A while passes" not in prompts[0] + prompts[2]
        history = await run.engine.store.history(channel, "mira")
        assert not any("A while passes" in m.content for m in history)
        await looks(run, 20)  # cast_turns bounds the exchange, and the quiet spell brings it once
        assert len(server.sent(server.webhook_posts(channel))) == 3
