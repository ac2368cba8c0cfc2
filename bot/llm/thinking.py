"""A thinking model's reasoning kept out of its reply. Qwen3, DeepSeek-R1 distills, QwQ and GLM write
`<think>…</think>` before they answer (or a server hands the thinking over apart, as `reasoning_content`,
which the server backend never reads). Both backends pass every reply through `answer_only`, so nothing
of the thinking is streamed, posted, stored, judged or read back into a later prompt; a think block still
open when the reply ends (the token limit) is dropped whole."""

from __future__ import annotations

from collections.abc import AsyncIterator

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def opens_thinking(prompt: str) -> bool:
    """Whether a rendered prompt leaves the model inside a think block: some templates end the
    generation prompt with `<think>`, so the reply holds only the closing tag."""
    return prompt.rfind(THINK_OPEN) > prompt.rfind(THINK_CLOSE)


class ThinkingFilter:
    """Streamed text in, the answer out: tags split across chunks are held back until they are known."""

    def __init__(self, inside: bool = False) -> None:
        self.inside = inside
        self._held = ""
        self._answer_started = False

    def feed(self, text: str) -> str:
        buffer, out = self._held + text, []
        self._held = ""
        while buffer:
            tag = THINK_CLOSE if self.inside else THINK_OPEN
            at = buffer.find(tag)
            if at >= 0:
                if not self.inside:
                    out.append(buffer[:at])
                buffer = buffer[at + len(tag) :]
                self.inside = not self.inside
                continue
            keep = _partial_tag(buffer, tag)
            if not self.inside:
                out.append(buffer[: len(buffer) - keep])
            self._held = buffer[len(buffer) - keep :]
            break
        return self._answer("".join(out))

    def finish(self) -> str:
        """The end of the reply: held text that turned out not to be a tag is answer; an open think
        block is dropped."""
        held, self._held = self._held, ""
        return "" if self.inside else self._answer(held)

    def _answer(self, text: str) -> str:
        if not self._answer_started:  # the blank line a model leaves after its thinking
            text = text.lstrip()
            self._answer_started = bool(text)
        return text


def _partial_tag(text: str, tag: str) -> int:
    """How many characters at the end of `text` could be the start of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


async def answer_only(chunks: AsyncIterator[str], inside: bool = False) -> AsyncIterator[str]:
    """The answer of a streamed reply, chunk by chunk, without its thinking."""
    thinking = ThinkingFilter(inside)
    try:
        async for chunk in chunks:
            if text := thinking.feed(chunk):
                yield text
        if text := thinking.finish():
            yield text
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()  # leaving early must still stop the model (the stream's own clean-up)
