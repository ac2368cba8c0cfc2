"""Turns on a sized context until its window moves, as the window-move test and `bench window` run them:
what each warm turn and the move read of the model's own tokens, and how long each prompt took to build."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

from bot.core.engine import Engine
from bot.llm import LlamaBackend
from bot.personas import Persona

from .contexts import read_tokens

NEWS = (
    "{n}. The ferry from the north island came in late tonight, its lamps swinging in the fog, and the"
    " harbour master counted the crates twice before he let anyone near the warehouse; two were missing,"
    " and the ropes that had held them were cut clean, as if someone had planned it for weeks."
)
ANSWER = (
    "*Mira sets the lantern down on the crate and frowns at the cut rope.* {n}. Clean cuts mean a sharp"
    " blade and a steady hand. Whoever did this knew the night watch changes at the second bell."
)


@dataclass
class Moved:
    warm: list[int] = field(default_factory=list)  # tokens each warm turn read
    moved: int = 0  # tokens the move read, its kept stretches shifted
    prefix_only: int = 0  # what the move would read with the common prefix alone
    prompt_tokens: int = 0  # the moved prompt's size
    summary_shown: bool = False  # the move showed the newer summary
    build_seconds: list[float] = field(default_factory=list)  # each turn's prompt build

    @property
    def warm_median(self) -> float:
        return statistics.median(self.warm)


async def until_moved(
    engine: Engine, model: LlamaBackend, persona: Persona, channel: int, max_turns: int = 200
) -> Moved | None:
    """Exchanges (a reply, then a member's long line) until the window moves; None if it never does."""
    store = engine.store
    history = await engine.scene.history(channel, [persona])
    before = await engine.composer.prompt(channel, persona, [persona], history, "Ann")
    first = engine.scene.windows[(channel, persona.slug)].first_id
    summary = await store.summary(channel, persona.slug)
    seen = Moved()
    for turn in range(max_turns):
        reply = ANSWER.format(n=turn)
        name, slug, news = persona.name, persona.slug, NEWS.format(n=turn)
        await store.add_message(channel, role="assistant", author_name=name, content=reply, persona=slug)
        await store.add_message(channel, role="user", author_name="Ann", content=news, persona=slug)
        history = await engine.scene.history(channel, [persona])
        started = time.perf_counter()
        built = await engine.composer.prompt(channel, persona, [persona], history, "Ann")
        seen.build_seconds.append(time.perf_counter() - started)
        read = read_tokens(model, before.text, reply, built.text)
        if engine.scene.windows[(channel, persona.slug)].first_id == first:
            seen.warm.append(read)
            before = built
            continue
        seen.moved = read
        seen.prefix_only = read_tokens(model, before.text, reply, built.text, shift=False)
        seen.prompt_tokens = built.n_tokens
        seen.summary_shown = summary is not None and summary.text.strip()[:40] in built.messages[0]["content"]
        return seen
    return None
