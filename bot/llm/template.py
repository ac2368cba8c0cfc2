"""The model's chat template (from the GGUF, so untrusted), rendered by llama-cpp-python's formatter in
Jinja's immutable sandbox, with the sandbox's safety verdicts remembered, and the conversation reshaped
where the template refuses its order of turns.

The sandbox decides whether an attribute may be read from its name and the type of the object it is read
from (private names, internals of functions and frames, methods that mutate lists and dicts), then checks
every read again: `loop.first` in a 1,700-message prompt cost 6 of the 8 ms a 32k render took. The verdict
for a (type, name) pair never changes, so it is decided once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from bot.llm.base import Message

_log = logging.getLogger(__name__)

OPENING_USER_TURN = "(The roleplay begins.)"  # before a greeting, for templates that start with a user


class RememberedVerdicts:
    """The sandbox's `is_safe_attribute`, decided once per (type of object, attribute name)."""

    def __init__(self, decide: Any) -> None:
        self._decide = decide
        self._verdicts: dict[tuple[type, str], bool] = {}

    def __call__(self, obj: Any, attribute: str, value: Any) -> bool:
        key = (type(obj), attribute)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._verdicts[key] = bool(self._decide(obj, attribute, value))
        return verdict


def chat_formatter(template: str, eos_token: str, bos_token: str) -> Any:
    """llama-cpp-python's Jinja formatter for the template, its sandbox's verdicts remembered."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template=template, eos_token=eos_token, bos_token=bos_token)
    environment: Any = formatter._environment.environment  # the compiled template's sandbox
    environment.is_safe_attribute = RememberedVerdicts(environment.is_safe_attribute)
    return formatter


def render_adapted(
    render: Callable[[list[Message]], str], messages: Sequence[Message], start: int = 0
) -> tuple[str, int]:
    """The messages through `render` (a chat template), reshaped where the template refuses them: many
    (Mistral's, Gemma's) take only user and assistant turns alternating from a user turn, and raise on
    anything else, and some take no system turn at all. Each shape from SHAPES[start] is tried only where
    the one before it was refused; the template's own error is raised where it refuses the last. Returns
    the text and the index of the shape it took, for the caller to start from next time."""
    for index in range(start, len(SHAPES) - 1):
        try:
            return render(SHAPES[index](messages)), index
        except Exception as exc:  # jinja's raise_exception(): "roles must alternate user/assistant/..."
            _log.debug("chat template refused the messages (%s); adapting", exc)
    return render(SHAPES[-1](messages)), len(SHAPES) - 1


def alternating(messages: Sequence[Message]) -> list[Message]:
    """A system turn first (if any), then user and assistant turns alternating from a user turn: an opening
    user turn before a leading assistant turn (the greeting), a later system turn (a note) made a user turn
    in brackets, and turns of the same role in a row (two members speaking, a note after a member's
    message) joined into one."""
    system = [dict(messages[0])] if messages and messages[0]["role"] == "system" else []
    shaped: list[Message] = []
    for message in messages[len(system) :]:
        role, text = message["role"], message["content"]
        if role == "system":
            role, text = "user", f"[{text}]"
        if not shaped and role == "assistant":
            shaped.append({"role": "user", "content": OPENING_USER_TURN})
        if shaped and shaped[-1]["role"] == role:
            shaped[-1] = {**shaped[-1], "content": f"{shaped[-1]['content']}\n\n{text}"}
        else:
            shaped.append({**message, "role": role, "content": text})
    return system + shaped


def system_in_first_user_turn(messages: list[Message]) -> list[Message]:
    """For templates with no system turn: its text opens the first user turn."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], messages[1:]
    if rest and rest[0]["role"] == "user":
        return [{**rest[0], "content": f"{system}\n\n{rest[0]['content']}"}, *rest[1:]]
    return [{"role": "user", "content": system}, *rest]


# The shapes a conversation is tried in, in order, where a chat template refuses the one before.
SHAPES: tuple[Callable[[Sequence[Message]], list[Message]], ...] = (
    list,
    alternating,
    lambda messages: system_in_first_user_turn(alternating(messages)),
)
