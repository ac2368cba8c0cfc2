"""`./run bench memory`: does the prompt hold what was said long ago, and at what cost? Facts planted at
the start of a long seeded channel, asked about at its end (recall@prompt, memory on against off); the
tokens a warm turn reads with memory on and off; the lookup's time as the channel grows; the first turn's
prompt after a restart at 32k, its window's start kept or searched for; one background summary's model
time; a large /forget-me beside another channel's turns, and the space it gives back."""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from pathlib import Path

from benchmarks.common import loaded_model, scratch_store, table
from benchmarks.llm import STORY_LINES
from bot.config import Config, MemoryConfig
from bot.store import Store

CHANNEL = 1
# (said early, asked late): the question shares a word or two with the fact, as people ask.
FACTS: tuple[tuple[str, str], ...] = (
    ("My sister is called Oriel, she keeps bees.", "What was my sister called?"),
    ("I hid the silver key under the blue vase.", "Where did I put the silver key?"),
    (
        "We came here aboard the Albatross.",
        "Do you remember the name of the ship, the Albatross or the other?",
    ),
    ("My father was a clockmaker in Tessaly.", "What did my father do for a living?"),
    ("The password for the sea gate is 'driftwood'.", "What is the password for the sea gate?"),
    ("I owe the ferryman three silver coins.", "How many coins do I owe the ferryman?"),
    ("My dog is named Pepper; she is afraid of thunder.", "Is Pepper still afraid of thunder?"),
    ("The map is sewn into the lining of my coat.", "Where is the map hidden?"),
    ("I was born on the island of Vell, in winter.", "Which island was I born on?"),
    ("The lantern in the tower is green, never red.", "What colour is the lantern in the tower?"),
    ("My old captain, Harrow, lost an eye at Karsk.", "How did captain Harrow lose his eye?"),
    ("I promised to bring Mira a jar of cloudberry jam.", "What did I promise to bring you?"),
)


async def bulk(
    store: Store, channel: int, rows: int, start: int = 0, author_id: int | None = None, every: bool = False
) -> None:
    """`rows` story lines in one transaction (a seeded channel, not a benchmark of inserts); the
    member's lines by `author_id` (`every`: all lines, as one member's to erase)."""
    lines = []
    for i in range(start, start + rows):
        role, text = STORY_LINES[i % len(STORY_LINES)]
        lines.append(
            (
                channel,
                author_id if role == "user" or every else None,
                "Sam" if role == "user" else "Mira",
                role,
                f"{text} ({i})",
            )
        )
    await store._db.execute("BEGIN")
    await store._db.executemany(
        "INSERT INTO messages (channel_id, author_id, author_name, role, content, persona, created_at)"
        " VALUES (?, ?, ?, ?, ?, 'mira', 0)",
        lines,
    )
    await store._db.execute("COMMIT")


