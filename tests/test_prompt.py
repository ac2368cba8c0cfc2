from __future__ import annotations

import random

import pytest

from bot.config import PromptConfig
from bot.core.prompt import PromptBuilder, Turn
from bot.errors import InputError
from bot.llm import LlamaBackend
from bot.personas import LoreEntry, Persona, PersonaLibrary

from .support.contexts import SizedContext

pytestmark = pytest.mark.slow


def conversation(n: int) -> list[Turn]:
    turns = []
    for i in range(n):
        turns.append(
            Turn("user", "Ann" if i % 3 else "Bob", f"Message {i}: the fog rolls over the harbour again.")
        )
        turns.append(Turn("assistant", "Mira", f"Reply {i}: *Mira lights the lamp and watches the water.*"))
    return turns


def test_multi_user_turns_carry_names_and_greeting_is_kept(
    model: LlamaBackend, library: PersonaLibrary
) -> None:
    mira = library.load("mira")
    builder = PromptBuilder(SizedContext(model), 100, PromptConfig())  # small: windowing shows
    built = builder.build(mira, conversation(40), "Ann")
    assert built.n_tokens <= builder.budget
    assert built.window_start > 0  # older turns fell out...
    assert built.messages[0]["role"] == "system" and "lighthouse keeper" in built.messages[0]["content"]
    assert built.messages[1] == {
        "role": "assistant",
        "content": mira.fill(mira.greeting, "Ann"),
    }  # ...the greeting stays
    assert "Bob: Message 39" in built.text and "Ann: Message 38" in built.text
    assert "Message 0:" not in built.text


def test_window_moves_in_steps_so_the_prefix_stays_cached(
    model: LlamaBackend, library: PersonaLibrary
) -> None:
    mira = library.load("mira")
    builder = PromptBuilder(SizedContext(model), 100, PromptConfig(window_slack=0.25))
    turns = conversation(60)
    generation_prompt = "<|im_start|>assistant\n"
    start, moves, previous, builds = 0, 0, None, 0
    for n in range(20, 120, 2):  # one exchange more each time
        built = builder.build(mira, turns[:n], "Ann", start)
        builds += 1
        assert built.n_tokens <= builder.budget
        if built.window_start != start:
            moves += 1
        elif previous is not None:
            # Same window: the whole previous prompt is reused as the prefix of this one.
            assert built.text.startswith(previous.removesuffix(generation_prompt))
        start, previous = built.window_start, built.text
    assert moves < builds / 2


def test_lorebook_post_history_and_macros(model: LlamaBackend) -> None:
    persona = Persona(
        slug="rook",
        name="Rook",
        description="{{char}} flies the Aurora with {{user}}.",
        post_history_instructions="{{original}}Stay gruff.",
        lorebook=(
            LoreEntry(keys=("Aurora",), content="The Aurora is a brass airship."),
            LoreEntry(keys=("kraken",), content="Krakens live below the clouds."),
        ),
    )
    builder = PromptBuilder(SizedContext(model, 2048), 100, PromptConfig())
    built = builder.build(persona, [Turn("user", "Ann", "Is the Aurora ready?")], "Ann")
    assert "Rook flies the Aurora with Ann." in built.text
    assert "The Aurora is a brass airship." in built.text and "Krakens" not in built.text
    assert built.messages[-1] == {"role": "system", "content": "Stay gruff."}


def test_lorebook_respects_its_token_budget(model: LlamaBackend) -> None:
    entries = tuple(
        LoreEntry(keys=("sea",), content=f"Sea fact {i}: " + "waves " * 40, insertion_order=i)
        for i in range(10)
    )
    persona = Persona(slug="p", name="P", lorebook=entries)
    builder = PromptBuilder(SizedContext(model, 4096), 100, PromptConfig(lorebook_token_budget=120))
    built = builder.build(persona, [Turn("user", "Ann", "the sea")], "Ann")
    assert "Sea fact 0" in built.text and "Sea fact 1" in built.text and "Sea fact 3" not in built.text


