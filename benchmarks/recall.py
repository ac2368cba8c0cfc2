"""`./run bench recall`: does a question asked long after bring back the line that answers it, by its
words and by its meaning? Lines planted early in a long channel of varied chat (GoEmotions dev comments,
the same text the emotion bench reads), asked about at its end: recall@prompt with the window alone, with
words alone (FTS5) and with words and meaning merged, on questions that paraphrase the line, questions
that share its words, and answers one line after the line the question matches. Then the background
embedding's rate, the lookup's time at 1k / 10k / 100k lines, disk and RAM per line, the tokens a warm
turn reads, and the words lookup's time in a 1k-line channel as other channels grow from 1k to 300k lines."""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import re
import statistics
import time
from pathlib import Path

from benchmarks.common import loaded_model, scratch_store, table
from benchmarks.recall_sets import NEXT_LINE, PARAPHRASED, SHARED
from bot.config import Config, MemoryConfig
from bot.emotion.evaluation import read_goemotions
from bot.store import Store

CHANNEL = 1
PLACEHOLDER = re.compile(r"\[NAME\]")
FIRST_NAMES = (
    "Alex", "Priya", "Tom", "Maria", "Kenji", "Fatima", "Liam", "Chloe", "Omar", "Ines", "Jonas", "Aisha",
    "Pablo", "Hana", "Ravi", "Elena", "Noah", "Zoe", "Mateo", "Yuki",
)  # fmt: skip
Entry = tuple[tuple[str, ...], str]
SETS: dict[str, tuple[Entry, ...]] = {
    "paraphrased (no content word shared)": PARAPHRASED,
    "sharing words": SHARED,
    "answer in the next line": NEXT_LINE,
}


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


async def seed(
    store: Store,
    channel: int,
    filler: list[str],
    count: int,
    planted: dict[int, Entry],
    vectors: dict[str, bytes] | None = None,
) -> None:
    """`count` filler lines (Sam and Mira by turns), with each planted entry's lines at its position (the
    answer, the last line, said by Sam; a line before it by Mira), in one transaction; with `vectors`
    (each text's), stored already embedded."""
    rows = []
    for i in range(count):
        for n, text in enumerate(planted[i][0] if i in planted else ()):
            last = n == len(planted[i][0]) - 1
            rows.append(
                (
                    channel,
                    7 if last else None,
                    "Sam" if last else "Mira",
                    "user" if last else "assistant",
                    text,
                )
            )
        text = filler[i % len(filler)]
        user = i % 2 == 0
        rows.append(
            (channel, 7 if user else None, "Sam" if user else "Mira", "user" if user else "assistant", text)
        )
    async with store._transaction() as db:  # the embedding worker writes on the same connection
        await db.executemany(
            "INSERT INTO messages (channel_id, author_id, author_name, role, content, persona, created_at)"
            " VALUES (?, ?, ?, ?, ?, 'mira', 0)",
            rows,
        )
        if vectors is not None:
            await db.execute(
                "DELETE FROM embed_queue WHERE id IN (SELECT id FROM messages WHERE channel_id = ?)",
                (channel,),
            )
            async with db.execute(
                "SELECT id, content FROM messages WHERE channel_id = ?", (channel,)
            ) as cursor:
                stored = await cursor.fetchall()
            await db.executemany(
                "INSERT INTO message_vectors (id, channel_id, vector) VALUES (?, ?, ?)",
                [(r[0], channel, vectors[r[1]]) for r in stored],
            )


