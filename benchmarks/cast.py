"""`./run bench cast`: does a warm turn re-read only the new tokens when two members alternate, and when
two personas of a cast alternate? Each case against one member with one persona, in the same run."""

from __future__ import annotations

import dataclasses
import statistics

from benchmarks.common import loaded_model, scratch_store, table
from benchmarks.llm import STORY_LINES
from bot.config import CastConfig, Config

HISTORY_TOKENS = 1500


async def bench_cast(config: Config, quick: bool) -> int:
    from bot.core import Engine, TurnResult
    from bot.personas import PersonaLibrary

    model = dataclasses.replace(config.model, n_ctx=4096, temperature=0.7, seed=1, max_reply_tokens=64)
    # Turn order and one reply per message: the persona that speaks is the one the message names.
    cast = CastConfig(max_members=2, next_speaker="order", max_turns=1)
    config = dataclasses.replace(config, model=model, cast=cast)
    personas = PersonaLibrary.from_config(config)
    second = "tobin"
    personas.load(second)  # the shipped second persona: a clear error here if it is gone
    warm_turns = 3 if quick else 6
    async with scratch_store() as store, loaded_model(model, config.root) as llm:
        engine = Engine(config, store, llm, personas)
        lead = personas.load(config.persona.default)

        async def seeded(channel: int) -> None:
            tokens, i = 0, 0
            while tokens < HISTORY_TOKENS:
                role, text = STORY_LINES[i % len(STORY_LINES)]
                name = "Sam" if role == "user" else lead.name
                await store.add_message(channel, role=role, author_name=name, content=text, persona=lead.slug)
                tokens += len(llm.tokenize(text)) + 6
                i += 1

        colds: list[TurnResult] = []

        async def run(channel: int, script: list[tuple[str, str]], cold: int) -> list[TurnResult]:
            """Turns in the channel; the first `cold` ones (each speaker's first) are not measured."""
            results = []
            for n, (member, persona) in enumerate(script):
                text = f"{persona}, what happened next? ({n})"
                results.append(await engine.turn(channel, member, text))
            colds.extend(results[:cold])
            return results[cold:]

        await seeded(1)
        alone = await run(1, [("Sam", lead.name)] * (warm_turns + 1), 1)
        await seeded(2)
        # Ada's first message changes who {{user}} is once (Sam -> everyone): that turn is cold too.
        members = await run(2, [("Sam", lead.name), ("Ada", lead.name)] * (warm_turns // 2 + 1), 2)
        await seeded(3)
        await engine.admin.cast_add(3, second)
        tobin = personas.load(second).name
        both = await run(3, [("Sam", lead.name), ("Ada", tobin)] * (warm_turns // 2 + 2), 3)

    def median(values: list[float]) -> float:
        return statistics.median(values)

    def evaluated(turns: list[TurnResult]) -> str:
        read = median([t.stats.evaluated_tokens for t in turns])
        size = median([t.stats.prompt_tokens for t in turns])
        return f"{read:.0f} of {size:.0f} ({read / size:.1%})"

    def first_token(turns: list[TurnResult]) -> str:
        ms = median([t.stats.prompt_seconds for t in turns]) * 1000
        base = median([t.stats.prompt_seconds for t in alone]) * 1000
        return f"{ms:.0f} ms ({ms / base:.2f}x one member)"

    rows = [
        ("one member, one persona: warm turn, prompt tokens evaluated (median)", evaluated(alone)),
        ("two members alternating, one persona: same", evaluated(members)),
        ("two members and two personas alternating: same", evaluated(both)),
        ("one member, one persona: warm time to first token (median)", first_token(alone)),
        ("two members alternating: same", first_token(members)),
        ("two personas alternating: same", first_token(both)),
        ("a cold turn (the whole prompt read): time to first token", first_token(colds[:1])),
    ]
    table(
        f"bench cast: {llm.name}, {HISTORY_TOKENS}-token history, {len(alone)} warm turns per case",
        rows,
        "each persona keeps its own evaluated conversation (session) and its prompt names no speaker",
    )
    return 0
