"""A model whose replies are given: the real backend for everything but the text it writes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from bot.llm import Generation, LLMBackend
from bot.llm.base import Message


class Scripted:
    """The real model, except that its replies are the given texts: for checking what the bot does
    with hostile or huge output that a 135M model cannot be made to write on demand."""

    def __init__(
        self,
        model: LLMBackend,
        replies: Sequence[str],
        pause: float = 0.0,
        chunk: int = 50,
        honor_stops: bool = False,
    ) -> None:
        self._model = model
        self._replies = list(replies)
        self._pause = pause
        self._chunk = chunk
        self._honor_stops = honor_stops  # end a reply at its first stop string, as a real model does
        self.name, self.n_ctx = model.name, model.n_ctx
        self.prompts: list[str] = []  # every prompt it was asked to continue, in order
        self.stops: list[tuple[str, ...]] = []  # and the stop strings that came with each

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def tokenize(self, text: str) -> list[int]:
        return self._model.tokenize(text)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        return self._model.render(messages, add_generation_prompt)

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
        text = self._replies.pop(0)
        self.prompts.append(prompt)
        self.stops.append(tuple(stop))
        if self._honor_stops:
            cuts = [text.find(s) for s in stop if s in text]
            text = text[: min(cuts)] if cuts else text

        async def chunks() -> AsyncIterator[str]:
            for i in range(0, len(text), self._chunk):
                await asyncio.sleep(self._pause)  # a slow model, for streaming
                yield text[i : i + self._chunk]

        return Generation(chunks=chunks)
