"""Models whose chat template refuses some conversations (Mistral's and Gemma's take only user and assistant
turns alternating from a user turn, Gemma's no system turn), a model with no template (a base model) and a
template that refuses everything: the bundled GGUF with its template swapped, loaded by llama.cpp."""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path

import pytest

from bot.config import ModelConfig
from bot.emotion.llm_judge import LLMJudge
from bot.errors import ModelError
from bot.llm import LlamaBackend, bundled_model_path, unmarked
from bot.llm.gguf import read_metadata
from bot.llm.template import OPENING_USER_TURN, chat_formatter, render_adapted

pytestmark = pytest.mark.slow

# As the models' own templates do it, in fewer characters (they replace SmolLM2's 368 in place).
MISTRAL = (
    "{{ bos_token }}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
)
GEMMA = (
    "{% if messages[0].role == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
    "{% for m in messages %}{% if (m.role=='user')!=(loop.index0%2==0) %}"
    "{{ raise_exception('alternate roles') }}{% endif %}<start_of_turn>"
    "{{ m.role|replace('assistant','model') }}\n{{m.content|trim}}<end_of_turn>\n"
    "{% endfor %}{{ '<start_of_turn>model\n' if add_generation_prompt }}"
)
REFUSES_ALL = "{{ raise_exception('this template renders nothing') }}"

CONVERSATION = [
    {"role": "system", "content": "You are Mira, a lighthouse keeper."},
    {"role": "assistant", "content": "*waves* Welcome to the lighthouse!"},
    {"role": "user", "content": "Ana: Hello Mira."},
    {"role": "user", "content": "Bo: Is the lamp lit?"},  # two members in a row
    {"role": "system", "content": "Mira answers briefly."},  # a note after the turns
]


@cache
def _bundled() -> tuple[bytes, bytes]:
    path = bundled_model_path()
    return path.read_bytes(), read_metadata(path)["tokenizer.chat_template"].encode()


def model_with_template(folder: Path, template: str | None) -> Path:
    """The bundled model with `template` as its chat template, or with none (its key renamed)."""
    data, shipped = _bundled()
    if template is None:
        data = data.replace(b"tokenizer.chat_template", b"tokenizer.chat_templatX", 1)
    else:
        # Padded to the shipped template's length with a Jinja comment, so the file's layout is unchanged.
        pad = len(shipped) - len(template.encode())
        assert pad >= 4 and data.count(shipped) == 1
        data = data.replace(shipped, template.encode() + b"{#" + b"-" * (pad - 4) + b"#}")
    path = folder / "model.gguf"
    path.write_bytes(data)
    return path


def model_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("model")}


def test_a_strict_template_gets_the_conversation_alternating_with_nothing_lost() -> None:
    strict = chat_formatter(MISTRAL, "</s>", "<s>")
    text, shape = render_adapted(lambda m: str(strict(messages=m).prompt), CONVERSATION)
    assert shape == 2  # alternating, the system text in the first user turn (template.SHAPES)
    assert text == (
        f"<s>[INST] You are Mira, a lighthouse keeper.\n\n{OPENING_USER_TURN} [/INST]"
        "*waves* Welcome to the lighthouse!</s>"
        "[INST] Ana: Hello Mira.\n\nBo: Is the lamp lit?\n\n[Mira answers briefly.] [/INST]"
    )
    # A conversation the template takes is rendered as it is (shape 0).
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    rendered = render_adapted(lambda m: str(strict(messages=m).prompt), plain)
    assert rendered == ("<s>[INST] Hi [/INST]Hello</s>", 0)


@pytest.mark.parametrize(("template", "opening"), [(MISTRAL, "[INST] "), (GEMMA, "<start_of_turn>user\n")])
async def test_a_model_whose_template_wants_alternating_turns_loads_and_chats(
    tmp_path: Path, template: str, opening: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await LlamaBackend.load(
        ModelConfig(path=str(model_with_template(tmp_path, template)), max_reply_tokens=8, temperature=0.0)
    )
    try:
        prompt = unmarked(backend.render(CONVERSATION))
        assert prompt.removeprefix("<|im_start|>").startswith(opening), prompt  # after the model's BOS
        for message in CONVERSATION:
            assert prompt.count(message["content"]) == 1, (message, prompt)
        # The shape the template took is where the next render starts: one render, not one per shape.
        renders: list[object] = []
        as_is = backend._render_as_is
        monkeypatch.setattr(backend, "_render_as_is", lambda m: renders.append(m) or as_is(m))
        assert unmarked(backend.render(CONVERSATION)) == prompt
        assert len(renders) == 1
        reply = "".join([c async for c in backend.generate(backend.render(CONVERSATION)).chunks()])
        assert reply.strip()
        # The emotion question (the conversation, the reply, a question) and its calibration
        # (system turn, a content-free reply, the question) are rendered and answered too.
        labels = ["joy", "sadness", "neutral"]
        judged = await LLMJudge(backend).probabilities(CONVERSATION[:4], reply, "Mira", labels)
        assert set(judged) == set(labels) and sum(judged.values()) == pytest.approx(1.0)
    finally:
        await backend.close()


async def test_a_model_without_a_chat_template_is_refused_before_it_loads(tmp_path: Path) -> None:
    before = model_threads()
    path = model_with_template(tmp_path, None)
    refused = r"model\.gguf has no chat template .*: often a base model; use its chat or instruct version"
    with pytest.raises(ModelError, match=refused):
        await LlamaBackend.load(ModelConfig(path=str(path)))
    assert model_threads() == before


async def test_a_template_that_refuses_every_conversation_is_a_clear_error_and_lets_the_model_go(
    tmp_path: Path,
) -> None:
    before = model_threads()
    path = model_with_template(tmp_path, REFUSES_ALL)
    refused = r"model\.gguf: its chat template renders no conversation: this template renders nothing"
    with pytest.raises(ModelError, match=refused):
        await LlamaBackend.load(ModelConfig(path=str(path)))
    assert model_threads() == before  # the worker thread (and the model it held) let go
