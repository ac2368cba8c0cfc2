"""Reusing an evaluated context for a prompt that shares more than its prefix with it.

When a channel's prompt window moves, its oldest lines leave and a newer summary may replace the old one:
the new prompt starts like the old, then differs, then holds the kept lines the model already read, at
earlier positions. Matching only the common prefix re-reads all of them (91-99 % of the prompt at every
move). Here the kept stretches are found in the old tokens, the cache cells that are not kept are removed,
the kept ones are shifted to their new positions (llama.cpp re-rotates their keys: what llama-server calls
context shift), and only what is new in between is evaluated, at its own positions.

The kept cells are an approximation: they were computed with the dropped lines in view. What that costs in
the log-likelihood of real replies is measured by `./run bench memory` (docs/performance.md).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

_log = logging.getLogger(__name__)

MIN_RUN = 32  # fewest tokens a kept stretch must have: shorter ones are cheaper read again than moved
KEY = 8  # tokens that index the old context: a stretch is looked for where its first KEY tokens occur
CANDIDATES = 16  # places in the old context tried for each stretch (chat lines repeat themselves)


@dataclass(frozen=True)
class Run:
    """`length` tokens at `old` in the evaluated context, which the new prompt holds at `new`."""

    old: int
    new: int
    length: int


def common_prefix(old: Sequence[int], new: Sequence[int]) -> int:
    common = 0
    for a, b in zip(old, new, strict=False):
        if a != b:
            break
        common += 1
    return common


def _match(old: Sequence[int], at: int, new: Sequence[int], start: int) -> int:
    length = 0
    limit = min(len(old) - at, len(new) - start)
    while length < limit and old[at + length] == new[start + length]:
        length += 1
    return length


def plan(old: Sequence[int], new: Sequence[int], min_run: int = MIN_RUN) -> list[Run]:
    """The stretches of `new` taken from `old`: the common prefix, then every later stretch of at least
    `min_run` tokens found further on in `old`, in order in both (what lies between is read anew)."""
    old, new = list(old), list(new)
    prefix = common_prefix(old, new)
    return ([Run(0, 0, prefix)] if prefix else []) + _later_runs(old, new, prefix, min_run)


def _later_runs(old: list[int], new: list[int], prefix: int, min_run: int) -> list[Run]:
    """`plan`'s stretches after the common prefix of `prefix` tokens."""
    runs = []
    index: dict[tuple[int, ...], list[int]] = {}
    for at in range(prefix, len(old) - KEY + 1):
        index.setdefault(tuple(old[at : at + KEY]), []).append(at)
    head_old, head_new = prefix, prefix
    while head_new + min_run <= len(new):
        places = index.get(tuple(new[head_new : head_new + KEY]), [])
        first = bisect.bisect_left(places, head_old)
        best = Run(0, head_new, 0)
        for at in places[first : first + CANDIDATES]:
            length = _match(old, at, new, head_new)
            if length > best.length:
                best = Run(at, head_new, length)
        if best.length >= min_run:
            runs.append(best)
            head_old, head_new = best.old + best.length, head_new + best.length
        else:
            head_new += 1
    return runs


def reusable(old: Sequence[int], new: Sequence[int], min_run: int = MIN_RUN) -> list[Run]:
    """`plan`'s runs where moving them is worth it; else the common prefix alone, as llama-cpp-python
    reuses it by itself (also when what follows the prefix in `old` is short)."""
    old, new = list(old), list(new)
    prefix = common_prefix(old, new)
    alone = [Run(0, 0, prefix)] if prefix else []
    if len(old) - prefix < min_run:
        return alone
    later = _later_runs(old, new, prefix, min_run)
    return alone + later if sum(run.length for run in later) >= min_run else alone


def to_read(new: Sequence[int], runs: Sequence[Run]) -> int:
    """Tokens of `new` evaluated anew when `runs` are kept (the last one is always read again, for fresh
    logits)."""
    kept = sum(run.length for run in runs)
    return max(len(new) - kept, 1)


SIDE = 1  # the scratch sequence new text is evaluated in, beside the kept cells of sequence 0
_defaults_lock = threading.Lock()


@contextlib.contextmanager
def two_sequences() -> Iterator[None]:
    """Contexts created meanwhile hold a scratch sequence beside the main one, sharing one cache of n_ctx
    cells. llama-cpp-python does not expose n_seq_max, so its source of context defaults is wrapped."""
    from llama_cpp import llama_cpp

    with _defaults_lock:
        original = llama_cpp.llama_context_default_params

        def defaults() -> Any:
            params = original()
            params.n_seq_max = SIDE + 1
            params.kv_unified = True
            return params

        llama_cpp.llama_context_default_params = defaults
        try:
            yield
        finally:
            llama_cpp.llama_context_default_params = original


