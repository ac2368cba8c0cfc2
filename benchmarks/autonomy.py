"""`./run bench autonomy`: what a persona that speaks up on its own costs. The model time of one unprompted
line in a warm channel, hence of an hour at the defaults' cap (every channel with autonomy on, at most);
a fitting reaction's cost (the text judge only); and how long a member's reply waits when it arrives
while an unprompted line is being written, against the same reply on an idle model, in the same run."""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time

from benchmarks.common import loaded_model, scratch_store, table
from benchmarks.llm import STORY_LINES
from benchmarks.server import seed_history
from bot.config import Config
from tests.support.watched import Timed

HISTORY_TOKENS = 800
HOUR = 3600.0


async def bench_autonomy(config: Config, quick: bool) -> int:
    from bot.core import Engine
    from bot.errors import GaveWay
    from bot.personas import PersonaLibrary

    model = dataclasses.replace(config.model, n_ctx=4096, temperature=0.7, seed=3)
    config = dataclasses.replace(config, model=model)
    personas = PersonaLibrary.from_config(config)
    lead = personas.load(config.persona.default)
    rounds = 3 if quick else 8
    async with scratch_store() as store, loaded_model(model, config.root) as real:
        llm = Timed(real)
        engine = Engine(config, store, llm, personas)

        async def posted(_: object) -> int:
            return 0

        await seed_history(engine, 1, HISTORY_TOKENS)
        await seed_history(engine, 2, HISTORY_TOKENS)
        await engine.turn(2, "Ada", "Mira, are you awake?")  # both channels warm
        line_seconds, line_tokens, idle, waiting, gave_way = [], [], [], [], 0
        for n in range(rounds):
            # An unprompted line after a member's turn (a warm channel, as after a quiet spell), written
            # whole; then a reply in channel 2 on the idle model (which switches channels to write it).
            await engine.turn(1, "Sam", f"Mira, the lamp flickers again. ({n})")
            started = time.perf_counter()
            [line] = await engine.speak_up(1, posted, store_first=True, quiet=True)
            line_seconds.append(time.perf_counter() - started)
            line_tokens.append(line.stats.generated_tokens)
            await engine.turn(2, "Ada", f"Mira, one more question. ({n})")
            idle.append(llm.first_token_wait((2, lead.slug)))
            # The same, but the reply comes while channel 1's line is being written.
            await engine.turn(1, "Sam", f"Mira, what do you see out there? ({n})")
            after = len(llm.calls)  # the turn's own tokens: wait for the line's
            speaking = asyncio.create_task(engine.speak_up(1, posted, store_first=True, quiet=True))
            while not llm.under_way((1, lead.slug), after, 4) and not speaking.done():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            await engine.turn(2, "Ada", f"Mira, quick: are you there? ({n})")
            waiting.append(llm.first_token_wait((2, lead.slug)))
            try:
                await speaking
            except GaveWay:
                gave_way += 1

        judged = []
        for _, text in STORY_LINES[:20]:
            started = time.perf_counter()
            await engine.admin.emotion_of(lead, text)
            judged.append(time.perf_counter() - started)

    autonomy = config.autonomy
    per_line = statistics.mean(line_seconds)
    decode = statistics.median(line_seconds) / max(1.0, statistics.median(line_tokens))
    worst = autonomy.max_per_hour * per_line
    wait_ms, slower = statistics.median(waiting) * 1000, statistics.median(waiting) / statistics.median(idle)
    rows = [
        (
            "one unprompted line: model time (mean)",
            f"{per_line:.2f} s ({statistics.mean(line_tokens):.0f} tokens)",
        ),
        (
            f"an hour at the cap ({autonomy.max_per_hour} lines), per channel with autonomy on",
            f"{worst:.1f} s of model time ({worst / HOUR:.2%} of the hour)",
        ),
        (
            "a reaction: the text judge on a member's line (median)",
            f"{statistics.median(judged) * 1000:.1f} ms",
        ),
        (
            "a reply's first token, the model idle after a line (median)",
            f"{statistics.median(idle) * 1000:.0f} ms",
        ),
        (
            "the same reply arriving mid unprompted line (median)",
            f"{wait_ms:.0f} ms ({slower:.2f}x idle; a token ~{decode * 1000:.0f} ms)",
        ),
        ("unprompted lines that gave way to the reply", f"{gave_way} of {rounds}"),
    ]
    table(
        f"bench autonomy: {real.name}, {HISTORY_TOKENS}-token history, {rounds} rounds",
        rows,
        f"defaults: {autonomy.max_per_hour}/hour, quiet {autonomy.quiet_seconds:g} s,"
        f" chance {autonomy.chance:g}",
    )
    return 0
