"""History -> chat messages that fit the context, rendered by the model's own chat template.

The window of history kept in the prompt only moves in steps (see PromptConfig.window_slack): while the
kept turns still fit, the prompt's start stays byte-identical from turn to turn, so the model reuses its
evaluated prefix and a warm turn reads only the new messages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from bot.config import PromptConfig
from bot.errors import InputError
from bot.llm.base import Message
from bot.personas import Persona

_log = logging.getLogger(__name__)

# Tokens kept free beyond the reply budget: the template's end-of-turn markers and rounding.
TEMPLATE_MARGIN = 16
OPENING_USER_TURN = "(The roleplay begins.)"


class TemplateTokenizer(Protocol):
    """What prompt assembly needs from a model: its tokenizer and its chat template."""

    n_ctx: int

    def tokenize(self, text: str) -> list[int]: ...

    def count_prompt(self, prompt: str) -> int: ...

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str: ...


@dataclass(frozen=True)
class Turn:
    role: Literal["user", "assistant"]
    name: str
    content: str


@dataclass(frozen=True)
class BuiltPrompt:
    text: str
    n_tokens: int
    messages: list[Message]
    window_start: int  # index into the history of the first turn kept


def lorebook_text(persona: Persona, recent: Sequence[str], budget: int, count: Callable[[str], int]) -> str:
    """Lorebook entries triggered by the recent messages, in insertion order, within a token budget."""
    scan = "\n".join(recent)
    hits = sorted((e for e in persona.lorebook if e.triggered_by(scan)), key=lambda e: e.insertion_order)
    kept: list[str] = []
    used = 0
    for entry in hits:
        cost = count(entry.content)
        if used + cost > budget:
            continue  # a smaller later entry may still fit
        kept.append(entry.content.strip())
        used += cost
    return "\n".join(kept)


def system_message(persona: Persona, user: str, lore: str) -> str:
    parts = [persona.system_text()]
    for title, text in (
        ("Character", persona.description),
        ("Personality", persona.personality),
        ("Scenario", persona.scenario),
        ("World info", lore),
        # The emotion labels are not listed here: small models copy such a list into their replies,
        # and the LLM judge's question names them anyway.
        ("Example dialogue", persona.example_dialogue.replace("<START>", "").strip()),
    ):
        if text.strip():
            parts.append(f"{title}:\n{text.strip()}")
    return persona.fill("\n\n".join(parts), user)


def history_messages(persona: Persona, turns: Sequence[Turn]) -> list[Message]:
    """Turns as chat messages: users speak as 'Name: text', consecutive same-role turns merged."""
    messages: list[Message] = []
    for turn in turns:
        content = f"{turn.name}: {turn.content}" if turn.role == "user" else turn.content
        if messages and messages[-1]["role"] == turn.role:
            messages[-1]["content"] += "\n" + content
        else:
            messages.append({"role": turn.role, "content": content})
    return messages


MIN_MESSAGE_ROOM = 32  # tokens a persona must leave free for the conversation


class PromptBuilder:
    """Builds the prompt for a persona's next reply within the model's context."""

    def __init__(self, model: TemplateTokenizer, reply_tokens: int, config: PromptConfig) -> None:
        self.model = model
        self.reply_tokens = reply_tokens
        self.config = config
        self.budget = model.n_ctx - reply_tokens - TEMPLATE_MARGIN

    def count(self, text: str) -> int:
        return len(self.model.tokenize(text))

    def render(self, messages: Sequence[Message]) -> str:
        """Render with the model's template, adapting to templates that reject some message orders."""
        try:
            return self.model.render(messages)
        except Exception as exc:  # jinja raise_exception(): e.g. "roles must alternate user/assistant"
            _log.debug("chat template refused the messages (%s); adapting", exc)
        adapted = [dict(m) for m in messages]
        # Fold trailing and non-leading system messages into the neighbouring user turn.
        for i in range(len(adapted) - 1, 0, -1):
            if adapted[i]["role"] == "system":
                text = adapted.pop(i)["content"]
                j = next((k for k in range(i - 1, -1, -1) if adapted[k]["role"] == "user"), None)
                if j is not None:
                    adapted[j]["content"] += f"\n\n[{text}]"
        # Templates that want a user turn before the first assistant turn.
        first = 1 if adapted and adapted[0]["role"] == "system" else 0
        if len(adapted) > first and adapted[first]["role"] == "assistant":
            adapted.insert(first, {"role": "user", "content": OPENING_USER_TURN})
        try:
            return self.model.render(adapted)
        except Exception:
            # Some templates have no system role at all: prepend it to the first user turn.
            if adapted and adapted[0]["role"] == "system":
                system = adapted.pop(0)["content"]
                adapted[0]["content"] = f"{system}\n\n{adapted[0]['content']}"
            return self.model.render(adapted)

    def check_persona(self, persona: Persona) -> int:
        """Tokens left for the conversation; InputError naming the persona when it alone fills the context."""
        fixed = self.count(system_message(persona, "User", "")) + self.count(persona.greeting)
        room = self.budget - fixed
        if room < MIN_MESSAGE_ROOM:
            raise InputError(
                f"persona '{persona.slug}' alone needs {fixed} tokens, leaving no room for messages in the"
                f" {self.budget}-token prompt budget; shorten the persona or raise model.n_ctx"
            )
        return room

    def check_message(self, persona: Persona, text: str) -> None:
        """Refuse, before anything is stored, a message that could never fit in the context."""
        if not text.strip():
            raise InputError("the message is empty")
        room = self.check_persona(persona)
        size = self.count(text)
        if size > room:
            raise InputError(
                f"the message is {size} tokens long, more than the {max(room, 0)} the context has room for"
            )

    def build(self, persona: Persona, turns: Sequence[Turn], user: str, window_start: int = 0) -> BuiltPrompt:
        """The prompt for the persona's next reply; keeps history from window_start when it still fits."""
        recent = [t.content for t in turns[-self.config.lorebook_scan_depth :]]
        lore = lorebook_text(persona, recent, self.config.lorebook_token_budget, self.count)
        head: list[Message] = [{"role": "system", "content": system_message(persona, user, lore)}]
        if persona.greeting.strip():
            # The greeting opens the scene; it stays even after older turns leave the window.
            head.append({"role": "assistant", "content": persona.fill(persona.greeting, user)})
        tail: list[Message] = []
        if persona.post_history_text():
            tail.append({"role": "system", "content": persona.fill(persona.post_history_text(), user)})

        def attempt(start: int) -> tuple[str, int]:
            text = self.render(head + history_messages(persona, turns[start:]) + tail)
            # Counted as the model evaluates it (template markers as special tokens): counted as plain
            # text, the markers cost 1.3-1.7 times as much and the window filled well short of the budget.
            return text, self.model.count_prompt(text)

        start = min(max(window_start, 0), max(len(turns) - 1, 0))
        text, n_tokens = attempt(start)
        if n_tokens > self.budget:
            # Refill to (1 - slack) of the budget: the new window then holds for several turns.
            target = int(self.budget * (1.0 - self.config.window_slack))
            start = self._first_fitting(attempt, start, len(turns) - 1, target)
            text, n_tokens = attempt(start)
            if n_tokens > self.budget:
                raise InputError(
                    f"the prompt needs {n_tokens} tokens but the context allows {self.budget};"
                    " shorten the persona or the message, or raise model.n_ctx"
                )
        return BuiltPrompt(text, n_tokens, head + history_messages(persona, turns[start:]) + tail, start)

    @staticmethod
    def _first_fitting(attempt: Callable[[int], tuple[str, int]], low: int, high: int, target: int) -> int:
        """Earliest window start in [low, high] whose rendered prompt fits in `target` tokens (binary
        search: fewer turns never need more tokens). `high` when even the last turn alone is too big."""
        while low < high:
            middle = (low + high) // 2
            if attempt(middle)[1] <= target:
                high = middle
            else:
                low = middle + 1
        return low
