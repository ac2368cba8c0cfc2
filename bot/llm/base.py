"""What every backend gives the engine: the protocol, and a started generation with its figures."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

# A chat message as chat templates take it: {"role": ..., "content": ...}.
Message = dict[str, str]


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    evaluated_tokens: int = 0  # prompt tokens actually evaluated (the rest came from the cached prefix)
    generated_tokens: int = 0
    prompt_seconds: float = 0.0  # until the first token
    decode_seconds: float = 0.0  # first token to last
    finish_reason: str = ""


@dataclass
class Generation:
    """A started generation: iterate `chunks()` for text; `stats` is filled in as it runs."""

    chunks: Callable[[], AsyncIterator[str]]
    stats: GenerationStats = field(default_factory=GenerationStats)


class LLMBackend(Protocol):
    """What the engine needs from a language model."""

    name: str
    n_ctx: int
    identity: str  # what `auto` remembers its emotion-judge verdict under

    def tokenize(self, text: str) -> list[int]: ...

    def count_prompt(self, prompt: str) -> int: ...

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str: ...

    def generate(
        self,
        prompt: str,
        *,
        stop: Sequence[str] = (),
        max_tokens: int | None = None,
        session: Hashable = None,
        shift: bool = False,
        give_way: bool = False,
    ) -> Generation:
        """`session` keeps a conversation's evaluated context between calls; with `shift`, nothing that
        left its prompt since its last call was erased, so the kept context may be shifted over the gap
        instead of read again. With `give_way` (background work), the stream raises GaveWay as soon as
        another request waits for the model, also while the prompt is being read; what was read stays in
        the session's context for the next try."""
        ...

    async def classify(
        self, prompt: str, options: Sequence[str], *, session: Hashable = None
    ) -> dict[str, float]: ...

    @property
    def pending(self) -> int: ...

    async def forget_contexts(self) -> None:
        """Drop every evaluated conversation kept between calls (a member's words were erased)."""
        ...

    async def close(self) -> None: ...
