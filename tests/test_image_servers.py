"""Image servers as the renderer: ComfyUI (a real ComfyUI server process, on the CPU) and AUTOMATIC1111 /
Forge (a local server that holds every request to AUTOMATIC1111's own img2img model and inpaints with a
real tiny diffusers pipeline). Through either, every pixel outside the bot's mask is the portrait's."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bot.config import Config, load_config
from bot.errors import ConfigError, ExpressionError
from bot.expressions import ExpressionService, face_mask
from bot.expressions.backends.a1111 import A1111Backend, img2img_request
from bot.expressions.backends.comfyui import ComfyUIBackend
from bot.expressions.backends.crop import face_crop, server_resolution
from bot.personas import Persona, PersonaLibrary
from bot.store import Store

from .support.a1111 import A1111, a1111_server, diffusers_inpainter, img2img_problems
from .support.comfyui import BROKEN_CHECKPOINT, CHECKPOINT, ComfyServer, comfyui_server
from .support.configs import write_config
from .support.local_http import free_port

SERVER_SETTINGS = "resolution = 64\nsteps = 2\nmask_dilate = 2\nmask_blur = 3\ncrop_padding = 8\n"
CHECKPOINTS = [
    {
        "title": "anything-v5-inpainting.safetensors [4a3b2c1d]",
        "model_name": "anything-v5-inpainting",
        "hash": "4a3b2c1d",
        "sha256": None,
        "filename": "/webui/models/Stable-diffusion/anything-v5-inpainting.safetensors",
        "config": None,
    },
    {
        "title": "ponyDiffusionV6XL.safetensors [67ab2fd8ec]",
        "model_name": "ponyDiffusionV6XL",
        "hash": "67ab2fd8ec",
        "sha256": None,
        "filename": "/webui/models/Stable-diffusion/ponyDiffusionV6XL.safetensors",
        "config": None,
    },
]


def server_config(folder: Path, backend: str, url: str, extra: str = "") -> Config:
    settings = f'[expressions]\nbackend = "{backend}"\nbase_url = "{url}"\n{SERVER_SETTINGS}{extra}'
    return load_config(write_config(folder, settings, sprites=False))


@pytest.fixture
async def open_service() -> AsyncIterator[list[ExpressionService]]:
    """Services a test opens, closed (with their stores) after it."""
    opened: list[ExpressionService] = []
    yield opened
    for service in opened:
        await service.close()
        await service.store.close()


async def make_service(config: Config, opened: list[ExpressionService]) -> ExpressionService:
    store = await Store.open(config.resolve(config.store.path))
    service = ExpressionService(config, store, PersonaLibrary.from_config(config))
    opened.append(service)
    return service


def assert_only_face_changed(service: ExpressionService, persona: Persona, rendered: Path) -> None:
    s = service.settings
    portrait_path = service.personas.portrait_path(persona)
    with Image.open(portrait_path) as portrait_file:  # type: ignore[arg-type]
        portrait = portrait_file.copy()
    mask = np.asarray(face_mask(persona, portrait.size, service.personas.avatars, s.mask_dilate, s.mask_blur))
    with Image.open(rendered) as out:
        assert out.size == portrait.size and out.mode == portrait.mode
        after = np.asarray(out.convert("RGBA"))
    before = np.asarray(portrait.convert("RGBA"))
    outside = mask == 0
    assert outside.sum() > 0.5 * mask.size
    assert np.array_equal(before[outside], after[outside])  # every pixel outside the mask, exactly
    assert not np.array_equal(before[mask == 255], after[mask == 255])  # and the face was redrawn


# -- AUTOMATIC1111 / Forge ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from diffusers import StableDiffusionInpaintPipeline

    from .support.tiny_diffusion import save_tiny_pipeline

    folder = save_tiny_pipeline(tmp_path_factory.mktemp("a1111-model"))
    pipe = StableDiffusionInpaintPipeline.from_pretrained(folder, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def a1111(tiny_pipe: Any) -> Iterator[A1111]:
    with a1111_server(A1111(diffusers_inpainter(tiny_pipe), checkpoints=CHECKPOINTS)) as state:
        yield state


async def test_a1111_renders_the_face_and_keeps_the_rest(
    tmp_path: Path, a1111: A1111, open_service: list[ExpressionService]
) -> None:
    config = server_config(tmp_path, "a1111", a1111.url, 'model = "anything-v5-inpainting"\n')
    service = await make_service(config, open_service)
    mira = service.personas.load("mira")
    path = await service.render(mira, "joy")
    assert_only_face_changed(service, mira, path)
    assert a1111.rejected == [] and len(a1111.requests) == 1
    sent = a1111.requests[0]
    # The named checkpoint, by the title the server lists, for this request only.
    assert sent["override_settings"] == {"sd_model_checkpoint": CHECKPOINTS[0]["title"]}
    assert sent["override_settings_restore_afterwards"] is True
    assert (sent["seed"], sent["steps"], sent["denoising_strength"]) == (
        service.job(mira, "joy")[0].seed,
        2,
        config.expressions.strength,
    )
    assert sent["inpaint_full_res"] is True and sent["mask_blur"] == 0
    # A cache hit asks nothing of the server; the chat's own lookup finds the render too.
    assert await service.render(mira, "joy") == path
    assert (await service.image_for(mira, "joy")).path == path
    assert len(a1111.requests) == 1 and service.renderer.requests == 1


async def test_a1111_requests_hold_to_its_img2img_model(tmp_path: Path) -> None:
    config = server_config(tmp_path, "a1111", "http://127.0.0.1:7860")
    library = PersonaLibrary.from_config(config)
    mira = library.load("mira")
    with Image.open(library.portrait_path(mira)) as image:  # type: ignore[arg-type]
        portrait = image.convert("RGB")
    mask = face_mask(mira, portrait.size, library.avatars, 2, 3)
    for settings, checkpoint in (
        (config.expressions, ""),
        (dataclasses.replace(config.expressions, resolution=0, model="ponyDiffusionV6XL"), "pony [1]"),
    ):
        crop = face_crop(portrait, mask, settings.crop_padding, server_resolution(settings))
        body = img2img_request(settings, crop, "a smile", 7, checkpoint)
        assert img2img_problems(body) == []
        for key in ("init_images", "mask", "inpaint_full_res", "denoising_strength", "seed"):
            assert key in body
        assert ("override_settings" in body) == bool(checkpoint)
    # An SDXL-family name renders at 1024, others at 512, a set resolution wins.
    assert crop.image.size[0] == 1024 or crop.image.size[1] == 1024
    assert server_resolution(dataclasses.replace(config.expressions, resolution=0, model="any")) == 512
    # The check itself refuses what the server would silently drop or misread.
    assert img2img_problems({"denoise": 0.5, "steps": "2", "inpaint_full_res": 1}) == [
        "unknown key 'denoise'",
        "steps should be int, not str",
        "inpaint_full_res should be bool, not int",
    ]


async def test_a1111_credentials_from_the_environment(
    tmp_path: Path, a1111: A1111, open_service: list[ExpressionService], monkeypatch: pytest.MonkeyPatch
) -> None:
    a1111.credentials = "artist:s3cret"
    config = server_config(tmp_path, "a1111", a1111.url, 'auth_env = "RP_TEST_A1111_AUTH"\n')
    mira = PersonaLibrary.from_config(config).load("mira")
    monkeypatch.delenv("RP_TEST_A1111_AUTH", raising=False)
    service = await make_service(config, open_service)
    with pytest.raises(
        ExpressionError, match=r"\(401\): put user:password or its key in .*RP_TEST_A1111_AUTH"
    ):
        await service.render(mira, "joy")
    monkeypatch.setenv("RP_TEST_A1111_AUTH", "artist:wrong")
    service = await make_service(config, open_service)
    with pytest.raises(
        ExpressionError, match="credentials in the environment variable RP_TEST_A1111_AUTH were"
    ):
        await service.render(mira, "joy")
    monkeypatch.setenv("RP_TEST_A1111_AUTH", "artist:s3cret")
    service = await make_service(config, open_service)
    assert_only_face_changed(service, mira, await service.render(mira, "joy"))


@pytest.mark.parametrize(
    ("model", "answer", "expected"),
    [
        (
            "not-there",
            None,
            r"checkpoint 'not-there' is not on the AUTOMATIC1111 server at .* \(it has: anything-v5",
        ),
        (
            "",
            (500, {"error": "OutOfMemoryError", "detail": "", "body": "", "errors": "CUDA out of memory."}),
            r"ran out of GPU memory rendering the face: lower \[expressions\] resolution, or .*--medvram",
        ),
        ("", (404, {"detail": "Not Found"}), r"has no /sdapi/v1/img2img \(404\): .*started with --api\?"),
        (
            "",
            (500, {"error": "RuntimeError", "errors": "bad\x1b[31m thing\nhappened"}),
            r"refused the render \(500\): bad \[31m thing happened$",
        ),
    ],
)
async def test_a1111_failures_are_one_line_each(
    tmp_path: Path,
    a1111: A1111,
    open_service: list[ExpressionService],
    model: str,
    answer: tuple[int, dict[str, str]] | None,
    expected: str,
) -> None:
    a1111.fail_with = answer
    config = server_config(tmp_path, "a1111", a1111.url, f'model = "{model}"\n')
    service = await make_service(config, open_service)
    mira = service.personas.load("mira")
    with pytest.raises(ExpressionError, match=expected) as caught:
        await service.render(mira, "joy")
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)
    assert await service.store.renders_for("mira") == []  # nothing cached from a failure
    # The chat goes on with the best face at hand, saying why in the log.
    fresh = (await service.image_for(mira, "sadness")).fresh
    assert fresh is not None and await fresh is None


async def test_a1111_unreachable_and_timed_out(
    tmp_path: Path, a1111: A1111, open_service: list[ExpressionService]
) -> None:
    config = server_config(tmp_path / "gone", "a1111", f"http://127.0.0.1:{free_port()}")
    service = await make_service(config, open_service)
    with pytest.raises(
        ExpressionError, match=r"is not reachable .*: start it, or set \[expressions\] base_url"
    ):
        await service.render(service.personas.load("mira"), "joy")
    # A render that outlives timeout_seconds: the server is told to stop (its GPU is not left busy).
    a1111.hold = threading.Event()
    config = server_config(tmp_path / "slow", "a1111", a1111.url, "timeout_seconds = 1\n")
    backend = A1111Backend(config.expressions)
    mira = PersonaLibrary.from_config(config).load("mira")
    with Image.open(PersonaLibrary.from_config(config).portrait_path(mira)) as image:  # type: ignore[arg-type]
        portrait = image.convert("RGB")
    mask = face_mask(mira, portrait.size, tmp_path / "slow" / "avatars", 2, 3)
    with pytest.raises(ExpressionError, match=r"took longer than 1 s: raise \[expressions\] timeout_seconds"):
        backend.render(portrait, mask, "smile", 1)
    assert await asyncio.to_thread(a1111.interrupted.wait, 10)  # its own time out: stopped there too
    a1111.interrupted.clear()
    service = await make_service(config, open_service)
    with pytest.raises(ExpressionError, match=r"took longer than 1 s: raise \[expressions\] timeout_seconds"):
        await service.render(mira, "joy")
    assert await asyncio.to_thread(a1111.interrupted.wait, 10)


@pytest.mark.parametrize("limit", [1, 2])
async def test_a1111_requests_at_once_are_bounded(
    tmp_path: Path, a1111: A1111, open_service: list[ExpressionService], limit: int
) -> None:
    a1111.hold = threading.Event()
    config = server_config(tmp_path, "a1111", a1111.url, f"max_concurrent = {limit}\n")
    service = await make_service(config, open_service)
    mira = service.personas.load("mira")
    # The chat never waits on a render: four faces asked for come back at once, as stand-ins.
    asked = [await service.image_for(mira, label) for label in ("joy", "sadness", "anger", "fear")]
    assert all(image.fresh is not None and not image.fresh.done() for image in asked)

    def full() -> bool:
        with a1111.arrived:
            return a1111.arrived.wait_for(lambda: a1111.in_flight == limit, timeout=30)

    assert await asyncio.to_thread(full)
    a1111.hold.set()
    fresh = await asyncio.gather(*(image.fresh for image in asked if image.fresh is not None))
    assert all(path is not None for path in fresh) and len(set(fresh)) == 4
    assert a1111.peak == limit and len(a1111.requests) == 4


async def test_server_renders_have_their_own_cache_keys(tmp_path: Path) -> None:
    def key(extra: str, backend: str = "a1111", url: str = "http://127.0.0.1:7860") -> str:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        if backend == "diffusers":
            config = load_config(
                write_config(folder, f"[expressions]\n{SERVER_SETTINGS}{extra}", sprites=False)
            )
        else:
            config = server_config(folder, backend, url, extra)
        library = PersonaLibrary.from_config(config)
        service = ExpressionService(config, None, library)  # type: ignore[arg-type]  # no lookups made
        return service.job(library.load("mira"), "joy")[0].key

    keys = {
        key('model = "a"\n'),
        key('model = "b"\n'),
        key('model = "a"\n', url="http://127.0.0.1:7861"),
        key('model = "a"\n', backend="comfyui"),
        key('model = "a"\n', backend="diffusers"),
    }
    assert len(keys) == 5
    assert key('model = "a"\n') == key('model = "a"\n')


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ('backend = "a1111"\nbase_url = "127.0.0.1:7860"\n', "expressions.base_url"),
        ('backend = "comfyui"\nbase_url = "ftp://host"\n', "expressions.base_url"),
        ('backend = "a1111"\nmax_concurrent = 0\n', "expressions.max_concurrent"),
        ('backend = "a1111"\nmax_concurrent = 17\n', "expressions.max_concurrent"),
        ('backend = "invokeai"\n', "expressions.backend"),
        ("timeout_seconds = 0\n", "expressions.timeout_seconds"),
    ],
)
def test_server_settings_are_checked(tmp_path: Path, lines: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(write_config(tmp_path, f"[expressions]\n{lines}"))


def test_server_default_addresses(tmp_path: Path) -> None:
    comfy = load_config(write_config(tmp_path / "c", '[expressions]\nbackend = "comfyui"\n'))
    a1111 = load_config(write_config(tmp_path / "a", '[expressions]\nbackend = "a1111"\n'))
    assert comfy.expressions.server_url == "http://127.0.0.1:8188" and comfy.expressions.renders
    assert a1111.expressions.server_url == "http://127.0.0.1:7860" and a1111.expressions.renders


# -- ComfyUI: a real server ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    try:
        with comfyui_server(tmp_path_factory.mktemp("comfyui")) as server:
            yield server
    except RuntimeError as exc:
        why = f"no ComfyUI server could be prepared here: {exc}"
        if os.environ.get("COMFYUI_REQUIRED") == "1":
            pytest.fail(why)
        pytest.skip(why)


async def test_comfyui_renders_the_face_and_keeps_the_rest(
    tmp_path: Path, comfyui: ComfyServer, open_service: list[ExpressionService]
) -> None:
    stem = CHECKPOINT.removesuffix(".safetensors")
    config = server_config(tmp_path, "comfyui", comfyui.url, f'model = "{stem}"\n')
    service = await make_service(config, open_service)
    mira = service.personas.load("mira")
    path = await service.render(mira, "joy")
    assert_only_face_changed(service, mira, path)
    # The face and its mask went up under one content name; the result came from the server's temp files.
    uploads = sorted(p.name for p in (comfyui.log.parent / "input").iterdir())
    assert len(uploads) == 2 and uploads[0].endswith("-face.png") and uploads[1].endswith("-mask.png")
    assert any((comfyui.log.parent / "temp").iterdir())
    assert await service.render(mira, "joy") == path  # a cache hit: nothing asked of the server
    assert service.renderer.requests == 1


async def test_comfyui_failures_are_one_line_each(
    tmp_path: Path, comfyui: ComfyServer, open_service: list[ExpressionService]
) -> None:
    async def failure(model: str, url: str = comfyui.url, extra: str = "") -> str:
        folder = tmp_path / str(len(open_service))
        config = server_config(folder, "comfyui", url, f'model = "{model}"\n{extra}')
        service = await make_service(config, open_service)
        with pytest.raises(ExpressionError) as caught:
            await service.render(service.personas.load("mira"), "joy")
        assert "\n" not in str(caught.value)
        assert await service.store.renders_for("mira") == []
        return str(caught.value)

    missing = await failure("nope")
    assert missing.startswith(f"checkpoint 'nope' is not on the ComfyUI server at {comfyui.url} (it has: ")
    assert CHECKPOINT in missing and "set [expressions] model to one of them" in missing
    assert (await failure("")).startswith("set [expressions] model to the ComfyUI checkpoint to inpaint with")
    # A workflow the server refuses, in its own words (a guidance over KSampler's bound).
    stem = CHECKPOINT.removesuffix(".safetensors")
    refused = await failure(stem, extra="guidance = 150.0\n")
    assert (
        refused
        == "the ComfyUI server refused the render (400): KSampler: Value 150.0 bigger than max of 100.0 (cfg)"
    )
    # A checkpoint the server lists but cannot load: the server's own error, named by its node.
    broken = await failure(BROKEN_CHECKPOINT)
    assert broken.startswith("the ComfyUI server failed at CheckpointLoaderSimple: "), broken
    gone = await failure("x", f"http://127.0.0.1:{free_port()}")
    assert "is not reachable" in gone and "set [expressions] base_url" in gone


def test_comfyui_out_of_memory_is_named(tmp_path: Path) -> None:
    backend = ComfyUIBackend(server_config(tmp_path, "comfyui", "http://127.0.0.1:8188").expressions)
    status = {
        "status_str": "error",
        "completed": False,
        "messages": [
            ["execution_start", {"prompt_id": "1"}],
            [
                "execution_error",
                {
                    "node_type": "KSampler",
                    "exception_type": "torch.OutOfMemoryError",
                    "exception_message": "CUDA out of memory. Tried to allocate 2.00 GiB",
                },
            ],
        ],
    }
    assert (
        "ran out of GPU memory rendering the face: lower [expressions] resolution, or start ComfyUI"
        in str(backend._failed(status))
    )


def test_comfyui_abandoned_render_is_taken_off_the_server(tmp_path: Path, comfyui: ComfyServer) -> None:
    import json
    import urllib.request

    def server(path: str) -> Any:
        with urllib.request.urlopen(f"{comfyui.url}{path}", timeout=10) as answer:
            return json.loads(answer.read())

    stem = CHECKPOINT.removesuffix(".safetensors")
    config = server_config(tmp_path, "comfyui", comfyui.url, f'model = "{stem}"\n')
    backend = ComfyUIBackend(dataclasses.replace(config.expressions, steps=400))
    library = PersonaLibrary.from_config(config)
    mira = library.load("mira")
    with Image.open(library.portrait_path(mira)) as image:  # type: ignore[arg-type]
        portrait = image.convert("RGB")
    mask = face_mask(mira, portrait.size, library.avatars, 2, 3)
    cancel, pause = threading.Event(), threading.Event()

    def cancel_once_running() -> None:
        while not server("/queue")["queue_running"] and not cancel.is_set():
            pause.wait(0.1)  # the server announces nothing to this client: its queue is looked at
        cancel.set()

    watcher = threading.Thread(target=cancel_once_running)
    watcher.start()
    with pytest.raises(asyncio.CancelledError):
        backend.render(portrait, mask, "smile", 3, cancel)
    watcher.join()
    # Interrupted, not left to run its 400 steps: the server's queue empties and its history says so.
    for _ in range(200):
        queue = server("/queue")
        if not queue["queue_running"] and not queue["queue_pending"]:
            break
        pause.wait(0.1)
    assert not queue["queue_running"] and not queue["queue_pending"]
    kinds = [
        m[0] for entry in server("/history").values() for m in entry.get("status", {}).get("messages", [])
    ]
    assert "execution_interrupted" in kinds


def test_out_of_memory_is_told_by_its_words_only() -> None:
    from bot.expressions.backends.http import looks_out_of_memory

    assert looks_out_of_memory("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert looks_out_of_memory("torch.OutOfMemoryError: HIP out of memory")
    assert not looks_out_of_memory("no room for the zoom lens in bloom_xl.safetensors")
