"""`./run bench window`: what a moved prompt window costs. At 4k, 16k and 32k (the model's own tokens over
a sized context) the tokens a move reads, its kept lines shifted or read again, against a warm turn, and
each turn's prompt build time. With the bundled model over its real cache: a move's prompt read in seconds,
shifted and afresh, and what the shift costs in quality: the log-likelihood of real lines (GoEmotions dev
comments as a conversation) after the shifted cache against a fresh read."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from benchmarks.common import loaded_model, scratch_store, table
from bot.config import Config
from bot.emotion.evaluation import read_goemotions
from bot.errors import GaveWay
from bot.llm import LlamaBackend
from bot.llm.kv_reuse import line_up
from tests.support.watched import until

CHANNEL = 1
DROP = 0.25  # the share of the window's tokens a move drops (prompt.window_slack's default)


async def bench_window(config: Config, quick: bool, data: Path | None) -> int:
    rows = await _sized_moves(config, quick)
    data = data or config.root.parent / "shared" / "goemotions" / "dev.tsv"
    if not data.is_file():
        print(f"bench window: {data} not found (pass --data path/to/goemotions/dev.tsv)")
        return 2
    comments = [e.text for e in read_goemotions(data)]
    rows += await _real_moves(config, quick, comments)
    rows += await _reply_during_summary(config, quick, comments)
    table("Window moves (bench window)", rows, "memory on, summaries stored by hand")
    return 0


async def _sized_moves(config: Config, quick: bool) -> list[tuple[str, str]]:
    from bot.core import Engine
    from bot.core.prompt import PromptBuilder
    from bot.personas import PersonaLibrary
    from tests.support.contexts import SizedContext
    from tests.support.moves import until_moved

    rows = []
    model = dataclasses.replace(config.model, n_ctx=2048)
    config = dataclasses.replace(
        config, model=model, memory=dataclasses.replace(config.memory, summaries=False)
    )
    personas = PersonaLibrary.from_config(config)
    async with loaded_model(model, config.root) as llm:
        for n_ctx in (4096, 16384) if quick else (4096, 16384, 32768):
            async with scratch_store() as store:
                engine = Engine(config, store, llm, personas)
                engine.models.prompts = PromptBuilder(
                    SizedContext(llm, n_ctx), model.max_reply_tokens, config.prompt, config.memory
                )
                mira = personas.load(config.persona.default)
                for i in range(n_ctx // 12):
                    role: Literal["user", "assistant"] = "user" if i % 2 == 0 else "assistant"
                    name = "Ann" if role == "user" else mira.name
                    text = f"Line {i}: the fog rolls over the harbour and the bells ring again, slower now."
                    await store.add_message(
                        CHANNEL, role=role, author_name=name, content=text, persona=mira.slug
                    )
                history = await engine.scene.history(CHANNEL, [mira])
                await engine.composer.prompt(CHANNEL, mira, [mira], history, "Ann")
                first = engine.scene.windows[(CHANNEL, mira.slug)].first_id
                older = await store.lines_between(CHANNEL, [mira.slug], 0, first, 10)
                summary = "Ann and Mira watched the harbour; the bells rang and the fog never lifted. " * 8
                await store.put_summary(CHANNEL, mira.slug, summary, older, None)
                moved = await until_moved(engine, llm, mira, CHANNEL)
                await engine.close()
            if moved is None:
                rows.append((f"window move at {n_ctx}", "the window never moved"))
                continue
            rows.append(
                (
                    f"tokens a move reads at {n_ctx} (newer summary; {moved.prompt_tokens}-token prompt)",
                    f"{moved.moved} shifted ({moved.moved / moved.warm_median:.2f}x a warm turn's"
                    f" {moved.warm_median:.0f}); {moved.prefix_only} with the prefix alone",
                )
            )
            rows.append(
                (
                    f"prompt build per turn at {n_ctx} (render + count, memory on)",
                    f"median {statistics.median(moved.build_seconds) * 1000:.0f} ms,"
                    f" max {max(moved.build_seconds) * 1000:.0f} ms",
                )
            )
    return rows


async def _real_moves(config: Config, quick: bool, comments: Sequence[str]) -> list[tuple[str, str]]:
    """Moves over the bundled model's real cache at n_ctx 4096: the cache holds a window of comments
    (a conversation between Sam and Mira) and the reply; the window then drops its oldest quarter,
    shows a newer summary and gains an exchange. Each move is read shifted and afresh, and the next real
    line is scored after each."""
    model = dataclasses.replace(config.model, n_ctx=4096, temperature=0.0, seed=1)
    samples = 3 if quick else 10
    results: list[dict[str, float]] = []
    async with loaded_model(model, config.root) as llm:
        lines = [_line(i, text) for i, text in enumerate(comments)]
        start = 0
        for _ in range(samples):
            sample, start = _window(llm, lines, start)
            results.append(await llm._worker.run(functools.partial(_measure, llm, *sample)))
    shifted = [r["shifted"] for r in results]
    fresh = [r["fresh"] for r in results]
    delta = [s - f for s, f in zip(shifted, fresh, strict=True)]
    mean = statistics.mean(delta)
    return [
        (
            f"a move's prompt read by the model, n_ctx 4096 ({samples} moves, tokens read)",
            f"shifted {statistics.mean(r['read_shifted'] for r in results):.0f} tokens in"
            f" {statistics.mean(r['seconds_shifted'] for r in results):.2f} s; afresh"
            f" {statistics.mean(r['read_fresh'] for r in results):.0f} tokens in"
            f" {statistics.mean(r['seconds_fresh'] for r in results):.2f} s",
        ),
        (
            "quality: log-likelihood of the next real line, nats/token (shifted - afresh)",
            f"mean {mean:+.4f} (perplexity x{math.exp(-mean):.3f}), median {statistics.median(delta):+.4f},"
            f" worst {min(delta):+.4f}, best {max(delta):+.4f}; afresh {statistics.mean(fresh):.3f},"
            f" shifted {statistics.mean(shifted):.3f}",
        ),
    ]


async def _reply_during_summary(
    config: Config, quick: bool, comments: Sequence[str]
) -> list[tuple[str, str]]:
    """A member's reply (its channel's prompt already read, one new line) asked while a background
    summary reads a 3,000-token prompt: its time to first token against the model idle, with the summary
    giving way between chunks and, for reference, reading its prompt in one go."""
    model = dataclasses.replace(config.model, n_ctx=4096, temperature=0.0, seed=1, max_reply_tokens=8)
    samples = 2 if quick else 5
    waits: dict[str, list[float]] = {"idle": [], "chunks": [], "whole": []}
    async with loaded_model(model, config.root) as llm:
        lines = [_line(i, text) for i, text in enumerate(comments[:400])]
        chat = [{"role": "system", "content": SYSTEM}, *lines[:60]]
        await _drain(llm.generate(llm.render(chat), max_tokens=1, session="reply"))  # the channel, read
        for n in range(samples):
            for mode in waits:
                chat.append({"role": "user", "content": f"Sam: and then? ({mode} {n})"})
                reply_prompt = llm.render(chat)
                summary = _summary_prompt(llm, comments, 400 + 60 * (3 * n + len(waits[mode])))
                background = None
                if mode != "idle":
                    background = llm.generate(
                        summary, max_tokens=4, session="summary", give_way=mode == "chunks"
                    )
                    task = asyncio.ensure_future(_drain(background))
                    await until(functools.partial(_reading, llm, llm._llm.evaluated))
                started = time.perf_counter()
                reply = llm.generate(reply_prompt, max_tokens=2, session="reply")
                async for _ in reply.chunks():
                    waits[mode].append(time.perf_counter() - started)
                    break
                if background is not None:
                    with contextlib.suppress(GaveWay):
                        await task
                chat.append({"role": "assistant", "content": "Go on."})
    idle, chunks = statistics.median(waits["idle"]), statistics.median(waits["chunks"])
    return [
        (
            f"a reply's time to first token, n_ctx 4096 ({samples} replies each)",
            f"model idle {idle:.2f} s; during a summary giving way {chunks:.2f} s (+{chunks - idle:.2f} s,"
            f" worst +{max(waits['chunks']) - idle:.2f} s); behind a summary read in one go"
            f" {statistics.median(waits['whole']):.2f} s",
        )
    ]


def _reading(llm: LlamaBackend, before: int) -> bool:
    """The model began a read since it had evaluated `before` tokens (each read counts as it starts)."""
    return bool(llm._llm.evaluated > before)


async def _drain(generation: Any) -> str:
    return "".join([chunk async for chunk in generation.chunks()])


def _summary_prompt(llm: LlamaBackend, comments: Sequence[str], start: int) -> str:
    """A summary's prompt of about 3,000 tokens, over lines no other prompt read."""
    shown: list[str] = []
    end = start
    while llm.count_prompt("\n".join(shown)) < 3000:
        shown.append(f"Sam: {comments[end % len(comments)]}")
        end += 1
    return llm.render([{"role": "user", "content": "Summarise:\n" + "\n".join(shown)}])


