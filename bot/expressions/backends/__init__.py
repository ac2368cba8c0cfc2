"""Where a face is inpainted: diffusers in this process, or an image server the user already runs
(ComfyUI, AUTOMATIC1111 or Forge). Every backend takes the whole portrait and the bot's own feathered mask
and returns the whole portrait with the face redrawn, composited through that mask: outside it, every
pixel is the portrait's, whichever backend drew the face.

Modules: `diffusers` (loading a pipeline, one render in this process), `crop` (the face crop a server
is sent and pasting its answer back), `http` (the servers' shared client: credentials, bounds, one-line
errors), `comfyui` and `a1111` (each server's requests)."""

from __future__ import annotations

import threading
from typing import Protocol

from PIL import Image

from bot.config import Config
from bot.expressions.backends.diffusers import Renderer, StepCallback, render_threads


class RenderBackend(Protocol):
    """One render, blocking: called on the render worker's threads only."""

    loads: int  # how many times a model was loaded (a cache hit must never load one)
    requests: int  # how many renders were asked of the backend

    def render(
        self,
        portrait: Image.Image,
        mask: Image.Image,
        prompt: str,
        seed: int,
        cancel: threading.Event | None = None,
        on_step: StepCallback | None = None,
    ) -> Image.Image: ...


def make_backend(config: Config) -> RenderBackend:
    """The backend `[expressions] backend` names."""
    settings = config.expressions
    if settings.backend == "comfyui":
        from bot.expressions.backends.comfyui import ComfyUIBackend

        return ComfyUIBackend(settings)
    if settings.backend == "a1111":
        from bot.expressions.backends.a1111 import A1111Backend

        return A1111Backend(settings)
    return Renderer(settings, config.root, cpu_threads=render_threads(config))


__all__ = ["RenderBackend", "StepCallback", "make_backend"]