def test_message_longer_than_the_context_is_refused(model: LlamaBackend, library: PersonaLibrary) -> None:
    builder = PromptBuilder(SizedContext(model), 100, PromptConfig())
    with pytest.raises(InputError, match="tokens long, more than the"):
        builder.check_message(library.load("mira"), "storm " * 2000)
    with pytest.raises(InputError, match="empty"):
        builder.check_message(library.load("mira"), "   ")


@pytest.mark.parametrize("reply_tokens", [64, 200, 300])
def test_the_prompt_always_leaves_the_reply_its_tokens(
    model: LlamaBackend, library: PersonaLibrary, reply_tokens: int
) -> None:
    """However long the history, the prompt and the reply fit in the context together: the model is
    never asked to write into a full context."""
    context = SizedContext(model)
    builder = PromptBuilder(context, reply_tokens, PromptConfig())
    for turns in (5, 40, 120):
        built = builder.build(library.load("mira"), conversation(turns), "Ann")
        assert built.n_tokens == model.count_prompt(built.text)  # the prompt as the model reads it
        assert built.n_tokens + reply_tokens <= context.n_ctx, (turns, built.n_tokens)
    assert built.window_start > 0  # the long histories were cut to make that room


def short_lines(n: int) -> list[Turn]:
    turns = []
    for i in range(n):
        turns.append(Turn("user", "Ann", f"ok {i}"))
        turns.append(Turn("assistant", "Mira", f"Sure {i}."))
    return turns


@pytest.mark.parametrize("lines", [conversation, short_lines], ids=["story lines", "short lines"])
async def test_the_window_counts_what_the_model_evaluates_and_fills_the_budget(
    model: LlamaBackend, library: PersonaLibrary, lines
) -> None:
    """The prompt's size as the builder counts it is what the model reads (template markers are single
    special tokens), so a moved window fills its target instead of 53-75 % of it."""
    mira = library.load("mira")
    config = PromptConfig()
    builder = PromptBuilder(SizedContext(model), 100, config)
    for turns in (lines(2), lines(120)):
        built = builder.build(mira, turns, "Ann")
        generation = model.generate(built.text, max_tokens=1, session="count")
        async for _chunk in generation.chunks():
            pass
        evaluated = generation.stats.prompt_tokens
        assert abs(evaluated - built.n_tokens) <= 2, (evaluated, built.n_tokens)
    # The long history moved the window: what the model reads fills the target, less one exchange.
    assert built.window_start > 0
    target = builder.budget * (1.0 - config.window_slack)
    assert target - 40 <= evaluated <= builder.budget


def test_the_window_search_from_a_guess_finds_what_halving_finds_in_fewer_renders() -> None:
    """The earliest start that fits, whatever the guess (good, bad, out of range); from a good guess in a
    few renders of the prompt rather than one per halving."""
    rng = random.Random(1)
    for _ in range(3000):
        sizes = [rng.randint(1, 30) for _ in range(rng.randint(1, 60))]
        low, high, target = rng.randint(0, len(sizes) - 1), len(sizes) - 1, rng.randint(0, 400)

        def attempt(
            start: int, sizes: list[int] = sizes, span: tuple[int, int] = (low, high)
        ) -> tuple[str, int]:
            assert span[0] <= start <= span[1]
            return "", 40 + sum(sizes[start:])

        halving = PromptBuilder._first_fitting(attempt, low, high, target)
        for guess in (None, rng.randint(low, high), rng.randint(-3, len(sizes) + 3), halving):
            assert PromptBuilder._first_fitting(attempt, low, high, target, guess) == halving
    sizes = [10] * 4000
    tried: list[int] = []
    PromptBuilder._first_fitting(lambda s: tried.append(s) or ("", sum(sizes[s:])), 0, 3999, 5000, 3500)
    assert len(tried) <= 3  # the guess and its neighbour; halving takes 12
