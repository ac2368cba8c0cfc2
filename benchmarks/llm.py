"""`./run bench llm`: the engine's turn on the bundled model, warm and cold, against raw llama-cpp-python."""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import sys
import time
from typing import Any, Literal

from benchmarks.common import LoopLag, loaded_model, scratch_store, table
from bot.config import Config

STORY_LINES: tuple[tuple[Literal["user", "assistant"], str], ...] = (
    ("user", "The wind is howling against the shutters. Do you think the lamp will hold tonight?"),
    (
        "assistant",
        "*Mira checks the wick and trims it.* It has held through worse. Tell me about your voyage.",
    ),
    ("user", "We sailed from the southern isles, past the reef where the old wreck lies half under water."),
    ("assistant", "*Her eyes light up.* The Marguerite? Sailors say her bell still rings at low tide."),
    ("user", "I heard it myself. Three rings, then silence. The crew would not speak for an hour after."),
    ("assistant", "*She pours two cups of tea.* Then you have a story worth trading. Drink, and go on."),
)


class CpuHog:
    """A competing program: a busy loop pinned to the last core, bounded in time (it ends by itself
    even if the benchmark is killed), as a browser tab or a game would take a core."""

    SECONDS = 900

    def __enter__(self) -> CpuHog:
        import os
        import subprocess

        core = (os.cpu_count() or 1) - 1
        code = (
            "import os, time\n"
            f"os.sched_setaffinity(0, {{{core}}}) if hasattr(os, 'sched_setaffinity') else None\n"
            f"end = time.monotonic() + {self.SECONDS}\n"
            "while time.monotonic() < end: pass\n"
        )
        self.process = subprocess.Popen([sys.executable, "-c", code])
        self.core = core
        return self

    def __exit__(self, *_: object) -> None:
        self.process.kill()
        self.process.wait()


@dataclasses.dataclass
class LlmRound:
    warm: list[Any]  # TurnResult
    lag: LoopLag
    engine_rates: list[float]
    raw_rates: list[float]
    all_core_rates: list[float]  # raw llama-cpp-python decoding on every core (the old default)
    counts: set[int]


