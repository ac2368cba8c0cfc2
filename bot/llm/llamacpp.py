"""The embedded backend: llama.cpp in this process.

One `Llama` object lives on one worker thread; every call is a job on that thread, served in order.
Replies are written together by the decode loop (batch.py), one job while any is in hand, in a context
of their own; the emotion and speaker questions and background work run on the Llama's own context
between its steps. The event loop only awaits results, so Discord's heartbeat never waits for the model.
The queue is bounded: a full queue raises BusyError at once instead of queueing forever.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import threading
import time
from array import array
from collections.abc import AsyncIterator, Hashable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bot.bounded import LRUDict
from bot.config import ModelConfig, decode_threads, prompt_threads
from bot.errors import GaveWay, GenerationTimeout, ModelError
from bot.llm.base import Generation, GenerationStats, Message
from bot.llm.batch import DecodeLoop, Reply
from bot.llm.kv_reuse import line_up
from bot.llm.llama_context import SessionStates, counting_llama_class, repetition_sampler
from bot.llm.llama_files import bundled_model_path, check_gguf, check_settings, model_identity
from bot.llm.options import TURN_MARKER, answer_end_tokens, option_probabilities
from bot.llm.template import chat_formatter, render_adapted
from bot.llm.thinking import answer_only, opens_thinking
from bot.workers import ModelWorker, WorkerEvents

_log = logging.getLogger(__name__)
T = TypeVar("T")
LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp's "a random seed"

CLASSIFY_MAX_TOKENS = 8  # tokens of an option that are scored; labels are one to four tokens
# Private-use characters around every message's content in a rendered prompt: what lies between them is
# tokenized as text, never as control tokens. They never reach the model.
CONTENT_OPEN, CONTENT_CLOSE = "\ue000", "\ue001"
_CONTENT = re.compile(f"({CONTENT_OPEN}[^{CONTENT_CLOSE}]*{CONTENT_CLOSE})")
PREFILL_CHUNK = 128  # prompt tokens background work reads between looks for a waiting reply (0.5 s, 2 cores)
MAX_PIECES = 1 << 16  # prompt pieces whose tokens are remembered: a 32k window has about 1,700


def mark_content(text: str) -> str:
    """Wrap a message's content in content marks (marks the text itself holds are neutralised)."""
    return (
        CONTENT_OPEN + text.replace(CONTENT_OPEN, "\ufffd").replace(CONTENT_CLOSE, "\ufffd") + CONTENT_CLOSE
    )


def unmarked(text: str) -> str:
    return text.replace(CONTENT_OPEN, "").replace(CONTENT_CLOSE, "")


def sampling(config: ModelConfig) -> dict[str, Any]:
    """llama-cpp-python sampling arguments from the config (a negative seed means a random one)."""
    return {
        "temperature": config.temperature,
        "top_p": config.top_p,
        "top_k": config.top_k,
        "min_p": config.min_p,
        "repeat_penalty": config.repeat_penalty,
        "seed": None if config.seed < 0 else config.seed,
    }


def _let_go(worker: ModelWorker, llama: Any | None) -> None:
    worker.shutdown()
    if llama is not None:
        llama.close()


