"""`./run bench expressions [--gpu]`: render time, cache hits and event-loop lag; full-size SD 1.5 on CUDA."""

from __future__ import annotations

import dataclasses
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import LoopLag, table, timed
from bot.config import Config


async def bench_expressions(config: Config, quick: bool, gpu: bool) -> int:
    if gpu:
        return bench_gpu()
    from bot.expressions import ExpressionService
    from bot.personas import PersonaLibrary
    from bot.store import Store
    from tests.support.tiny_diffusion import save_tiny_pipeline

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
        service = ExpressionService(config, store, PersonaLibrary.from_config(config))
        try:
            persona = service.personas.load(config.persona.default)
            labels = list(persona.labels)[: 4 if quick else len(persona.labels)]
            load_s, _ = await timed(lambda: service.render(persona, "neutral"))
            times = []
            with LoopLag() as lag:
                for label in labels[1:]:
                    seconds, _ = await timed(functools.partial(service.render, persona, label))
                    times.append(seconds)
            hits = []
            for _ in range(50):
                seconds, _ = await timed(lambda: service.image_for(persona, labels[1]))
                hits.append(seconds)
        finally:
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

    from tests.support.tiny_diffusion import full_size_sd15_inpainting

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
