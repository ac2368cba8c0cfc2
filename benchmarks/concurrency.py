"""`./run bench concurrency`: 1/2/4/8 channels sending a message at once to the whole engine on the
embedded model, each channel warm (its conversation already read once), against what llama.cpp itself
decodes for as many sequences batched on the same context, measured in the same run (the raw limit);
eight channels kept busy without end, against the limit at the lengths their conversations had when that
began and ended; how long llama.cpp takes to read that many new messages in one batch (the soonest the
last first token can come); against the same engine writing one reply at a time (`parallel = 1`); and
through llama-cpp-python's server on the same GGUF (the server kind this machine can run: llama-server is
not built here)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import statistics
import time
from collections.abc import AsyncIterator, Callable, Iterator
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
STEADY_SECONDS = 60  # the sustained rate's warm-up, then its window (30 each with --quick)


class Timed:
    """The engine's model, noting when each channel's reply yields its first text."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm
        self.first: dict[Any, float] = {}
        self.stats: list[Any] = []  # every reply's stats, counted by the loop as it writes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    def generate(self, prompt: str, **options: Any) -> Any:
        generation = self._llm.generate(prompt, **options)
        self.stats.append(generation.stats)
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
    turns: int = 1  # messages each channel sent; 0: the model alone; -1: kept busy for `seconds`
    lengths: list[int] = dataclasses.field(default_factory=list)  # the replies', where tokens are not


@dataclasses.dataclass
class Limits:
    """What llama.cpp itself does on the same context, nothing else running: tokens/s decoding n
    sequences batched, and seconds reading n channels' new messages (`read` tokens each) in one batch."""

    decode: dict[int, float]
    reading: dict[int, float]
    read: int
    began: float  # decoding every channel at the lengths its conversation had when kept busy began
    ended: float  # ... and when it ended


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


async def _steady(engine: Any, timed: Timed, channels: list[int], seconds: float) -> Round:
    """Every channel sends its next message as soon as it is answered; after `seconds` of that (the
    opening burst, every channel's message at the same moment, behind), the tokens written in the next
    `seconds`, replies counted as far as they got: the engine's sustained rate with every channel busy."""
    stop = asyncio.Event()
    turns: list[tuple[Any, float, float]] = []
    window: list[float] = []

    async def busy(channel: int) -> None:
        n = 0
        while not stop.is_set():
            timed.first.pop(channel, None)
            begun = time.perf_counter()
            result = await engine.turn(channel, "Sam", f"Tell me more about the harbour (steady {n}).")
            end = time.perf_counter()
            if window and begun >= window[0] and not stop.is_set():  # asked and answered in the window
                turns.append((result, timed.first.get(channel, end) - begun, end - begun))
            n += 1

    def written() -> int:
        return sum(stats.generated_tokens for stats in timed.stats)

    tasks = [asyncio.create_task(busy(c)) for c in channels]
    await asyncio.sleep(seconds)
    window.append(time.perf_counter())
    before = written()
    await asyncio.sleep(seconds)
    tokens = written() - before
    window.append(time.perf_counter())
    stop.set()
    await asyncio.gather(*tasks)  # the turns in hand end as they would (not counted)
    return Round(
        len(channels),
        window[1] - window[0],
        tokens,
        [first for _, first, _ in turns],
        [whole for _, _, whole in turns],
        [r.stats.evaluated_tokens for r, _, _ in turns],
        -1,
        [r.stats.generated_tokens for r, _, _ in turns],
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
    config: Config,
    counts: tuple[int, ...],
    repeats: int,
    raw_too: bool = False,
    busy_too: bool = False,
    steady: float = 0.0,
) -> tuple[list[Round], Limits]:
    from bot.core.engine import Engine
    from bot.llm import load_backend
    from bot.personas import PersonaLibrary

    llm = await load_backend(config.model, config.root)
    async with scratch_store() as store:
        timed = Timed(llm)
        reading: dict[int, float] = {}
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
            read, began, ended = 0, 0.0, 0.0
            rounds = []
            for turns in (1, BUSY_TURNS) if busy_too else (1,):
                for count in counts:
                    for repeat in range(repeats if turns == 1 else 1):
                        rounds.append(await _round(engine, timed, channels[:count], turns, repeat))
            if steady:  # conversations grow with every turn: the limit at the lengths before and after
                began = await _raw_rate_on_worker(llm, len(channels))
                rounds.append(await _steady(engine, timed, channels, steady))
                ended = await _raw_rate_on_worker(llm, len(channels))
            if raw_too:  # the limit is the better of before and after: this VM's speed drifts
                after = await _raw_rates(llm, counts)
                raw = {n: max(rate, after[n]) for n, rate in raw.items()}
                for n in counts:
                    rounds.append(await _model_alone(llm, n))
                read = round(statistics.median(t for r in rounds if r.turns == 1 for t in r.read if t))
                reading = await _raw_reads(llm, counts, read)
        finally:
            await engine.close()
            await llm.close()
    return rounds, Limits(raw, reading, read, began, ended)


async def _raw_rates(llm: Any, counts: tuple[int, ...]) -> dict[int, float]:
    return {n: await _raw_rate_on_worker(llm, n) for n in sorted({1, *counts})}


async def _raw_rate_on_worker(llm: Any, sequences: int) -> float:
    return await llm._worker.run(functools.partial(_raw_rate, llm, sequences))


async def _raw_reads(llm: Any, counts: tuple[int, ...], read: int) -> dict[int, float]:
    """The best of three tries each: a reading is one decode, and this VM's speed drifts."""
    tries = functools.partial(_raw_read, llm, read=read)
    return {
        n: min([await llm._worker.run(functools.partial(tries, n)) for _ in range(3)])
        for n in sorted({1, *counts})
    }


