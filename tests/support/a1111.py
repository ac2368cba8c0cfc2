"""AUTOMATIC1111's img2img API for the tests: its request model, and a local server that holds every
request to it and inpaints with a real (tiny) diffusers pipeline.

No AUTOMATIC1111 can run here (it is not on PyPI and needs its own repositories at start), so the
request model is transcribed from its source (AUTOMATIC1111/stable-diffusion-webui v1.10,
`modules/api/models.py`): `StableDiffusionImg2ImgProcessingAPI` is generated from the init fields of
`StableDiffusionProcessing` and `StableDiffusionProcessingImg2Img` (`modules/processing.py`), minus
`API_NOT_ALLOWED`, plus the API's own additions; every field is Optional. That model silently ignores keys
it does not know, so a misspelt key would be a setting lost without a word: this server refuses any key
outside the model, and any value of the wrong JSON type (stricter than pydantic's lax coercion)."""

from __future__ import annotations

import base64
import binascii
import io
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from PIL import Image

from .local_http import serving

INT, FLOAT, BOOL, STR, LIST, DICT, ANY = "int", "float", "bool", "str", "list", "dict", "any"

# StableDiffusionProcessing's init fields that the API exposes (processing.py, v1.10).
PROCESSING_FIELDS = {
    "prompt": STR,
    "negative_prompt": STR,
    "styles": LIST,
    "seed": INT,
    "subseed": INT,
    "subseed_strength": FLOAT,
    "seed_resize_from_h": INT,
    "seed_resize_from_w": INT,
    "sampler_name": STR,
    "scheduler": STR,
    "batch_size": INT,
    "n_iter": INT,
    "steps": INT,
    "cfg_scale": FLOAT,
    "width": INT,
    "height": INT,
    "restore_faces": BOOL,
    "tiling": BOOL,
    "do_not_save_samples": BOOL,
    "do_not_save_grid": BOOL,
    "eta": FLOAT,
    "denoising_strength": FLOAT,
    "s_min_uncond": FLOAT,
    "s_churn": FLOAT,
    "s_tmax": FLOAT,
    "s_tmin": FLOAT,
    "s_noise": FLOAT,
    "override_settings": DICT,
    "override_settings_restore_afterwards": BOOL,
    "refiner_checkpoint": STR,
    "refiner_switch_at": FLOAT,
    "disable_extra_networks": BOOL,
    "comments": DICT,
}
# StableDiffusionProcessingImg2Img's own init fields.
IMG2IMG_FIELDS = {
    "init_images": LIST,
    "resize_mode": INT,
    "image_cfg_scale": FLOAT,
    "mask": STR,  # an Image in the class: a base64 string in the API
    "mask_blur_x": INT,
    "mask_blur_y": INT,
    "mask_blur": INT,
    "inpainting_fill": INT,
    "inpaint_full_res": BOOL,
    "inpaint_full_res_padding": INT,
    "inpainting_mask_invert": INT,
    "initial_noise_multiplier": FLOAT,
    "latent_mask": STR,
}
# The API's additional fields (models.py).
API_FIELDS = {
    "sampler_index": STR,
    "include_init_images": BOOL,
    "script_name": STR,
    "script_args": LIST,
    "send_images": BOOL,
    "save_images": BOOL,
    "alwayson_scripts": DICT,
    "force_task_id": STR,
    "infotext": STR,
}
IMG2IMG_REQUEST = PROCESSING_FIELDS | IMG2IMG_FIELDS | API_FIELDS


def _type_ok(value: object, kind: str) -> bool:
    if value is None or kind == ANY:
        return True
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == FLOAT:
        return isinstance(value, int | float) and not isinstance(value, bool)
    python = {BOOL: bool, STR: str, LIST: list, DICT: dict}[kind]
    return isinstance(value, python)


