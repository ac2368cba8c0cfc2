from __future__ import annotations

import asyncio

import pytest

from bot.config import Config
from bot.core.app import open_engine
from bot.errors import InputError, PersonaError

pytestmark = pytest.mark.slow


async def test_turn_end_to_end(config: Config) -> None:
    async with open_engine(config) as engine:
        seen_while_streaming: list[list[str]] = []

        async def on_text(_: str) -> None:
            if not seen_while_streaming:  # at the first token, the user's message is already committed
                seen_while_streaming.append([m.role for m in await engine.store.history(5, "mira")])

        result = await engine.turn(5, "Sam", "Hi Mira! Is the lamp lit?", author_id=42, on_text=on_text)
        assert seen_while_streaming == [["user"]]
        assert result.text.strip()
        mira = engine.personas.load("mira")
        assert result.emotion.label in mira.labels and result.emotion.raw_label in mira.labels
        assert set(result.emotion.probabilities) == set(mira.labels)
        assert abs(sum(result.emotion.probabilities.values()) - 1) < 1e-6
        # The shipped drawn face of the judged emotion (no inpainting model is configured).
        assert (
            result.image.path == engine.personas.avatars / "sprites" / "mira" / f"{result.emotion.label}.png"
        )
        history = await engine.store.history(5, "mira")
        assert [(m.role, m.author_name) for m in history] == [("user", "Sam"), ("assistant", "Mira")]
        assert history[1].content == result.text and history[1].emotion == result.emotion.label
        assert (await engine.store.channel(5)).last_emotion == result.emotion.label
        assert result.emotion.judge == "classifier"  # the config's judge (no wall-clock comparison here)


async def test_history_continues_after_restart(config: Config) -> None:
    async with open_engine(config) as engine:
        await engine.turn(6, "Sam", "My name is Sam and my boat is the Gull.")
    async with open_engine(config) as engine:  # a new process
        assert len(await engine.store.history(6, "mira")) == 2
        await engine.turn(6, "Sam", "What is my boat called?")
        history = await engine.store.history(6, "mira")
        assert [m.role for m in history] == ["user", "assistant", "user", "assistant"]
        assert history[0].content == "My name is Sam and my boat is the Gull."


async def test_cancelled_turn_keeps_the_users_message_only(config: Config) -> None:
    async with open_engine(config) as engine:
        started = asyncio.Event()
        task = asyncio.create_task(
            engine.turn(7, "Sam", "Tell me everything.", on_text=lambda _: started.set())
        )
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [m.role for m in await engine.store.history(7, "mira")] == ["user"]
        await engine.turn(7, "Sam", "Sorry, go on.")  # the model and the channel are usable again
        assert [m.role for m in await engine.store.history(7, "mira")] == ["user", "user", "assistant"]


@pytest.mark.parametrize(
    ("text", "message"), [("", "empty"), ("   \n ", "empty"), ("fog " * 3000, "tokens long")]
)
async def test_bad_messages_change_nothing(config: Config, text: str, message: str) -> None:
    async with open_engine(config) as engine:
        with pytest.raises(InputError, match=message):
            await engine.turn(8, "Sam", text)
        assert await engine.store.count_messages() == 0


async def test_persona_switch(config: Config) -> None:
    async with open_engine(config) as engine:
        with pytest.raises(PersonaError, match="not a valid persona name"):
            await engine.admin.set_persona(9, "../mira")
        with pytest.raises(PersonaError, match="no persona named"):
            await engine.admin.set_persona(9, "nobody")
        assert (await engine.store.channel(9)).persona is None
        other = engine.personas.load("mira")
        engine.personas.save(type(other)(**{**other.__dict__, "slug": "mira-noir", "name": "Noir Mira"}))
        assert (await engine.admin.set_persona(9, "mira-noir")).name == "Noir Mira"
        result = await engine.turn(9, "Sam", "Who are you?")
        assert result.persona.slug == "mira-noir"
        assert [m.persona for m in await engine.store.history(9, "mira-noir")] == ["mira-noir", "mira-noir"]


