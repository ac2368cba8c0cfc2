"""Finding what an evaluated context still holds of a new prompt (kv_reuse.plan), and moving it there in
the real model's cache: positions in order, the scratch sequence left empty, fresh logits at the end."""

from __future__ import annotations

import itertools
import random

import pytest

from bot.llm import LlamaBackend
from bot.llm.kv_reuse import MIN_RUN, Run, plan, reusable, to_read


def tokens(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000) for _ in range(n)]


def test_a_dropped_stretch_and_a_new_summary_leave_the_kept_lines_to_be_moved() -> None:
    sizes = ((1, 50), (2, 40), (3, 300), (4, 500), (5, 30))
    head, old_summary, dropped, kept, tail = (tokens(seed, n) for seed, n in sizes)
    new_summary, new_turn = tokens(6, 60), tokens(7, 25)
    old = head + old_summary + dropped + kept + tail
    new = head + new_summary + kept + new_turn
    runs = plan(old, new)
    assert runs == [Run(0, 0, 50), Run(50 + 40 + 300, 50 + 60, 500)]
    assert to_read(new, runs) == 60 + 25  # the new summary and the new turn, nothing else


def test_kept_runs_are_in_order_match_their_tokens_and_are_long_enough() -> None:
    for seed in range(40):
        rng = random.Random(seed)
        pieces = [tokens(seed * 100 + i, rng.randrange(1, 120)) for i in range(8)]
        old = [t for piece in pieces for t in piece]
        new = [t for piece in pieces if rng.random() < 0.6 for t in piece] + tokens(seed + 7, 20)
        runs = plan(old, new)
        for earlier, later in itertools.pairwise(runs):
            assert later.old >= earlier.old + earlier.length and later.new >= earlier.new + earlier.length
        for run in runs:
            assert old[run.old : run.old + run.length] == new[run.new : run.new + run.length]
            assert run.length >= MIN_RUN or run.old == run.new == 0
        assert to_read(new, runs) == len(new) - sum(run.length for run in runs)


def test_short_stretches_and_small_gains_are_left_to_the_prefix_match() -> None:
    head = tokens(1, 100)
    assert reusable(head + tokens(2, 10), head + tokens(3, 5)) == [Run(0, 0, 100)]  # little to drop
    short = tokens(4, MIN_RUN - 1)
    old, new = head + tokens(5, 200) + short, head + short + tokens(6, 10)
    assert reusable(old, new) == [Run(0, 0, 100)]  # a stretch too short to be worth moving
    assert reusable([], head) == []


COUNTING = "one, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve, thirteen, fourteen,"


@pytest.mark.slow
async def test_the_moved_cache_is_in_place_and_answers_from_the_new_prompt(model: LlamaBackend) -> None:
    """In the real model: a prompt that drops a stretch and takes a new summary, its kept words running to
    its very end. The move reads only the new summary; the sequence's positions then run 0..n-1 with the
    scratch sequence empty, and the answer is read from the new prompt's end (not from stale logits)."""
    import llama_cpp

    dropped = " ".join(f"The bell rang {n} times over the harbour." for n in range(30))
    kept = " Now we count again, slowly: " + COUNTING
    first = model.generate(f"Count with me. {dropped}{kept}", max_tokens=1, session="count")
    _ = [chunk async for chunk in first.chunks()]
    moved = model.generate(
        f"Count with me. A new summary: they counted.{kept}", max_tokens=2, session="count", shift=True
    )
    text = "".join([chunk async for chunk in moved.chunks()])
    assert text.split(",")[0].strip() == "fifteen"
    assert 0 < moved.stats.evaluated_tokens < 20, moved.stats

    def positions() -> tuple[int, int, int, int]:
        slots = llama_cpp.llama_get_memory(model._loop.ctx)
        [slot] = [slot for slot in model._loop.slots if slot.session == "count"]
        own = llama_cpp.llama_get_memory(model._llm.ctx)  # where the new summary was read, beside a scratch
        return (
            llama_cpp.llama_memory_seq_pos_min(slots, slot.seq),
            llama_cpp.llama_memory_seq_pos_max(slots, slot.seq),
            len(slot.tokens),
            llama_cpp.llama_memory_seq_pos_max(own, 1),
        )

    low, high, n_tokens, scratch = model._worker.submit(positions).result()
    assert (low, high, scratch) == (0, n_tokens - 1, -1)
    await model.forget_contexts()
