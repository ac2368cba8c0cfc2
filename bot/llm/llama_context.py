"""What the embedded model keeps between calls: the evaluated contexts of recent sessions (channels), and
a Llama that counts the tokens it evaluates and re-reads only what changed."""

from __future__ import annotations

import ctypes
import functools
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

from bot.llm.kv_reuse import common_prefix, line_up, two_sequences


class SessionStates:
    """Evaluated contexts of recent sessions (channels), kept in RAM so that switching between channels
    does not re-read their histories: one sequence's cells each, saved by llama.cpp itself into
    preallocated numpy buffers (the GIL is released during the copy, so the event loop keeps running).
    `switch_to` serves the Llama's own sequence (0: the emotion question, background work); the reply
    slots (another context, see batch.py) save and restore theirs through `save` and `restore`. Used from
    the model worker thread only."""

    def __init__(self, llama: Any, capacity_bytes: int) -> None:
        self._llm = llama
        self._capacity = capacity_bytes
        self._current: Hashable = None
        self._saved: OrderedDict[Hashable, tuple[Any, Any]] = OrderedDict()  # session -> (state, tokens)

    def clear(self) -> None:
        """Forget every saved context; the current one is the model's own to reset."""
        self._saved.clear()
        self._current = None

    def save(self, seq: int, key: Hashable, tokens: Sequence[int], ctx: Any = None) -> None:
        """Keep sequence `seq` (of `ctx`, else the Llama's), which holds `tokens`, under `key` (the oldest
        go past the capacity)."""
        import numpy as np

        if len(tokens) == 0 or self._capacity <= 0:
            return
        state = sequence_state(ctx or self._llm.ctx, seq, self._capacity)
        if state is None:
            return
        self._saved[key] = (state, np.asarray(tokens, dtype=np.intc))
        self._saved.move_to_end(key)
        while sum(state.nbytes for state, _ in self._saved.values()) > self._capacity:
            self._saved.popitem(last=False)

    def restore(self, seq: int, key: Hashable, ctx: Any = None) -> list[int]:
        """Put what was saved under `key` into the emptied sequence `seq` (of `ctx`, else the Llama's);
        the tokens it now holds."""
        import llama_cpp

        restored = self._saved.pop(key, None)
        if restored is None:
            return []
        state, tokens = restored
        if not llama_cpp.llama_state_seq_set_data(
            ctx or self._llm.ctx, _ubyte_pointer(state), state.nbytes, seq
        ):
            return []
        return tokens.tolist()

    def set_aside(self) -> None:
        """Save the current session's context, leaving the Llama's sequence free for other work."""
        llm = self._llm
        if self._current is not None and llm.n_tokens > 0:
            self.save(0, self._current, llm.input_ids[: llm.n_tokens])
        self._current = None

    def switch_to(self, session: Hashable) -> None:
        if session is None or session == self._current:
            return
        import llama_cpp

        llm = self._llm
        if self._current is not None and llm.n_tokens > 0:
            self.save(0, self._current, llm.input_ids[: llm.n_tokens])
        if session in self._saved:  # else what the sequence holds stays: the prompts may share a prefix
            llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(llm.ctx), 0, -1, -1)
            tokens = self.restore(0, session)
            llm.n_tokens = len(tokens)
            llm.input_ids[: len(tokens)] = tokens
        self._current = session


def sequence_state(ctx: Any, seq: int, limit: int = 1 << 62) -> Any:
    """A sequence's cells as bytes (a numpy array), None if larger than `limit`."""
    import llama_cpp
    import numpy as np

    size = llama_cpp.llama_state_seq_get_size(ctx, seq)
    if size > limit:
        return None
    buffer = np.empty(size, dtype=np.uint8)
    written = llama_cpp.llama_state_seq_get_data(ctx, _ubyte_pointer(buffer), size, seq)
    return buffer[:written]


def copy_sequence(source: Any, seq: int, target: Any, target_seq: int) -> bool:
    """Sequence `seq` of context `source` copied into `target_seq` of context `target` (of the same
    model), replacing what that held. False if llama.cpp refused it (then the sequence is left empty and
    read afresh)."""
    import llama_cpp

    state = sequence_state(source, seq)
    llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(target), target_seq, -1, -1)
    state = restream(state, sequence_state(target, target_seq))
    return bool(llama_cpp.llama_state_seq_set_data(target, _ubyte_pointer(state), state.nbytes, target_seq))


STATE_HEAD = 8  # bytes before the stream count in a sequence's state: what identifies the context's layout


def restream(state: Any, empty: Any) -> Any:
    """A sequence's state made readable by another context, given that context's state of an empty
    sequence. llama.cpp writes a sequence as a header naming its context's layout and the cache's stream
    count, then a cell count per stream (0 for every stream but the sequence's own, followed by that
    stream's cells), and refuses another context's header; the cells go to the destination sequence's
    stream whichever block held them. So the one block is put first under the target's header, the
    other streams empty."""
    import numpy as np

    start = STATE_HEAD + 4
    if len(state) < start or len(empty) < start or bytes(state[:start]) == bytes(empty[:start]):
        return state
    streams = int(empty[STATE_HEAD:start].view(np.uint32)[0])
    counts = state[start : (len(state) // 4) * 4].view(np.uint32)
    held = int(state[STATE_HEAD:start].view(np.uint32)[0])
    first = next((i for i in range(min(held, len(counts))) if counts[i]), None)
    if first is None:
        return empty
    return np.concatenate([empty[:start], state[start + 4 * first :], np.zeros(4 * streams, np.uint8)])


def _ubyte_pointer(array: Any) -> Any:
    import ctypes

    return array.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))


