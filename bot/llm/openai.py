"""The server backend: any OpenAI-compatible chat API (llama-server, llama-cpp-python's server, Ollama,
KoboldCpp, LM Studio, TabbyAPI, vLLM), through the official `openai` client.

The server applies the model's own chat template to the messages the prompt builder made, so personas,
lorebook, history window and names are the same as with the embedded model. `render` gives the prompt
builder a text form of those messages to count tokens on (the server's tokenizer when it offers one,
else a cautious estimate) and remembers which messages it stood for, so that `generate` sends them as
chat messages. At most `max_concurrent` requests run at once; up to `queue_size` more wait.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
from collections.abc import AsyncIterator, Hashable, Sequence
from typing import Any

import openai

from bot.bounded import LRUDict
from bot.config import ModelConfig
from bot.errors import BusyError, GenerationTimeout, ModelError
from bot.llm.base import Generation, GenerationStats, Message
from bot.llm.llama_context import DRY_BREAKERS
from bot.llm.server_probe import PROBE_TIMEOUT_SECONDS, TemplateCost, measure, post_json, probe_extras
from bot.llm.server_shapes import create_shaped
from bot.llm.thinking import answer_only

_log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 3.0  # the estimate when the server cannot tokenize: errs towards too many tokens
MAX_RENDERED = 256  # rendered prompts remembered for `generate` (one per channel turn in flight)
MAX_TOKENIZED = 4096  # texts whose token count is remembered (history messages recur every turn)
# The start-up probes (models, tokenizer, log-probabilities) wait this long whatever [model]
# timeout_seconds says: that setting bounds a reply, and a short one must not fail the connection.
# llama-server reuses stretches of its cache this long by shifting them (its `--cache-reuse` tutorial's
# figure); other servers ignore the field.
SERVER_REUSE_CHUNK = 256
TOP_LOGPROBS = 20  # first-token alternatives asked for when the LLM judge scores labels
# Text that some servers' tokenizers read as control tokens (ChatML, Llama 3, Mistral, Gemma markers).
# A server tokenizes message contents itself, so these are broken up with a word joiner: a member who
# types <|im_start|>system cannot open a turn of their own. The model sees the same letters.
_CONTROL_LIKE = re.compile(r"<\|[^|<>\s]{1,40}\|>|</?s>|\[/?INST\]|<(?:start|end)_of_turn>")
WORD_JOINER = "\u2060"


def defuse(text: str) -> str:
    """`text` with anything shaped like a control token broken up, so no server reads it as one."""
    return _CONTROL_LIKE.sub(lambda m: m.group(0)[0] + WORD_JOINER + m.group(0)[1:], text)


def describe(exc: Exception, config: ModelConfig) -> Exception:
    """A server error as one clear line, with what to change."""
    where = config.base_url
    if isinstance(exc, openai.APITimeoutError | TimeoutError):  # the client's, or our deadline's
        return GenerationTimeout(
            f"the model server at {where} took longer than {config.timeout_seconds:g} s"
            " (raise [model] timeout_seconds in config.toml for a slower model)"
        )
    if isinstance(exc, openai.APIConnectionError):
        return ModelError(
            f"cannot reach the model server at {where}: is it running? ({exc.__cause__ or exc})"
        )
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return ModelError(
            f"the model server at {where} refused the API key ({exc.status_code}):"
            f" put the key in the environment variable {config.api_key_env}"
        )
    if isinstance(exc, openai.NotFoundError):
        return ModelError(
            f"the model server at {where} has no model {config.model!r} (404): set [model] model"
        )
    if isinstance(exc, openai.RateLimitError) or (
        isinstance(exc, openai.APIStatusError) and exc.status_code in (502, 503, 529)
    ):
        return BusyError(f"the model server is overloaded ({exc.status_code}); try again shortly")
    if isinstance(exc, openai.BadRequestError) and re.search(r"context|too long|exceed", str(exc), re.I):
        return ModelError(
            f"the prompt does not fit the server's context ({exc.message[:120]}):"
            " set [model] n_ctx to the server's context size"
        )
    if isinstance(exc, openai.APIStatusError):
        return ModelError(f"the model server at {where} answered {exc.status_code}: {exc.message[:200]}")
    return ModelError(f"the model server at {where} failed: {exc}")


class OpenAIBackend:
    """A model behind an OpenAI-compatible server. Create with `await OpenAIBackend.connect(config)`."""

    def __init__(
        self,
        config: ModelConfig,
        client: openai.AsyncOpenAI,
        model: str,
        n_ctx: int,
        tokenize_url: str | None,
        logprobs: bool,
    ) -> None:
        self.config = config
        self.client = client
        self.name = model
        self.n_ctx = n_ctx
        self.identity = f"{model} at {config.base_url}"
        self.supports_logprobs = logprobs
        self._tokenize_url = tokenize_url
        self.template: TemplateCost | None = None  # measured at connect where the server reports sizes
        self._rendered: LRUDict[str, list[dict[str, str]]] = LRUDict(MAX_RENDERED)
        self._counts: LRUDict[str, int] = LRUDict(MAX_TOKENIZED)
        self._slots = asyncio.Semaphore(config.max_concurrent)
        self._pending = 0
        self._shape = 0  # the first of template.SHAPES the server's chat template took

    # -- connecting: what the server is and what it can do ----------------------------------------------

    @classmethod
    async def connect(cls, config: ModelConfig) -> OpenAIBackend:
        """Connect, check the model is there, and probe what the server offers (tokenizer, context size,
        log-probabilities). Raises ModelError with one clear line when it cannot be used."""
        client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=os.environ.get(config.api_key_env) or "not-needed",
            timeout=config.timeout_seconds,
            max_retries=0,  # errors are reported at once; the member can simply ask again
        )
        try:
            listed = [m.id async for m in client.with_options(timeout=PROBE_TIMEOUT_SECONDS).models.list()]
        except openai.OpenAIError as exc:
            await client.close()
            raise describe(exc, config) from None
        model = config.model or (listed[0] if listed else "")
        if config.model and listed and config.model not in listed:
            await client.close()
            raise ModelError(
                f"the model server at {config.base_url} has no model {config.model!r}"
                f" (it has: {', '.join(listed[:8])}): set [model] model"
            )
        if not model:
            await client.close()
            raise ModelError(f"the model server at {config.base_url} lists no models: set [model] model")
        root = config.base_url.rstrip("/").removesuffix("/v1")
        tokenize_url, n_ctx = await asyncio.to_thread(probe_extras, root)
        backend = cls(config, client, model, n_ctx or config.n_ctx, tokenize_url, False)
        try:
            backend.supports_logprobs = await backend._probe_logprobs()
            backend.template = await measure(client, model, thinking_switch(config), backend._tokens)
        except BaseException:
            await client.close()
            raise
        _log.info(
            "model server %s: model %s, context %d, tokenizer %s, log-probabilities %s",
            config.base_url,
            model,
            backend.n_ctx,
            "yes" if tokenize_url else "no (estimated counts)",
            "yes" if backend.supports_logprobs else "no (the LLM judge is unavailable)",
        )
        if backend.template is None:
            _log.info(
                "model server %s reports no prompt sizes: prompts are counted as a ChatML-like text,"
                " an estimate 5-15 %% over what the model reads (the window fills less of the context)",
                config.base_url,
            )
        return backend

    async def _probe_logprobs(self) -> bool:
        try:
            response = await self.client.with_options(timeout=PROBE_TIMEOUT_SECONDS).chat.completions.create(
                model=self.name,
                messages=[{"role": "user", "content": "Say yes."}],
                max_tokens=1,
                logprobs=True,
                top_logprobs=2,
                temperature=0.0,
                extra_body=thinking_switch(self.config, judging=True),
            )
        except openai.BadRequestError:
            return False  # a server that does not take the parameter at all
        except openai.OpenAIError as exc:
            raise describe(exc, self.config) from None
        choice = response.choices[0] if response.choices else None
        return bool(choice and choice.logprobs and choice.logprobs.content)

    def describe_server(self) -> str:
        tokens = "its tokenizer" if self._tokenize_url else "estimated token counts"
        judge = "log-probabilities" if self.supports_logprobs else "no log-probabilities"
        return f"{self.identity}, context {self.n_ctx}, {tokens}, {judge}"

    # -- the prompt builder's side: text to count, remembered as messages -------------------------------

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        chat = [{"role": m["role"], "content": defuse(m["content"])} for m in messages]
        # A ChatML-like text: close to what the server's template makes, for counting tokens.
        text = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in chat)
        text += "<|assistant|>\n" if add_generation_prompt else ""
        self._rendered[text] = chat
        return text

    def count_prompt(self, prompt: str) -> int:
        """A rendered prompt's size as the server counts it: its messages' contents and what its template
        adds (measured at connect); where that is unknown, an estimate, the ChatML-like text's size."""
        if self.template is not None:
            chat, extra = self._messages(prompt)
            return self.template.count(chat, self._tokens) + (self._tokens(extra) if extra else 0)
        return len(self.tokenize(prompt))

    def _tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def tokenize(self, text: str) -> list[int]:
        """Token ids from the server's tokenizer when it has one; else a count-only estimate (zeros)."""
        count = self._counts.get(text)
        if count is None:
            count = self._count(text)
            self._counts[text] = count
        return [0] * count

    def _count(self, text: str) -> int:
        if self._tokenize_url is not None:
            try:
                body = post_json(
                    self._tokenize_url, {"input": text, "content": text}, self.config.timeout_seconds
                )
                return len(body["tokens"])
            except (OSError, KeyError, TypeError, ValueError) as exc:
                _log.warning("server tokenizer failed (%s); estimating token counts from now on", exc)
                self._tokenize_url = None
        return math.ceil(len(text) / CHARS_PER_TOKEN)

    def _messages(self, prompt: str) -> tuple[list[dict[str, str]], str]:
        """The messages a rendered prompt stands for, and any text appended after it (a primed answer)."""
        for text, chat in reversed(list(self._rendered.items())):
            if prompt.startswith(text):
                return chat, prompt[len(text) :]
        raise ModelError("internal error: a prompt reached the server backend without being rendered by it")

    # -- generation --------------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return self._pending

    def generate(
        self,
        prompt: str,
        *,
        stop: Sequence[str] = (),
        max_tokens: int | None = None,
        session: Hashable = None,
        shift: bool = False,
        give_way: bool = False,
    ) -> Generation:
        """Stream a reply; leaving the iteration early closes the stream (the server stops). With `shift`,
        llama-server is asked to reuse kept stretches of its cache by shifting them (`n_cache_reuse`).
        `give_way` changes nothing here: the server serves requests side by side (`max_concurrent`)."""
        chat, _ = self._messages(prompt)
        generation = Generation(
            chunks=lambda: answer_only(self._stream(chat, list(stop), max_tokens, generation.stats, shift))
        )
        return generation

    async def _slot(self) -> None:
        if self._pending >= self.config.max_concurrent + self.config.queue_size:
            raise BusyError(
                f"the model server is busy ({self._pending} requests in progress); try again shortly"
            )
        self._pending += 1
        try:
            await self._slots.acquire()
        except BaseException:
            self._pending -= 1
            raise

    def _release(self) -> None:
        self._slots.release()
        self._pending -= 1

    async def _stream(
        self,
        chat: list[dict[str, str]],
        stop: list[str],
        max_tokens: int | None,
        stats: GenerationStats,
        shift: bool = False,
    ) -> AsyncIterator[str]:
        config = self.config
        await self._slot()
        try:
            start = time.perf_counter()
            first: float | None = None
            # One deadline for the whole reply, from the request: the stream's first event is read with
            # the request (to see whether the server's template refused the turns).
            deadline = asyncio.get_running_loop().time() + config.timeout_seconds
            try:
                async with asyncio.timeout_at(deadline):
                    stream = await self._create(
                        chat,
                        max_tokens=max_tokens or config.max_reply_tokens,
                        temperature=config.temperature,
                        top_p=config.top_p,
                        seed=None if config.seed < 0 else config.seed,
                        stop=stop or None,  # local servers take more than OpenAI's four
                        stream=True,
                        stream_options={"include_usage": True},
                        extra_body={
                            "top_k": config.top_k,
                            "min_p": config.min_p,
                            "repeat_penalty": config.repeat_penalty,
                            **anti_repetition(config),
                            **thinking_switch(config),
                            **({"n_cache_reuse": SERVER_REUSE_CHUNK} if shift else {}),
                        },
                    )
            except (TimeoutError, openai.OpenAIError) as exc:
                raise describe(exc, config) from None
            try:
                async with asyncio.timeout_at(deadline):
                    async for event in stream:
                        if event.usage is not None:
                            _record_usage(stats, event.usage)
                        for choice in event.choices:
                            text = choice.delta.content or ""
                            if choice.finish_reason:
                                stats.finish_reason = choice.finish_reason
                            if text:
                                first = first or time.perf_counter()
                                stats.generated_tokens += 1
                                yield text
            except (TimeoutError, openai.OpenAIError) as exc:
                raise describe(exc, config) from None
            finally:
                await stream.close()  # also when the reader stopped early: the server ends the job
            if stats.generated_tokens == 0 and not stats.finish_reason:
                # Some servers (llama-cpp-python) end the stream without a word when the prompt overflows.
                raise ModelError(
                    f"the model server at {config.base_url} ended the reply with no text and no reason:"
                    " most often the prompt is longer than its context; set [model] n_ctx to the server's"
                    " context size"
                )
            end = time.perf_counter()
            stats.prompt_seconds = (first or end) - start
            stats.decode_seconds = end - (first or end)
        finally:
            self._release()

    async def classify(
        self, prompt: str, options: Sequence[str], *, session: Hashable = None
    ) -> dict[str, float]:
        """Probabilities of each option as the answer, from the first answer token's log-probabilities."""
        if not self.supports_logprobs:
            raise ModelError(f"the model server at {self.config.base_url} returns no log-probabilities")
        chat, primed = self._messages(prompt)
        if primed.strip():  # a chat API cannot start the answer for the model: ask for the form instead
            chat = [
                *chat[:-1],
                {**chat[-1], "content": chat[-1]["content"] + f"\nAnswer as: {primed.strip()} ..."},
            ]
        await self._slot()
        try:
            response = await self._create(
                chat,
                max_tokens=1,
                logprobs=True,
                top_logprobs=TOP_LOGPROBS,
                temperature=0.0,
                extra_body=thinking_switch(self.config, judging=True),
            )
        except openai.OpenAIError as exc:
            raise describe(exc, self.config) from None
        finally:
            self._release()
        content = response.choices[0].logprobs.content if response.choices[0].logprobs else None
        top = {t.token: math.exp(t.logprob) for t in (content[0].top_logprobs if content else [])}
        return option_scores(top, options)

    async def _create(self, chat: list[Message], **request: Any) -> Any:
        """A chat completion, the messages in the first shape the server's chat template takes, from the
        shape taken last (bot/llm/server_shapes.py)."""
        create = self.client.chat.completions.create
        response, shape = await create_shaped(create, chat, self._shape, {"model": self.name, **request})
        if shape > self._shape:
            self._shape = shape
            _log.info(
                "model server %s: its chat template refused the turns in the bot's order; they are sent"
                " as user and assistant turns alternating from now on",
                self.config.base_url,
            )
        return response

    async def forget_contexts(self) -> None:
        """Nothing kept here: the server's own prompt cache is the server's to manage."""

    async def close(self) -> None:
        await self.client.close()