class LlamaBackend:
    """llama-cpp-python behind the worker. Create with `await LlamaBackend.load(config, root)`."""

    def __init__(self, llama: Any, config: ModelConfig, worker: ModelWorker, path: Path) -> None:
        self._llm = llama
        self.config = config
        self._worker = worker
        self.path = path
        self.name = path.name
        self.identity = model_identity(path)
        self.n_ctx = llama.n_ctx()
        self._cancel_all = threading.Event()
        template = llama.metadata["tokenizer.chat_template"]  # check_settings refused a file without one
        self._bos = self._token_text(llama.token_bos())
        eos = self._token_text(llama.token_eos())
        self._add_bos = llama.metadata.get("tokenizer.ggml.add_bos_token", "true") == "true"
        self._formatter = chat_formatter(template, eos, self._bos)
        self._shape = 0  # the first of template.SHAPES the template took, where renders start
        self._sessions = SessionStates(llama, config.state_cache_mb << 20)
        self._loop = DecodeLoop(
            llama,
            config.parallel,
            config.n_ctx,
            config.queue_size,
            worker,
            self._sessions,
            self._cancel_all,
            self._timed_out,
        )
        # Tokens of recent prompt pieces; the prompt builder's thread and the model's share them.
        self._pieces: LRUDict[tuple[str, bool], array[int]] = LRUDict(MAX_PIECES)
        self._pieces_lock = threading.Lock()
        try:
            turn = self.render([{"role": "assistant", "content": TURN_MARKER}], add_generation_prompt=False)
        except Exception as exc:  # the template's raise_exception(), or an error in the template itself
            raise ModelError(f"{path}: its chat template renders no conversation: {exc}") from None
        self._answer_ends = answer_end_tokens(llama, unmarked(turn))

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._llm.detokenize([token], special=True).decode("utf-8", errors="ignore")

    @classmethod
    async def load(cls, config: ModelConfig, root: Path = Path(".")) -> LlamaBackend:
        path = Path(config.path).expanduser() if config.path else bundled_model_path()
        if config.path and not path.is_absolute():
            path = root / path
        check_settings(config, path, check_gguf(path))
        worker = ModelWorker(config.queue_size, "model")

        def build() -> Any:
            try:
                llama = counting_llama_class()(
                    model_path=str(path),
                    n_ctx=config.n_ctx,  # its own sequence (the reply slots have a context of their own)
                    n_gpu_layers=config.n_gpu_layers,
                    n_threads=decode_threads(config),
                    n_threads_batch=prompt_threads(config),
                    n_batch=config.n_batch,
                    verbose=False,
                )
            except (ValueError, RuntimeError) as exc:
                raise ModelError(f"{path}: llama.cpp could not load the model: {exc}") from None
            return llama

        llama = None
        try:
            llama = await worker.run(build)
            # On the worker too: the reply slots' context allocates its cache (hundreds of MB) as it is made.
            backend = await worker.run(lambda: cls(llama, config, worker, path))
        except BaseException:
            # The thread and any model loaded let go, not kept until the process ends (a caller may go on).
            await asyncio.to_thread(_let_go, worker, llama)
            raise
        _log.info("loaded %s (n_ctx=%d, gpu layers=%d)", path.name, backend.n_ctx, config.n_gpu_layers)
        return backend

    @property
    def pending(self) -> int:
        """Replies in hand and other jobs waiting for the model."""
        loop = self._loop
        return self._worker.pending - loop.running + loop.replies

    @property
    def threads(self) -> tuple[int, int]:
        """Decode and prompt-reading threads."""
        params = self._llm.context_params
        return int(params.n_threads), int(params.n_threads_batch)

    async def forget(self) -> None:
        """Drop the evaluated context, so the next call starts cold (benchmarks measure cold turns)."""
        await self._worker.run(self._forget_all)

    def _forget_all(self) -> None:
        self._sessions.clear()
        self._llm.reset()
        self._loop.forget()

    # -- tokenizer and template (thread-safe: they read only the vocabulary) -------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Text as plain text: nothing in it becomes a control token."""
        return self._llm.tokenize(unmarked(text).encode("utf-8"), add_bos=False, special=False)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The messages in the model's chat template, reshaped where it refuses their order of turns
        (`render_adapted`), from the shape it took last: a strict template refuses the bot's order of turns
        in nearly every conversation, and each refused render is a whole render. Each message's content is
        wrapped in content marks, so that `_prompt_tokens` reads it as text and only the template's own
        structure becomes control tokens: a member who types <|im_start|>system cannot forge a turn."""
        self._formatter.add_generation_prompt = add_generation_prompt
        prompt, shape = render_adapted(self._render_as_is, messages, self._shape)
        self._shape = max(self._shape, shape)  # a render on another thread may have moved it on already
        return prompt

    def _render_as_is(self, messages: list[Message]) -> str:
        marked = [{**m, "content": mark_content(m["content"])} for m in messages]
        # Templates that can switch thinking off read `enable_thinking` (Qwen3's); the rest ignore it.
        response = self._formatter(messages=marked, enable_thinking=self.config.thinking)
        return str(response.prompt)

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one backend per process; labels repeat every turn
    def _answer_tokens(self, option: str) -> tuple[int, ...]:
        return tuple(self._llm.tokenize(option.encode("utf-8"), add_bos=False, special=False))

    def count_prompt(self, prompt: str) -> int:
        """The tokens the model evaluates for a rendered prompt: the template's markers count as the
        single special tokens they are, not as the text they are spelt with."""
        return len(self._prompt_tokens(prompt))

    def _prompt_tokens(self, prompt: str) -> list[int]:
        """A rendered prompt's tokens: the template's text may hold control tokens, marked contents
        never do. Each piece (a message's content, the template's text between them) is tokenized once
        and remembered: a turn tokenizes only its new messages, not the whole history again."""
        llm = self._llm
        add_bos = self._add_bos and not (self._bos and prompt.startswith(self._bos))
        tokens = array("i", [llm.token_bos()] if add_bos and llm.token_bos() >= 0 else [])
        for piece in _CONTENT.split(prompt):
            if piece.startswith(CONTENT_OPEN):
                tokens += self._piece_tokens(piece[1:-1], special=False)
            elif piece:
                tokens += self._piece_tokens(piece, special=True)
        return tokens.tolist()

    def _piece_tokens(self, text: str, special: bool) -> array[int]:
        key = (text, special)
        with self._pieces_lock:
            tokens = self._pieces.get(key)
            if tokens is not None:
                self._pieces.move_to_end(key)
                return tokens
        tokens = array("i", self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=special))
        with self._pieces_lock:
            self._pieces[key] = tokens
        return tokens

    # -- generation ---------------------------------------------------------------------------------------

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
        """Start a reply; text streams from `chunks()`. Leaving the iteration early cancels the job.
        `session` (a channel) lets the model keep that conversation's evaluated context across turns;
        with `shift`, kept stretches beyond the common prefix are moved into place (see kv_reuse); with
        `give_way`, the prompt is read in chunks and GaveWay raised between them, or between tokens, when
        another job waits."""
        inside = opens_thinking(prompt)
        source = self._stream if give_way else self._reply  # background work, or a reply in a slot
        generation = Generation(
            chunks=lambda: answer_only(
                source(prompt, list(stop), max_tokens, generation.stats, session, shift), inside
            )
        )
        return generation

    async def _reply(
        self,
        prompt: str,
        stop: list[str],
        max_tokens: int | None,
        stats: GenerationStats,
        session: Hashable,
        shift: bool,
    ) -> AsyncIterator[str]:
        """A reply written in a slot of the decode loop, beside other channels' replies."""
        events = WorkerEvents()
        config = self.config

        def sampler() -> Any:
            kwargs = sampling(config)
            seed = kwargs.pop("seed")
            return repetition_sampler(
                self._llm,
                config,
                reply.tokens,
                temp=kwargs.pop("temperature"),
                seed=LLAMA_DEFAULT_SEED if seed is None else seed,
                **kwargs,
            )

        reply = Reply(
            prompt=lambda: self._prompt_tokens(prompt),
            stop=stop,
            max_tokens=max_tokens or config.max_reply_tokens,
            session=session,
            shift=shift,
            sampler=sampler,
            stats=stats,
            emit=events.emit,
            cancel=events.cancel,
            timeout=config.timeout_seconds,
        )
        self._loop.add(reply)
        try:
            while (text := await events.text()) is not None:
                yield text
        finally:
            events.cancel.set()
            await events.let_go()  # the loop lets go of it at its next step: then its slot is consistent

    async def _stream(
        self,
        prompt: str,
        stop: list[str],
        max_tokens: int | None,
        stats: GenerationStats,
        session: Hashable,
        shift: bool,
    ) -> AsyncIterator[str]:
        """Background work, on the model's own sequence: it gives way to replies (GaveWay)."""
        events = WorkerEvents()
        emit, cancel = events.emit, events.cancel
        config = self.config

        def work() -> None:
            if cancel.is_set():
                return
            llm = self._llm
            try:
                self._sessions.switch_to(session)
                tokens = self._prompt_tokens(prompt)
                if len(tokens) >= self.n_ctx:
                    raise ModelError(
                        f"prompt of {len(tokens)} tokens does not fit the {self.n_ctx}-token context"
                    )
                stats.prompt_tokens = len(tokens)
                start = time.perf_counter()
                deadline = time.monotonic() + config.timeout_seconds
                evaluated_before = llm.evaluated
                first: float | None = None
                llm.repetition, llm.history = config, tokens  # DRY reads the conversation too
                llm.shift = shift
                if not self._read_giving_way(tokens, cancel, deadline):
                    emit("done", None)
                    return
                chunks = llm.create_completion(
                    tokens,
                    max_tokens=max_tokens or config.max_reply_tokens,
                    stop=stop,
                    stream=True,
                    **sampling(config),
                )
                for chunk in chunks:
                    if first is None:
                        first = time.perf_counter()
                        stats.evaluated_tokens = llm.evaluated - evaluated_before - 1
                    stats.generated_tokens += 1
                    choice = chunk["choices"][0]
                    if choice.get("finish_reason"):
                        stats.finish_reason = choice["finish_reason"]
                    if choice["text"]:
                        emit("text", choice["text"])
                    if cancel.is_set() or self._cancel_all.is_set():
                        stats.finish_reason = "cancelled"
                        break
                    if self._worker.pending > 1:
                        raise GaveWay("a reply needs the model")
                    if time.monotonic() > deadline:
                        raise self._timed_out()
                end = time.perf_counter()
                stats.prompt_seconds = (first or end) - start
                stats.decode_seconds = end - (first or end)
                emit("done", None)
            except BaseException as exc:
                emit("error", exc)

        future = self._worker.submit(work)
        try:
            while (text := await events.text()) is not None:
                yield text
        finally:
            cancel.set()
            if not future.done():
                # Wait for the worker to notice, so the next job sees a consistent model state.
                await asyncio.shield(asyncio.wrap_future(future))

    def _timed_out(self) -> GenerationTimeout:
        return GenerationTimeout(
            f"the reply took longer than {self.config.timeout_seconds:g} s"
            " (raise [model] timeout_seconds in config.toml for a slower model)"
        )

    def _read_giving_way(self, tokens: list[int], cancel: threading.Event, deadline: float) -> bool:
        """Read all but the prompt's last token in chunks, stopping with GaveWay when another job waits
        (llama.cpp reads a batch without a pause: a 3,000-token prompt held a reply for 10 s). What was
        read stays in the context: the next try of the same prompt starts where this one stopped. False
        when cancelled."""
        llm = self._llm
        if llm.shift:
            llm.evaluated += line_up(llm, tokens)
            llm.shift = False  # lined up once: the generation that follows matches the prefix alone
        start = llm.held_prefix(tokens)
        while start < len(tokens) - 1:
            if self._worker.pending > 1:
                raise GaveWay("a reply needs the model")
            if cancel.is_set() or self._cancel_all.is_set():
                return False
            if time.monotonic() > deadline:
                raise self._timed_out()
            end = min(start + PREFILL_CHUNK, len(tokens) - 1)
            llm.eval(tokens[start:end])
            start = end
        return True

    # -- classification -----------------------------------------------------------------------------------

    async def classify(
        self, prompt: str, options: Sequence[str], *, session: Hashable = None
    ) -> dict[str, float]:
        """Probability of each option as the model's answer to the prompt, under the constraint that the
        answer is one of them. Shares the evaluated prefix with the previous call of the same session."""
        return await self._worker.run(lambda: self._classify(prompt, list(options), session))

    def _classify(self, prompt: str, options: list[str], session: Hashable = None) -> dict[str, float]:
        """Each option's probability under the model's full next-token distributions: every token of the
        option, then the end of the answer (the template's end-of-turn token, EOS or punctuation), so an
        option that only starts like a common word gains nothing (see options.py)."""
        llm = self._llm
        self._sessions.switch_to(session)
        tokens = self._prompt_tokens(prompt)
        if len(tokens) + CLASSIFY_MAX_TOKENS >= self.n_ctx:
            raise ModelError("the emotion question does not fit the context")
        self._loop.lend(session, tokens)
        llm.eval_suffix(tokens)
        sequences = {o: self._answer_tokens(o)[:CLASSIFY_MAX_TOKENS] for o in options}
        return option_probabilities(llm, sequences, self._answer_ends)

    async def forget_contexts(self) -> None:
        """Drop every channel's saved context and the one evaluated now, on the model's own thread: the
        next turn of each channel reads its prompt again, without the erased words."""

        await self._worker.run(self._forget_all)

    async def close(self) -> None:
        self._cancel_all.set()
        await asyncio.to_thread(self._worker.shutdown)
        self._loop.close()  # before the model it was made from
        self._llm.close()
