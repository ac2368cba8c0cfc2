"""ComfyUI as the renderer: the face crop and its mask uploaded, an inpaint workflow queued through
`/prompt` (the server checks it against its own node descriptions), followed through `/history` to the
end, and the picture fetched from `/view`. The workflow uses only nodes every ComfyUI since 2024 has."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
import urllib.parse
import uuid
from typing import Any

from PIL import Image

from bot.config import ExpressionsConfig
from bot.errors import ExpressionError
from bot.expressions.backends.crop import face_crop, paste_back, server_resolution
from bot.expressions.backends.diffusers import StepCallback
from bot.expressions.backends.http import (
    ImageServer,
    ServerTimeout,
    looks_out_of_memory,
    read_picture,
    server_words,
)
from bot.files import png_bytes

_log = logging.getLogger(__name__)

NAME = "ComfyUI"
NODES = (
    "CheckpointLoaderSimple",
    "CLIPTextEncode",
    "LoadImage",
    "LoadImageMask",
    "InpaintModelConditioning",
    "KSampler",
    "VAEDecode",
    "PreviewImage",
)
SAMPLER = "euler"  # in every ComfyUI; the schedule and step count come from the settings
SCHEDULER = "normal"
POLL_SECONDS = 0.25
OOM_ADVICE = "lower [expressions] resolution, or start ComfyUI with --lowvram"


def inpaint_workflow(
    settings: ExpressionsConfig, checkpoint: str, image: str, mask: str, prompt: str, seed: int
) -> dict[str, dict[str, Any]]:
    """ComfyUI's API form of the workflow: node id -> class and inputs; ["id", n] is node id's output n.
    InpaintModelConditioning feeds the mask to 9-channel inpainting checkpoints and, with its noise mask,
    keeps a base checkpoint's sampling inside the face too."""
    return {
        "checkpoint": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "positive": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["checkpoint", 1]}},
        "negative": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": settings.negative_prompt, "clip": ["checkpoint", 1]},
        },
        "face": {"class_type": "LoadImage", "inputs": {"image": image}},
        "mask": {"class_type": "LoadImageMask", "inputs": {"image": mask, "channel": "red"}},
        "inpaint": {
            "class_type": "InpaintModelConditioning",
            "inputs": {
                "positive": ["positive", 0],
                "negative": ["negative", 0],
                "vae": ["checkpoint", 2],
                "pixels": ["face", 0],
                "mask": ["mask", 0],
            },
        },
        "sample": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["checkpoint", 0],
                "positive": ["inpaint", 0],
                "negative": ["inpaint", 1],
                "latent_image": ["inpaint", 2],
                "seed": seed,
                "steps": settings.steps,
                "cfg": settings.guidance,
                "sampler_name": SAMPLER,
                "scheduler": SCHEDULER,
                "denoise": settings.strength,
            },
        },
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["checkpoint", 2]}},
        "result": {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}},
    }