def line_up(llama: Any, tokens: Sequence[int], min_run: int = MIN_RUN) -> int:
    """Arrange `llama`'s evaluated context (its sequence 0) so that it holds as much of `tokens` as it
    can from what it held: afterwards its first `n_tokens` are `tokens`' own, and the caller evaluates
    the rest. Returns the tokens evaluated here (the new text between kept stretches). Does nothing where
    the prefix already covers what the context holds, or where the model's cache cannot shift (then the
    prefix is reused as before); any failure leaves an empty context, read afresh."""
    import llama_cpp

    runs = reusable(llama.input_ids[: llama.n_tokens].tolist(), tokens, min_run)
    if len(runs) < 2:
        return 0  # nothing beyond the prefix is kept: the usual prefix match does the same
    ctx = llama._ctx.ctx
    memory = llama_cpp.llama_get_memory(ctx)
    if not can_shift(ctx) or llama_cpp.llama_n_seq_max(ctx) < 2:
        return 0
    try:
        at = move_runs(memory, 0, runs)
        read = 0
        for start, end in gaps(runs):
            _insert(llama, memory, tokens[start:end], start)
            read += end - start
    except RuntimeError as exc:  # a decode refused: start from nothing rather than from a broken cache
        _log.warning("could not reuse the evaluated context (%s); reading the prompt afresh", exc)
        llama_cpp.llama_memory_seq_rm(memory, 0, -1, -1)
        llama.n_tokens = 0
        return 0
    llama.input_ids[:at] = tokens[:at]
    llama.n_tokens = at
    llama._requires_eval = True  # the logits at hand are the scratch sequence's, not the prompt's end
    return read


def can_shift(ctx: Any) -> bool:
    """Whether the context's cache can move cells (not sliding-window or recurrent ones)."""
    import llama_cpp

    memory = llama_cpp.llama_get_memory(ctx)
    return memory is not None and bool(llama_cpp.llama_memory_can_shift(memory))


def gaps(runs: Sequence[Run]) -> list[tuple[int, int]]:
    """The stretches of the new prompt between kept runs, read anew (start, end)."""
    found, at = [], 0
    for run in runs:
        if run.new > at:
            found.append((at, run.new))
        at = run.new + run.length
    return found


def move_runs(memory: Any, seq: int, runs: Sequence[Run]) -> int:
    """Remove every cell of `seq` no run keeps and shift the kept ones to their new positions; returns
    where the last run ends."""
    import llama_cpp

    edge = 0
    for run in runs:  # remove every cell no run keeps (runs are in order in the old context too)
        if run.old > edge and not llama_cpp.llama_memory_seq_rm(memory, seq, edge, run.old):
            raise RuntimeError("the cache cannot remove part of a sequence")
        edge = run.old + run.length
    llama_cpp.llama_memory_seq_rm(memory, seq, edge, -1)
    # Moving left in order and right in reverse order, no run lands on cells another move still selects.
    left = [run for run in runs if run.new <= run.old]
    right = [run for run in reversed(runs) if run.new > run.old]
    for run in left + right:
        if run.new != run.old:
            llama_cpp.llama_memory_seq_add(memory, seq, run.old, run.old + run.length, run.new - run.old)
    return runs[-1].new + runs[-1].length


def _insert(llama: Any, memory: Any, tokens: Sequence[int], at: int) -> None:
    """Evaluate `tokens` at positions from `at` in sequence 0, seeing only what precedes them. llama.cpp
    accepts a batch only at the end of its sequence, and sequence 0 goes on past `at`: so they are read
    in the scratch sequence (which shares sequence 0's cache: the context's is unified), given the cells
    before `at`, then handed to sequence 0."""
    import llama_cpp

    seq, side = 0, SIDE
    llama_cpp.llama_memory_seq_cp(memory, seq, side, 0, at)
    try:
        batch = llama._batch
        for start in range(0, len(tokens), llama.n_batch):
            part = list(tokens[start : start + llama.n_batch])
            batch.set_batch(batch=part, n_past=at + start, logits_all=False)
            for i in range(len(part)):
                batch.batch.seq_id[i][0] = side
            llama._ctx.decode(batch)
        llama_cpp.llama_memory_seq_cp(memory, side, seq, at, at + len(tokens))
    finally:
        llama_cpp.llama_memory_seq_rm(memory, side, -1, -1)
