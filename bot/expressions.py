"""Expressions: redraw only the face of a persona's portrait for an emotion, cached on disk.

Order of preference for a face: a hand-made sprite from a sprite pack, a cached render, then (on a
miss) the best image at hand while a fresh render runs in the background on the render worker. A render
never fails a chat: any pipeline error falls back to the best available image with a log line.

Outside the feathered face mask the output is byte-identical to the portrait: the pipeline's output is
composited back over the portrait with that mask, so a mask value of 0 always keeps the original pixel.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageFilter

from bot.config import CPUS, Config, ExpressionsConfig, decode_threads
from bot.emotion.labels import GOEMOTIONS, canonical, projection
from bot.engine import ExpressionImage
from bot.errors import BusyError, ExpressionError
from bot.files import atomic_write, png_bytes, write_all
from bot.images import decode_image
from bot.llm import ModelWorker
from bot.persona import Persona, PersonaLibrary
from bot.store import RenderRecord, Store

_log = logging.getLogger(__name__)

# Prompt words for the default labels; a persona's [emotions.prompts] overrides any of them.
DEFAULT_EMOTION_WORDS: dict[str, str] = {
    "neutral": "calm neutral expression, relaxed face",
    "joy": "happy smile, bright eyes",
    "amusement": "amused grin, playful eyes, laughing",
    "sadness": "sad expression, teary eyes, downturned mouth",
    "anger": "angry expression, furrowed brows, clenched jaw",
    "fear": "scared expression, wide eyes, trembling mouth",
    "surprise": "surprised expression, raised eyebrows, open mouth",
    "love": "loving gaze, soft smile, blushing cheeks",
    "embarrassment": "embarrassed expression, deep blush, averted eyes",
    "confusion": "confused expression, tilted head, raised eyebrow",
}
SPRITE_NAME = re.compile(r"^(?P<label>[a-z][a-z_-]{0,31}?)(?:-(?P<variant>\d{1,3}))?\.png$")
MAX_SPRITE_BYTES = 10_000_000
MAX_PACK_FILES = 200
MAX_DECODED_PORTRAITS = 4  # personas whose decoded portrait and mask stay in memory
MAX_PACK_BYTES = 100_000_000  # a whole sprite pack, unpacked


def sprite_name(label: str, variant: int = 0) -> str:
    """SillyTavern's sprite file names: joy.png, then joy-1.png, joy-2.png for variants."""
    return f"{label}.png" if variant == 0 else f"{label}-{variant}.png"


# -- sprite packs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpriteImport:
    stored: dict[str, str]  # pack file -> the persona's sprite file it becomes
    unused: dict[str, str]  # pack file -> why it was not used


def plan_sprites(labels: Sequence[str], names: Sequence[str]) -> SpriteImport:
    """Which pack files become which of the persona's sprites. A file named after one of the labels
    (or a synonym: happy.png for joy) is used as that label; SillyTavern's finer labels fill labels
    still missing (admiration.png shows joy when there is no joy.png)."""
    by_canonical = {canonical(label): label for label in labels}
    fills = projection(labels)
    stored: dict[str, str] = {}
    unused: dict[str, str] = {}
    taken: dict[str, str] = {}
    fallback: list[tuple[int, str, str]] = []
    for name in dict.fromkeys(names):
        match = SPRITE_NAME.match(name)
        if match is None:
            unused[name] = "not a sprite (expected LABEL.png or LABEL-N.png)"
            continue
        word, variant = match["label"], int(match["variant"] or 0)
        label = word if word in labels else by_canonical.get(canonical(word))
        if label is None:
            if canonical(word) in fills:
                fallback.append(
                    (GOEMOTIONS.index(canonical(word)), name, sprite_name(fills[canonical(word)], variant))
                )
            else:
                unused[name] = f"no emotion '{word}' among the persona's labels"
            continue
        target = sprite_name(label, variant)
        if target in taken and word != label:  # joy.png beats happy.png for joy
            unused[name] = f"{taken[target]} already gives {target}"
            continue
        if target in taken:
            unused[taken[target]] = f"{name} already gives {target}"
            del stored[taken[target]]
        stored[name], taken[target] = target, name
    for _, name, target in sorted(fallback):
        if target in taken:
            unused[name] = f"{taken[target]} already gives {target}"
        else:
            stored[name], taken[target] = target, name
    return SpriteImport(stored, unused)