def _line(i: int, text: str) -> dict[str, str]:
    if i % 2 == 0:
        return {"role": "user", "content": f"Sam: {text}"}
    return {"role": "assistant", "content": text}


SYSTEM = "You are Mira, who keeps the lighthouse and talks with the people of the harbour."


def _system(summary: Sequence[dict[str, str]]) -> dict[str, str]:
    """The system message with a 'summary' of earlier lines: their first words, as a stand-in."""
    story = " ".join(" ".join(m["content"].split()[:8]) for m in summary)
    return {"role": "system", "content": f"{SYSTEM}\n\nStory so far:\n{story}"}


def _window(llm: LlamaBackend, lines: list[dict[str, str]], start: int) -> tuple[tuple[Any, ...], int]:
    """One move: (tokens the cache held, the moved prompt's tokens, the real next line's tokens), and where
    the next sample starts."""
    budget = int(llm.n_ctx * 0.8)
    end = start + 2
    while True:  # the old window: as many lines as fit, ending with a member's line
        old = llm._prompt_tokens(llm.render([_system(lines[max(start - 12, 0) : start]), *lines[start:end]]))
        if len(old) > budget or end + 4 >= len(lines):
            break
        end += 2
    end -= 2
    old_prompt = [_system(lines[max(start - 12, 0) : start]), *lines[start:end]]
    held = llm._prompt_tokens(llm.render(old_prompt)) + llm.tokenize(lines[end]["content"])
    drop = start
    while len(llm._prompt_tokens(llm.render(lines[start:drop]))) < DROP * budget:
        drop += 2
    moved = [_system(lines[start:drop]), *lines[drop : end + 2]]
    new = llm._prompt_tokens(llm.render(moved))
    return (held, new, llm.tokenize(lines[end + 2]["content"])), end + 4


