"""`./run bench gpu`: the LLM and the inpainting pipeline resident together on one CUDA GPU, through the
engine's own code (the configured GGUF with every layer offloaded, and the SD 1.5 inpainting architecture
with random weights saved and loaded like a real model). Prints decode speed against the same model on
the CPU in the same run, turn and render latency alone and at the same time, and device-wide VRAM."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import loaded_model, table
from benchmarks.server import seed_history
from bot.config import Config

DECODE_TOKENS = 128
PROMPT = "Write a very long story about a lighthouse keeper."


class VramSampler:
    """Device-wide GPU memory in use (llama.cpp allocates outside torch, so torch's counters miss it),
    sampled every 20 ms on a thread; `peak` is the most seen."""

    def __init__(self) -> None:
        import torch

        self._torch = torch
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def used(self) -> int:
        free, total = self._torch.cuda.mem_get_info()
        return int(total - free)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.used())

    def __enter__(self) -> VramSampler:
        self.peak = self.used()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


async def decode_rate(llm: Any) -> float:
    prompt = llm.render([{"role": "user", "content": PROMPT}])
    rates = []
    for n in range(3):
        generation = llm.generate(prompt, max_tokens=DECODE_TOKENS, session=f"decode-{n}")
        async for _ in generation.chunks():
            pass
        stats = generation.stats
        rates.append((stats.generated_tokens - 1) / max(stats.decode_seconds, 1e-9))
    return statistics.median(rates)


@contextlib.contextmanager
def steps(service: Any, n: int) -> Iterator[None]:
    """Render with `n` denoising steps (the step count is part of the render's cache key)."""
    before = service.settings
    service.settings = service.renderer.settings = dataclasses.replace(before, steps=n)
    try:
        yield
    finally:
        service.settings = service.renderer.settings = before


async def bench_resident(config: Config, quick: bool) -> int:
    import torch

    if not torch.cuda.is_available():
        print("bench gpu needs a CUDA GPU; none is visible to torch here.", file=sys.stderr)
        return 2
    from bot.core.app import open_engine
    from bot.expressions import ExpressionService
    from tests.support.tiny_diffusion import save_full_size_sd15_inpainting

    model = dataclasses.replace(config.model, n_ctx=4096, temperature=0.7, seed=1, max_reply_tokens=96)
    rows: list[tuple[str, str]] = [("device", torch.cuda.get_device_name(0))]

    # Baseline in the same run: the same GGUF decoding on the CPU.
    async with loaded_model(dataclasses.replace(model, n_gpu_layers=0), config.root) as cpu_llm:
        rows.append(("LLM", f"{cpu_llm.path.name}, n_ctx 4096"))
        cpu_rate = await decode_rate(cpu_llm)

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        pipeline = await asyncio.to_thread(save_full_size_sd15_inpainting, folder / "sd15-inpaint")
        cfg = dataclasses.replace(
            config,
            model=dataclasses.replace(model, n_gpu_layers=-1),
            expressions=dataclasses.replace(
                config.expressions,
                enabled=True,
                model=str(pipeline),
                device="cuda",
                dtype="float16",
                resolution=512,
                local_files_only=True,
                cache_dir=str(folder / "cache"),
            ),
            store=dataclasses.replace(config.store, path=str(folder / "bench.sqlite3")),
            # The classifier: `auto` would measure the judges in the background during the timings.
            emotion=dataclasses.replace(config.emotion, judge="classifier"),
        )
        torch.cuda.synchronize()
        idle = VramSampler().used()
        async with open_engine(cfg) as engine:
            llm_vram = VramSampler().used() - idle
            gpu_rate = await decode_rate(engine.llm)
            persona = engine.personas.load(cfg.persona.default)
            channel = 1
            await seed_history(engine, channel, 1500)  # the same 1,500-token history as bench llm
            cold = await engine.turn(channel, "Sam", "What happened next, Mira?")
            warm_alone = []
            for n in range(2 if quick else 4):
                start = time.perf_counter()
                await engine.turn(channel, "Sam", f"And then? ({n})")
                warm_alone.append(time.perf_counter() - start)

            service = engine.expressions
            assert isinstance(service, ExpressionService)  # [expressions] is enabled above
            labels = list(persona.labels)
            start = time.perf_counter()
            with steps(service, 8):
                await service.render(persona, labels[0], force=True)  # loads the pipeline
            first = time.perf_counter() - start
            both_vram = VramSampler().used() - idle
            alone: dict[int, float] = {}
            for n_steps in (8, 25):
                with steps(service, n_steps):
                    times = []
                    for label in labels[1:3]:
                        start = time.perf_counter()
                        await service.render(persona, label, force=True)
                        times.append(time.perf_counter() - start)
                alone[n_steps] = statistics.median(times)

            # Together: a warm turn while a 25-step render runs, then the render's own time.
            together_turns, together_renders = [], []
            with VramSampler() as sampler, steps(service, 25):
                for n, label in enumerate(labels[3:5] if quick else labels[3:7]):
                    render_start = time.perf_counter()
                    render = asyncio.ensure_future(service.render(persona, label, force=True))
                    start = time.perf_counter()
                    await engine.turn(channel, "Sam", f"Tell me more ({n})")
                    together_turns.append(time.perf_counter() - start)
                    await render
                    together_renders.append(time.perf_counter() - render_start)
            peak = sampler.peak - idle

    turn = statistics.median(warm_alone)
    turn_during = statistics.median(together_turns)
    rows += [
        ("decode, CPU (default threads, same run)", f"{cpu_rate:.1f} tokens/s"),
        ("decode, GPU (all layers offloaded)", f"{gpu_rate:.1f} tokens/s ({gpu_rate / cpu_rate:.1f}x CPU)"),
        ("cold turn (1,500-token history)", f"{cold.reply_seconds:.2f} s"),
        ("warm turn, alone (median)", f"{turn:.2f} s"),
        ("LLM resident: VRAM", gib(llm_vram)),
        ("first render incl. pipeline load (8 steps)", f"{first:.2f} s"),
        ("LLM + pipeline resident: VRAM", gib(both_vram)),
        ("render 512 px crop, 8 steps, alone", f"{alone[8]:.2f} s"),
        ("render 512 px crop, 25 steps, alone", f"{alone[25]:.2f} s"),
        (
            "warm turn during a 25-step render",
            f"{turn_during:.2f} s ({turn_during / turn:.2f}x alone)",
        ),
        (
            "25-step render during a turn",
            f"{statistics.median(together_renders):.2f} s "
            f"({statistics.median(together_renders) / alone[25]:.2f}x alone)",
        ),
        ("peak VRAM, both working (device-wide)", gib(peak)),
    ]
    table("bench gpu (LLM and SD 1.5 inpainting resident together, fp16, random diffusion weights)", rows)
    return 0