# -- face region ------------------------------------------------------------------------------------


def check_face_box(box: tuple[int, int, int, int], size: tuple[int, int], where: str) -> None:
    """Raise ExpressionError unless `box` is a usable face region of a portrait of this size."""
    x, y, w, h = box
    width, height = size
    if w <= 0 or h <= 0:
        raise ExpressionError(f"{where}: face region {list(box)} is empty")
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise ExpressionError(f"{where}: face region {list(box)} lies outside the {width}x{height} portrait")
    if w >= width and h >= height:
        raise ExpressionError(
            f"{where}: face region {list(box)} covers the whole portrait; mark only the face"
        )


def face_mask(
    persona: Persona, portrait_size: tuple[int, int], avatars: Path, dilate: int, blur: int
) -> Image.Image:
    """The feathered face mask (mode L, white = redraw) for a persona's portrait."""
    where = f"persona '{persona.slug}'"
    if persona.face_mask:
        path = avatars / Path(persona.face_mask).name
        try:
            with Image.open(path) as raw:
                mask = raw.convert("L")
        except (OSError, ValueError) as exc:
            raise ExpressionError(f"{where}: face mask {path} cannot be read: {exc}") from None
        if mask.size != portrait_size:
            raise ExpressionError(f"{where}: face mask is {mask.size}, the portrait is {portrait_size}")
        mask = mask.point(lambda v: 255 if v > 127 else 0)
        box = mask.getbbox()
        if box is None:
            raise ExpressionError(f"{where}: face mask {path.name} is empty (no white pixels)")
        if mask.getextrema() == (255, 255):
            raise ExpressionError(f"{where}: face mask covers the whole portrait; mark only the face")
    else:
        box4 = persona.face_box or detect_face(persona, avatars)
        check_face_box(box4, portrait_size, where)
        x, y, w, h = box4
        mask = Image.new("L", portrait_size, 0)
        mask.paste(255, (x, y, x + w, y + h))
    if dilate > 0:
        mask = dilate_mask(mask, dilate)
    if blur > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    return mask


def face_preview(portrait: Image.Image, mask: Image.Image) -> Image.Image:
    """The portrait with everything outside the (feathered) face mask dimmed and the mask's bounding
    box outlined: what a render may change, at a glance."""
    from PIL import ImageDraw, ImageEnhance

    base = portrait.convert("RGB")
    out = Image.composite(base, ImageEnhance.Brightness(base).enhance(0.35), mask)
    box = mask.point(lambda v: 255 if v > 127 else 0).getbbox()
    if box is not None:
        ImageDraw.Draw(out).rectangle(box, outline=(255, 60, 60), width=3)
    return out


def dilate_mask(mask: Image.Image, radius: int) -> Image.Image:
    """Grow the white area by `radius` pixels (a square kernel, done separably in numpy: Pillow's
    MaxFilter takes hundreds of milliseconds here and holds the GIL, stalling the event loop)."""
    import numpy as np

    grown = np.asarray(mask) > 127
    for axis in (0, 1):
        source, grown = grown, grown.copy()
        for shift in range(1, radius + 1):
            ahead: list[slice] = [slice(None), slice(None)]
            behind: list[slice] = [slice(None), slice(None)]
            ahead[axis], behind[axis] = slice(shift, None), slice(None, -shift)
            grown[tuple(ahead)] |= source[tuple(behind)]
            grown[tuple(behind)] |= source[tuple(ahead)]
    return Image.fromarray(grown.astype(np.uint8) * 255, mode="L")


def detect_face(persona: Persona, avatars: Path) -> tuple[int, int, int, int]:
    """Find the face box with OpenCV's anime-face or frontal-face cascade, when OpenCV is installed."""
    try:
        import cv2  # type: ignore[import-not-found]
    except ImportError:
        raise ExpressionError(
            f"persona '{persona.slug}' has no face region: add face_box = [x, y, width, height] (or"
            f' face_mask = "file.png") under [portrait] in persona/{persona.slug}.toml, or install'
            " opencv-python-headless for automatic detection"
        ) from None
    path = avatars / Path(persona.portrait).name
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    faces = cascade.detectMultiScale(image, scaleFactor=1.1, minNeighbors=4) if image is not None else ()
    if len(faces) == 0:
        raise ExpressionError(f"persona '{persona.slug}': no face found automatically; set face_box by hand")
    x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
    return int(x), int(y), int(w), int(h)


