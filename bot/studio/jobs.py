"""Renders started from the page: one job per persona at a time, its progress (faces, denoising steps,
an estimate of the time left) kept for the page to follow. The renders themselves run on the expression
service's worker thread, like every other render, so a job never holds the chat."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from bot.core.engine import Engine
from bot.errors import BotError
from bot.personas import Persona

_log = logging.getLogger(__name__)

MAX_JOBS = 32  # finished jobs kept for the page to read back; the oldest go first


@dataclass
class RenderJob:
    id: str
    persona: str
    labels: list[str]
    started: float = field(default_factory=time.monotonic)
    state: str = "running"  # running, done, failed
    done: int = 0  # faces finished
    total: int = 0
    label: str = ""  # the face being made now
    step: int = 0  # its denoising steps done, and in all (0 for a sprite or drawn face)
    steps: int = 0
    error: str = ""
    drawn: bool = False  # no inpainting model: the faces are drawn over the portrait, not rendered
    version: int = 0  # bumped on every change, so that a follower can wait for the next one
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def snapshot(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        share = (
            (self.done + (self.step / self.steps if self.steps else 0.0)) / self.total if self.total else 0.0
        )
        eta = elapsed / share - elapsed if 0.0 < share < 1.0 else None
        return {
            "id": self.id,
            "persona": self.persona,
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "label": self.label,
            "step": self.step,
            "steps": self.steps,
            "elapsed_s": round(elapsed, 1),
            "eta_s": None if eta is None else round(eta, 1),
            "error": self.error,
            "drawn": self.drawn,
            "version": self.version,
        }


class RenderJobs:
    """The studio's render jobs, bounded."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._jobs: OrderedDict[str, RenderJob] = OrderedDict()
        self._ids = itertools.count(1)

    def get(self, job_id: str) -> RenderJob | None:
        return self._jobs.get(job_id)

    def start(self, persona: Persona, labels: list[str], force: bool) -> RenderJob:
        """A new job, or the persona's job already running (one at a time: a second click joins it)."""
        for job in self._jobs.values():
            if job.persona == persona.slug and job.state == "running":
                return job
        job = RenderJob(str(next(self._ids)), persona.slug, labels or list(persona.labels))
        job.total = len(job.labels)
        job.drawn = self.engine.admin.draws_faces()
        self._jobs[job.id] = job
        while len(self._jobs) > MAX_JOBS:
            oldest = next((j for j in self._jobs.values() if j.state != "running"), None)
            if oldest is None:
                break
            del self._jobs[oldest.id]
        job.task = asyncio.ensure_future(self._run(job, persona, force))
        return job

    async def _run(self, job: RenderJob, persona: Persona, force: bool) -> None:
        loop = asyncio.get_running_loop()

        def progress(done: int, total: int, label: str) -> None:
            job.done, job.total, job.label, job.step, job.steps = done, total, label, 0, 0
            self._bump(job)

        def step(done: int, total: int) -> None:  # on the render thread
            loop.call_soon_threadsafe(self._stepped, job, done, total)

        try:
            await self.engine.admin.render_faces(
                persona, labels=job.labels, on_progress=progress, on_step=step, force=force
            )
            job.state = "done"
        except (BotError, TimeoutError) as exc:
            job.state, job.error = "failed", str(exc) or "the render took longer than [expressions] timeout"
        except asyncio.CancelledError:
            job.state, job.error = "failed", "the studio stopped"
            raise
        except Exception as exc:  # a pipeline fault: the page says so, the studio goes on
            _log.exception("render job %s for %s failed", job.id, job.persona)
            job.state, job.error = "failed", f"the render failed: {exc}"
        finally:
            self._bump(job)

    def _stepped(self, job: RenderJob, done: int, total: int) -> None:
        if job.state == "running":
            job.step, job.steps = done, total
            self._bump(job)

    def _bump(self, job: RenderJob) -> None:
        job.version += 1
        for waiter in job.waiters:
            if not waiter.done():
                waiter.set_result(None)
        job.waiters.clear()

    async def changed(self, job: RenderJob, seen: int) -> None:
        """Return once the job has changed since version `seen`."""
        if job.version != seen:
            return
        waiter = asyncio.get_running_loop().create_future()
        job.waiters.append(waiter)
        await waiter

    async def close(self) -> None:
        tasks = [job.task for job in self._jobs.values() if job.task is not None and not job.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
