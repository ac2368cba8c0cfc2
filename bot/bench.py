"""`python -m bot bench llm|expressions|discord`: figures for the README, ratios against baselines
measured in the same run. Benchmarks print; they never assert, so they cannot flake."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bot.config import Config

STORY_LINES = (
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


class LoopLag:
    """Measures the event loop's delays: a task that asks to wake every 5 ms records its lateness."""

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def worst(self) -> float:
        return max(self.samples, default=0.0)

    @property
    def p99(self) -> float:
        ordered = sorted(self.samples)
        return ordered[int(0.99 * (len(ordered) - 1))] if ordered else 0.0

    def describe(self) -> str:
        return f"{self.worst * 1000:.1f} ms (99th percentile {self.p99 * 1000:.1f} ms)"

    async def _run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(self.period)
            self.samples.append(time.perf_counter() - start - self.period)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()


def machine() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = cpu
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def load_average() -> str:
    import os

    try:
        return f"{os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):
        return "unknown"


def table(title: str, rows: list[tuple[str, str]], settings: str = "") -> None:
    """A Markdown table with what it was measured on: machine, 1-minute load average (taken when the
    table is printed, right after the measurement) and the thread settings."""
    width = max(len(k) for k, _ in rows)
    extra = f"; {settings}" if settings else ""
    print(f"\n{title}\nmachine: {machine()}; load average (1 min): {load_average()}{extra}\n")
    print(f"| {'measure'.ljust(width)} | value |\n|{'-' * (width + 2)}|-------|")
    for key, value in rows:
        print(f"| {key.ljust(width)} | {value} |")