@contextlib.contextmanager
def _slots_batch(llm: Any, sequences: int, per_slot: int) -> Iterator[tuple[Any, list[Any], Any]]:
    """The reply slots' context, its first `sequences` slots holding a conversation, and a batch of
    `per_slot` tokens for each; afterwards every slot cut back to its conversation, the batch freed."""
    import llama_cpp

    ctx = llm._loop.ctx
    slots = [slot for slot in llm._loop.slots if slot.tokens][:sequences]
    batch = llama_cpp.llama_batch_init(len(slots) * per_slot, 0, 1)
    try:
        yield ctx, slots, batch
    finally:
        memory = llama_cpp.llama_get_memory(ctx)
        for slot in slots:
            llama_cpp.llama_memory_seq_rm(memory, slot.seq, len(slot.tokens), -1)
        llama_cpp.llama_batch_free(batch)


def _raw_read(llm: Any, sequences: int, read: int) -> float:
    """Seconds llama.cpp takes to read a new message of `read` tokens for each of `sequences` slots in one
    batch: the soonest the last of that many channels' first tokens can come."""
    import llama_cpp

    with _slots_batch(llm, sequences, read) as (ctx, slots, batch):
        n = 0
        for slot in slots:
            for i, token in enumerate(slot.tokens[-read:]):  # any tokens cost the same to read
                batch.token[n], batch.pos[n] = token, len(slot.tokens) + i
                batch.n_seq_id[n], batch.seq_id[n][0], batch.logits[n] = 1, slot.seq, i == read - 1
                n += 1
        batch.n_tokens = n
        start = time.perf_counter()
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("raw prompt reading failed")
        return time.perf_counter() - start


def _raw_rate(llm: Any, sequences: int) -> float:
    """Tokens/s llama.cpp decodes for `sequences` of the reply slots batched, each after the conversation
    it holds, greedy, nothing else done between steps: the limit a reply loop could reach."""
    import llama_cpp

    greedy = llama_cpp.llama_sampler_init_greedy()
    try:
        with _slots_batch(llm, sequences, 1) as (ctx, slots, batch):
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
            return len(slots) * RAW_STEPS / (time.perf_counter() - start)
    finally:
        llama_cpp.llama_sampler_free(greedy)


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
    steady = STEADY_SECONDS / 2 if quick else STEADY_SECONDS
    rounds, limits = await _rounds(config, COUNTS, repeats, raw_too=True, busy_too=True, steady=steady)
    raw = limits.decode
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
    rows += [
        (
            f"raw reading of {n} new message{'s' * (n > 1)} of {limits.read} tokens in one batch",
            f"{seconds:.2f} s ({seconds / limits.reading[1]:.1f}x one)",
        )
        for n, seconds in limits.reading.items()
    ]
    groups = [
        (f"embedded, {n} at once", [r for r in rounds if r.channels == n and r.turns == 1]) for n in COUNTS
    ]
    groups += [
        (f"embedded, {n} busy channels", [r for r in rounds if r.channels == n and r.turns > 1])
        for n in COUNTS
    ]
    kept = [r for r in rounds if r.turns < 0]
    groups.append((f"embedded, {max(COUNTS)} channels kept busy", kept))
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
    for when, rate in (("began", limits.began), ("ended", limits.ended)):
        rows.append(
            (
                f"raw batched decode, {max(COUNTS)} sequences, at the lengths kept busy {when} at",
                f"{rate:.1f} tokens/s",
            )
        )
        rows.append(
            (
                f"embedded, {max(COUNTS)} channels kept busy, of raw as it {when}",
                _describe(kept, {max(COUNTS): rate}, lone),
            )
        )
    rows += failed
    table(
        f"Channels at once, bundled model (warm channels, replies up to {REPLY_TOKENS} tokens; at once: one "
        f"message each, {repeats} round(s) embedded, 1 through the server; busy: each channel sends "
        f"{BUSY_TURNS} messages, the next as soon as it is answered; kept busy: the same without end, the "
        f"tokens written in {steady:.0f} s counted after {steady:.0f} s of it, replies cut by either end "
        "included; its replies are those both asked and answered in the window)",
        rows,
        f"n_ctx {model.n_ctx} per slot, {model.parallel} slots",
    )
    return 0


def _describe(group: list[Round], raw: dict[int, float], lone: float) -> str:
    n = group[0].channels
    seconds = sum(r.seconds for r in group)
    rate = sum(r.tokens for r in group) / seconds
    described = f"{rate:.1f} tokens/s = {rate / raw[n]:.2f} of raw"
    replies = sum(len(r.whole) for r in group)
    if not replies:  # a window too short for any reply to be both asked and answered in it
        return described + "; no reply both asked and answered in the window"
    first = [f for r in group for f in r.first]
    whole = [w for r in group for w in r.whole]
    length = sum(sum(r.lengths) if r.lengths else r.tokens for r in group) / replies
    read = [t for r in group for t in r.read if t]
    return (
        f"{described}; {replies / seconds * 60:.0f} replies/min of {length:.0f} tokens; first token p50 "
        f"{statistics.median(first):.2f} s, p95 {_p(first, 0.95):.2f} s ({_p(first, 0.95) / lone:.1f}x "
        f"lone embedded); whole reply p50 {statistics.median(whole):.2f} s, p95 {_p(whole, 0.95):.2f} s; "
        f"prompt tokens read per turn {statistics.median(read) if read else 0:.0f}"
    )
