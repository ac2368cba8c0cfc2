"""The diffusers inpainting pipeline: loading it from a hub id, a folder or one .safetensors file, and
running one render (on the render worker thread only)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from bot.config import CPUS, Config, ExpressionsConfig, decode_threads
from bot.errors import ExpressionError
from bot.expressions.checkpoints import checkpoint_kind, folder_kind
from bot.expressions.region import composite

_log = logging.getLogger(__name__)
StepCallback = Callable[[int, int], None]  # denoising steps done, steps in all


def pick_device(wanted: str) -> str:
    import torch

    if wanted != "auto":
        return wanted
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_pipeline(settings: ExpressionsConfig, root: Path) -> Any:
    """Load the inpainting pipeline from a hub id, a diffusers folder or a single .safetensors file:
    SD 1.x, 2.x or SDXL, base or inpainting, each in its own pipeline (told apart before loading)."""
    import torch

    device = pick_device(settings.device)
    dtype_name = settings.dtype if settings.dtype != "auto" else ("float32" if device == "cpu" else "float16")
    dtype = getattr(torch, dtype_name)
    name = settings.model
    local = _resolve(name, root)
    looks_like_path = (
        name.startswith((".", "/", "~")) or name.endswith((".safetensors", ".ckpt")) or local.exists()
    )
    try:
        if looks_like_path and not local.exists():
            raise ExpressionError(f"inpainting model not found: {local}")
        if local.is_file():
            pipe = _from_single_file(local, settings, root, dtype)
        else:
            family = ""  # a hub id: diffusers reads what it is
            if local.is_dir():
                kind = folder_kind(local)  # a Flux or SD3 folder is refused before diffusers reads it
                _log.info("%s: %s", local.name, kind.describe())
                family = kind.family
            from diffusers import AutoPipelineForInpainting

            pipe = AutoPipelineForInpainting.from_pretrained(
                str(local) if local.is_dir() else name,
                local_files_only=settings.local_files_only or local.is_dir(),
                torch_dtype=dtype,
                variant=_variant(local) if local.is_dir() else None,
                **_no_safety_checker(family),
            )
    except ExpressionError:
        raise
    except Exception as exc:  # diffusers raises many types (OSError, EnvironmentError, ValueError...)
        if settings.local_files_only and not looks_like_path:
            raise ExpressionError(
                f"inpainting model {name!r} is not downloaded and [expressions] local_files_only = true:"
                " set local_files_only = false once to download it, or point [expressions] model at a"
                " folder or a .safetensors file on disk"
            ) from None
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


def _resolve(name: str, root: Path) -> Path:
    local = Path(name).expanduser()
    return local if local.is_absolute() else root / local


def _from_single_file(path: Path, settings: ExpressionsConfig, root: Path, dtype: Any) -> Any:
    if path.suffix != ".safetensors":
        raise ExpressionError(f"{path}: only .safetensors checkpoints are loaded (pickles can run code)")
    kind = checkpoint_kind(path)
    _log.info("%s: %s", path.name, kind.describe())
    if not kind.inpainting:
        _log.warning("%s is not an inpainting checkpoint; faces will blend less cleanly", path.name)
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline

    options: dict[str, Any] = {"torch_dtype": dtype, "local_files_only": settings.local_files_only}
    if settings.model_config:
        # The base model's configuration (a diffusers folder or hub id): what a single file lacks, so that
        # nothing needs the hub.
        config = _resolve(settings.model_config, root)
        options["config"] = str(config) if config.exists() else settings.model_config
    pipeline = StableDiffusionXLInpaintPipeline if kind.family == "sdxl" else StableDiffusionInpaintPipeline
    return pipeline.from_single_file(str(path), **options, **_no_safety_checker(kind.family))


def _variant(folder: Path) -> str | None:
    """ "fp16" for a folder that holds only half-precision weight files (what `./run setup` downloads)."""
    unet = folder / "unet"
    if any(unet.glob("*.fp16.safetensors")) and not (unet / "diffusion_pytorch_model.safetensors").exists():
        return "fp16"
    return None


def _no_safety_checker(family: str) -> dict[str, Any]:
    """SD 1.x/2.x pipelines take a safety checker (none here: it blanks faces it misjudges); SDXL has none
    to switch off."""
    if family == "sdxl":
        return {}
    return {"safety_checker": None, "requires_safety_checker": False}


def native_resolution(pipe: Any) -> int:
    """The size a model was trained at (512 for SD 1.x, 768 for SD 2.x at 768, 1024 for SDXL)."""
    return int(pipe.unet.config.sample_size) * int(getattr(pipe, "vae_scale_factor", 8))


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
        self.requests = 0  # renders asked for

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
        on_step: StepCallback | None = None,
    ) -> Image.Image:
        """Redraw the masked face. `on_step(done, total)` hears each denoising step (on this thread)."""
        import torch

        self.requests += 1
        try:
            return self._render(portrait, mask, prompt, seed, cancel, on_step)
        except torch.OutOfMemoryError:
            raise ExpressionError(
                "the GPU ran out of memory while rendering; try cpu_offload = true"
            ) from None

    def _render(
        self,
        portrait: Image.Image,
        mask: Image.Image,
        prompt: str,
        seed: int,
        cancel: threading.Event | None,
        on_step: StepCallback | None,
    ) -> Image.Image:
        import torch

        s = self.settings
        pipe = self.pipe  # loading can run out of memory too

        def stop_when_cancelled(p: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if cancel is not None and cancel.is_set():
                p._interrupt = True  # diffusers' documented way to end the denoising loop early
            if on_step is not None:
                # `strength` < 1 skips the first steps: the pipeline knows how many it runs.
                on_step(step + 1, int(getattr(p, "num_timesteps", 0) or s.steps))
            return kwargs

        size = s.resolution or native_resolution(pipe)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        result = pipe(
            prompt=prompt,
            negative_prompt=s.negative_prompt or None,
            image=portrait.convert("RGB"),
            mask_image=mask,
            height=size,
            width=size,
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