async def test_reply_is_stored_only_once_delivered(config: Config) -> None:
    async with open_engine(config) as engine:

        async def refused(_: object) -> int:
            raise ConnectionError("Discord is down")

        with pytest.raises(ConnectionError):
            await engine.turn(10, "Sam", "Hello?", deliver=refused)
        assert [m.role for m in await engine.store.history(10, "mira")] == ["user"]

        async def sent(result: object) -> int:
            return 987654321

        result = await engine.turn(10, "Sam", "Hello again?", deliver=sent)
        history = await engine.store.history(10, "mira")
        assert [m.role for m in history] == ["user", "user", "assistant"]
        assert history[-1].discord_id == 987654321 and history[-1].id == result.reply_message_id


async def test_warm_turns_reuse_the_prefix_when_history_overflows(config: Config) -> None:
    """The window of history in the prompt moves in steps and the engine remembers where it starts, so a
    warm turn evaluates only the new messages even when old ones no longer fit."""
    async with open_engine(config) as engine:
        for i in range(120):  # far more history than the 2,048-token context holds
            await engine.store.add_message(
                9,
                role="user" if i % 2 == 0 else "assistant",
                author_name="Sam" if i % 2 == 0 else "Mira",
                content=f"Line {i}: the storm keeps rolling over the island and the lamp keeps turning.",
                persona="mira",
            )
        results = [await engine.turn(9, "Sam", f"And then? ({n})") for n in range(3)]
        cold, warm = results[0], results[1:]
        assert cold.stats.evaluated_tokens > 1000
        for result in warm:
            assert result.stats.evaluated_tokens < 200, result.stats


async def test_a_reply_never_starts_with_speaker_labels(config: Config, model) -> None:
    """Small models open with "Mira:" or speak for the member ("Sam:"); neither is shown or stored,
    however the stream is cut, and a colon later in the reply is left alone."""
    from bot.core import Engine
    from bot.personas import PersonaLibrary
    from bot.store import Store

    from .support.scripted import Scripted

    replies = ["Mira: Sam: The lamp is lit, Sam.", " **Mira:** Hello: again.", "Mira smiles. Yes."]
    store = await Store.open(config.resolve(config.store.path))
    try:
        engine = Engine(config, store, Scripted(model, replies, chunk=3), PersonaLibrary.from_config(config))
        for n, expected in enumerate(["The lamp is lit, Sam.", "Hello: again.", "Mira smiles. Yes."]):
            shown: list[str] = []
            result = await engine.turn(1, "Sam", f"Is the lamp lit? ({n})", on_text=shown.append)
            assert "".join(shown) == result.text == expected
        stored = [m.content for m in await store.history(1, "mira") if m.role == "assistant"]
        assert stored == ["The lamp is lit, Sam.", "Hello: again.", "Mira smiles. Yes."]
    finally:
        await store.close()


async def test_alternating_speakers_keep_the_prompt_prefix(config: Config) -> None:
    """Two members take turns: the persona's text names neither of them, so a warm turn evaluates only
    the new messages, whoever speaks (it used to re-read the whole prompt at every change of speaker)."""
    async with open_engine(config) as engine:
        await engine.turn(9, "Sam", "Good evening, Mira. The storm is coming.")  # one person: their name
        first = await engine.turn(
            9, "Ada", "Mira, is the lamp ready?"
        )  # a second voice: the system prompt names them, the rest of it is shifted, not read again
        warm = []
        for n, speaker in enumerate(["Sam", "Ada", "Sam", "Ada"]):
            result = await engine.turn(9, speaker, f"Tell us more, Mira ({n}).")
            warm.append(result.stats.evaluated_tokens)
        assert 0 < first.stats.evaluated_tokens < first.stats.prompt_tokens // 2
        # The new user message and the previous reply (48 tokens at most), not the persona's text.
        assert all(n < 100 for n in warm), warm