async def bench_llm(config: Config, quick: bool, contended: bool = False) -> None:
    from bot.core import Engine
    from bot.emotion import EmotionJudge
    from bot.llm import sampling
    from bot.personas import PersonaLibrary

    model_config = dataclasses.replace(
        config.model, n_ctx=4096, temperature=0.7, seed=1, max_reply_tokens=128
    )
    config = dataclasses.replace(config, model=model_config)
    async with scratch_store() as store, loaded_model(model_config, config.root) as llm:
        # The LLM judge first: its cost rides on the reply's evaluated context, which is what this
        # measures; the shipped classifier is measured after it on the same conversation.
        llm_judge = EmotionJudge(dataclasses.replace(config.emotion, judge="llm"), llm)
        engine = Engine(config, store, llm, PersonaLibrary.from_config(config), judge=llm_judge)
        persona = engine.personas.load(config.persona.default)
        channel = 1
        tokens = 0
        i = 0
        while tokens < 1500:  # a 1,500-token history
            role, text = STORY_LINES[i % len(STORY_LINES)]
            await store.add_message(
                channel,
                role=role,
                author_name="Sam" if role == "user" else persona.name,
                content=f"{text} ({i})",
                persona=persona.slug,
            )
            tokens += len(llm.tokenize(text)) + 6
            i += 1
        cold = await engine.turn(channel, "Sam", "What happened next, Mira?")

        # Decode speed: the engine's worker vs llama-cpp-python called directly, same prompt, same
        # length, same threads.
        from llama_cpp import Llama

        def raw_model(decode_threads: int, prompt_threads: int) -> Any:
            return Llama(
                model_path=str(llm.path),
                n_ctx=4096,
                n_batch=model_config.n_batch,
                verbose=False,
                n_threads=decode_threads,
                n_threads_batch=prompt_threads,
            )

        decode, batch = llm.threads
        import os

        cores = os.cpu_count() or 1
        raws = contextlib.ExitStack()  # closed whatever happens below
        raw = raws.enter_context(contextlib.closing(raw_model(decode, batch)))
        # The old default for comparison: every core decoding.
        all_cores = raws.enter_context(contextlib.closing(raw_model(cores, cores)))
        with raws:
            prompt = llm.render(
                [{"role": "user", "content": "Write a very long story about a lighthouse keeper."}]
            )
            prompt_tokens = llm._prompt_tokens(prompt)
            n_tokens = 96
            # The engine's own sampling: both sides generate the same tokens.
            settings = sampling(model_config)

            def raw_rate(model: Any = raw) -> tuple[float, int]:
                first, count = None, 0
                for _chunk in model.create_completion(
                    prompt_tokens, max_tokens=n_tokens, stream=True, **settings
                ):
                    count += 1
                    first = first or time.perf_counter()
                rate = (count - 1) / (time.perf_counter() - (first or 0.0))
                model.reset()
                return rate, count

            async def engine_rate() -> tuple[float, int]:
                generation = llm.generate(prompt, max_tokens=n_tokens, session="decode")
                async for _chunk in generation.chunks():
                    pass
                await llm.forget()
                stats = generation.stats
                return (stats.generated_tokens - 1) / stats.decode_seconds, stats.generated_tokens

            async def measure(turns: int, tag: str) -> LlmRound:
                warm = []
                with LoopLag() as lag:
                    for n in range(turns):
                        warm.append(await engine.turn(channel, "Sam", f"And then? ({tag} {n})"))
                result = LlmRound(warm, lag, [], [], [], set())
                for round_ in range(2 if quick else 4):
                    for side in ("raw", "engine") if round_ % 2 == 0 else ("engine", "raw"):  # alternate
                        rate, count = raw_rate() if side == "raw" else await engine_rate()
                        (result.raw_rates if side == "raw" else result.engine_rates).append(rate)
                        result.counts.add(count)
                    result.all_core_rates.append(raw_rate(all_cores)[0])
                return result

            turns = 2 if quick else 5
            quiet = await measure(turns, "quiet")
            engine.judge = EmotionJudge(dataclasses.replace(config.emotion, judge="classifier"), llm)
            with LoopLag():
                by_classifier = [await engine.turn(channel, "Sam", f"Go on. ({n})") for n in range(turns)]
            engine.judge = llm_judge
            busy: LlmRound | None = None
            if contended:
                with CpuHog():
                    busy = await measure(turns, "contended")

    def median(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    def emotion_share(turns: list[Any]) -> str:
        emotion = median([t.emotion_seconds for t in turns])
        reply = median([t.reply_seconds for t in turns])
        return f"{emotion / reply:.4f} ({emotion * 1000:.1f} ms / {reply * 1000:.0f} ms)"

    warm = quiet.warm
    rows = [
        ("prompt: persona + 1,500-token history", f"{cold.stats.prompt_tokens} tokens"),
        ("cold turn: latency", f"{cold.reply_seconds + cold.emotion_seconds:.2f} s"),
        ("cold turn: prompt tokens evaluated", f"{cold.stats.evaluated_tokens}"),
        (
            "warm turn: latency (median)",
            f"{median([t.reply_seconds + t.emotion_seconds for t in warm]):.2f} s",
        ),
        (
            "warm turn: prompt tokens evaluated (median)",
            f"{median([t.stats.evaluated_tokens for t in warm]):.0f}",
        ),
        (
            "warm turn: time to first token (median)",
            f"{median([t.stats.prompt_seconds for t in warm]) * 1000:.0f} ms",
        ),
        ("emotion step / reply time, LLM judge (median)", emotion_share(warm)),
        ("emotion step / reply time, shipped classifier (median)", emotion_share(by_classifier)),
        ("tokens generated per decode run", ", ".join(map(str, sorted(quiet.counts)))),
        ("decode speed, raw llama-cpp-python", f"{median(quiet.raw_rates):.1f} tokens/s"),
        ("decode speed, engine worker", f"{median(quiet.engine_rates):.1f} tokens/s"),
        ("engine / raw decode ratio", f"{median(quiet.engine_rates) / median(quiet.raw_rates):.3f}"),
        ("event loop worst lag during replies", quiet.lag.describe()),
    ]
    threads = f"threads: decode {decode}, prompt {batch}"
    table(f"bench llm: {llm.name}, n_ctx 4096", rows, threads)
    if busy is not None:
        engine_ratio = median(busy.engine_rates) / median(quiet.engine_rates)
        table(
            "bench llm --contended: the same beside a busy loop on the last core",
            [
                (
                    "decode speed, engine: quiet -> contended",
                    f"{median(quiet.engine_rates):.1f} -> {median(busy.engine_rates):.1f} tokens/s"
                    f" (ratio {engine_ratio:.2f})",
                ),
                (
                    "decode speed, raw llama-cpp-python: quiet -> contended",
                    f"{median(quiet.raw_rates):.1f} -> {median(busy.raw_rates):.1f} tokens/s"
                    f" (ratio {median(busy.raw_rates) / median(quiet.raw_rates):.2f})",
                ),
                (
                    f"decode speed, all {cores} cores decoding: quiet -> contended",
                    f"{median(quiet.all_core_rates):.1f} -> {median(busy.all_core_rates):.1f} tokens/s"
                    f" (ratio {median(busy.all_core_rates) / median(quiet.all_core_rates):.2f})",
                ),
                (
                    "warm turn time to first token: quiet -> contended (median)",
                    f"{median([t.stats.prompt_seconds for t in quiet.warm]) * 1000:.0f} ->"
                    f" {median([t.stats.prompt_seconds for t in busy.warm]) * 1000:.0f} ms",
                ),
                ("event loop worst lag, quiet", quiet.lag.describe()),
                ("event loop worst lag, contended", busy.lag.describe()),
            ],
            threads,
        )