def composite(portrait: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """The generated face over the portrait through the mask; where the mask is 0, the portrait's own
    pixel (alpha included) is kept exactly."""
    base = portrait.convert("RGBA")
    face = generated.convert("RGB").resize(portrait.size, Image.Resampling.LANCZOS).convert("RGBA")
    face.putalpha(base.getchannel("A"))
    out = Image.composite(face, base, mask)
    return out if portrait.mode == "RGBA" else out.convert(portrait.mode)


# -- prompts, seeds, keys -------------------------------------------------------------------------------


def emotion_prompt(persona: Persona, label: str) -> str:
    words = persona.emotion_prompts.get(label) or DEFAULT_EMOTION_WORDS.get(label) or f"{label} expression"
    base = persona.appearance.strip() or f"portrait of {persona.name}"
    return f"{base}, {words}, detailed face, best quality"


def seed_for(base: int, persona: str, label: str, variant: int) -> int:
    digest = hashlib.sha256(f"{base}:{persona}:{label}:{variant}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _file_stamp(path: Path | None) -> tuple[object, ...]:
    """What identifies a file's version cheaply: its path, mtime and size (just the path if missing)."""
    try:
        stat = path.stat() if path is not None else None
    except OSError:
        stat = None
    return (str(path),) if stat is None else (str(path), stat.st_mtime_ns, stat.st_size)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class RenderJob:
    persona: Persona
    label: str
    variant: int
    prompt: str
    seed: int
    key: str
    source_hash: str  # portrait + mask + persona prompts: renders made from other sources are stale


# -- the diffusers pipeline --------------------------------------------------------------------------


def pick_device(wanted: str) -> str:
    import torch

    if wanted != "auto":
        return wanted
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def checkpoint_in_channels(path: Path) -> int:
    """UNet input channels of a single-file SD checkpoint, from its safetensors header (9 = inpainting)."""
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(handle.read(length))
        shape = header["model.diffusion_model.input_blocks.0.0.weight"]["shape"]
        return int(shape[1])
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise ExpressionError(
            f"{path}: not a readable Stable Diffusion .safetensors checkpoint ({exc})"
        ) from None


def load_pipeline(settings: ExpressionsConfig, root: Path) -> Any:
    """Load the inpainting pipeline from a hub id, a diffusers folder or a single .safetensors file."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    device = pick_device(settings.device)
    dtype_name = settings.dtype if settings.dtype != "auto" else ("float32" if device == "cpu" else "float16")
    dtype = getattr(torch, dtype_name)
    name = settings.model
    local = Path(name).expanduser()
    if not local.is_absolute():
        local = root / local
    looks_like_path = (
        name.startswith((".", "/", "~")) or name.endswith((".safetensors", ".ckpt")) or local.exists()
    )
    common: dict[str, Any] = {"torch_dtype": dtype, "safety_checker": None, "requires_safety_checker": False}
    try:
        if looks_like_path and not local.exists():
            raise ExpressionError(f"inpainting model not found: {local}")
        if local.is_file():
            if local.suffix != ".safetensors":
                raise ExpressionError(
                    f"{local}: only .safetensors checkpoints are loaded (pickles can run code)"
                )
            channels = checkpoint_in_channels(local)
            if channels not in (4, 9):
                raise ExpressionError(
                    f"{local}: UNet has {channels} input channels; expected 9 (inpainting) or 4"
                )
            if channels == 4:
                _log.warning("%s is not an inpainting checkpoint; faces will blend less cleanly", local.name)
            pipe = StableDiffusionInpaintPipeline.from_single_file(
                str(local), local_files_only=settings.local_files_only, **common
            )
        else:
            pipe = StableDiffusionInpaintPipeline.from_pretrained(
                str(local) if local.is_dir() else name,
                local_files_only=settings.local_files_only or local.is_dir(),
                **common,
            )
    except ExpressionError:
        raise
    except Exception as exc:  # diffusers raises many types (OSError, EnvironmentError, ValueError...)
        raise ExpressionError(f"cannot load inpainting model {name!r}: {exc}") from None
    if settings.scheduler:
        import diffusers

        scheduler_class = getattr(diffusers, settings.scheduler, None)
        if scheduler_class is None or not hasattr(scheduler_class, "from_config"):
            raise ExpressionError(f"unknown scheduler {settings.scheduler!r} (a diffusers class name)")
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    if settings.lora:
        try:
            pipe.load_lora_weights(
                str(root / settings.lora) if not Path(settings.lora).is_absolute() else settings.lora
            )
            pipe.fuse_lora(lora_scale=settings.lora_scale)
        except Exception as exc:
            raise ExpressionError(f"cannot load LoRA {settings.lora!r}: {exc}") from None
    if settings.cpu_offload and device == "cuda":
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render_threads(config: Config) -> int:
    """Torch threads for a render on the CPU. When the LLM decodes on the CPU too, a render gets only the
    cores the LLM's decode threads leave free, so that a reply written during a render keeps its speed
    (the render is the one that can wait). 0: torch's default (the LLM is on the GPU)."""
    if config.expressions.cpu_threads:
        return config.expressions.cpu_threads
    if config.model.n_gpu_layers == 0:
        return max(1, CPUS - decode_threads(config.model))
    return 0


class Renderer:
    """Runs the pipeline for one job; blocking, so it is only called on the render worker thread."""

    def __init__(
        self,
        settings: ExpressionsConfig,
        root: Path,
        loader: Callable[[ExpressionsConfig, Path], Any] = load_pipeline,
        cpu_threads: int = 0,
    ) -> None:
        self.settings = settings
        self.root = root
        self._loader = loader
        self._cpu_threads = cpu_threads  # 0: torch's own default
        self._pipe: Any = None
        self.loads = 0  # how many times the pipeline was loaded (a cache hit must never load it)

    @property
    def pipe(self) -> Any:
        if self._pipe is None:
            self._pipe = self._loader(self.settings, self.root)
            self.loads += 1
            if self._cpu_threads and str(getattr(self._pipe, "device", "cpu")) == "cpu":
                import torch

                torch.set_num_threads(self._cpu_threads)
                _log.info("rendering on the CPU with %d threads", self._cpu_threads)
        return self._pipe

    def render(
        self,
        portrait: Image.Image,
        mask: Image.Image,
        prompt: str,
        seed: int,
        cancel: threading.Event | None = None,
    ) -> Image.Image:
        import torch

        s = self.settings
        pipe = self.pipe

        def stop_when_cancelled(p: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if cancel is not None and cancel.is_set():
                p._interrupt = True  # diffusers' documented way to end the denoising loop early
            return kwargs

        generator = torch.Generator(device="cpu").manual_seed(seed)
        result = pipe(
            prompt=prompt,
            negative_prompt=s.negative_prompt or None,
            image=portrait.convert("RGB"),
            mask_image=mask,
            height=s.resolution,
            width=s.resolution,
            padding_mask_crop=s.crop_padding,
            num_inference_steps=s.steps,
            strength=s.strength,
            guidance_scale=s.guidance,
            generator=generator,
            callback_on_step_end=stop_when_cancelled,
        ).images[0]
        if cancel is not None and cancel.is_set():
            raise asyncio.CancelledError("render cancelled")
        return composite(portrait, result, mask)


# -- the service the engine talks to -------------------------------------------------------------------


class ExpressionService:
    """Sprite packs, the render cache and the render worker behind one `image_for` call."""

    def __init__(
        self, config: Config, store: Store, personas: PersonaLibrary, renderer: Renderer | None = None
    ) -> None:
        self.config = config
        self.settings = config.expressions
        self.store = store
        self.personas = personas
        self.cache_dir = config.resolve(self.settings.cache_dir)
        self.sprites_dir = personas.avatars / "sprites"
        self.renderer = renderer or Renderer(self.settings, config.root, cpu_threads=render_threads(config))
        self._worker = ModelWorker(limit=64, name="render worker")
        self._inflight: dict[str, asyncio.Future[Path | None]] = {}
        self._cancel = threading.Event()
        # Decoded portraits and masks of recent personas (a 4000x4000 portrait is ~110 MB decoded).
        self._source_memo: OrderedDict[str, tuple[object, tuple[Image.Image, Image.Image, str]]] = (
            OrderedDict()
        )
        # Personas whose portrait or face region cannot be rendered (already logged once), by reason.
        self._unrenderable: dict[str, str] = {}

    @property
    def pending(self) -> int:
        return self._worker.pending

    # -- inputs -----------------------------------------------------------------------------------------

    def _portrait(self, persona: Persona) -> tuple[Image.Image, bytes]:
        path = self.personas.portrait_path(persona)
        if path is None:
            raise ExpressionError(f"persona '{persona.slug}' has no portrait")
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ExpressionError(f"portrait not found: {path}") from None
        except OSError as exc:
            raise ExpressionError(f"portrait {path} cannot be read: {exc.strerror}") from None
        limit = self.config.persona.max_portrait_pixels
        portrait = decode_image(raw, f"portrait {path}", max_pixels=limit, error=ExpressionError)
        return portrait, raw

    def _sources(self, persona: Persona) -> tuple[Image.Image, Image.Image, str]:
        """Portrait, feathered mask and their content digest, memoized on the files' size and mtime so
        that a cache hit costs a stat() and a database lookup, not image work."""
        s = self.settings
        files = [self.personas.portrait_path(persona)]
        if persona.face_mask:
            files.append(self.personas.avatars / Path(persona.face_mask).name)
        stamps = tuple(_file_stamp(f) for f in files)
        key = (stamps, persona.face_box, s.mask_dilate, s.mask_blur)
        cached = self._source_memo.get(persona.slug)
        if cached is not None and cached[0] == key:
            self._source_memo.move_to_end(persona.slug)
            return cached[1]
        portrait, raw = self._portrait(persona)
        mask = face_mask(persona, portrait.size, self.personas.avatars, s.mask_dilate, s.mask_blur)
        value = (portrait, mask, _digest(raw) + _digest(mask.tobytes()))
        self._source_memo[persona.slug] = (key, value)
        self._source_memo.move_to_end(persona.slug)
        while len(self._source_memo) > MAX_DECODED_PORTRAITS:
            self._source_memo.popitem(last=False)
        return value

    def job(
        self, persona: Persona, label: str, variant: int = 0
    ) -> tuple[RenderJob, Image.Image, Image.Image]:
        """Everything that decides a render, hashed into its cache key."""
        s = self.settings
        portrait, mask, pixels_digest = self._sources(persona)
        prompt = emotion_prompt(persona, label)
        seed = seed_for(s.seed, persona.slug, label, variant)
        source = (
            pixels_digest + persona.appearance + json.dumps(dict(persona.emotion_prompts), sort_keys=True)
        )
        recipe = {
            "source": source,
            "model": s.model,
            "lora": s.lora,
            "lora_scale": s.lora_scale,
            "prompt": prompt,
            "negative": s.negative_prompt,
            "seed": seed,
            "steps": s.steps,
            "strength": s.strength,
            "guidance": s.guidance,
            "scheduler": s.scheduler,
            "size": s.resolution,
            "padding": s.crop_padding,
            "dtype": s.dtype,
        }
        key = _digest(json.dumps(recipe, sort_keys=True).encode())
        return RenderJob(persona, label, variant, prompt, seed, key, _digest(source.encode())), portrait, mask

    # -- lookups ----------------------------------------------------------------------------------------

    def sprite(self, persona: Persona, label: str, variant: int = 0) -> Path | None:
        """A hand-made sprite from an imported pack; these win over generated faces."""
        path = self.sprites_dir / persona.slug / sprite_name(label, variant)
        return path if path.is_file() else None

    async def cached(self, persona: Persona, label: str, variant: int = 0) -> Path | None:
        try:
            job, _, _ = await asyncio.to_thread(self.job, persona, label, variant)
        except ExpressionError:
            return None
        return await self._cached_file(job)

    async def _cached_file(self, job: RenderJob) -> Path | None:
        record = await self.store.render(job.key)
        return Path(record.path) if record is not None and Path(record.path).is_file() else None

    def _portrait_file(self, persona: Persona) -> Path | None:
        portrait = self.personas.portrait_path(persona)
        return portrait if portrait is not None and portrait.is_file() else None

    async def image_for(self, persona: Persona, label: str) -> ExpressionImage:
        """The face for an emotion now; on a cache miss, also a future for the fresh render."""
        sprite = self.sprite(persona, label)
        if sprite is not None:
            return ExpressionImage(sprite, label)
        if not (self.settings.enabled and self.settings.model):
            return ExpressionImage(self.sprite(persona, "neutral") or self._portrait_file(persona), label)
        try:
            job, _, _ = await asyncio.to_thread(self.job, persona, label)
        except ExpressionError as exc:
            # A persona problem (no face region, unreadable portrait) fails every render the same way:
            # say so once, then keep showing the best image without retrying each turn.
            if self._unrenderable.get(persona.slug) != str(exc):
                self._unrenderable[persona.slug] = str(exc)
                _log.warning("not rendering faces for %s: %s", persona.slug, exc)
            return ExpressionImage(self.sprite(persona, "neutral") or self._portrait_file(persona), label)
        ready = await self._cached_file(job)
        if ready is not None:
            return ExpressionImage(ready, label)
        neutral = (
            None
            if label == "neutral"
            else self.sprite(persona, "neutral") or await self.cached(persona, "neutral")
        )
        now = neutral or self._portrait_file(persona)
        try:
            fresh = self.render_in_background(persona, label)
        except BusyError:
            return ExpressionImage(now, label)
        return ExpressionImage(now, label, fresh)

    # -- rendering --------------------------------------------------------------------------------------

    def render_in_background(
        self, persona: Persona, label: str, variant: int = 0
    ) -> asyncio.Future[Path | None]:
        """Start (or join) a render; the future gives the new file, or None if it failed."""
        inflight_key = f"{persona.slug}/{label}/{variant}"
        existing = self._inflight.get(inflight_key)
        if existing is not None and not existing.done():
            return existing

        async def run() -> Path | None:
            try:
                return await self.render(persona, label, variant)
            except (ExpressionError, BusyError, TimeoutError) as exc:
                _log.warning(
                    "render of %s/%s failed (%s); showing the best available image", persona.slug, label, exc
                )
            except Exception:
                _log.exception(
                    "render of %s/%s failed; showing the best available image", persona.slug, label
                )
            return None

        task = asyncio.ensure_future(run())
        self._inflight[inflight_key] = task
        task.add_done_callback(lambda _: self._inflight.pop(inflight_key, None))
        return task

    async def render(self, persona: Persona, label: str, variant: int = 0, *, force: bool = False) -> Path:
        """Render (or fetch from cache) one face. Raises ExpressionError / TimeoutError on failure."""
        if not self.settings.model:
            raise ExpressionError("no inpainting model configured: set [expressions] model in config.toml")
        job, portrait, mask = await asyncio.to_thread(self.job, persona, label, variant)
        record = await self.store.render(job.key)
        if record is not None and Path(record.path).is_file() and not force:
            return Path(record.path)
        await self._drop_stale(persona.slug, job.source_hash)
        cancel = threading.Event()
        future = self._worker.submit(lambda: self._render_blocking(job, portrait, mask, cancel))
        try:
            path = await asyncio.wait_for(asyncio.wrap_future(future), self.settings.timeout_seconds)
        except (TimeoutError, asyncio.CancelledError):
            cancel.set()  # the worker stops at the next denoising step
            raise
        await self.store.put_render(
            RenderRecord(job.key, persona.slug, label, variant, str(path), job.source_hash)
        )
        return path

    def _render_blocking(
        self, job: RenderJob, portrait: Image.Image, mask: Image.Image, cancel: threading.Event
    ) -> Path:
        if cancel.is_set() or self._cancel.is_set():
            raise asyncio.CancelledError("render cancelled before it started")
        try:
            image = self.renderer.render(portrait, mask, job.prompt, job.seed, cancel)
        except Exception as exc:
            import torch

            if isinstance(exc, torch.OutOfMemoryError):
                raise ExpressionError(
                    "the GPU ran out of memory while rendering; try cpu_offload = true"
                ) from None
            raise
        folder = self.cache_dir / job.persona.slug
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{job.label}-{job.variant}-{job.key[:16]}.png"
        atomic_write(path, png_bytes(image))
        return path

    async def _drop_stale(self, persona: str, source_hash: str) -> None:
        for record in await self.store.drop_stale_renders(persona, source_hash):
            Path(record.path).unlink(missing_ok=True)

    async def close(self) -> None:
        self._cancel.set()
        for task in list(self._inflight.values()):
            task.cancel()
        await asyncio.to_thread(self._worker.shutdown)

    # -- sprite packs -----------------------------------------------------------------------------------

    def import_sprites(
        self, persona: Persona, files: Sequence[tuple[str, bytes | Callable[[], bytes]]]
    ) -> SpriteImport:
        """Store hand-made sprites (name, PNG bytes or a function reading them) for a persona.
        SillyTavern's label names (GoEmotions' 28) and common synonyms are mapped onto the persona's
        labels. Files are read and checked one at a time (only their re-encoded PNGs are kept) and
        nothing is written unless every one is good; unused files are reported with the reason."""
        if len(files) > MAX_PACK_FILES:
            raise ExpressionError(f"sprite pack has {len(files)} files, more than {MAX_PACK_FILES}")
        plan = plan_sprites(persona.labels, [Path(name).name.lower() for name, _ in files])
        accepted: list[tuple[str, bytes]] = []
        for name, data in files:
            base = Path(name).name.lower()
            target = plan.stored.get(base)
            if target is None:
                continue
            raw = data() if callable(data) else data
            if len(raw) > MAX_SPRITE_BYTES:
                raise ExpressionError(f"sprite {base} is {len(raw)} bytes, more than {MAX_SPRITE_BYTES}")
            limit = self.config.persona.max_portrait_pixels
            image = decode_image(raw, f"sprite {base}", max_pixels=limit, error=ExpressionError)
            accepted.append((target, png_bytes(image.convert("RGBA"))))
        if not accepted:
            raise ExpressionError(
                f"no usable sprites found (expected files named after {persona.slug}'s emotions, like "
                f"joy.png or joy-1.png; unused: {', '.join(plan.unused) or 'none'})"
            )
        folder = self.sprites_dir / persona.slug
        folder.mkdir(parents=True, exist_ok=True)
        write_all([(folder / target, encoded) for target, encoded in accepted])
        return plan

    async def pack_files(self, persona: Persona) -> dict[str, Path]:
        """SillyTavern-style sprite file names -> files: cached renders, overridden by hand-made sprites."""
        files: dict[str, Path] = {}
        for record in await self.store.renders_for(persona.slug):
            if Path(record.path).is_file():
                files[sprite_name(record.label, record.variant)] = Path(record.path)
        folder = self.sprites_dir / persona.slug
        if folder.is_dir():
            for path in folder.glob("*.png"):
                files[path.name] = path
        return dict(sorted(files.items()))


def contact_sheet(
    faces: Sequence[tuple[str, Path | Image.Image]], thumb: int = 256, columns: int = 5
) -> Image.Image:
    """A labelled grid of faces, so a person can check all expressions at a glance."""
    from PIL import ImageDraw

    columns = max(1, min(columns, len(faces)))
    rows = (len(faces) + columns - 1) // columns
    caption = 24
    sheet = Image.new("RGB", (columns * thumb, rows * (thumb + caption)), (24, 24, 28))
    draw = ImageDraw.Draw(sheet)
    for i, (label, source) in enumerate(faces):
        image = Image.open(source) if isinstance(source, Path) else source
        image = image.convert("RGB")
        image.thumbnail((thumb, thumb))
        x, y = (i % columns) * thumb, (i // columns) * (thumb + caption)
        sheet.paste(image, (x + (thumb - image.width) // 2, y + (thumb - image.height) // 2))
        draw.text((x + 8, y + thumb + 5), label, fill=(235, 235, 240))
    return sheet