async def bench_memory(config: Config, quick: bool) -> int:
    from bot.core import Engine
    from bot.core.prompt import PromptBuilder
    from bot.personas import PersonaLibrary
    from tests.support.contexts import SizedContext, read_tokens

    model = dataclasses.replace(config.model, n_ctx=4096, temperature=0.0, seed=1, max_reply_tokens=64)
    config = dataclasses.replace(
        config, model=model, memory=dataclasses.replace(config.memory, summaries=False)
    )
    personas = PersonaLibrary.from_config(config)
    seeded = 2_000 if quick else 6_000
    rows: list[tuple[str, str]] = []
    async with scratch_store() as store, loaded_model(model, config.root) as llm:
        engine = Engine(config, store, llm, personas)
        mira = personas.load(config.persona.default)
        cast = [mira]

        def use(memory: MemoryConfig, n_ctx: int = 4096) -> None:
            engine.scene.config = dataclasses.replace(config, memory=memory)
            engine.models.prompts = PromptBuilder(
                SizedContext(llm, n_ctx), model.max_reply_tokens, config.prompt, memory
            )
            engine.models.memory.config = memory
            engine.scene.windows.clear()

        # -- recall@prompt: facts planted in the first tenth, asked about at the end ----------------------
        step = seeded // 10 // len(FACTS)
        for n, (fact, _) in enumerate(FACTS):
            await bulk(store, CHANNEL, step, n * step, author_id=7)
            await store.add_message(
                CHANNEL, role="user", author_name="Sam", content=fact, persona="mira", author_id=7
            )
        await bulk(store, CHANNEL, seeded - step * len(FACTS), step * len(FACTS), author_id=7)
        hits = {"on": 0, "off": 0}
        for mode, memory in (("on", config.memory), ("off", MemoryConfig(enabled=False))):
            use(memory)
            for fact, question in FACTS:
                row = await store.add_message(
                    CHANNEL, role="user", author_name="Sam", content=question, persona="mira"
                )
                history = await engine.scene.history(CHANNEL, cast)
                built = await engine.composer.prompt(CHANNEL, mira, cast, history, "Sam")
                hits[mode] += f"Sam: {fact}" in built.text
                await store._db.execute("DELETE FROM messages WHERE id = ?", (row,))
        total = await store.count_messages(CHANNEL)
        rows.append(
            (
                f"recall@prompt, {len(FACTS)} facts in a {total}-message channel, memory on",
                f"{hits['on'] / len(FACTS):.2f}",
            )
        )
        rows.append(("recall@prompt, memory off (the window alone)", f"{hits['off'] / len(FACTS):.2f}"))

        # -- tokens a warm turn reads, memory on and off ------------------------------------------------
        turns = 4 if quick else 8
        for mode, memory in (("off", MemoryConfig(enabled=False)), ("on", config.memory)):
            use(memory)
            history = await engine.scene.history(CHANNEL, cast)
            before = await engine.composer.prompt(CHANNEL, mira, cast, history, "Sam")
            reads = []
            for turn in range(turns):
                reply = "*Mira nods and turns the lamp down.* Go on."
                await store.add_message(
                    CHANNEL, role="assistant", author_name="Mira", content=reply, persona="mira"
                )
                _, question = FACTS[turn % len(FACTS)]
                await store.add_message(
                    CHANNEL, role="user", author_name="Sam", content=question, persona="mira"
                )
                history = await engine.scene.history(CHANNEL, cast)
                built = await engine.composer.prompt(CHANNEL, mira, cast, history, "Sam")
                reads.append(read_tokens(llm, before.text, reply, built.text))
                before = built
            rows.append(
                (
                    f"tokens read per warm turn, memory {mode} (of a {before.n_tokens}-token prompt)",
                    f"mean {statistics.mean(reads):.0f}, max {max(reads)}",
                )
            )

        # -- lookup time as the channel grows ---------------------------------------------------------
        use(config.memory)
        for size in (1_000, 10_000) if quick else (1_000, 10_000, 100_000):
            channel = 100 + size
            await bulk(store, channel, size)
            history = await store.history(channel, ["mira"], 400)
            times = []
            for _fact, question in FACTS * 3:
                started = time.perf_counter()
                await engine.models.memory.for_prompt(
                    channel,
                    "mira",
                    ["mira"],
                    [*history[:-1], dataclasses.replace(history[-1], role="user", content=question)],
                    history[0].id,
                )
                times.append(time.perf_counter() - started)
            rows.append(
                (
                    f"memory lookup (pins, summary, recall) at {size:,} messages",
                    f"median {statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms",
                )
            )

        # -- the first turn after a restart at 32k: the window's start kept, or searched for -----------
        use(config.memory, 32768)
        big = 200
        stored = 20_000 if quick else 100_000
        await bulk(store, big, stored)
        history = await engine.scene.history(big, cast)
        await engine.composer.prompt(big, mira, cast, history, "Sam")  # placed, and kept in the store
        first_turn = {}
        for kept in (True, False):
            engine.scene.windows.clear()  # what a restart forgets
            if not kept:
                await store.forget_windows(big)
            started = time.perf_counter()
            history = await engine.scene.history(big, cast)
            await engine.composer.prompt(big, mira, cast, history, "Sam")
            first_turn[kept] = time.perf_counter() - started
        rows.append(
            (
                f"first turn's prompt after a restart, n_ctx 32768, {stored:,} stored lines",
                f"window start kept {first_turn[True]:.2f} s; searched for {first_turn[False]:.2f} s"
                f" ({first_turn[False] / first_turn[True]:.1f}x)",
            )
        )

        # -- one background summary of what left the window, by the real model ----------------------
        memory = dataclasses.replace(config.memory, summaries=True)
        summary_config = dataclasses.replace(config, memory=memory)
        engine.models.memory.summariser.config = memory
        use(memory)
        engine.scene.config = summary_config
        small = 9
        await bulk(store, small, 120)
        history = await engine.scene.history(small, cast)
        started = time.perf_counter()
        await engine.composer.prompt(small, mira, cast, history, "Sam")
        await asyncio.sleep(0)
        await engine.models.memory.summariser.idle.wait()
        wall = time.perf_counter() - started
        summary = await store.summary(small, "mira")
        covered = len(
            await store.lines_between(small, ["mira"], 0, (summary.through_id + 1) if summary else 0, 10_000)
        )
        rows.append(
            (
                "background summary of the lines that left the window (real model)",
                f"{wall:.1f} s until stored, covering {covered} lines; the model's time for the last"
                f" chunk {engine.models.memory.summariser.last_seconds or 0:.1f} s",
            )
        )
        await engine.close()

        # -- a large /forget-me beside another channel's turns, and the space it gives back -------------
        erased = 30_000 if quick else 150_000
        await bulk(store, 500, erased, author_id=42, every=True)
        await store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        path = Path(store.path)
        size_before = path.stat().st_size
        erase = asyncio.create_task(store.forget_author(42, [500]))
        waits = []
        while not erase.done():
            started = time.perf_counter()
            await store.add_message(600, role="user", author_name="Ann", content="hello", persona="mira")
            await store.history(600, ["mira"], 400)
            waits.append(time.perf_counter() - started)
        started = time.perf_counter()
        removed = await erase
        waits.sort()
        p99 = waits[int(0.99 * (len(waits) - 1))]
        rows.append(
            (
                f"another channel's store write + read during a {removed:,}-message /forget-me",
                f"median {statistics.median(waits) * 1000:.1f} ms, 99th percentile {p99 * 1000:.0f} ms,"
                f" max {waits[-1] * 1000:.0f} ms ({len(waits)} turns meanwhile)",
            )
        )
        rows.append(
            (
                "database file before and after that /forget-me",
                f"{size_before / 1e6:.1f} MB -> {path.stat().st_size / 1e6:.1f} MB",
            )
        )
    table("Memory (bench memory)", rows, f"n_ctx 4096; {seeded} seeded messages")
    return 0