async def words_lookup(filler: list[str], questions: list[str], quick: bool) -> list[tuple[str, str]]:
    """Recall by words in a 1,000-line channel while the other channels hold 1k, then many more lines:
    the lookup reads only its channel's range of the index, so its time should not follow theirs."""
    from bot.memory.recall import match_words

    rows = []
    others = (1_000, 30_000) if quick else (1_000, 300_000)
    async with scratch_store() as store:
        await seed(store, CHANNEL, filler, 1_000, {})
        held = 0
        baseline = 0.0
        for size in others:
            for channel in range(2, 12):  # ten other channels share the lines
                await seed(store, channel, filler[channel:], (size - held) // 10, {})
            held = size
            times = []
            for _ in range(3):
                for question in questions:
                    words = match_words(question)
                    started = time.perf_counter()
                    await store.recall(CHANNEL, ["mira"], words, 1 << 40, 24)
                    times.append(time.perf_counter() - started)
            times.sort()
            p50, p95 = statistics.median(times) * 1000, times[int(0.95 * (len(times) - 1))] * 1000
            baseline = baseline or p50
            rows.append(
                (
                    f"words lookup in a 1,000-line channel, {size:,} lines in 10 other channels",
                    f"p50 {p50:.2f} ms, p95 {p95:.2f} ms ({p50 / baseline:.2f}x the first)",
                )
            )
    return rows


async def bench_recall(config: Config, args: argparse.Namespace) -> int:
    from bot.core import Engine
    from bot.personas import PersonaLibrary

    data = args.data or config.root.parent / "shared" / "goemotions" / "dev.tsv"
    if not Path(data).is_file():
        print(f"bench recall: {data} not found (pass --data path/to/goemotions/dev.tsv)")
        return 2
    # GoEmotions hides people's names as "[NAME]" (in 14 % of its comments); a chat has names, and a
    # placeholder that common made every question with the word "name" match a seventh of the channel.
    names = iter(random.Random(5).choices(FIRST_NAMES, k=100_000))
    filler = [
        PLACEHOLDER.sub(lambda _: next(names), " ".join(e.text.split())) for e in read_goemotions(Path(data))
    ]
    random.Random(3).shuffle(filler)
    quick = args.quick
    model = dataclasses.replace(config.model, n_ctx=4096, temperature=0.0, seed=1, max_reply_tokens=64)
    memory = dataclasses.replace(config.memory, enabled=True, summaries=False, meaning=True)
    config = dataclasses.replace(config, model=model, memory=memory)
    personas = PersonaLibrary.from_config(config)
    seeded = 2_000 if quick else 5_000
    rows: list[tuple[str, str]] = []
    async with scratch_store() as store, loaded_model(model, config.root) as llm:
        engine = Engine(config, store, llm, personas)
        try:
            mira = personas.load(config.persona.default)
            cast = [mira]
            entries = [(name, entry) for name, entries in SETS.items() for entry in entries]
            # Planted in the first 70 % of the channel: the window (the newest ~60 lines) never holds them.
            spots = random.Random(11).sample(range(seeded * 7 // 10), len(entries))
            await seed(
                store,
                CHANNEL,
                filler,
                seeded,
                {spot: entry for spot, (_, entry) in zip(spots, entries, strict=True)},
            )

            # -- the background embedding of every stored line ----------------------------------------------
            rss = rss_mb()
            started = time.perf_counter()
            index = engine.models.memory.meaning
            engine.models.memory.start()
            if not await index.ready():
                print(f"bench recall: the sentence encoder did not load: {index.failed}")
                return 1
            loaded = time.perf_counter() - started
            rss_encoder = rss_mb() - rss
            await index.idle.wait()
            embedding = time.perf_counter() - started - loaded
            total = await store.count_messages(CHANNEL)
            rows.append(
                ("encoder load (plain all-MiniLM-L6-v2, int8), RAM", f"{loaded:.1f} s, +{rss_encoder:.0f} MB")
            )
            rows.append(
                (
                    f"background embedding of {total:,} stored lines (model idle)",
                    f"{embedding:.1f} s, {total / embedding:.0f} lines/s",
                )
            )

            # -- recall@prompt ------------------------------------------------------------------------------
            modes = {
                "window alone": MemoryConfig(enabled=False),
                "words (FTS5)": dataclasses.replace(memory, meaning=False),
                "words + meaning": memory,
            }
            hits = {(name, mode): 0 for name in SETS for mode in modes}
            for mode, settings in modes.items():
                engine.models.memory.config = settings
                engine.models.prompts = type(engine.models.prompts)(
                    llm, model.max_reply_tokens, config.prompt, settings
                )
                engine.scene.windows.clear()
                for name, (lines, question) in entries:
                    row = await store.add_message(
                        CHANNEL, role="user", author_name="Sam", content=question, persona="mira"
                    )
                    history = await engine.scene.history(CHANNEL, cast)
                    built = await engine.composer.prompt(CHANNEL, mira, cast, history, "Sam")
                    hits[(name, mode)] += f"Sam: {lines[-1]}" in built.text
                    await store._db.execute("DELETE FROM messages WHERE id = ?", (row,))
            for name, entries_of in SETS.items():
                figures = ", ".join(f"{mode} {hits[(name, mode)] / len(entries_of):.2f}" for mode in modes)
                rows.append((f"recall@prompt, {name} ({len(entries_of)})", figures))

            # -- tokens a warm turn reads -------------------------------------------------------------------
            from tests.support.contexts import read_tokens

            engine.models.memory.config = memory
            engine.models.prompts = type(engine.models.prompts)(
                llm, model.max_reply_tokens, config.prompt, memory
            )
            engine.scene.windows.clear()
            # Sam's notes too, as a member who told a few things about themselves has them.
            await engine.models.memory.note_server(CHANNEL, 1)
            await engine.admin.correct_member_notes(1, 7, "- Sam grew up in Paris\n- Sam's sister is a nurse")
            history = await engine.scene.history(CHANNEL, cast)
            before = await engine.composer.prompt(CHANNEL, mira, cast, history, "Sam")
            reads = []
            for turn in range(4 if quick else 8):
                reply = "*Mira nods and turns the lamp down.* Go on."
                await store.add_message(
                    CHANNEL, role="assistant", author_name="Mira", content=reply, persona="mira"
                )
                _, question = PARAPHRASED[turn]
                await store.add_message(
                    CHANNEL, role="user", author_name="Sam", content=question, persona="mira", author_id=7
                )
                history = await engine.scene.history(CHANNEL, cast)
                built = await engine.composer.prompt(CHANNEL, mira, cast, history, "Sam")
                reads.append(read_tokens(llm, before.text, reply, built.text))
                before = built
            rows.append(
                (
                    f"tokens per warm turn, words + meaning, member's notes ({before.n_tokens}-token prompt)",
                    f"mean {statistics.mean(reads):.0f}, max {max(reads)}",
                )
            )

            # -- lookup time as the channel grows: lines and vectors copied from the embedded channel -----
            from bot.memory.meaning import to_blob

            assert index.encoder is not None
            encoder = index.encoder
            unique = list(dict.fromkeys(filler))
            vectors = {}
            for start in range(0, len(unique), 64):
                batch = unique[start : start + 64]
                for text, vector in zip(batch, encoder.embed(batch), strict=True):
                    vectors[text] = to_blob(vector)
            questions = [q for _, (_, q) in entries]
            for size in (1_000, 10_000) if quick else (1_000, 10_000, 100_000):
                channel = 100 + size
                await seed(store, channel, filler, size, {}, vectors)
                history = await store.history(channel, ["mira"], 60)
                times = []
                for question in [questions[0], *questions]:  # the first reads the channel's vectors into RAM
                    asked = [*history[:-1], dataclasses.replace(history[-1], role="user", content=question)]
                    started = time.perf_counter()
                    await engine.models.memory.for_prompt(channel, "mira", ["mira"], asked, history[0].id)
                    times.append(time.perf_counter() - started)
                first, times = times[0], sorted(times[1:])
                p50, p95 = statistics.median(times) * 1000, times[int(0.95 * (len(times) - 1))] * 1000
                rows.append(
                    (
                        f"memory lookup (pins, summary, words + meaning, neighbours) at {size:,} lines",
                        f"p50 {p50:.1f} ms, p95 {p95:.1f} ms (first, reading vectors: {first * 1000:.0f} ms)",
                    )
                )
            sums = await store._row("SELECT COUNT(*), SUM(LENGTH(vector)) FROM message_vectors")
            assert sums is not None
            await store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            per_line = Path(store.path).stat().st_size / await store.count_messages()
            rows.append(
                (
                    "disk per line",
                    f"{sums[1] / sums[0]:.0f} bytes of vector; {per_line:.0f} bytes a line in all",
                )
            )
            rows.append(("RAM per line held for search", "768 bytes (float16); at most 400,000 lines held"))
        finally:
            await engine.close()
    rows += await words_lookup(filler, [q for _, (_, q) in entries], quick)
    table(
        "Recall by meaning (bench recall)", rows, f"n_ctx 4096; {seeded} seeded lines of GoEmotions dev text"
    )
    return 0
