"""What every benchmark shares: the machine it ran on, event-loop lag, Markdown tables."""

from __future__ import annotations

import asyncio
import contextlib
import platform
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.config import ModelConfig
    from bot.llm import LlamaBackend
    from bot.store import Store


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


# Every benchmark opens what it measures through these: whatever fails, the model's worker thread and the
# database's connection thread are closed, so the process ends with one error line instead of hanging on
# a thread that nobody will stop.


@contextlib.asynccontextmanager
async def scratch_store() -> AsyncIterator[Store]:
    """A fresh database in a temporary folder, closed and removed on exit."""
    from bot.store import Store

    with tempfile.TemporaryDirectory() as scratch:
        store = await Store.open(Path(scratch) / "bench.sqlite3")
        try:
            yield store
        finally:
            await store.close()


@contextlib.asynccontextmanager
async def loaded_model(config: ModelConfig, root: Path) -> AsyncIterator[LlamaBackend]:
    """The embedded model, closed on exit."""
    from bot.llm import LlamaBackend

    llm = await LlamaBackend.load(config, root)
    try:
        yield llm
    finally:
        await llm.close()