def img2img_problems(body: object) -> list[str]:
    """Why the img2img model would not take `body` as meant: unknown keys, wrong types, pictures that
    are not base64 images."""
    if not isinstance(body, dict):
        return ["the body is not a JSON object"]
    problems = [f"unknown key {key!r}" for key in body if key not in IMG2IMG_REQUEST]
    problems += [
        f"{key} should be {IMG2IMG_REQUEST[key]}, not {type(value).__name__}"
        for key, value in body.items()
        if key in IMG2IMG_REQUEST and not _type_ok(value, IMG2IMG_REQUEST[key])
    ]
    pictures = list(body.get("init_images") or []) + ([body["mask"]] if body.get("mask") else [])
    for picture in pictures:
        try:
            decode_b64(picture)
        except (ValueError, OSError, TypeError, binascii.Error) as exc:
            problems.append(f"a picture is not a base64 image: {exc}")
    return problems


def decode_b64(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text.split(",", 1)[-1], validate=True)))
    image.load()
    return image


def encode_b64(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


Inpainter = Callable[[Image.Image, Image.Image, dict[str, Any]], Image.Image]


@dataclass
class A1111:
    """The server's state: what it holds, what it was sent, and what the test makes it do."""

    inpaint: Inpainter
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    credentials: str = ""  # "user:password": HTTP basic auth required, as --api-auth does
    requests: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[list[str]] = field(default_factory=list)
    fail_with: tuple[int, dict[str, Any]] | None = None  # answer every img2img with this
    hold: threading.Event | None = None  # img2img waits for this before answering
    interrupted: threading.Event = field(default_factory=threading.Event)
    in_flight: int = 0
    peak: int = 0
    arrived: threading.Condition = field(default_factory=threading.Condition)
    url: str = ""


def _handler(state: A1111) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, payload: object) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _authorized(self) -> bool:
            if not state.credentials:
                return True
            wanted = "Basic " + base64.b64encode(state.credentials.encode()).decode()
            if self.headers.get("Authorization") == wanted:
                return True
            self._send(401, {"detail": "Incorrect username or password"})  # FastAPI's HTTPBasic answer
            return False

        def do_GET(self) -> None:
            if not self._authorized():
                return
            if self.path == "/sdapi/v1/sd-models":
                self._send(200, state.checkpoints)
            else:
                self._send(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if not self._authorized():
                return
            if self.path == "/sdapi/v1/interrupt":
                state.interrupted.set()
                self._send(200, {})
                return
            if self.path != "/sdapi/v1/img2img":
                self._send(404, {"detail": "Not Found"})
                return
            body = json.loads(raw)
            problems = img2img_problems(body)
            if problems:
                state.rejected.append(problems)
                self._send(422, {"detail": [{"msg": p} for p in problems]})
                return
            with state.arrived:
                state.requests.append(body)
                state.in_flight += 1
                state.peak = max(state.peak, state.in_flight)
                state.arrived.notify_all()
            try:
                if state.hold is not None:
                    state.hold.wait(30)
                if state.fail_with is not None:
                    self._send(*state.fail_with)
                    return
                image = decode_b64(body["init_images"][0]).convert("RGB")
                mask = decode_b64(body["mask"]).convert("L")
                result = state.inpaint(image, mask, body)
                self._send(200, {"images": [encode_b64(result)], "parameters": {}, "info": "{}"})
            finally:
                with state.arrived:
                    state.in_flight -= 1

    return Handler


@contextmanager
def a1111_server(state: A1111) -> Iterator[A1111]:
    with serving(_handler(state)) as state.url:
        try:
            yield state
        finally:
            if state.hold is not None:
                state.hold.set()  # let held requests answer before the server goes


def diffusers_inpainter(pipe: Any) -> Inpainter:
    """Inpaint as the request says, with a real diffusers pipeline (the tests' tiny one), one render at a
    time as AUTOMATIC1111 does: requests in flight together wait here. A pipeline called from two
    threads at once races on its tokenizer's shared settings ("Expected size 64 but got size 77")."""
    one_at_a_time = threading.Lock()

    def inpaint(image: Image.Image, mask: Image.Image, body: dict[str, Any]) -> Image.Image:
        import torch

        with one_at_a_time:
            out = pipe(
                prompt=body["prompt"],
                negative_prompt=body.get("negative_prompt") or None,
                image=image,
                mask_image=mask,
                width=body["width"],
                height=body["height"],
                num_inference_steps=body["steps"],
                strength=body["denoising_strength"],
                guidance_scale=body["cfg_scale"],
                generator=torch.Generator().manual_seed(body["seed"]),
            ).images[0]
        return out.resize(image.size)

    return inpaint
