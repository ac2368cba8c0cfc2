"""What the embedded model keeps between calls: the evaluated contexts of recent sessions (channels), and
a Llama that counts the tokens it evaluates and re-reads only what changed."""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any


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
        """Llama that counts evaluated tokens (to report prefix reuse) and evaluates only new suffixes."""

        evaluated = 0

        def eval(self, tokens: Sequence[int]) -> None:
            self.evaluated += len(tokens)
            super().eval(tokens)

        def eval_suffix(self, tokens: Sequence[int]) -> None:
            """Evaluate tokens, reusing the longest prefix already in the context."""
            common = 0
            for a, b in zip(self._input_ids.tolist(), tokens, strict=False):
                if a != b:
                    break
                common += 1
            common = min(common, len(tokens) - 1)  # the last token is re-evaluated for fresh logits
            self.n_tokens = common
            self.eval(tokens[common:])

    return CountingLlama
