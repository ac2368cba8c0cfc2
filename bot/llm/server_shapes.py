"""The conversation sent to a model server in a shape its chat template takes. The server applies the
model's own template, which the bot does not have: Mistral's and Gemma's take only user and assistant
turns alternating from a user turn (Gemma's no system turn either) and raise on the bot's order (system,
greeting, two members in a row). The server says so as an error naming the roles or the template (HTTP
500 from llama-server, 400 from vLLM, LM Studio's "Error rendering prompt with jinja template"), or,
llama-cpp-python's server when streaming, by ending the stream it has begun (200) before its first
event, or dropping its connection there (which of the two varies from request to request). Each shape of
template.SHAPES is tried where the one before was refused; the one taken is kept for later requests.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai

from bot.llm.base import Message
from bot.llm.template import SHAPES

_REFUSED_TURNS = re.compile(r"role|alternat|template|jinja", re.IGNORECASE)


def refused_turns(exc: openai.APIError, streaming: bool) -> bool:
    """Whether a server's error says its chat template refused the messages."""
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (400, 422, 500) and bool(_REFUSED_TURNS.search(exc.message))
    # A connection dropped after the server took the request; one refused or timed out is not this.
    dropped = type(exc.__cause__).__name__ in ("ReadError", "RemoteProtocolError")
    return streaming and dropped and not isinstance(exc, openai.APITimeoutError)


class Peeked:
    """A response stream whose first event was read ahead (to see that there is one)."""

    def __init__(self, stream: Any, first: Any) -> None:
        self._stream = stream
        self._first = first

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._events()

    async def _events(self) -> AsyncIterator[Any]:
        if self._first is None:
            return
        yield self._first
        async for event in self._stream:
            yield event

    async def close(self) -> None:
        await self._stream.close()


async def create_shaped(
    create: Callable[..., Awaitable[Any]], chat: list[Message], shape: int, request: dict[str, Any]
) -> tuple[Any, int]:
    """`create(messages=..., **request)` with the messages in SHAPES[shape], or in a later shape where
    the server refuses it; the response (a stream with its first event read ahead) and the shape taken.
    The server's error, or its empty stream, is what comes back where it refuses the last shape."""
    streaming, start = bool(request.get("stream")), shape
    while True:
        try:
            response = await create(messages=SHAPES[shape](chat), **request)
            first = await _first_event(response) if streaming else None
        except openai.APIError as exc:
            if refused_turns(exc, streaming) and shape + 1 < len(SHAPES):
                shape += 1
                continue
            raise
        if not streaming:
            return response, shape
        if first is None and shape + 1 < len(SHAPES):
            await response.close()
            shape += 1
            continue
        # An empty stream in every shape (a prompt too long for llama-cpp-python's server) teaches nothing.
        return Peeked(response, first), shape if first is not None else start


async def _first_event(stream: Any) -> Any:
    """The stream's first event (None where it has none); the stream is closed where reading fails."""
    try:
        return await anext(aiter(stream), None)
    except BaseException:
        await stream.close()
        raise
