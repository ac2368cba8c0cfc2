"""A cast: several personas in one channel, on the real engine, store and bundled model."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from bot.config import Config, load_config
from bot.core import Engine, TurnResult
from bot.core.app import open_engine
from bot.errors import InputError
from bot.personas import PersonaLibrary
from bot.store import Store

from .support.configs import add_persona, write_config
from .support.scripted import Scripted

pytestmark = pytest.mark.slow


def cast_config(folder: Path, extra: str = "") -> Config:
    path = write_config(folder, extra)
    add_persona(folder, "rook", "Rook")
    add_persona(folder, "wren", "Wren")
    add_persona(folder, "finch", "Finch")
    return load_config(path)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    # Turn order: a scripted reply is written only when the script names its speaker.
    return cast_config(tmp_path, '[cast]\nmax_turns = 3\nmax_members = 3\nnext_speaker = "order"\n')


@contextlib.asynccontextmanager
async def scripted_engine(
    config: Config, model, replies: Sequence[str], honor_stops: bool = False
) -> AsyncIterator[Engine]:
    store = await Store.open(config.resolve(config.store.path))
    try:
        script = Scripted(model, replies, chunk=7, honor_stops=honor_stops)
        yield Engine(config, store, script, PersonaLibrary.from_config(config))
    finally:
        await store.close()


def speakers(result: TurnResult) -> list[str]:
    return [r.persona.name for r in [result, *result.followed_by]]


async def test_cast_commands_and_their_limits(config: Config) -> None:
    async with open_engine(config) as engine:
        assert [p.slug for p in await engine.admin.cast(1)] == ["mira"]
        with pytest.raises(InputError, match="keeps one persona"):
            await engine.admin.cast_remove(1, "mira")
        assert [p.slug for p in await engine.admin.cast_add(1, "rook")] == ["mira", "rook"]
        with pytest.raises(InputError, match="already in"):
            await engine.admin.cast_add(1, "Rook")
        await engine.admin.cast_add(1, "wren")
        with pytest.raises(InputError, match="full: 3 personas"):
            await engine.admin.cast_add(1, "finch")
        with pytest.raises(InputError, match="not in this channel's cast"):
            await engine.admin.cast_remove(1, "nobody")
        assert [p.slug for p in await engine.admin.cast_remove(1, "Rook")] == ["mira", "wren"]
        assert [p.slug for p in await engine.admin.cast(2)] == ["mira"]  # other channels are untouched
        await engine.admin.set_persona(1, "rook")  # a new scene with one persona
        assert [p.slug for p in await engine.admin.cast(1)] == ["rook"]


async def test_named_persona_answers_and_sees_the_others_under_their_names(config: Config, model) -> None:
    replies = ["Aye, I saw it from the boat.", "Big as a church.", "The lamp is lit."]
    async with scripted_engine(config, model, replies) as engine:
        await engine.admin.cast_add(4, "rook")
        # Named, against turn order (which would give the lead, then the other one).
        first = await engine.turn(4, "Sam", "Rook, did you see the ship?")
        second = await engine.turn(4, "Sam", "How big, @rook?")
        third = await engine.turn(4, "Sam", "Mira, is the lamp lit?")
        assert [speakers(r) for r in (first, second, third)] == [["Rook"], ["Rook"], ["Mira"]]
        assert third.cast_size == 2
        history = await engine.admin.recent_messages(4, 10)
        assert [(m.author_name, m.content) for m in history] == [
            ("Sam", "Rook, did you see the ship?"),
            ("Rook", "Aye, I saw it from the boat."),
            ("Sam", "How big, @rook?"),
            ("Rook", "Big as a church."),
            ("Sam", "Mira, is the lamp lit?"),
            ("Mira", "The lamp is lit."),
        ]
        # Mira's prompt: Rook's lines are spoken lines under his name, her own reply her turn.
        mira = engine.personas.load("mira")
        built = engine.composer.build(4, mira, await engine.store.history(4, ["mira", "rook"]), "Sam")
        assert {
            "role": "user",
            "content": "Sam: Rook, did you see the ship?\nRook: Aye, I saw it from the boat.\n"
            "Sam: How big, @rook?\nRook: Big as a church.\nSam: Mira, is the lamp lit?",
        } in built.messages
        assert built.messages[-1] == {"role": "assistant", "content": "The lamp is lit."}


async def test_personas_that_name_each_other_stop_after_max_turns(config: Config, model) -> None:
    endless = ["Rook, your turn.", "Mira, yours.", "Rook, again!", "Mira, again!", "Rook!"]
    async with scripted_engine(config, model, endless) as engine:
        await engine.admin.cast_add(5, "rook")
        delivered: list[str] = []

        async def deliver(result: TurnResult) -> int:
            delivered.append(result.persona.name)
            return 1000 + len(delivered)

        result = await engine.turn(5, "Sam", "Mira, start us off.", deliver=deliver)
        assert delivered == speakers(result) == ["Mira", "Rook", "Mira"]  # [cast] max_turns = 3
        stored = await engine.admin.recent_messages(5, 10)
        assert [m.role for m in stored] == ["user", "assistant", "assistant", "assistant"]
        assert {m.prompt_id for m in stored[1:]} == {stored[0].id}


async def test_each_persona_keeps_its_own_face(config: Config, model) -> None:
    async with scripted_engine(config, model, ["I am so happy, what joy!", "This is awful."]) as engine:
        await engine.admin.cast_add(6, "rook")
        happy = await engine.turn(6, "Sam", "Mira, good news!")
        sad = await engine.turn(6, "Sam", "Rook, bad news.")
        assert happy.emotion.label != sad.emotion.label
        assert await engine.scene.previous_emotion(6, engine.personas.load("mira")) == happy.emotion.label
        assert await engine.scene.previous_emotion(6, engine.personas.load("rook")) == sad.emotion.label


async def test_turn_order_takes_turns(tmp_path: Path, model) -> None:
    config = cast_config(tmp_path, '[cast]\nnext_speaker = "order"\n')
    async with scripted_engine(config, model, ["One.", "Two.", "Three."]) as engine:
        await engine.admin.cast_add(7, "rook")
        order = [speakers(await engine.turn(7, "Sam", f"Go on ({n}).")) for n in range(3)]
        assert order == [["Mira"], ["Rook"], ["Mira"]]  # one reply each: nobody was named


async def test_the_model_chooses_a_cast_member(tmp_path: Path) -> None:
    config = cast_config(tmp_path, "[cast]\nmax_turns = 3\n")
    async with open_engine(config) as engine:
        await engine.admin.cast_add(8, "rook")
        result = await engine.turn(8, "Sam", "Hello, everyone.")
        assert {r.persona.slug for r in [result, *result.followed_by]} <= {"mira", "rook"}
        assert 1 <= len(speakers(result)) <= 3


async def test_removing_the_lead_keeps_the_conversation(config: Config, model) -> None:
    async with scripted_engine(config, model, ["Mira here.", "Rook here."]) as engine:
        await engine.admin.cast_add(9, "rook")
        await engine.turn(9, "Sam", "Mira?")
        await engine.turn(9, "Sam", "Rook?")
        assert [p.slug for p in await engine.admin.cast_remove(9, "mira")] == ["rook"]
        kept = [(m.author_name, m.content) for m in await engine.admin.recent_messages(9, 10)]
        # Sam's words stay; Mira's lines left with her.
        assert kept == [("Sam", "Mira?"), ("Sam", "Rook?"), ("Rook", "Rook here.")]


async def test_two_personas_warm_turns_evaluate_only_new_tokens(config: Config) -> None:
    """Each persona's prompt starts with its own text, and each keeps its own evaluated conversation,
    so alternating personas (and members) re-reads only what was said since that persona spoke."""
    async with open_engine(config) as engine:
        await engine.admin.cast_add(10, "rook")
        # The cold turns: each persona reads its text once, Mira twice (a second member arrived).
        for speaker, name in [("Sam", "Mira"), ("Ada", "Rook"), ("Ada", "Mira")]:
            await engine.turn(10, speaker, f"{name}, what a night.")
        warm = []
        for n, (speaker, name) in enumerate([("Sam", "Mira"), ("Ada", "Rook")] * 2):
            result = await engine.turn(10, speaker, f"{name}, tell us more ({n}).")
            warm += [r.stats.evaluated_tokens for r in [result, *result.followed_by]]
        assert warm and all(n < 200 for n in warm), warm  # the persona's own text alone is ~250 tokens


async def test_regenerate_replaces_the_reply_and_keeps_versions(config: Config, model) -> None:
    replies = ["First try.", "Second try.", "A later turn."]
    async with scripted_engine(config, model, replies) as engine:
        edited: list[str] = []

        async def deliver(result: TurnResult) -> int:
            return 5000

        async def edit(result: TurnResult) -> None:
            edited.append(result.text)

        await engine.turn(11, "Sam", "Say something.", author_id=42, deliver=deliver)
        state = await engine.replies.state(5000)
        assert state is not None and state.prompted_by == 42 and state.latest and state.versions == 1
        again = await engine.replies.regenerate(5000, deliver=edit)  # type: ignore[arg-type]
        assert edited == ["Second try."] and again.version == 1
        history = await engine.admin.recent_messages(11, 10)
        assert [m.content for m in history] == ["Say something.", "Second try."]  # one reply per turn
        back = await engine.replies.browse(5000, -1)
        assert (back.text, back.version, back.versions) == ("First try.", 0, 2)
        assert [m.content for m in await engine.admin.recent_messages(11, 10)][-1] == "First try."
        assert (await engine.replies.browse(5000, +1)).text == "Second try."
        face = await engine.replies.choose_face(5000, "joy")
        assert face.emotion == "joy" and await engine.scene.previous_emotion(11, face.persona) == "joy"  # type: ignore[arg-type]
        await engine.turn(11, "Sam", "And now?", deliver=lambda r: _sent(5001))
        with pytest.raises(InputError, match="only the latest reply"):
            await engine.replies.regenerate(5000)
        with pytest.raises(InputError, match="not one of this persona's emotions"):
            await engine.replies.choose_face(5001, "smug")


async def _sent(discord_id: int) -> int:
    return discord_id


def test_a_persona_is_addressed_by_its_whole_name_only(library: PersonaLibrary) -> None:
    from bot.core.cast import named_in

    mira, tobin = library.load("mira"), library.load("tobin")
    cast = [mira, tobin]
    for text in ("I feel such admiration.", "Miranda sails at dawn.", "Kasimira waved.", "tobinson's boat"):
        assert named_in(text, cast) is None, text
    for text, who in (("Mira, look!", mira), ("@mira hi", mira), ("and you, Tobin?", tobin), ("MIRA!", mira)):
        assert named_in(text, cast) is who, text
    assert named_in("Tobin, ask Mira.", cast) is tobin  # the first named speaks
    assert named_in("Mira, Mira.", cast, exclude="mira") is None  # a persona does not address itself


async def test_the_model_is_stopped_before_it_speaks_as_any_member(config: Config, model) -> None:
    """Every member who spoke lately is a stop, however many lines the latest speaker wrote since (and
    so is every other persona of the cast): the reply ends where the model would speak for them."""
    chatter = [f"Mira, line {n}." for n in range(12)]
    replies = ["Hello, Ada.", *(["Mm."] * len(chatter)), "Sure thing.\nAda: I agree with Rook!\nRook: Aye."]
    async with scripted_engine(config, model, replies, honor_stops=True) as engine:
        await engine.admin.cast_add(12, "rook")
        await engine.turn(12, "Ada", "Mira, hello.")
        for line in chatter:  # Sam alone speaks for a long while: Ada is still in the scene
            await engine.turn(12, "Sam", line)
        result = await engine.turn(12, "Sam", "Mira, what now?")
        assert result.text == "Sure thing."
        assert (await engine.admin.recent_messages(12, 1))[0].content == "Sure thing."
        script = engine.llm
        assert isinstance(script, Scripted)
        assert {"\nAda:", "\nSam:", "\nRook:"} <= set(script.stops[-1])


async def test_a_regenerated_reply_is_never_in_its_own_prompt(config: Config, model) -> None:
    replies = ["The first version, about the gull.", "A second version.", "A third version."]
    async with scripted_engine(config, model, replies) as engine:
        await engine.turn(13, "Sam", "Tell me about the birds.", deliver=lambda r: _sent(6000))
        await engine.replies.regenerate(6000)
        await engine.replies.regenerate(6000)
        script = engine.llm
        assert isinstance(script, Scripted) and len(script.prompts) == 3
        first, *again = script.prompts
        assert "Tell me about the birds." in first
        for prompt in again:
            assert "Tell me about the birds." in prompt  # what it answers is there...
            assert "the first version" not in prompt.lower() and "A second version." not in prompt


async def test_a_persona_never_reproduces_anothers_line(config: Config, model) -> None:
    """Rook starts to repeat Mira's line word for word: his reply stops where the copy starts (the
    model is told to stop writing), and what is shown and stored carries none of her run of words."""
    from bot.core.copying import SPAN_WORDS, copied_at

    mira_line = "The lantern on the north cliff has burned every night for a hundred years without fail."
    copying = (
        "Aye, and I'll say it too: the lantern on the north cliff has burned every night for a hundred years."
    )
    async with scripted_engine(config, model, [mira_line, copying, "Not a copy at all, lass."]) as engine:
        await engine.admin.cast_add(6, "rook")
        first = await engine.turn(6, "Sam", "Mira, tell me about the light.")
        shown: list[str] = []
        second = await engine.turn(6, "Sam", "Rook, what do you say?", on_text=shown.append)
        assert [first.persona.slug, second.persona.slug] == ["mira", "rook"]
        assert second.text == "Aye, and I'll say it too:"
        assert copied_at("".join(shown), [mira_line]) is None
        third = await engine.turn(6, "Sam", "Rook?")
        assert third.text == "Not a copy at all, lass."  # his own words pass untouched
        stored = {m.content for m in await engine.admin.recent_messages(6, 10) if m.author_name == "Rook"}
        assert all(copied_at(line, [mira_line], SPAN_WORDS) is None for line in stored)


def test_what_counts_as_a_copy() -> None:
    from bot.core.copying import copied_at, repeated_share

    earlier = ["I'm glad you're taking care of the ship, but I'll tell you something else."]
    assert copied_at("Well. I'm glad you're taking care of the ship, but no.", earlier) == 6
    assert copied_at("I'm glad you're taking care of it, and of the ship.", earlier) is None  # 7 words
    assert copied_at("Anything at all.", []) is None
    replies = [
        "One two three four five six seven eight.",
        "Other words here.",
        "one two three four five six seven eight nine",
    ]
    assert repeated_share(replies) == 0.5
