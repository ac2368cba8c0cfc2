"""The worker thread behind each in-process model (LLM, diffusion): jobs run one at a time, off the event
loop, with a bounded queue so a flood of requests gets a clear "busy" instead of unbounded waiting."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from bot.errors import BusyError

T = TypeVar("T")


class ModelWorker:
    """`threads` jobs at a time (one for an in-process model), at most `limit` jobs waiting."""

    def __init__(self, limit: int, name: str, threads: int = 1) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._threads = threads
        self._limit = limit
        self._pending = 0
        self._lock = threading.Lock()
        self._name = name

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        with self._lock:
            # The running jobs plus `limit` waiting.
            if self._pending >= self._limit + self._threads:
                raise BusyError(
                    f"the {self._name} is busy ({self._pending} requests waiting); try again shortly"
                )
            self._pending += 1
        future = self._executor.submit(fn)
        future.add_done_callback(self._done)
        return future

    def _done(self, _: Future[Any]) -> None:
        with self._lock:
            self._pending -= 1

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self.submit(fn))

    async def run_limited(self, fn: Callable[[], T], seconds: float) -> T:
        """`run`, with TimeoutError once `fn` has run for `seconds`. The limit counts from the job's
        start: time queued behind other jobs (each bound by its own limit) does not make it fail as slow
        before it ran."""
        loop = asyncio.get_running_loop()
        started = asyncio.Event()

        def job() -> T:
            loop.call_soon_threadsafe(started.set)
            return fn()

        done = asyncio.wrap_future(self.submit(job))
        waiting = asyncio.ensure_future(started.wait())
        either: list[asyncio.Future[Any]] = [done, waiting]
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
        return await asyncio.wait_for(done, seconds)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class WorkerEvents:
    """What a job on a worker thread sends its reader on the event loop: text, then "done" or "error".
    Made on the event loop. A reader whose event loop has closed (a front-end or test that finished) is
    let go, `cancel` set, rather than an error raised on the worker thread, where it would stop every
    other job sharing that thread."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.cancel = threading.Event()
        self._finished = False

    def emit(self, kind: str, value: Any = None) -> None:
        """From the worker thread."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))
        except RuntimeError:  # its event loop has closed: nobody reads it
            self.cancel.set()

    async def text(self) -> str | None:
        """The next text; None once the job is done; its error raised."""
        kind, value = await self._queue.get()
        if kind == "text":
            return str(value)
        self._finished = True
        if kind == "error":
            raise value
        return None

    async def let_go(self) -> None:
        """Wait, shielded from cancellation, until the job has sent its end (it may have texts in flight).
        Not where the reader's event loop has closed (its stream finalised after the loop): there is nothing
        to wait on, and the worker lets the job go when its next text finds the loop closed."""
        if self._loop.is_closed():
            return
        while not self._finished:
            kind, _ = await asyncio.shield(self._queue.get())
            self._finished = kind != "text"


async def maybe_await(value: Awaitable[None] | None) -> None:
    """Await what a callback returned, if it returned an awaitable (callbacks may be plain functions)."""
    if value is not None:
        await value


class BackgroundTasks:
    """Tasks that outlive the handler that started them (a face swapped in once its render lands): held
    until done, since the event loop keeps only weak references to tasks, and cancelled together at
    shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel_all(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
