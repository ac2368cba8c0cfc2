"""The real model, watched: what each generation was asked (session, prompt) and when its request and its
tokens came, for tests that check what reached a prompt or how soon the model gave way."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.core import Engine
from bot.llm import Generation


@dataclass
class Call:
    session: object
    prompt: str
    asked: float = 0.0  # when the model was asked (the request joined its queue)
    tokens: list[float] = field(default_factory=list)  # when each piece of text came


class Timed:
    """The real model; each generation's session, prompt, request time and token times are kept."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.calls: list[Call] = []

    @classmethod
    def watching(cls, engine: Engine) -> Timed:
        """The engine's model, watched from now on."""
        timed = cls(engine.llm)
        engine.llm = timed
        return timed

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def generate(
        self,
        prompt: str,
        *,
        stop: Sequence[str] = (),
        max_tokens: int | None = None,
        session: object = None,
        shift: bool = False,
        give_way: bool = False,
    ) -> Generation:
        inner = self.model.generate(
            prompt, stop=stop, max_tokens=max_tokens, session=session, shift=shift, give_way=give_way
        )
        call = Call(session, prompt)
        self.calls.append(call)

        async def chunks() -> AsyncIterator[str]:
            call.asked = time.monotonic()
            stream = inner.chunks()
            try:
                async for chunk in stream:
                    call.tokens.append(time.monotonic())
                    yield chunk
            finally:
                await stream.aclose()

        return Generation(chunks=chunks, stats=inner.stats)

    async def writing(self, session: object, after: int, tokens: int = 3) -> Call:
        """The first generation for `session` after the first `after` calls, once it has `tokens` tokens."""
        async with asyncio.timeout(60):
            while not (found := self.under_way(session, after, tokens)):  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # (the model's thread: no event to wait on)
        return found[0]

    def under_way(self, session: object, after: int, tokens: int) -> list[Call]:
        """The generations for `session` after the first `after` calls that have `tokens` tokens."""
        return [c for c in self.calls[after:] if c.session == session and len(c.tokens) >= tokens]

    def first_token_wait(self, session: object) -> float:
        """Seconds from the latest request for `session` to its first token."""
        call = next(c for c in reversed(self.calls) if c.session == session)
        return call.tokens[0] - call.asked


async def until(condition: Callable[[], bool], seconds: float = 60.0) -> None:
    """Wait, yielding to the loop, until `condition` holds (the model's worker moves on its own thread,
    which sets no asyncio event)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition never held"
        await asyncio.sleep(0.005)
