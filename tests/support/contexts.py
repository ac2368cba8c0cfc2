"""The real model's tokenizer and template over a context of any size, and what a warm turn reads: for
checking prompt windows at sizes the bundled model is never loaded with (prompts are only built and
tokenized, never evaluated)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from bot.llm import LlamaBackend
from bot.llm.base import Message
from bot.llm.kv_reuse import common_prefix, reusable, to_read


@dataclasses.dataclass
class SizedContext:
    model: LlamaBackend
    n_ctx: int = 768

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize(text)

    def count_prompt(self, prompt: str) -> int:
        return self.model.count_prompt(prompt)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        return self.model.render(messages, add_generation_prompt)


def read_tokens(model: LlamaBackend, before: str, reply: str, after: str, shift: bool = True) -> int:
    """Tokens the model evaluates for `after` when its context holds `before` and the reply it wrote: what
    its kept stretches do not hold (with `shift`, as the backend moves them; else what follows the common
    prefix)."""
    held = model._prompt_tokens(before) + model.tokenize(reply)
    new = model._prompt_tokens(after)
    if not shift:
        return len(new) - common_prefix(held, new)
    return to_read(new, reusable(held, new))