async def timed(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = await fn()
    return time.perf_counter() - start, result


# -- llm ----------------------------------------------------------------------------------------------


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
    from bot.app import persona_library
    from bot.emotion import EmotionJudge
    from bot.engine import Engine
    from bot.llm import LlamaBackend, sampling
    from bot.store import Store

    model_config = dataclasses.replace(
        config.model, n_ctx=4096, temperature=0.7, seed=1, max_reply_tokens=128
    )
    config = dataclasses.replace(config, model=model_config)
    with tempfile.TemporaryDirectory() as scratch:
        store = await Store.open(Path(scratch) / "bench.sqlite3")
        llm = await LlamaBackend.load(model_config, config.root)
        # The LLM judge first: its cost rides on the reply's evaluated context, which is what this
        # measures; the shipped classifier is measured after it on the same conversation.
        llm_judge = EmotionJudge(dataclasses.replace(config.emotion, judge="llm"), llm)
        engine = Engine(config, store, llm, persona_library(config), judge=llm_judge)
        persona = engine.personas.load(config.persona.default)
        channel = 1
        tokens = 0
        i = 0
        while tokens < 1500:  # a 1,500-token history
            role, text = STORY_LINES[i % len(STORY_LINES)]
            await store.add_message(
                channel,
                role=role,
                author_name="Sam" if role == "user" else persona.name,  # type: ignore[arg-type]
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
        raw = raw_model(decode, batch)
        # The old default for comparison: every core decoding.
        import os

        cores = os.cpu_count() or 1
        all_cores = raw_model(cores, cores)
        prompt = llm.render(
            [{"role": "user", "content": "Write a very long story about a lighthouse keeper."}]
        )
        prompt_tokens = llm._prompt_tokens(prompt)
        n_tokens = 96
        settings = sampling(model_config)  # the engine's own sampling: both sides generate the same tokens

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
        raw.close()
        all_cores.close()
        await llm.close()
        await store.close()

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


# -- expressions ----------------------------------------------------------------------------------------


async def bench_expressions(config: Config, quick: bool, gpu: bool) -> int:
    if gpu:
        return bench_gpu()
    from bot.app import persona_library
    from bot.expressions import ExpressionService
    from bot.store import Store
    from bot.tiny_diffusion import save_tiny_pipeline

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        settings = dataclasses.replace(
            config.expressions,
            model=str(save_tiny_pipeline(folder / "tiny")),
            resolution=128,
            steps=4,
            cache_dir=str(folder / "cache"),
            local_files_only=True,
        )
        config = dataclasses.replace(config, expressions=settings)
        store = await Store.open(folder / "bench.sqlite3")
        service = ExpressionService(config, store, persona_library(config))
        persona = service.personas.load(config.persona.default)
        labels = list(persona.labels)[: 4 if quick else len(persona.labels)]
        load_s, _ = await timed(lambda: service.render(persona, "neutral"))
        times = []
        with LoopLag() as lag:
            for label in labels[1:]:
                seconds, _ = await timed(lambda label=label: service.render(persona, label))
                times.append(seconds)
        hits = []
        for _ in range(50):
            seconds, _ = await timed(lambda: service.image_for(persona, labels[1]))
            hits.append(seconds)
        await service.close()
        await store.close()
    rows = [
        ("pipeline", "tiny random-weight SD inpainting (CPU), 128 px crop, 4 steps"),
        ("first render incl. pipeline load", f"{load_s:.2f} s"),
        ("render per expression (median)", f"{statistics.median(times):.2f} s"),
        ("cache hit (median of 50)", f"{statistics.median(hits) * 1000:.1f} ms"),
        ("cache hit / render", f"{statistics.median(hits) / statistics.median(times):.4f}"),
        ("event loop worst lag during renders", lag.describe()),
    ]
    table("bench expressions", rows)
    return 0


def bench_gpu() -> int:
    import torch
    from PIL import Image

    from bot.tiny_diffusion import full_size_sd15_inpainting

    if not torch.cuda.is_available():
        print("bench expressions --gpu needs a CUDA GPU; none is visible to torch here.", file=sys.stderr)
        return 2
    pipe = full_size_sd15_inpainting().to("cuda", torch.float16)
    pipe.set_progress_bar_config(disable=True)
    image = Image.new("RGB", (768, 1024), (120, 100, 90))
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (260, 200, 510, 480))
    rows = [
        ("device", torch.cuda.get_device_name(0)),
        ("architecture", "SD 1.5 inpainting (9-ch UNet), random weights, fp16"),
    ]
    for steps in (4, 8, 25):
        for _ in range(2):  # the first run of each size pays cuDNN autotuning
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            pipe(
                prompt="a smiling face",
                image=image,
                mask_image=mask,
                height=512,
                width=512,
                padding_mask_crop=32,
                num_inference_steps=steps,
                strength=1.0,
                guidance_scale=7.0,
            )
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        rows.append((f"512x512 crop, {steps} steps", f"{seconds:.2f} s"))
    rows.append(("peak VRAM (torch allocated)", f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"))
    table("bench expressions --gpu", rows)
    return 0


# -- discord ----------------------------------------------------------------------------------------------


async def bench_discord(config: Config, quick: bool, contended: bool = False) -> int:
    repo = Path(__file__).resolve().parent.parent
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    try:
        from bot.tiny_diffusion import save_tiny_pipeline
        from tests.discord_server import FakeDiscord, posts_to, typing_in
        from tests.harness import bot_config, running_bot
    except ImportError as exc:
        print(
            f"bench discord needs the repository's tests/ folder (local Discord server): {exc}",
            file=sys.stderr,
        )
        return 2

    server = FakeDiscord()
    await server.start()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        pipeline = await asyncio.to_thread(save_tiny_pipeline, folder / "tiny")  # the server is running
        cfg = bot_config(folder, server, pipeline)
        cfg = dataclasses.replace(
            cfg,
            discord=dataclasses.replace(
                cfg.discord,
                cooldown_seconds=0.0,
                max_pending_per_channel=4,
                enable_new_channels=True,
                default_mode="all",
            ),
        )
        channels = list(server.channels.values())
        typing_ms, reply_s = [], []
        hog = CpuHog() if contended else contextlib.nullcontext()
        async with running_bot(cfg, server):
            with hog, LoopLag() as lag:
                # Latency: one message at a time in one channel.
                for n in range(3 if quick else 6):
                    user = FakeDiscord.user("Sam", user_id=5_000_000_000_000_000_000)
                    start = time.perf_counter()
                    await server.say(channels[0], user, f"Tell me about the lamp ({n})")

                    def after(kind: Callable[[Any], bool], since: float = start) -> Callable[[Any], bool]:
                        return lambda r: kind(r) and r.at >= since

                    # The first typing event after this message was sent: discord.py repeats typing
                    # every few seconds while a reply is pending, so counting events would drift.
                    typing = min((await server.wait_for(after(typing_in(channels[0])))), key=lambda r: r.at)
                    reply = min((await server.wait_for(after(posts_to(channels[0])))), key=lambda r: r.at)
                    typing_ms.append((typing.at - start) * 1000)
                    reply_s.append(reply.at - start)
                # Throughput: four channels chatting at once.
                per_channel = 2 if quick else 4
                before = {c: len(server.sent(posts_to(c))) for c in channels}
                start = time.perf_counter()
                for n in range(per_channel):
                    for i, channel in enumerate(channels):
                        await server.say(
                            channel,
                            FakeDiscord.user(f"U{i}{n}", user_id=6_000_000_000_000_000_000 + i * 10 + n),
                            f"Hello from channel {i}, message {n}",
                        )
                    for channel in channels:
                        await server.wait_for(posts_to(channel), count=before[channel] + n + 1, limit=300)
                elapsed = time.perf_counter() - start
        await server.stop()
    total = per_channel * len(channels)
    rows = [
        ("message -> typing indicator (median)", f"{statistics.median(typing_ms):.1f} ms"),
        ("message -> typing indicator (worst)", f"{max(typing_ms):.1f} ms"),
        ("message -> reply posted (median)", f"{statistics.median(reply_s):.2f} s"),
        (
            "4 channels at once: replies per minute",
            f"{total / elapsed * 60:.1f} ({total} replies in {elapsed:.1f} s)",
        ),
        ("event loop worst lag (replies + renders)", lag.describe()),
    ]
    from bot.config import decode_threads, prompt_threads

    threads = f"threads: decode {decode_threads(cfg.model)}, prompt {prompt_threads(cfg.model)}"
    beside = ", beside a busy loop on the last core" if contended else ""
    table(
        f"bench discord (local Discord server, bundled model, tiny inpainting pipeline{beside})",
        rows,
        threads,
    )
    return 0


async def main(config: Config, args: argparse.Namespace) -> int:
    if args.what == "emotion":
        from bot.bench_emotion import bench_emotion

        return await bench_emotion(config, args)
    if args.what == "llm":
        await bench_llm(config, args.quick, args.contended)
    elif args.what == "expressions":
        return await bench_expressions(config, args.quick, args.gpu)
    else:
        return await bench_discord(config, args.quick, args.contended)
    return 0