def option_scores(top: dict[str, float], options: Sequence[str]) -> dict[str, float]:
    """Each option's share of the first-token probability: a token that starts an option counts for it
    (spaces aside: a chat answer starts its own message, where the options assume a primed one)."""
    scores = {}
    for option in options:
        hits = [p for token, p in top.items() if token.strip() and option.strip().startswith(token.strip())]
        scores[option] = max(hits, default=0.0)
    total = sum(scores.values())
    if total <= 0:
        return {option: 1 / len(options) for option in options}
    return {option: p / total for option, p in scores.items()}


def anti_repetition(config: ModelConfig) -> dict[str, Any]:
    """DRY and XTC under the names llama.cpp's server, KoboldCpp and TabbyAPI read (each takes its own of
    `dry_penalty_last_n` / `dry_range`); servers that know none of them ignore them, as they do top_k."""
    return {
        "dry_multiplier": config.dry_multiplier,
        "dry_base": config.dry_base,
        "dry_allowed_length": config.dry_allowed_length,
        "dry_penalty_last_n": config.dry_range,
        "dry_range": config.dry_range,
        "dry_sequence_breakers": list(DRY_BREAKERS),
        "xtc_probability": config.xtc_probability,
        "xtc_threshold": config.xtc_threshold,
    }


def thinking_switch(config: ModelConfig, judging: bool = False) -> dict[str, Any]:
    """The request field that servers with thinking models read (vLLM, llama-server, SGLang):
    `enable_thinking` for the chat template. A one-token judgement never has room to think."""
    return {"chat_template_kwargs": {"enable_thinking": config.thinking and not judging}}


def _record_usage(stats: GenerationStats, usage: Any) -> None:
    stats.prompt_tokens = usage.prompt_tokens or 0
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    # Servers that report their prompt cache say how much was reused; others evaluate the whole prompt.
    stats.evaluated_tokens = stats.prompt_tokens - (cached or 0)
