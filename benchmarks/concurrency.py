"""`./run bench concurrency`: 1/2/4/8 channels sending a message at once to the whole engine on the
embedded model, each channel warm (its conversation already read once), against what llama.cpp itself
decodes for as many sequences batched on the same context, measured in the same run (the raw limit);
against the same engine writing one reply at a time (`parallel = 1`); and through llama-cpp-python's
server on the same GGUF (the server kind this machine can run: llama-server is not built here)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import statistics
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from benchmarks.common import scratch_store, table
from benchmarks.llm import STORY_LINES
from bot.config import Config
from bot.errors import BotError

COUNTS = (1, 2, 4, 8)
HISTORY_LINES = 24  # a warm channel's conversation: about 700 tokens of prompt
REPLY_TOKENS = 200  # the default max_reply_tokens; replies end where the model ends them
RAW_STEPS = 48
ALONE_TOKENS = 120  # each reply of the model-alone rows
BUSY_TURNS = 4  # turns each busy channel sends, one as soon as the last is answered


class Timed:
    """The engine's model, noting when each channel's reply yields its first text."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm
        self.first: dict[Any, float] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    def generate(self, prompt: str, **options: Any) -> Any:
        generation = self._llm.generate(prompt, **options)
        session = options.get("session")
        channel = session[0] if isinstance(session, tuple) else session
        inner: Callable[[], AsyncIterator[str]] = generation.chunks

        async def chunks() -> AsyncIterator[str]:
            async for chunk in inner():
                self.first.setdefault(channel, time.perf_counter())
                yield chunk

        return dataclasses.replace(generation, chunks=chunks)


@dataclasses.dataclass
class Round:
    channels: int
    seconds: float
    tokens: int
    first: list[float]
    whole: list[float]
    read: list[int]
    turns: int = 1


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _round(engine: Any, timed: Timed, channels: list[int], turns: int, repeat: int) -> Round:
    """Every channel sends a message at once; with `turns` > 1 each sends its next as soon as it is
    answered (busy channels), so replies of unequal length keep the batch full."""

    async def turn(channel: int, n: str) -> tuple[Any, float, float]:
        timed.first.pop(channel, None)
        begun = time.perf_counter()
        result = await engine.turn(channel, "Sam", f"Tell me more about the harbour ({n}).")
        end = time.perf_counter()
        return result, timed.first.get(channel, end) - begun, end - begun

    async def busy(channel: int) -> list[tuple[Any, float, float]]:
        return [await turn(channel, f"{repeat}.{k}") for k in range(turns)]

    start = time.perf_counter()
    done = [t for ts in await asyncio.gather(*(busy(c) for c in channels)) for t in ts]
    return Round(
        len(channels),
        time.perf_counter() - start,
        sum(r.stats.generated_tokens for r, _, _ in done),
        [first for _, first, _ in done],
        [whole for _, _, whole in done],
        [r.stats.evaluated_tokens for r, _, _ in done],
        turns,
    )


async def _model_alone(llm: Any, count: int) -> Round:
    """`count` replies of ALONE_TOKENS each asked of the model at once, nothing else running: the decode
    loop's own efficiency against the raw limit, apart from the engine and replies of unequal length."""
    prompt = llm.render([{"role": "user", "content": "Write a long story about a lighthouse keeper."}])

    async def reply(n: int) -> tuple[int, float, float]:
        begun = time.perf_counter()
        generation = llm.generate(prompt, max_tokens=ALONE_TOKENS, session=("alone", n))
        first = None
        async for _chunk in generation.chunks():
            first = first or time.perf_counter() - begun
        return generation.stats.generated_tokens, first or 0.0, time.perf_counter() - begun

    await asyncio.gather(*(reply(n) for n in range(count)))  # each read its prompt once
    start = time.perf_counter()
    done = await asyncio.gather(*(reply(n) for n in range(count)))
    seconds = time.perf_counter() - start
    return Round(
        count, seconds, sum(t for t, _, _ in done), [f for _, f, _ in done], [w for _, _, w in done], [], 0
    )


async def _rounds(
    config: Config, counts: tuple[int, ...], repeats: int, raw_too: bool = False, busy_too: bool = False
) -> tuple[list[Round], dict[int, float]]:
    from bot.core.engine import Engine
    from bot.llm import load_backend
    from bot.personas import PersonaLibrary

    llm = await load_backend(config.model, config.root)
    async with scratch_store() as store:
        timed = Timed(llm)
        engine = Engine(config, store, timed, PersonaLibrary.from_config(config))
        persona = engine.personas.load(config.persona.default)
        channels = list(range(1, max(counts) + 1))
        for channel in channels:
            for i in range(HISTORY_LINES):
                role, text = STORY_LINES[(i + channel) % len(STORY_LINES)]
                author = "Sam" if role == "user" else persona.name
                await store.add_message(
                    channel, role=role, author_name=author, content=text, persona=persona.slug
                )
        try:
            await asyncio.gather(*(engine.turn(c, "Sam", "Where were we?") for c in channels))  # warm
            raw = await _raw_rates(llm, counts) if raw_too else {}
            rounds = []
            for turns in (1, BUSY_TURNS) if busy_too else (1,):
                for count in counts:
                    for repeat in range(repeats if turns == 1 else 1):
                        rounds.append(await _round(engine, timed, channels[:count], turns, repeat))
            if raw_too:  # the limit is the better of before and after: this VM's speed drifts
                after = await _raw_rates(llm, counts)
                raw = {n: max(rate, after[n]) for n, rate in raw.items()}
                for n in counts:
                    rounds.append(await _model_alone(llm, n))
        finally:
            await engine.close()
            await llm.close()
    return rounds, raw


