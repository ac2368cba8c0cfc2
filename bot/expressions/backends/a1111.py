"""AUTOMATIC1111's web UI (and Forge, which speaks its API) as the renderer: one `/sdapi/v1/img2img`
request with the face crop, its mask and the render settings. The server must be started with `--api`.
Its request model ignores keys it does not know, so every key sent here is one of its own (the tests check
each request against that model)."""

from __future__ import annotations

import asyncio
import logging
import threading
from contextlib import suppress
from typing import Any

from PIL import Image

from bot.config import ExpressionsConfig
from bot.errors import ExpressionError
from bot.expressions.backends.crop import FaceCrop, face_crop, paste_back, server_resolution
from bot.expressions.backends.diffusers import StepCallback
from bot.expressions.backends.http import ImageServer, ServerTimeout, b64_picture, png_base64, server_words

_log = logging.getLogger(__name__)

NAME = "AUTOMATIC1111"
OOM_ADVICE = "lower [expressions] resolution, or start the web UI with --medvram (Forge manages it itself)"
INPAINT_FROM_ORIGINAL = 1  # inpainting_fill: start from the portrait's own face ("original")


def img2img_request(
    settings: ExpressionsConfig, crop: FaceCrop, prompt: str, seed: int, checkpoint: str
) -> dict[str, Any]:
    """The img2img body. The crop is already the face with its padding; `inpaint_full_res` ("only
    masked") still gives the masked part the whole width x height. The bot's mask is already feathered,
    so the server's own blur is off."""
    width, height = crop.image.size
    body: dict[str, Any] = {
        "init_images": [png_base64(crop.image)],
        "mask": png_base64(crop.mask),
        "prompt": prompt,
        "negative_prompt": settings.negative_prompt,
        "seed": seed,
        "steps": settings.steps,
        "cfg_scale": settings.guidance,
        "denoising_strength": settings.strength,
        "width": width,
        "height": height,
        "resize_mode": 0,
        "mask_blur": 0,
        "inpainting_fill": INPAINT_FROM_ORIGINAL,
        "inpaint_full_res": True,
        "inpaint_full_res_padding": settings.crop_padding,
        "inpainting_mask_invert": 0,
        "batch_size": 1,
        "n_iter": 1,
        "send_images": True,
        "save_images": False,
        "do_not_save_samples": True,
        "do_not_save_grid": True,
    }
    if checkpoint:
        # For this request only: the user's own choice in the web UI is restored afterwards.
        body["override_settings"] = {"sd_model_checkpoint": checkpoint}
        body["override_settings_restore_afterwards"] = True
    return body


class A1111Backend:
    def __init__(self, settings: ExpressionsConfig) -> None:
        self.settings = settings
        self.server = ImageServer(NAME, settings, OOM_ADVICE)
        self.loads = 0  # the server holds the model; the bot never loads one
        self.requests = 0
        self._titles: dict[str, str] = {}  # every name a checkpoint goes by -> its title
        self._lock = threading.Lock()

    def checkpoint(self) -> str:
        """The title of the checkpoint `model` names (empty: the one the web UI has loaded)."""
        wanted = self.settings.model
        if not wanted:
            return ""
        with self._lock:
            if wanted not in self._titles:
                self._titles = self._list()
            if wanted in self._titles:
                return self._titles[wanted]
        listed = ", ".join(sorted({server_words(t) for t in self._titles.values()})[:8]) or "none"
        raise ExpressionError(
            f"checkpoint {wanted!r} is not on the {NAME} server at {self.server.base} (it has: {listed}):"
            " set [expressions] model to one of them"
        )

    def _list(self) -> dict[str, str]:
        models = self.server.get_json("/sdapi/v1/sd-models")
        titles: dict[str, str] = {}
        for item in models if isinstance(models, list) else []:
            if not isinstance(item, dict) or not isinstance(item.get("title"), str):
                continue
            title = item["title"]
            names = [title, str(item.get("model_name", ""))]
            filename = str(item.get("filename", "")).replace("\\", "/").rsplit("/", 1)[-1]
            names += [filename, filename.rsplit(".", 1)[0]]
            for name in names:
                if name:
                    titles.setdefault(name, title)
        return titles

    def render(
        self,
        portrait: Image.Image,
        mask: Image.Image,
        prompt: str,
        seed: int,
        cancel: threading.Event | None = None,
        on_step: StepCallback | None = None,
    ) -> Image.Image:
        self.requests += 1
        checkpoint = self.checkpoint()
        crop = face_crop(portrait, mask, self.settings.crop_padding, server_resolution(self.settings))
        body = img2img_request(self.settings, crop, prompt, seed, checkpoint)
        with self.server.interrupting(cancel, self._interrupt):
            try:
                answer = self.server.post_json("/sdapi/v1/img2img", body, cancel=cancel)
            except ServerTimeout:
                with suppress(ExpressionError):  # out of time: the server is told to stop too
                    self._interrupt()
                raise
        if cancel is not None and cancel.is_set():
            raise asyncio.CancelledError("render cancelled")
        images = answer.get("images") if isinstance(answer, dict) else None
        first = images[0] if isinstance(images, list) and images else None
        picture = b64_picture(first, f"the {NAME} server")
        return paste_back(portrait, mask, crop, picture)

    def _interrupt(self) -> None:
        self.server.post_json("/sdapi/v1/interrupt", {}, timeout=5)
