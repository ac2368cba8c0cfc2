"""`./run bench discord`: the whole bot on the local Discord server: typing latency, replies per minute."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import LoopLag, table
from benchmarks.llm import CpuHog
from bot.config import Config


async def bench_discord(config: Config, quick: bool, contended: bool = False) -> int:
    repo = Path(__file__).resolve().parent.parent
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    try:
        from tests.support.discord_server import FakeDiscord, posts_to, typing_in
        from tests.support.harness import bot_config, running_bot
        from tests.support.tiny_diffusion import save_tiny_pipeline
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