async def _raw_rates(llm: Any, counts: tuple[int, ...]) -> dict[int, float]:
    return {n: await llm._worker.run(functools.partial(_raw_rate, llm, n)) for n in sorted({1, *counts})}


def _raw_rate(llm: Any, sequences: int) -> float:
    """Tokens/s llama.cpp decodes for `sequences` of the reply slots batched, each after the conversation
    it holds, greedy, nothing else done between steps: the limit a reply loop could reach."""
    import llama_cpp

    ctx = llm._loop.ctx
    memory = llama_cpp.llama_get_memory(ctx)
    slots = [slot for slot in llm._loop.slots if slot.tokens][:sequences]
    greedy = llama_cpp.llama_sampler_init_greedy()
    batch = llama_cpp.llama_batch_init(len(slots), 0, 1)
    try:
        tokens = [slot.tokens[-1] for slot in slots]
        start = time.perf_counter()
        for step in range(RAW_STEPS):
            for i, slot in enumerate(slots):
                batch.token[i], batch.pos[i] = tokens[i], len(slot.tokens) + step
                batch.n_seq_id[i], batch.seq_id[i][0], batch.logits[i] = 1, slot.seq, True
            batch.n_tokens = len(slots)
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError("raw decode failed")
            tokens = [llama_cpp.llama_sampler_sample(greedy, ctx, i) for i in range(len(slots))]
        seconds = time.perf_counter() - start
    finally:
        for slot in slots:
            llama_cpp.llama_memory_seq_rm(memory, slot.seq, len(slot.tokens), -1)
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_sampler_free(greedy)
    return len(slots) * RAW_STEPS / seconds


async def bench_concurrency(config: Config, quick: bool) -> int:
    from tests.support.model_server import model_server

    model = dataclasses.replace(
        config.model, n_ctx=4096, parallel=max(COUNTS), temperature=0.7, seed=1, max_reply_tokens=REPLY_TOKENS
    )
    config = dataclasses.replace(
        config,
        model=model,
        memory=dataclasses.replace(config.memory, summaries=False),
        emotion=dataclasses.replace(config.emotion, judge="classifier"),
    )
    repeats = 1 if quick else 3
    rounds, raw = await _rounds(config, COUNTS, repeats, raw_too=True, busy_too=True)
    lone = _p([f for r in rounds if r.channels == 1 and r.turns == 1 for f in r.first], 0.95)
    one = dataclasses.replace(config, model=dataclasses.replace(model, parallel=1))
    one_at_a_time, _ = await _rounds(one, (max(COUNTS),), 1)
    # llama-cpp-python's server serves one request at a time, and by default ends a streaming reply when
    # another request comes (its interrupt_requests; the bot counts a prompt with the server's tokenizer
    # while another channel's reply streams): started as the docs say, without that.
    served: list[Round] = []
    failed: list[tuple[str, str]] = []
    with model_server(n_ctx=4096, flags=["--interrupt_requests", "False"]) as base_url:
        served_model = dataclasses.replace(model, backend="openai", base_url=base_url, max_concurrent=1)
        for n in COUNTS:
            try:
                served += (await _rounds(dataclasses.replace(config, model=served_model), (n,), 1))[0]
            except BotError as exc:  # a server that cannot serve this many: said, the other figures stand
                failed.append((f"llama-cpp-python server, {n} at once", f"failed: {exc}"))
    rows = [
        (f"raw batched decode, {n} sequence{'s' * (n > 1)}", f"{rate:.1f} tokens/s")
        for n, rate in raw.items()
    ]
    groups = [
        (f"embedded, {n} at once", [r for r in rounds if r.channels == n and r.turns == 1]) for n in COUNTS
    ]
    groups += [
        (f"embedded, {n} busy channels", [r for r in rounds if r.channels == n and r.turns > 1])
        for n in COUNTS
    ]
    groups.append((f"embedded with parallel = 1, {max(COUNTS)} at once", one_at_a_time))
    groups += [
        (
            f"the model alone, {n} replies of {ALONE_TOKENS} tokens at once",
            [r for r in rounds if r.channels == n and r.turns == 0],
        )
        for n in COUNTS
    ]
    groups += [(f"llama-cpp-python server, {r.channels} at once", [r]) for r in served]
    for label, group in groups:
        rows.append((label, _describe(group, raw, lone)))
    rows += failed
    table(
        f"Channels at once, bundled model (warm channels, replies up to {REPLY_TOKENS} tokens; at once: one "
        f"message each, {repeats} round(s) embedded, 1 through the server; busy: each channel sends "
        f"{BUSY_TURNS} messages, the next as soon as it is answered)",
        rows,
        f"n_ctx {model.n_ctx} per slot, {model.parallel} slots",
    )
    return 0


def _describe(group: list[Round], raw: dict[int, float], lone: float) -> str:
    n = group[0].channels
    seconds = sum(r.seconds for r in group)
    rate = sum(r.tokens for r in group) / seconds
    first = [f for r in group for f in r.first]
    whole = [w for r in group for w in r.whole]
    replies = sum(len(r.whole) for r in group)
    read = [t for r in group for t in r.read if t]
    return (
        f"{rate:.1f} tokens/s = {rate / raw[n]:.2f} of raw; {replies / seconds * 60:.0f} replies/min "
        f"of {sum(r.tokens for r in group) / replies:.0f} tokens; first token p50 "
        f"{statistics.median(first):.2f} s, p95 {_p(first, 0.95):.2f} s ({_p(first, 0.95) / lone:.1f}x "
        f"lone embedded); whole reply p50 {statistics.median(whole):.2f} s, p95 {_p(whole, 0.95):.2f} s; "
        f"prompt tokens read per turn {statistics.median(read) if read else 0:.0f}"
    )
