"""A moved window keeps what the model already read: the kept lines are shifted in the model's cache, not
read again, at every context size, also when the move shows a newer summary; what was erased never stays
in view."""

from __future__ import annotations

import statistics

import pytest

from bot.core.engine import Engine
from bot.llm import LlamaBackend

from .support.moves import until_moved
from .test_memory import CHANNEL, seed, sized

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("n_ctx", [4096, 16384, 32768])
async def test_a_window_move_reads_at_most_twice_a_warm_turn(
    engine: Engine, model: LlamaBackend, n_ctx: int
) -> None:
    """Turns go on until the window moves, and the move shows a newer summary than the window had: the
    model's own tokens show the move reading the summary and the new exchange, not the kept lines."""
    sized(engine, model, n_ctx)
    store = engine.store
    await seed(store, n_ctx // 24 * 3 // 2, long=True)
    mira = engine.personas.load("mira")
    history = await engine.scene.history(CHANNEL, [mira])
    await engine.composer.prompt(CHANNEL, mira, [mira], history, "Ann")  # the window, placed
    first = engine.scene.windows[(CHANNEL, "mira")].first_id
    older = await store.lines_between(CHANNEL, ["mira"], 0, first, 10)
    summary = "Ann and Mira watched the harbour for weeks; the bells rang and the fog never lifted. " * 8
    assert await store.put_summary(CHANNEL, "mira", summary, older, None)
    moved = await until_moved(engine, model, mira, CHANNEL)
    assert moved is not None and moved.summary_shown and len(moved.warm) >= 3
    assert moved.moved <= 2 * moved.warm_median, moved
    # What the shift saves: a prefix match alone reads nearly the whole prompt again.
    assert moved.prefix_only > moved.prompt_tokens * 0.8, moved


async def turns(engine: Engine, count: int, start: int = 0) -> list[tuple[int, int]]:
    """`count` turns by the real model: each one's window start and the prompt tokens it evaluated."""
    seen = []
    for n in range(start, start + count):
        result = await engine.turn(CHANNEL, "Ann", f"And what about the harbour bell number {n}?")
        seen.append((engine.scene.windows[(CHANNEL, "mira")].first_id, result.stats.evaluated_tokens))
    return seen


async def test_the_model_moves_its_cache_with_the_window(engine: Engine) -> None:
    """The bundled model over a channel longer than its context: the turn at which the window moves
    evaluates no more than twice what a warm turn does (the kept lines are shifted, not read again), and
    the replies go on."""
    await seed(engine.store, 600, long=True)
    seen = await turns(engine, 28)
    moves = [read for (start, read), (before, _) in zip(seen[1:], seen, strict=False) if start != before]
    warm = [read for (start, read), (before, _) in zip(seen[2:], seen[1:], strict=False) if start == before]
    assert len(moves) >= 2, seen
    assert max(moves) <= 2 * statistics.median(warm), seen
    history = await engine.store.history(CHANNEL, "mira", 8)
    assert all(m.content.strip() for m in history if m.role == "assistant")


async def test_after_an_erasure_nothing_computed_with_the_erased_line_is_kept(engine: Engine) -> None:
    """A line deleted inside the window: the next turn reads everything after it again, though the rest of
    the prompt is unchanged (kept cells were computed with the erased line in view)."""
    await seed(engine.store, 300, long=True)
    await turns(engine, 2)
    recent = await engine.store.history(CHANNEL, "mira", 24)
    assert recent[0].id >= engine.scene.windows[(CHANNEL, "mira")].first_id  # all inside the window
    erased, after = recent[5], recent[6:]
    await engine.store._db.execute("UPDATE messages SET discord_id = 4242 WHERE id = ?", (erased.id,))
    assert await engine.admin.message_deleted(4242)
    [(_, read)] = await turns(engine, 1, 2)
    assert read > 20 * len(after)  # every later line (20+ tokens each) is read again
