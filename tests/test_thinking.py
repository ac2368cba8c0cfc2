"""Thinking models: nothing of their thinking is streamed, posted, stored, judged or read back, on the
embedded backend (the real bundled model made to think by a grammar) and on the server backend (a
scripted OpenAI-compatible server streaming `<think>` and `reasoning_content`, as vLLM and llama-server
do); templates that can switch thinking off get `enable_thinking`."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.config import load_config
from bot.core import Engine
from bot.llm.thinking import ThinkingFilter, answer_only, opens_thinking
from bot.personas import PersonaLibrary
from bot.store import Store

from .support.configs import write_config

ANSWER = "Welcome, traveller."


def filtered(chunks: list[str], inside: bool = False) -> str:
    thinking = ThinkingFilter(inside)
    return "".join(thinking.feed(c) for c in chunks) + thinking.finish()


@pytest.mark.parametrize(
    ("text", "inside", "answer"),
    [
        (f"<think>Ren is lying. I'll play along.</think>\n\n{ANSWER}", False, ANSWER),
        (f"I plan.\n</think>\n{ANSWER}", True, ANSWER),  # the template opened the block
        ("<think>still thinking when the tokens ran out", False, ""),
        ("<think>cut off in the closing tag</thi", False, ""),
        (f"{ANSWER} <think>an aside</think>Go on.", False, f"{ANSWER} Go on."),
        (
            "x < y, and <thinking> is not the tag; <b>bold</b>",
            False,
            "x < y, and <thinking> is not the tag; <b>bold</b>",
        ),
        (f"{ANSWER} <thi", False, f"{ANSWER} <thi"),  # an unfinished tag at the end was text
    ],
)
def test_the_answer_survives_every_split_of_the_stream(text: str, inside: bool, answer: str) -> None:
    assert filtered([text], inside) == answer
    for cut in range(len(text) + 1):
        assert filtered([text[:cut], text[cut:]], inside) == answer, cut
    for a, b in itertools.combinations(range(0, len(text) + 1, 3), 2):
        assert filtered([text[:a], text[a:b], text[b:]], inside) == answer, (a, b)
    assert filtered(list(text), inside) == answer  # a character at a time, as tokens can come


def test_a_template_that_opens_the_block_is_noticed() -> None:
    assert opens_thinking("<|im_start|>assistant\n<think>\n")
    assert not opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not opens_thinking("<|im_start|>assistant\n")


async def test_leaving_the_answer_early_closes_the_model_stream() -> None:
    closed = []

    async def model() -> AsyncIterator[str]:
        try:
            for piece in ("<think>hm</think>", "one ", "two ", "three"):
                yield piece
        finally:
            closed.append(True)

    async with contextlib.aclosing(answer_only(model())) as answer:
        async for _ in answer:
            break
    assert closed == [True]  # closing the answer closes the model's stream under it


# -- the embedded backend: the real model, made to think by a grammar ---------------------------------


@pytest.fixture
def thinking_grammar(monkeypatch: pytest.MonkeyPatch):
    """Make the bundled model write the given text (a GBNF grammar constrains its sampling)."""
    from llama_cpp import LlamaGrammar

    import bot.llm.llamacpp as llamacpp

    def force(rule: str) -> None:
        grammar = LlamaGrammar.from_string(f"root ::= {rule}", verbose=False)
        plain = llamacpp.sampling
        monkeypatch.setattr(llamacpp, "sampling", lambda config: {**plain(config), "grammar": grammar})

    return force


@pytest.mark.slow
async def test_the_embedded_model_thinks_and_only_its_answer_is_streamed_and_stored(
    tmp_path: Path, model, thinking_grammar
) -> None:
    config = load_config(write_config(tmp_path))
    store = await Store.open(config.resolve(config.store.path))
    try:
        engine = Engine(config, store, model, PersonaLibrary.from_config(config))
        thinking_grammar('"<think>Ren hides a knife. I will stall him.</think>\\n\\n' + ANSWER + '"')
        streamed: list[str] = []
        result = await engine.turn(1, "Ren", "Hello!", on_text=streamed.append)
        assert result.text == ANSWER
        assert "knife" not in "".join(streamed) and "think" not in "".join(streamed)
        history = await store.history(1, ["mira"], limit=10)
        assert [m.content for m in history] == ["Hello!", ANSWER]

        # The tokens run out inside the block: nothing of it leaks, the reply is the empty mark.
        thinking_grammar('"<think>" [a-z ]*')
        streamed.clear()
        result = await engine.turn(1, "Ren", "Anything else?", on_text=streamed.append)
        assert result.text == "…" and "".join(streamed).strip() in ("", "…")
        assert [m.content for m in await store.history(1, ["mira"], limit=10)][-1] == "…"
    finally:
        await store.close()


R1_GENERATION_PROMPT = (
    "{%- for message in messages %}{{- '<|User|>' + message.content }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|Assistant|><think>\\n' }}{%- endif %}"
)  # DeepSeek-R1's distills: the template itself opens the think block


@pytest.mark.slow
async def test_a_template_that_opens_the_think_block_hides_what_follows_until_it_closes(
    model, thinking_grammar, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    monkeypatch.setattr(model, "_formatter", Jinja2ChatFormatter(R1_GENERATION_PROMPT, "", ""))
    prompt = model.render([{"role": "user", "content": "Hi"}])
    assert prompt.endswith("<think>\n")
    thinking_grammar('"He seems kind. I will greet him.</think>\\n\\n' + ANSWER + '"')
    generation = model.generate(prompt, max_tokens=60)
    assert "".join([chunk async for chunk in generation.chunks()]) == ANSWER


QWEN3_GENERATION_PROMPT = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)  # Qwen3's own template, reduced to its turns and the part that reads enable_thinking


@pytest.mark.slow
def test_roleplay_turns_switch_thinking_off_unless_asked(model, monkeypatch: pytest.MonkeyPatch) -> None:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    monkeypatch.setattr(model, "_formatter", Jinja2ChatFormatter(QWEN3_GENERATION_PROMPT, "<|im_end|>", ""))
    messages = [{"role": "user", "content": "Hi"}]
    assert model.render(messages).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    monkeypatch.setattr(model, "config", dataclasses.replace(model.config, thinking=True))
    assert model.render(messages).endswith("<|im_start|>assistant\n")


# -- the server backend: a scripted server that thinks -------------------------------------------------


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "thinker",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


class ThinkingServer:
    """An OpenAI-compatible server whose model thinks: apart (`reasoning_content`) and in its content."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.logprobs = False  # whether it answers with log-probabilities (the LLM judge's need)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": "thinker", "object": "model", "created": 0, "owned_by": "t"}]}
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if not body.get("stream"):
            # A judgement (or the start-up probe): the first token's log-probabilities where it answers
            # with them, none otherwise.
            top = [{"token": t, "logprob": lp, "bytes": None} for t, lp in (("yes", -0.1), ("no", -2.4))]
            scored = self.logprobs and body.get("logprobs")
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": "yes"},
                "finish_reason": "length" if scored else "stop",
                "logprobs": {"content": [{**top[0], "top_logprobs": top}]} if scored else None,
            }
            return web.json_response(
                {
                    "id": "c0",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "thinker",
                    "choices": [choice],
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        deltas = [
            {"role": "assistant", "content": ""},
            {"reasoning_content": "Ren looks "},
            {"reasoning_content": "suspicious."},
            {"content": "<thi"},
            {"content": "nk>plotting the ambush</th"},
            {"content": "ink>\n\nWelcome"},
            {"content": ", traveller."},
        ]
        for delta in deltas:
            await response.write(_chunk(delta))
        await response.write(_chunk({}, "stop"))
        await response.write(b"data: [DONE]\n\n")
        return response


@pytest.fixture
async def thinking_server():
    server = ThinkingServer()
    app = web.Application()
    app.add_routes([web.get("/v1/models", server.models), web.post("/v1/chat/completions", server.chat)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield server, f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


@pytest.mark.parametrize("thinking", [False, True])
async def test_the_server_backend_shows_and_stores_only_the_answer(
    tmp_path: Path, thinking_server, thinking: bool
) -> None:
    from bot.core.app import open_engine

    server, url = thinking_server
    model = f'backend = "openai"\nbase_url = "{url}"\nthinking = {str(thinking).lower()}\n'
    config = load_config(write_config(tmp_path, model=model))
    async with open_engine(config) as engine:
        streamed: list[str] = []
        result = await engine.turn(3, "Ren", "Hello!", on_text=streamed.append)
        assert result.text == ANSWER and "".join(streamed) == ANSWER
        await engine.turn(3, "Ren", "Thanks.")
        stored = [m.content for m in await engine.admin.recent_messages(3, 10)]
    assert stored == ["Hello!", ANSWER, "Thanks.", ANSWER]
    replies = [r for r in server.requests if r.get("stream")]
    assert all(r["chat_template_kwargs"] == {"enable_thinking": thinking} for r in replies)
    # Anti-repetition goes to the server under the names llama.cpp's server, KoboldCpp and TabbyAPI read.
    assert all(r["dry_multiplier"] == 0.8 and r["dry_allowed_length"] == 2 for r in replies)
    assert all(r["dry_sequence_breakers"] == ["\n", ":", '"', "*"] for r in replies)
    later = json.dumps(replies[-1]["messages"])  # the second turn's prompt holds the first answer only
    assert ANSWER in later and "plotting" not in later and "suspicious" not in later


async def test_one_token_judgements_never_think_even_when_replies_may(
    tmp_path: Path, thinking_server
) -> None:
    """With [model] thinking = true, replies may think; the emotion judge's and the next speaker's
    one-token questions (and the start-up probe) ask the server not to: one token leaves no room."""
    from bot.core.app import open_engine
    from bot.llm.server_probe import PROBE

    server, url = thinking_server
    server.logprobs = True
    model = f'backend = "openai"\nbase_url = "{url}"\nthinking = true\n'
    config = load_config(write_config(tmp_path, model=model, extra=""))
    config = dataclasses.replace(config, emotion=dataclasses.replace(config.emotion, judge="both"))
    async with open_engine(config) as engine:
        await engine.admin.cast_add(3, "tobin")  # two personas: the model is asked who speaks
        result = await engine.turn(3, "Ren", "Hello, you two!")
        assert result.text == ANSWER and result.emotion.judge != "classifier"
    replies = [r for r in server.requests if r.get("stream")]
    # The template's cost is measured as replies are sent (thinking on); the rest are one-token questions.

    sizing = [r for r in server.requests if r["messages"][0] == PROBE[0]]
    judgements = [r for r in server.requests if not r.get("stream") and r not in sizing]
    assert sizing and all(r["chat_template_kwargs"] == {"enable_thinking": True} for r in sizing)
    assert replies and all(r["chat_template_kwargs"] == {"enable_thinking": True} for r in replies)
    assert len(judgements) >= 3 and all(
        r.get("max_tokens") == 1 for r in judgements
    )  # probe, speaker, emotion
    assert all(r["chat_template_kwargs"] == {"enable_thinking": False} for r in judgements)
