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
    does not re-read their histories. A session's state is saved only when the worker moves to another
    session, into preallocated numpy buffers by llama.cpp itself (the GIL is released during the copy,
    so the event loop keeps running). Used from the model worker thread only."""

    def __init__(self, llama: Any, capacity_bytes: int) -> None:
        self._llm = llama
        self._capacity = capacity_bytes
        self._current: Hashable = None
        self._saved: OrderedDict[Hashable, tuple[Any, Any]] = OrderedDict()  # session -> (state, tokens)

    def clear(self) -> None:
        """Forget every saved context; the current one is the model's own to reset."""
        self._saved.clear()
        self._current = None

    def switch_to(self, session: Hashable) -> None:
        if session is None or session == self._current:
            return
        import llama_cpp
        import numpy as np

        llm = self._llm
        if self._current is not None and llm.n_tokens > 0 and self._capacity > 0:
            size = llama_cpp.llama_state_get_size(llm.ctx)
            if size <= self._capacity:
                buffer = np.empty(size, dtype=np.uint8)
                written = llama_cpp.llama_state_get_data(llm.ctx, _ubyte_pointer(buffer), size)
                self._saved[self._current] = (buffer[:written], llm.input_ids[: llm.n_tokens].copy())
                self._saved.move_to_end(self._current)
                while sum(state.nbytes for state, _ in self._saved.values()) > self._capacity:
                    self._saved.popitem(last=False)
        restored = self._saved.pop(session, None)
        if restored is not None:
            state, tokens = restored
            llama_cpp.llama_state_set_data(llm.ctx, _ubyte_pointer(state), state.nbytes)
            llm.n_tokens = len(tokens)
            llm.input_ids[: len(tokens)] = tokens
        self._current = session


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
        chain.add_xtc(settings.xtc_probability, settings.xtc_threshold, 1, llama._seed)
    chain.add_temp(temp)
    chain.add_dist(llama._seed)
    return chain