def _measure(llm: LlamaBackend, held: list[int], new: list[int], reply: list[int]) -> dict[str, float]:
    llama = llm._llm
    llama.reset()
    llama.eval(held)
    started = time.perf_counter()
    read = line_up(llama, new)  # what it reads between kept stretches
    before = llama.evaluated
    llama.eval_suffix(new)
    read += llama.evaluated - before
    seconds_shifted = time.perf_counter() - started
    shifted = _score(llama, reply)
    llama.reset()
    started = time.perf_counter()
    before = llama.evaluated
    llama.eval_suffix(new)
    read_fresh = llama.evaluated - before
    seconds_fresh = time.perf_counter() - started
    fresh = _score(llama, reply)
    llama.reset()
    return {
        "read_shifted": read,
        "seconds_shifted": seconds_shifted,
        "read_fresh": read_fresh,
        "seconds_fresh": seconds_fresh,
        "shifted": shifted,
        "fresh": fresh,
    }


def _score(llama: Any, reply: list[int]) -> float:
    """Mean log-probability per token of `reply` after what the context holds."""
    import llama_cpp
    import numpy as np

    total = 0.0
    for token in reply:
        logits = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(llama.ctx, -1), shape=(llama.n_vocab(),)
        ).astype(np.float64)
        top = logits.max()
        total += float(logits[token] - top - np.log(np.exp(logits - top).sum()))
        llama.eval([token])
    return total / len(reply)