class ComfyUIBackend:
    def __init__(self, settings: ExpressionsConfig) -> None:
        self.settings = settings
        self.server = ImageServer(NAME, settings, OOM_ADVICE)
        self.client_id = uuid.uuid4().hex
        self.loads = 0  # the server holds the model; the bot never loads one
        self.requests = 0
        self._checkpoints: list[str] | None = None
        self._lock = threading.Lock()

    # -- what the server has ----------------------------------------------------------------------------

    def checkpoints(self, refresh: bool = False) -> list[str]:
        """The server's checkpoints (CheckpointLoaderSimple's choices); also checks the workflow's nodes."""
        with self._lock:
            if self._checkpoints is None or refresh:
                info = self.server.get_json("/object_info")
                if not isinstance(info, dict):
                    raise ExpressionError(
                        f"the {NAME} server at {self.server.base} sent no node descriptions"
                    )
                missing = [node for node in NODES if node not in info]
                if missing:
                    raise ExpressionError(
                        f"the {NAME} server at {self.server.base} lacks the nodes {', '.join(missing)}:"
                        " update ComfyUI"
                    )
                try:
                    names = info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
                except (KeyError, IndexError, TypeError):
                    names = []
                listed = names if isinstance(names, list) else []
                self._checkpoints = [name for name in listed if isinstance(name, str)]
            return self._checkpoints

    def checkpoint(self) -> str:
        wanted = self.settings.model
        for refresh in (False, True):  # a checkpoint copied in since the last look is found on the second
            names = self.checkpoints(refresh)
            match = _match(wanted, names)
            if match:
                return match
        listed = ", ".join(server_words(n) for n in names[:8]) or "none"
        if not wanted:
            raise ExpressionError(
                f"set [expressions] model to the {NAME} checkpoint to inpaint with (the server has: {listed})"
            )
        raise ExpressionError(
            f"checkpoint {wanted!r} is not on the {NAME} server at {self.server.base} (it has: {listed}):"
            " set [expressions] model to one of them, or copy it into ComfyUI's models/checkpoints"
        )

    # -- one render -------------------------------------------------------------------------------------

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
        face, face_mask = png_bytes(crop.image), png_bytes(crop.mask.convert("RGB"))
        # Named by content: the same face is uploaded over itself, not once per render.
        stem = "rp-bot-" + hashlib.sha256(face + face_mask).hexdigest()[:16]
        image_name = self._upload(f"{stem}-face.png", face)
        mask_name = self._upload(f"{stem}-mask.png", face_mask)
        workflow = inpaint_workflow(self.settings, checkpoint, image_name, mask_name, prompt, seed)
        queued = self.server.post_json("/prompt", {"prompt": workflow, "client_id": self.client_id})
        prompt_id = queued.get("prompt_id") if isinstance(queued, dict) else None
        if not isinstance(prompt_id, str):
            raise ExpressionError(f"the {NAME} server did not queue the workflow: {server_words(queued)}")
        try:
            picture = self._follow(prompt_id, cancel)
        except ServerTimeout:
            self._abandon(prompt_id)  # a look at the queue that ran out of time: the render goes too
            raise
        return paste_back(portrait, mask, crop, picture)

    def _upload(self, filename: str, data: bytes) -> str:
        answer = self.server.post_form(
            "/upload/image", {"overwrite": "true", "type": "input"}, {"image": (filename, data)}
        )
        name = answer.get("name") if isinstance(answer, dict) else None
        if not isinstance(name, str):
            raise ExpressionError(f"the {NAME} server did not take the face upload: {server_words(answer)}")
        sub = answer.get("subfolder")
        sub = sub if isinstance(sub, str) else ""
        return f"{sub}/{name}" if sub else name

    def _follow(self, prompt_id: str, cancel: threading.Event | None) -> Image.Image:
        """Wait for the queued workflow to finish (or fail, or be cancelled) and fetch its picture."""
        deadline = time.monotonic() + self.settings.timeout_seconds
        while True:
            # Each look bounded by the time left: a slow answer cannot stretch the render's limit.
            left = max(deadline - time.monotonic(), POLL_SECONDS)
            history = self.server.get_json(f"/history/{prompt_id}", timeout=left, cancel=cancel)
            entry = _dict(_dict(history).get(prompt_id))
            if entry:
                status = _dict(entry.get("status"))
                if status.get("status_str") == "error":
                    raise self._failed(status)
                images = _dict(_dict(entry.get("outputs")).get("result")).get("images")
                if isinstance(images, list) and images and isinstance(images[0], dict):
                    left = max(deadline - time.monotonic(), POLL_SECONDS)
                    return self._fetch(images[0], left, cancel)
                if status.get("completed") is True:
                    raise ExpressionError(f"the {NAME} workflow finished without a picture")
            if cancel is not None and cancel.wait(POLL_SECONDS):
                self._abandon(prompt_id)
                raise asyncio.CancelledError("render cancelled")
            if cancel is None:
                time.sleep(POLL_SECONDS)
            if time.monotonic() > deadline:
                raise self.server.timed_out()  # render() takes it off the server

    def _fetch(self, image: dict[str, Any], timeout: float, cancel: threading.Event | None) -> Image.Image:
        where = urllib.parse.urlencode(
            {
                "filename": str(image.get("filename", "")),
                "subfolder": str(image.get("subfolder", "")),
                "type": str(image.get("type", "temp")),
            }
        )
        answer = self.server.request("GET", f"/view?{where}", timeout=timeout, cancel=cancel)
        return read_picture(answer, f"the {NAME} server")

    def _failed(self, status: dict[str, Any]) -> ExpressionError:
        messages = status.get("messages")
        for message in messages if isinstance(messages, list) else []:
            if isinstance(message, list) and len(message) == 2 and message[0] == "execution_error":
                detail = message[1] if isinstance(message[1], dict) else {}
                words = f"{detail.get('exception_type', '')}: {detail.get('exception_message', '')}"
                if looks_out_of_memory(words):
                    return self.server.out_of_memory()
                return ExpressionError(
                    f"the {NAME} server failed at {server_words(detail.get('node_type', 'a node'))}:"
                    f" {server_words(words.strip(': '))}"
                )
        return ExpressionError(f"the {NAME} server failed the render without saying why")

    def _abandon(self, prompt_id: str) -> None:
        """Take an abandoned render off the server: out of the queue, or interrupted if it is running."""
        try:
            self.server.post_json("/queue", {"delete": [prompt_id]}, timeout=5)
            queue = self.server.get_json("/queue", timeout=5)
            running = queue.get("queue_running", []) if isinstance(queue, dict) else []
            if any(isinstance(item, list) and prompt_id in item for item in running):
                self.server.post_json("/interrupt", {}, timeout=5)
        except ExpressionError as exc:
            _log.info("could not take the abandoned render off %s: %s", NAME, exc)


def _dict(value: object) -> dict[str, Any]:
    """A part of the server's answer that should be an object, or {} when it is anything else."""
    return value if isinstance(value, dict) else {}


def _match(wanted: str, names: list[str]) -> str | None:
    """A checkpoint by its name as ComfyUI lists it, or without its folder or extension."""
    if not wanted:
        return None
    for name in names:
        stem = name.replace("\\", "/").rsplit("/", 1)[-1]
        if wanted in (name, stem, stem.rsplit(".", 1)[0]):
            return name
    return None
