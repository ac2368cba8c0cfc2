"""The service the engine talks to: the face for an emotion now and a render in the background on a
cache miss, with its cache on disk. Which face wins: a hand-made sprite, then a diffusion render, then a
face drawn over the portrait (`drawn`), then the plain portrait.

A render never fails a chat: any pipeline error falls back to the best available image with a log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from bot.config import Config
from bot.errors import BusyError, ExpressionError
from bot.expressions.backends import RenderBackend, StepCallback, make_backend
from bot.expressions.drawn import look_for
from bot.expressions.drawn_cache import DrawnFaces, file_stamp
from bot.expressions.recipe import RenderJob, digest, emotion_prompt, seed_for
from bot.expressions.region import face_mask, read_portrait
from bot.expressions.sprites import SpriteImport, sprite_name, store_sprites
from bot.files import atomic_write, png_bytes
from bot.personas import Persona, PersonaLibrary
from bot.store import RenderRecord, Store
from bot.workers import ModelWorker, maybe_await

_log = logging.getLogger(__name__)

MAX_DECODED_PORTRAITS = 4  # personas whose decoded portrait and mask stay in memory


@dataclass(frozen=True)
class ExpressionImage:
    """The face to show now, and (on a cache miss) a render that will replace it when ready."""

    path: Path | None
    label: str
    fresh: asyncio.Future[Path | None] | None = None
    box: tuple[int, int, int, int] | None = None  # where the face lies in the picture shown


# -- the diffusers pipeline --------------------------------------------------------------------------


class ExpressionService:
    """Sprite packs, the render cache and the render worker behind one `image_for` call."""

    def __init__(
        self, config: Config, store: Store, personas: PersonaLibrary, renderer: RenderBackend | None = None
    ) -> None:
        self.config = config
        self.settings = config.expressions
        self.store = store
        self.personas = personas
        self.cache_dir = config.resolve(self.settings.cache_dir)
        self.sprites_dir = personas.avatars / "sprites"
        self.renderer = renderer or make_backend(config)
        # In this process, one render at a time; a server gets up to its configured number at once.
        threads = self.settings.max_concurrent if self.settings.on_server else 1
        self._worker = ModelWorker(limit=64, name="render worker", threads=threads)
        self._inflight: dict[str, asyncio.Future[Path | None]] = {}
        self._cancel = threading.Event()
        # Decoded portraits and masks of recent personas (a 4000x4000 portrait is ~110 MB decoded).
        self._source_memo: OrderedDict[str, tuple[object, tuple[Image.Image, Image.Image, str]]] = (
            OrderedDict()
        )
        # Personas whose portrait or face region cannot be rendered (already logged once), by reason.
        self._unrenderable: dict[str, str] = {}
        self.drawn_faces = DrawnFaces(
            self.cache_dir,
            personas,
            self._portrait,
            self._warn_once,
            (self.settings.framing_min_face, self.settings.framing_face),
        )

    @property
    def pending(self) -> int:
        return self._worker.pending

    # -- inputs -----------------------------------------------------------------------------------------

    def _portrait(self, persona: Persona) -> tuple[Image.Image, bytes]:
        return read_portrait(self.personas, persona, self.config.persona.max_portrait_pixels)

    def _sources(self, persona: Persona) -> tuple[Image.Image, Image.Image, str]:
        """Portrait, feathered mask and their content digest, memoized on the files' size and mtime so
        that a cache hit costs a stat() and a database lookup, not image work."""
        s = self.settings
        files = [self.personas.portrait_path(persona)]
        if persona.face_mask:
            files.append(self.personas.avatars / Path(persona.face_mask).name)
        stamps = tuple(file_stamp(f) for f in files)
        key = (stamps, persona.face_box, s.mask_dilate, s.mask_blur)
        cached = self._source_memo.get(persona.slug)
        if cached is not None and cached[0] == key:
            self._source_memo.move_to_end(persona.slug)
            return cached[1]
        portrait, raw = self._portrait(persona)
        mask = face_mask(persona, portrait.size, self.personas.avatars, s.mask_dilate, s.mask_blur)
        value = (portrait, mask, digest(raw) + digest(mask.tobytes()))
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
        if s.on_server:
            # Another server or checkpoint draws another face (diffusers' keys stay what they were).
            recipe |= {"backend": s.backend, "server": s.server_url}
        key = digest(json.dumps(recipe, sort_keys=True).encode())
        return RenderJob(persona, label, variant, prompt, seed, key, digest(source.encode())), portrait, mask

    # -- lookups ----------------------------------------------------------------------------------------

    def kind_of_faces(self, persona: Persona) -> str:
        """Where this persona's faces come from, in a few words (for listings)."""
        kinds = []
        made = [label for label in persona.labels if self.sprite(persona, label) is not None]
        if len(made) == len(persona.labels):
            return "hand-made faces"
        if made:
            kinds.append(f"hand-made ({len(made)} of {len(persona.labels)})")
        if self.personas.existing_portrait(persona) is None:
            return f"{kinds[0]} faces" if kinds else "no portrait"
        if self.settings.renders:
            kinds.append("rendered")
        if self.settings.drawn:
            kinds.append("drawn")
        return (", ".join(kinds) + " faces") if kinds else "portrait only"

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
        return self.personas.existing_portrait(persona)

    async def face_source(self, persona: Persona, label: str) -> tuple[Path | None, str]:
        """The face `label` shows now and where it comes from ("sprite", "render", "drawn", "portrait", or
        "none" without a portrait), never starting a render: for pages that list every face."""
        sprite = self.sprite(persona, label)
        if sprite is not None:
            return sprite, "sprite"
        if self.settings.renders and (rendered := await self.cached(persona, label)) is not None:
            return (await self._shown(persona, label, rendered)).path, "render"
        portrait = self._portrait_file(persona)
        if portrait is None:
            return None, "none"
        if self.settings.drawn and (drawn := await self.drawn(persona, label)) is not None:
            look = look_for(label, persona.labels)
            # A look that draws nothing is the portrait (framed where the persona's faces are).
            return drawn, "drawn" if drawn != portrait and (look.marks or look.symbol) else "portrait"
        return (await self._shown(persona, label, portrait)).path, "portrait"

    async def image_for(self, persona: Persona, label: str) -> ExpressionImage:
        """The face for an emotion now, in the persona's frame; on a cache miss, also a future for the
        fresh render."""
        sprite = self.sprite(persona, label)
        if sprite is not None:
            return ExpressionImage(sprite, label, box=persona.face_box)  # hand-made: shown as made
        if not (self.settings.enabled and self.settings.renders):
            return await self._shown(persona, label, await self._stand_in(persona, label))
        try:
            job, _, _ = await asyncio.to_thread(self.job, persona, label)
        except ExpressionError as exc:
            # A persona problem (no face region, unreadable portrait) fails every render the same way:
            # say so once, then keep showing the best image without retrying each turn.
            self._warn_once(persona, f"not rendering faces for {persona.slug}: {exc}")
            return await self._shown(persona, label, await self._stand_in(persona, label))
        ready = await self._cached_file(job)
        if ready is not None:
            return await self._shown(persona, label, ready)
        now = await self._stand_in(persona, label, rendered_neutral=True)
        try:
            fresh = self.render_in_background(persona, label)
        except BusyError:
            return await self._shown(persona, label, now)
        return await self._shown(persona, label, now, fresh)

    async def _shown(
        self,
        persona: Persona,
        label: str,
        path: Path | None,
        fresh: asyncio.Future[Path | None] | None = None,
    ) -> ExpressionImage:
        """The image as shown (a render or the portrait in the persona's frame; drawn faces are drawn
        framed, sprites shown as made), with the face's place in it."""
        if path is None or path == self.sprite(persona, "neutral"):
            return ExpressionImage(path, label, fresh, persona.face_box)
        shown, box = await asyncio.to_thread(self.drawn_faces.shown, persona, path)
        if fresh is not None:
            fresh = asyncio.ensure_future(self._framed_later(persona, fresh))
        return ExpressionImage(shown, label, fresh, box)

    async def _framed_later(self, persona: Persona, fresh: asyncio.Future[Path | None]) -> Path | None:
        path = await asyncio.shield(fresh)
        return None if path is None else (await asyncio.to_thread(self.drawn_faces.shown, persona, path))[0]

    async def _stand_in(self, persona: Persona, label: str, rendered_neutral: bool = False) -> Path | None:
        """The face to show where there is no sprite or render for `label`: the drawn face, or (drawn
        faces off) the neutral sprite, the cached neutral render (when renders can be looked up) or the
        portrait."""
        if self.settings.drawn and (drawn := await self.drawn(persona, label)) is not None:
            return drawn
        neutral = self.sprite(persona, "neutral")
        if neutral is None and rendered_neutral and label != "neutral":
            neutral = await self.cached(persona, "neutral")
        return neutral or self._portrait_file(persona)

    def _warn_once(self, persona: Persona, why: str) -> None:
        if self._unrenderable.get(persona.slug) != why:
            self._unrenderable[persona.slug] = why
            _log.warning("%s", why)

    # -- drawn faces ------------------------------------------------------------------------------------

    async def drawn(self, persona: Persona, label: str) -> Path | None:
        """The drawn face for `label` (the portrait itself where its look draws nothing); None when the
        persona has no readable portrait."""
        try:
            return await asyncio.to_thread(self.drawn_faces.face, persona, label)
        except ExpressionError as exc:
            self._warn_once(persona, f"not drawing faces for {persona.slug}: {exc}")
            return None

    # -- rendering --------------------------------------------------------------------------------------

    async def render_all(
        self,
        persona: Persona,
        labels: Sequence[str],
        variants: int = 1,
        on_progress: Callable[[int, int, str], Awaitable[None] | None] | None = None,
        on_step: StepCallback | None = None,
        force: bool = False,
    ) -> list[tuple[str, Path]]:
        """Every label x variant: the hand-made sprite where there is one, else a render (cached ones
        come straight back), else (no inpainting model) the drawn face, one per label. Names are
        SillyTavern's (joy, joy-1...). `on_progress(done, total, label)` is called before each face and
        once at the end; `on_step(done, total)` hears each denoising step, on the render thread.
        `force` renders again what is cached (sprites still win)."""
        drawing = not self.settings.renders and self.settings.drawn
        jobs = [(label, v) for label in labels for v in range(1 if drawing else variants)]
        faces: list[tuple[str, Path]] = []
        for i, (label, variant) in enumerate(jobs):
            if on_progress is not None:
                await maybe_await(on_progress(i, len(jobs), label))
            path = self.sprite(persona, label, variant)
            if path is None and drawing:
                path = await asyncio.to_thread(self.drawn_faces.face, persona, label)
                if path is None:
                    raise ExpressionError(f"persona '{persona.slug}' has no portrait to draw faces on")
            path = path or await self.render(persona, label, variant, force=force, on_step=on_step)
            faces.append((sprite_name(label, variant).removesuffix(".png"), path))
        if on_progress is not None:
            await maybe_await(on_progress(len(jobs), len(jobs), "done"))
        return faces

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

    async def render(
        self,
        persona: Persona,
        label: str,
        variant: int = 0,
        *,
        force: bool = False,
        on_step: StepCallback | None = None,
    ) -> Path:
        """Render (or fetch from cache) one face. Raises ExpressionError on failure (a timeout too)."""
        if not self.settings.renders:
            raise ExpressionError(
                "no inpainting model configured: set [expressions] model (or an image server's backend)"
                " in config.toml"
            )
        job, portrait, mask = await asyncio.to_thread(self.job, persona, label, variant)
        record = await self.store.render(job.key)
        if record is not None and Path(record.path).is_file() and not force:
            return Path(record.path)
        await self._drop_stale(persona.slug, job.source_hash)
        cancel = threading.Event()
        try:
            path = await self._worker.run_limited(
                lambda: self._render_blocking(job, portrait, mask, cancel, on_step),
                self.settings.timeout_seconds,
            )
        except TimeoutError:
            cancel.set()  # the worker stops at the next denoising step, a server request at once
            raise ExpressionError(
                f"the render of {persona.slug}/{label} took longer than {self.settings.timeout_seconds:g} s:"
                " raise [expressions] timeout_seconds, or lower steps or resolution"
            ) from None
        except asyncio.CancelledError:
            cancel.set()
            raise
        await self.store.put_render(
            RenderRecord(job.key, persona.slug, label, variant, str(path), job.source_hash)
        )
        return path

    def _render_blocking(
        self,
        job: RenderJob,
        portrait: Image.Image,
        mask: Image.Image,
        cancel: threading.Event,
        on_step: StepCallback | None = None,
    ) -> Path:
        if cancel.is_set() or self._cancel.is_set():
            raise asyncio.CancelledError("render cancelled before it started")
        # Each backend says in its own line what ran out of memory and what to change.
        image = self.renderer.render(portrait, mask, job.prompt, job.seed, cancel, on_step)
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
        """Store a sprite pack for a persona (see `store_sprites`)."""
        return store_sprites(
            self.sprites_dir / persona.slug, persona, files, self.config.persona.max_portrait_pixels
        )

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
