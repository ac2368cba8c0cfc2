"""History -> chat messages that fit the context, rendered by the model's own chat template.

The window of history kept in the prompt only moves in steps (see PromptConfig.window_slack): while the
kept turns still fit, the prompt's start stays byte-identical from turn to turn, so the model reuses its
evaluated prefix and a warm turn reads only the new messages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from bot.config import MemoryConfig, PromptConfig
from bot.errors import InputError
from bot.llm.base import Message
from bot.memory import PromptMemory, RecalledLine
from bot.personas import Persona

# Tokens kept free beyond the reply budget: the template's end-of-turn markers and rounding.
TEMPLATE_MARGIN = 16
RECALL_HEADING = "Earlier lines of this conversation that may matter now:"
RECALL_WRAP = 8  # the recall message's own role markers and heading, beyond its lines
MEMORY_SHARE = 8  # each memory part takes at most 1/8 of the prompt budget, whatever the config says


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
    recalled: list[RecalledLine] = field(default_factory=list)  # the earlier lines the prompt holds


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


def memory_text(pins: Sequence[str], summary: str) -> str:
    """The permanent head's memory: pinned facts and the summary of what left the window. Added after
    the persona's macros are filled: members' words are never read as {{macros}}."""
    parts = []
    if pins:
        parts.append("Facts to remember:\n" + "\n".join(f"- {pin}" for pin in pins))
    if summary.strip():
        parts.append(f"Story so far:\n{summary.strip()}")
    return "\n\n".join(parts)


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
TURN_MARKUP = 5  # tokens a chat template adds around a message, about: only the window search's first guess


def _first_under(total: int, costs: Sequence[int], target: int) -> int:
    """How many of the leading `costs` to drop so that `total` falls to `target` or below (all of them
    but the last at most)."""
    dropped = 0
    while dropped < len(costs) - 1 and total > target:
        total -= costs[dropped]
        dropped += 1
    return dropped


class PromptBuilder:
    """Builds the prompt for a persona's next reply within the model's context."""

    def __init__(
        self,
        model: TemplateTokenizer,
        reply_tokens: int,
        config: PromptConfig,
        memory: MemoryConfig | None = None,
    ) -> None:
        self.model = model
        self.reply_tokens = reply_tokens
        self.config = config
        self.budget = model.n_ctx - reply_tokens - TEMPLATE_MARGIN
        memory = memory or MemoryConfig(enabled=False)
        cap = self.budget // MEMORY_SHARE if memory.enabled else 0
        self.summary_tokens = min(memory.summary_tokens, cap)
        self.pinned_tokens = min(memory.pinned_tokens, cap)
        self.recall_tokens = min(memory.recall_tokens, cap)
        self.recall_lines = memory.recall_lines if memory.enabled else 0
        self.member_tokens = min(memory.member_tokens, cap) if memory.members else 0

    def count(self, text: str) -> int:
        return len(self.model.tokenize(text))

    def check_persona(self, persona: Persona) -> int:
        """Tokens left for the conversation; InputError naming the persona when it alone fills the context."""
        fixed = self.count(system_message(persona, "User", "")) + self.count(persona.greeting)
        room = self.budget - fixed - (self.recall_tokens + RECALL_WRAP if self.recall_tokens else 0)
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

    def build(
        self,
        persona: Persona,
        turns: Sequence[Turn],
        user: str,
        window_start: int = 0,
        memory: PromptMemory | None = None,
        ids: Sequence[int] = (),
        refit: bool = False,
    ) -> BuiltPrompt:
        """The prompt for the persona's next reply; keeps history from window_start when it still fits
        (with `refit`, the window is placed afresh from there, as if it had not). `memory` adds pinned
        facts and the summary to the head and recalled lines after the history (those of them inside the
        window, by `ids`, the turns' stored ids, are left out)."""
        memory = memory or PromptMemory()
        recent = [t.content for t in turns[-self.config.lorebook_scan_depth :]]
        lore = lorebook_text(persona, recent, self.config.lorebook_token_budget, self.count)
        system = system_message(persona, user, lore)
        remembered = memory_text(
            self._fit(memory.pins, self.pinned_tokens), self._trim(memory.summary, self.summary_tokens)
        )
        if remembered:
            system += "\n\n" + remembered
        head: list[Message] = [{"role": "system", "content": system}]
        if persona.greeting.strip():
            # The greeting opens the scene; it stays even after older turns leave the window.
            head.append({"role": "assistant", "content": persona.fill(persona.greeting, user)})
        tail: list[Message] = []
        if persona.post_history_text():
            tail.append({"role": "system", "content": persona.fill(persona.post_history_text(), user)})
        # Recalled lines vary every turn: the window is fitted as if they took their whole reserve, so
        # that how many were found never moves the window (and never breaks the kept prefix).
        reserve = self.recall_tokens + RECALL_WRAP if self.recall_tokens else 0
        reserve += self.member_tokens
        member = self._trim(memory.member, self.member_tokens) if memory.member and self.member_tokens else ""
        member_cost = self.count(member) if member else 0

        def recall_at(start: int) -> tuple[list[RecalledLine], int]:
            first = ids[start] if start < len(ids) else None
            outside = [line for line in memory.recalled if first is None or line.id < first]
            kept: list[RecalledLine] = []
            used = 0
            for line in outside[: self.recall_lines * 4]:
                cost = self.count(line.text) + 1
                if len(kept) < self.recall_lines and used + cost <= self.recall_tokens:
                    kept.append(line)
                    used += cost
            kept.sort(key=lambda line: line.id)  # as they were said
            return kept, used + (RECALL_WRAP if kept else 0)

        def messages_at(start: int, recalled: list[RecalledLine]) -> list[Message]:
            middle = history_messages(persona, turns[start:])
            parts = [member] if member else []
            if recalled:
                lines = "\n".join(line.text for line in recalled)
                parts.append(f"{RECALL_HEADING}\n{lines}")
            if parts:
                middle.append({"role": "system", "content": "\n\n".join(parts)})
            return head + middle + tail

        counts: dict[str, int] = {}  # the chosen attempt's text is counted once, not again at the end

        def counted(text: str) -> int:
            if text not in counts:
                counts[text] = self.model.count_prompt(text)
            return counts[text]

        def attempt(start: int) -> tuple[str, int]:
            recalled, cost = recall_at(start)
            text = self.model.render(messages_at(start, recalled))
            # Counted as the model evaluates it (template markers as special tokens): counted as plain
            # text, the markers cost 1.3-1.7 times as much and the window filled well short of the budget.
            return text, counted(text) - cost - member_cost + reserve

        start = min(max(window_start, 0), max(len(turns) - 1, 0))
        text, n_fit = attempt(start)
        if refit or n_fit > self.budget:
            # Refill to (1 - slack) of the budget: the new window then holds for several turns.
            target = int(self.budget * (1.0 - self.config.window_slack))
            costs = [self.count(f"{t.name}: {t.content}") + TURN_MARKUP for t in turns[start:]]
            guess = start + _first_under(n_fit, costs, target)
            start = self._first_fitting(attempt, start, len(turns) - 1, target, guess)
            text, n_fit = attempt(start)
        recalled, _ = recall_at(start)
        if n_fit > self.budget and recalled:
            recalled = []  # the last turn alone is that long: the recalled lines give way first
            text = self.model.render(messages_at(start, recalled))
        n_tokens = counted(text)
        if n_tokens > self.budget:
            raise InputError(
                f"the prompt needs {n_tokens} tokens but the context allows {self.budget};"
                " shorten the persona or the message, or raise model.n_ctx"
            )
        return BuiltPrompt(text, n_tokens, messages_at(start, recalled), start, recalled)

    def _fit(self, texts: Sequence[str], budget: int) -> list[str]:
        """The first texts that fit in `budget` tokens together (one that does not fit is skipped)."""
        kept, used = [], 0
        for text in texts:
            cost = self.count(text) + 2
            if used + cost <= budget:
                kept.append(text)
                used += cost
        return kept

    def _trim(self, text: str, budget: int) -> str:
        """`text` cut at a word so that it fits in `budget` tokens."""
        if not text or self.count(text) <= budget:
            return text if budget > 0 else ""
        words = text.split()
        low, high = 0, len(words)
        while low < high:
            middle = (low + high + 1) // 2
            if self.count(" ".join(words[:middle]) + " …") <= budget:
                low = middle
            else:
                high = middle - 1
        return " ".join(words[:low]) + " …" if low else ""

    @staticmethod
    def _first_fitting(
        attempt: Callable[[int], tuple[str, int]], low: int, high: int, target: int, guess: int | None = None
    ) -> int:
        """Earliest window start in [low, high] whose rendered prompt fits in `target` tokens (fewer turns
        never need more tokens); `high` when even the last turn alone is too big. Each step renders and
        counts the whole prompt, so the search starts at `guess` (from each turn's own count) and widens
        from there, a few renders instead of one per halving; then halves what is left."""
        if guess is not None and low < guess <= high:
            fits = attempt(guess)[1] <= target
            step = 1
            while True:  # widen away from the guess until the answer is bracketed
                probe = guess - step if fits else guess + step
                if probe <= low or probe >= high:
                    break
                if (attempt(probe)[1] <= target) != fits:
                    break
                step *= 2
            if fits:
                low, high = max(low, guess - step), guess
            else:
                low, high = min(guess + 1, high), min(high, guess + step)
        while low < high:
            middle = (low + high) // 2
            if attempt(middle)[1] <= target:
                high = middle
            else:
                low = middle + 1
        return low
