"""`./run bench llm --backend openai`: the same turns embedded and through a model server (llama-cpp-python's
own OpenAI-compatible server on the same GGUF, started here), side by side in one run."""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import table
from benchmarks.llm import STORY_LINES
from bot.config import Config

WARM_TURNS = 4
CHANNELS = 4


@dataclasses.dataclass
class Side:
    cold_seconds: float = 0.0
    cold_first_token: float = 0.0
    warm_seconds: list[float] = dataclasses.field(default_factory=list)
    warm_first_token: list[float] = dataclasses.field(default_factory=list)
    warm_evaluated: list[int] = dataclasses.field(default_factory=list)
    rate_one: float = 0.0
    rate_many: float = 0.0


async def seed_history(engine: Any, channel: int, tokens_wanted: int) -> None:
    """A stored conversation of about `tokens_wanted` tokens (counted by the engine's model)."""
    persona = engine.personas.load(engine.config.persona.default)
    tokens, i = 0, 0
    while tokens < tokens_wanted:
        role, text = STORY_LINES[i % len(STORY_LINES)]
        await engine.store.add_message(
            channel,
            role=role,
            author_name="Sam" if role == "user" else persona.name,
            content=f"{text} ({i})",
            persona=persona.slug,
        )
        tokens += len(engine.llm.tokenize(text)) + 6
        i += 1


async def measure(config: Config, quick: bool) -> Side:
    from bot.core.app import open_engine

    side = Side()
    async with open_engine(config) as engine:
        await seed_history(engine, 1, 1500)
        cold = await engine.turn(1, "Sam", "What happened next, Mira?")
        side.cold_seconds, side.cold_first_token = cold.reply_seconds, cold.stats.prompt_seconds
        for n in range(2 if quick else WARM_TURNS):
            result = await engine.turn(1, "Sam", f"And then? ({n})")
            side.warm_seconds.append(result.reply_seconds)
            side.warm_first_token.append(result.stats.prompt_seconds)
            side.warm_evaluated.append(result.stats.evaluated_tokens)

        async def tokens_per_second(channels: list[int]) -> float:
            start = time.perf_counter()
            results = await asyncio.gather(
                *(engine.turn(c, f"Guest{c}", "Tell me a story about the sea.") for c in channels)
            )
            return sum(r.stats.generated_tokens for r in results) / (time.perf_counter() - start)

        side.rate_one = await tokens_per_second([100])
        side.rate_many = await tokens_per_second([200 + i for i in range(CHANNELS)])
    return side


async def bench_backends(config: Config, quick: bool) -> int:
    from tests.support.model_server import model_server

    model = dataclasses.replace(config.model, n_ctx=4096, temperature=0.7, seed=1, max_reply_tokens=96)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)

        def variant(name: str, **changes: Any) -> Config:
            return dataclasses.replace(
                config,
                model=dataclasses.replace(model, **changes),
                store=dataclasses.replace(config.store, path=str(folder / f"{name}.sqlite3")),
                emotion=dataclasses.replace(config.emotion, judge="classifier"),
            )

        embedded = await measure(variant("embedded"), quick)
        with model_server(n_ctx=4096, log=folder / "server.log") as base_url:
            served = await measure(variant("server", backend="openai", base_url=base_url), quick)

    def med(values: Sequence[float]) -> float:
        return statistics.median(values) if values else 0.0

    def evaluated(side: Side) -> str:
        counts = [n for n in side.warm_evaluated if n]
        return f"{med(counts):.0f}" if counts else "not reported by this server"

    rows = [
        ("server", "llama-cpp-python's OpenAI-compatible server, same GGUF, same n_ctx, one slot"),
        ("cold turn (1,500-token history)", f"{embedded.cold_seconds:.2f} s | {served.cold_seconds:.2f} s"),
        (
            "cold turn: time to first token",
            f"{embedded.cold_first_token * 1000:.0f} ms | {served.cold_first_token * 1000:.0f} ms",
        ),
        (
            "warm turn (median)",
            f"{med(embedded.warm_seconds):.2f} s | {med(served.warm_seconds):.2f} s"
            f" (server / embedded {med(served.warm_seconds) / med(embedded.warm_seconds):.2f})",
        ),
        (
            "warm turn: time to first token (median)",
            f"{med(embedded.warm_first_token) * 1000:.0f} ms | {med(served.warm_first_token) * 1000:.0f} ms",
        ),
        ("warm turn: prompt tokens evaluated", f"{evaluated(embedded)} | {evaluated(served)}"),
        ("tokens/s, 1 channel", f"{embedded.rate_one:.1f} | {served.rate_one:.1f}"),
        (f"tokens/s, {CHANNELS} channels at once", f"{embedded.rate_many:.1f} | {served.rate_many:.1f}"),
    ]
    table("bench llm --backend openai (embedded | server), bundled SmolLM2-135M, n_ctx 4096", rows)
    return 0
