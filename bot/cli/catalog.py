"""Which models fit the user's GPU: the card read from nvidia-smi, and a language model and an inpainting
model chosen to sit on it together (sizes are the files', the room in VRAM measured in README, "GPU")."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

NVIDIA_SMI_TIMEOUT = 10.0  # seconds; a wedged driver must not hang setup


@dataclass(frozen=True)
class Gpu:
    name: str
    vram_mb: int


@dataclass(frozen=True)
class ModelChoice:
    repo: str  # a Hugging Face repository
    files: tuple[str, ...]  # one file (a GGUF), or the patterns of a diffusers folder
    title: str
    size_gb: float  # what is downloaded
    licence: str

    @property
    def folder(self) -> bool:
        return len(self.files) != 1 or "*" in self.files[0]


@dataclass(frozen=True)
class Tier:
    min_vram_mb: int
    llm: ModelChoice
    image: ModelChoice
    n_gpu_layers: int = 999  # every layer on the GPU


# A diffusers folder's parts in half precision: what the pipeline loads, nothing else.
FP16_FOLDER = ("model_index.json", "*/config.json", "scheduler/*", "tokenizer*/*", "*/*.fp16.safetensors")
SD15_INPAINT = ModelChoice(
    "stable-diffusion-v1-5/stable-diffusion-inpainting",
    FP16_FOLDER,
    "Stable Diffusion 1.5 inpainting (fp16)",
    2.1,
    "CreativeML OpenRAIL-M",
)
SDXL_INPAINT = ModelChoice(
    "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
    FP16_FOLDER,
    "SDXL 1.0 inpainting 0.1 (fp16)",
    7.0,
    "CreativeML OpenRAIL++-M",
)
LLAMA_3B = ModelChoice(
    "bartowski/Llama-3.2-3B-Instruct-GGUF",
    ("Llama-3.2-3B-Instruct-Q4_K_M.gguf",),
    "Llama 3.2 3B Instruct, Q4_K_M",
    2.0,
    "Llama 3.2 Community License",
)
LLAMA_8B = ModelChoice(
    "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF",
    ("Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf",),
    "Llama 3.1 8B Instruct, Q4_K_M",
    4.9,
    "Llama 3.1 Community License",
)
NEMO_12B = ModelChoice(
    "bartowski/Mistral-Nemo-Instruct-2407-GGUF",
    ("Mistral-Nemo-Instruct-2407-Q4_K_M.gguf",),
    "Mistral Nemo 12B Instruct, Q4_K_M",
    7.5,
    "Apache-2.0",
)
NEMO_12B_Q6 = ModelChoice(
    "bartowski/Mistral-Nemo-Instruct-2407-GGUF",
    ("Mistral-Nemo-Instruct-2407-Q6_K.gguf",),
    "Mistral Nemo 12B Instruct, Q6_K",
    10.1,
    "Apache-2.0",
)
# Largest first. Each pair leaves room for an 8k context and the render's activations (README, "GPU":
# a Q4 7-8B model with its 8k cache takes ~6.4 GB, SD 1.5 at 512x512 2.6-2.8 GB measured; SDXL's fp16
# weights are 6.9 GB before its 1024x1024 activations, so it comes with the 24 GB card only).
TIERS = (
    Tier(22_000, NEMO_12B_Q6, SDXL_INPAINT),
    Tier(15_000, NEMO_12B, SD15_INPAINT),
    Tier(11_000, LLAMA_8B, SD15_INPAINT),
    Tier(7_000, LLAMA_3B, SD15_INPAINT),
)


MAX_VRAM_MB = 16 * 1024 * 1024  # 16 TB: far beyond any card; a larger reading is garbage


def read_gpu() -> Gpu | None:
    """The first NVIDIA GPU as nvidia-smi reports it, or None (no driver, no card, or it failed)."""
    command = shutil.which("nvidia-smi")
    if command is None:
        return None
    try:
        done = subprocess.run(
            [command, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT,
            check=True,
        )
        name, memory = done.stdout.strip().splitlines()[0].rsplit(",", 1)
        vram = float(memory.strip())
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    if not 0 < vram <= MAX_VRAM_MB:  # inf, nan, 1e400 or a negative: a reading to ignore, not a card
        return None
    return Gpu(name.strip(), int(vram))


@dataclass(frozen=True)
class CpuTier:
    """A language model for a machine without an NVIDIA GPU (faces are drawn there: an inpainting model
    on the CPU takes minutes a face). `speed` is what to expect, said to the user."""

    min_cores: int
    llm: ModelChoice
    speed: str


QWEN_1_5B = ModelChoice(
    "Qwen/Qwen2.5-1.5B-Instruct-GGUF",
    ("qwen2.5-1.5b-instruct-q4_k_m.gguf",),
    "Qwen2.5 1.5B Instruct, Q4_K_M",
    1.1,
    "Apache-2.0",
)
# Decoding reads the whole model once per token, so its speed follows memory bandwidth more than cores:
# on a desktop's dual-channel DDR4/DDR5 (25-60 GB/s in practice) a 1.1 GB model writes roughly 15-30
# tokens a second and a 2 GB one 8-15, with one core left free (decode_threads). Estimates from the
# model sizes, not measured here (this project's machine has no such models); the bundled 135M model is.
CPU_TIERS = (
    CpuTier(8, LLAMA_3B, "about 8-15 tokens a second on 8 or more cores: replies in a few seconds"),
    CpuTier(1, QWEN_1_5B, "about 15-30 tokens a second on 4-8 cores (fewer on 2): replies in seconds"),
)


def pick_cpu(cores: int) -> CpuTier:
    """The largest language model that chats at a usable speed on this many cores."""
    return next(tier for tier in CPU_TIERS if cores >= tier.min_cores)


def pick(gpu: Gpu) -> Tier | None:
    """The largest pair that fits the card, or None when even the smallest does not."""
    return next((tier for tier in TIERS if gpu.vram_mb >= tier.min_vram_mb), None)
