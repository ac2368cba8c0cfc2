"""`./run bench repetition`: over a scripted 30-turn conversation with varied member lines, the share of
replies that repeat a long run of words (8+) of an earlier reply, without and with DRY, in the same run;
and in a cast, how many replies copy the other persona's line (the copy guard stops them)."""

from __future__ import annotations

import dataclasses

from benchmarks.common import loaded_model, scratch_store, table
from bot.config import CastConfig, Config
from bot.core.copying import SPAN_WORDS, copied_at, repeated_share

MEMBER_LINES = [
    "Hello Mira, it's pouring out there.",
    "What are you cooking tonight?",
    "I found a strange shell on the beach.",
    "Do you ever get lonely up here?",
    "Tell me about the last ship you saw.",
    "My boots are soaked, can I dry them by the fire?",
    "Who built this lighthouse?",
    "I heard a bell ringing under the water.",
    "Can you teach me to read the stars?",
    "What's that noise upstairs?",
    "I lost my compass somewhere on the rocks.",
    "Have you ever left the island?",
    "The gulls are acting strange today.",
    "Let's play cards while the storm passes.",
    "What do you keep in that locked chest?",
    "I think someone is rowing towards the shore.",
    "Your tea is the best I've had in years.",
    "Why do the sailors call this place the Needle?",
    "I'm scared of the dark, honestly.",
    "Sing me something from your childhood.",
    "The lamp flickered twice, is that normal?",
    "Where did you learn to mend nets?",
    "I saw a light on the far cliffs last night.",
    "Can I stay until the ferry comes?",
    "What happened to the last keeper?",
    "I brought you bread from the village.",
    "The fog is so thick I can't see the water.",
    "Do you believe in the drowned bell story?",
    "I have to leave at dawn, I'm sorry.",
    "Thank you for everything, Mira.",
]
REPLY_TOKENS = 80


async def bench_repetition(config: Config, quick: bool) -> int:
    from bot.core import Engine
    from bot.personas import PersonaLibrary

    lines = MEMBER_LINES[:12] if quick else MEMBER_LINES
    base = dataclasses.replace(
        config.model, n_ctx=2048, temperature=0.8, seed=11, max_reply_tokens=REPLY_TOKENS
    )
    personas = PersonaLibrary.from_config(config)
    rows: list[tuple[str, str]] = []
    shares: dict[float, float] = {}
    for dry in sorted({0.0, 0.4, config.model.dry_multiplier}):
        model = dataclasses.replace(base, dry_multiplier=dry)
        setup = dataclasses.replace(config, model=model)
        async with scratch_store() as store, loaded_model(model, config.root) as llm:
            engine = Engine(setup, store, llm, personas)
            try:
                replies = [(await engine.turn(1, "Sam", line)).text for line in lines]
            finally:
                await engine.close()
        shares[dry] = repeated_share(replies)
        name = (
            "without DRY"
            if not dry
            else f"DRY {dry:g}" + (" (the default)" if dry == config.model.dry_multiplier else "")
        )
        rows.append(
            (f"replies repeating {SPAN_WORDS}+ words of an earlier one, {name}", f"{shares[dry]:.2f}")
        )
    if shares[0.0]:
        ratio = shares[config.model.dry_multiplier] / shares[0.0]
        rows.append(("share with the default DRY / without", f"{ratio:.2f}"))

    # A cast: the members name whom they speak to, turn about; no reply may carry the other's words.
    cast = CastConfig(max_members=2, next_speaker="order", max_turns=1)
    setup = dataclasses.replace(config, model=base, cast=cast)
    said: dict[str, list[str]] = {"mira": [], "tobin": []}
    copies = 0
    async with scratch_store() as store, loaded_model(base, config.root) as llm:
        engine = Engine(setup, store, llm, personas)
        try:
            await engine.admin.cast_add(2, "tobin")
            for n, line in enumerate(lines):
                who, other = ("Tobin", "mira") if n % 2 else ("Mira", "tobin")
                result = await engine.turn(2, "Sam", f"{who}, {line[0].lower()}{line[1:]}")
                copies += copied_at(result.text, said[other]) is not None
                said[result.persona.slug].append(result.text)
        finally:
            await engine.close()
    rows.append(
        (
            f"cast replies carrying the other persona's {SPAN_WORDS}+ words (copy guard on)",
            f"{copies} of {len(lines)}",
        )
    )
    table(
        f"Repetition over {len(lines)} turns, bundled model (temperature 0.8, {REPLY_TOKENS}-token replies,"
        " n_ctx 2048)",
        rows,
        f"DRY multiplier {config.model.dry_multiplier}, base {config.model.dry_base},"
        f" allowed length {config.model.dry_allowed_length}, range {config.model.dry_range}",
    )
    return 0