@functools.cache
def counting_llama_class() -> type:
    # llama_cpp is imported lazily: commands that never load a model (persona import, tests) start fast.
    from llama_cpp import Llama

    class CountingLlama(Llama):
        """Llama that counts evaluated tokens (to report prefix reuse) and evaluates only new suffixes,
        and samples with DRY and XTC (which llama-cpp-python's own sampler chain lacks)."""

        evaluated = 0
        # Set by the backend before each reply: the anti-repetition settings, and the prompt's tokens
        # (llama.cpp's sampler sees only the tokens it samples; DRY must see the conversation too).
        repetition: Any = None
        history: Sequence[int] = ()
        shift = False  # set by the backend before each reply: may kept stretches move (see kv_reuse)?

        def _init_sampler(self, **kwargs: Any) -> Any:  # type: ignore[override]  # keywords only, as called
            settings = self.repetition
            simple = kwargs.get("logits_processor") is None and not kwargs.get("mirostat_mode")
            if settings is None or not simple or not (settings.dry_multiplier or settings.xtc_probability):
                return super()._init_sampler(**kwargs)
            return repetition_sampler(self, settings, self.history, **kwargs)

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            with two_sequences():
                super().__init__(*args, **kwargs)
            # Sequence 1 is a scratch one (see kv_reuse), emptied after each use; llama-cpp-python clears
            # "every sequence" past its position: only its own, here.
            remove = self._ctx.kv_cache_seq_rm
            self._ctx.kv_cache_seq_rm = lambda seq, p0, p1: remove(max(seq, 0), p0, p1)  # type: ignore[method-assign,assignment]

        def reset(self) -> None:
            import llama_cpp

            super().reset()
            llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.ctx), 0, -1, -1)

        def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any) -> Any:
            # Before llama-cpp-python matches the prompt's prefix, the kept stretches beyond it are moved
            # into place, so that a moved window reads only what is new.
            if self.shift:
                self.evaluated += line_up(self, tokens)
            return super().generate(tokens, *args, **kwargs)

        def eval(self, tokens: Sequence[int]) -> None:
            self.evaluated += len(tokens)
            super().eval(tokens)

        def held_prefix(self, tokens: Sequence[int]) -> int:
            """How many of `tokens` the context already holds, at most all but the last (which is read
            again for fresh logits); the context is cut back to them."""
            self.n_tokens = min(common_prefix(self._input_ids.tolist(), tokens), len(tokens) - 1)
            return self.n_tokens

        def eval_suffix(self, tokens: Sequence[int]) -> None:
            """Evaluate tokens, reusing the longest prefix already in the context."""
            self.eval(tokens[self.held_prefix(tokens) :])

    return CountingLlama


# Where DRY stops looking for a repeated sequence: a new line, a speaker's colon, quotes, action markup
# (SillyTavern's defaults), so a name or a formula line is not held against the reply.
DRY_BREAKERS = ("\n", ":", '"', "*")


def repetition_sampler(llama: Any, settings: Any, history: Sequence[int], **kwargs: Any) -> Any:
    """llama-cpp-python's sampler chain (penalties, grammar, top-k, typical, top-p, min-p, temperature)
    with DRY after the penalties, fed the conversation's last `dry_range` tokens first, and XTC before
    the temperature, as llama.cpp's own server orders them."""
    from llama_cpp import _internals, llama_cpp

    chain = _internals.LlamaSampler()
    chain.add_penalties(
        n_vocab=llama._n_vocab,
        penalty_last_n=llama.last_n_tokens_size,
        penalty_repeat=kwargs.get("repeat_penalty", 1.0),
        penalty_freq=kwargs.get("frequency_penalty", 0.0),
        penalty_present=kwargs.get("presence_penalty", 0.0),
    )
    if kwargs.get("grammar") is not None:
        chain.add_grammar(llama._model, kwargs["grammar"])
    if settings.dry_multiplier > 0:
        breakers = (ctypes.c_char_p * len(DRY_BREAKERS))(*(b.encode() for b in DRY_BREAKERS))
        dry = llama_cpp.llama_sampler_init_dry(
            llama._model.vocab,
            settings.dry_multiplier,
            settings.dry_base,
            settings.dry_allowed_length,
            settings.dry_range,
            breakers,
            len(DRY_BREAKERS),
        )
        for token in history[-settings.dry_range :]:
            llama_cpp.llama_sampler_accept(dry, token)
        llama_cpp.llama_sampler_chain_add(chain.sampler, dry)  # the chain owns it from here
    temp = kwargs.get("temp", 0.8)
    if temp == 0.0:
        chain.add_greedy()
        return chain
    chain.add_top_k(kwargs.get("top_k", 40))
    chain.add_typical(kwargs.get("typical_p", 1.0), 1)
    chain.add_top_p(kwargs.get("top_p", 0.95), 1)
    chain.add_min_p(kwargs.get("min_p", 0.05), 1)
    if settings.xtc_probability > 0:
        chain.add_xtc(settings.xtc_probability, settings.xtc_threshold, 1, kwargs.get("seed", llama._seed))
    chain.add_temp(temp)
    chain.add_dist(kwargs.get("seed", llama._seed))
    return chain
