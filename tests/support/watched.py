"""The real model, watched: what each generation was asked (session, prompt) and when its request and its
tokens came, for tests that check what reached a prompt or how soon the model gave way."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
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

    def __init__(self, engine: Engine) -> None:
        self.model = engine.llm
        self.calls: list[Call] = []
        engine.llm = self  # type: ignore[assignment]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def generate(
        self, prompt: str, *, stop: Sequence[str] = (), max_tokens: int | None = None, session: object = None
    ) -> Generation:
        inner = self.model.generate(prompt, stop=stop, max_tokens=max_tokens, session=session)
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
                await stream.aclose()  # type: ignore[attr-defined]

        return Generation(chunks=chunks, stats=inner.stats)

    async def writing(self, session: object, after: int, tokens: int = 3) -> Call:
        """The first generation for `session` after the first `after` calls, once it has `tokens` tokens."""
        async with asyncio.timeout(60):
            while not (found := self._under_way(session, after, tokens)):  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # (the model's thread: no event to wait on)
        return found[0]

    def _under_way(self, session: object, after: int, tokens: int) -> list[Call]:
        return [c for c in self.calls[after:] if c.session == session and len(c.tokens) >= tokens]
