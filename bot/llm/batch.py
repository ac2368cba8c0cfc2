"""Replies of several channels written together by the embedded model.

A llama.cpp context of its own holds a sequence per reply slot, each in its own stream of n_ctx cells (a
unified cache would make every token attend over every slot's cells: three times slower with eight slots
of 1,000 tokens); each channel's evaluated conversation stays in its slot between turns (and in RAM when
the slot is lent to another channel). One decode step advances every
reply being written by a token, so eight busy channels share the cores the way llama.cpp's batched decode
does, instead of each waiting for the others' whole replies. A new turn's prompt is read in chunks inside
those same steps: reading it does not stall the replies already being written.

A step of several sequences runs on the prompt-reading threads: the cache decodes only neighbouring
sequences in one pass, and a lone token of a reply a slot apart from the others would otherwise get the
decode threads (fewer, for a lone reply beside a busy core). Reading prompts is bound by the cores, not by
the batch: eight channels' new messages take about eight times one's, whatever the batching.

The loop is one job on the model's worker thread, running while any reply is in hand. Other jobs (the
emotion question, background work, forgetting) are served between its steps: the loop steps aside
(submits itself again behind them) whenever one waits.
"""

from __future__ import annotations

import codecs
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.errors import BusyError, ModelError
from bot.llm.base import GenerationStats
from bot.llm.kv_reuse import can_shift, common_prefix, gaps, line_up, move_runs, reusable
from bot.llm.llama_context import SessionStates, copy_sequence
from bot.workers import ModelWorker

_log = logging.getLogger(__name__)

STEP_READ = 128  # prompt tokens read in a step beside replies being written (a step stays ~0.5 s, 2 cores)

Emit = Callable[[str, Any], None]


@dataclass(eq=False)
class Reply:
    """One reply asked for: its prompt's tokens, limits, and where its text goes (`emit`)."""

    prompt: Callable[[], list[int]]  # its tokens (read on the model's thread: a long prompt takes a while)
    stop: Sequence[str]
    max_tokens: int
    session: Hashable
    shift: bool
    sampler: Callable[[], Any]  # builds its sampler chain (on the model's thread)
    stats: GenerationStats
    emit: Emit
    cancel: threading.Event
    timeout: float
    # Progress, kept by the loop.
    tokens: list[int] = field(default_factory=list)
    slot: Slot | None = None
    read: int = 0  # prompt tokens its slot holds
    chain: Any = None
    token: int | None = None  # sampled, not yet in the cache
    text: str = ""  # decoded, held back while it may begin a stop string
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="ignore"))
    started: float = 0.0
    deadline: float = 0.0
    first: float | None = None
    evaluated: int = 0


@dataclass(eq=False)
class Slot:
    """A sequence of the context and the tokens it holds, for one channel at a time."""

    seq: int
    session: Hashable = None
    tokens: list[int] = field(default_factory=list)
    reply: Reply | None = None
    used: float = 0.0
    stale: bool = False  # forgotten while its reply was written: emptied when the reply ends


class DecodeLoop:
    """Reply slots of one llama.cpp context, and the loop that writes their replies together."""

    def __init__(
        self,
        llama: Any,
        slots: int,
        n_ctx: int,
        queue_size: int,
        worker: ModelWorker,
        states: SessionStates,
        cancel_all: threading.Event,
        timed_out: Callable[[], BaseException],
    ) -> None:
        import llama_cpp

        self._llm = llama
        self._n_ctx = n_ctx
        self._queue_size = queue_size
        self._worker = worker
        self._states = states
        self._cancel_all = cancel_all
        self._timed_out = timed_out
        self.ctx = _slot_context(llama, slots, n_ctx)
        self._memory = llama_cpp.llama_get_memory(self.ctx)
        self.slots = [Slot(i) for i in range(slots)]
        self._waiting: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._running = False
        self._batch: Any = None
        params = llama.context_params
        self._threads = int(params.n_threads), int(params.n_threads_batch)
        self._shared = False  # the last step decoded several sequences (see _set_threads)

    # -- from the event loop --------------------------------------------------------------------------

    @property
    def replies(self) -> int:
        """Replies being written or waiting for a slot."""
        return len(self._waiting) + sum(slot.reply is not None for slot in self.slots)

    @property
    def running(self) -> bool:
        return self._running

    def add(self, reply: Reply) -> None:
        """Queue a reply; BusyError when as many already wait as the queue holds."""
        with self._lock:
            if self.replies >= len(self.slots) + self._queue_size:
                raise BusyError(f"the model is busy ({self.replies} replies in hand); try again shortly")
            self._waiting.append(reply)
            if self._running:
                return
            self._running = True
        try:
            self._worker.submit(self._run)
        except BaseException:
            with self._lock:
                self._waiting.remove(reply)
                self._running = False
            raise

    # -- on the model's thread ------------------------------------------------------------------------

    def forget(self) -> None:
        """Empty every slot (their channels read their prompts again); one writing a reply is emptied
        when the reply ends."""
        for slot in self.slots:
            if slot.reply is None:
                self._empty(slot)
            else:
                slot.stale = True

    def _empty(self, slot: Slot) -> None:
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)
        slot.tokens, slot.session, slot.stale = [], None, False

    def close(self) -> None:
        import llama_cpp

        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        llama_cpp.llama_free(self.ctx)

    def lend(self, session: Hashable, tokens: Sequence[int]) -> None:
        """Before the Llama's own sequence reads `tokens` for `session` (the emotion question after a
        reply): if the slot holding that channel has more of them, the sequence starts from its cells."""
        llm = self._llm
        slot = next((s for s in self.slots if s.session == session and s.tokens), None)
        if slot is None:
            return
        own = llm.input_ids[: llm.n_tokens].tolist()
        if common_prefix(slot.tokens, tokens) <= common_prefix(own, tokens):
            return
        self._to_own(slot)

    def _to_own(self, slot: Slot) -> None:
        """The Llama's own sequence made a copy of the slot's (empty where the copy fails)."""
        llm = self._llm
        held = slot.tokens if copy_sequence(self.ctx, slot.seq, llm.ctx, 0) else []
        llm.input_ids[: len(held)] = held
        llm.n_tokens = len(held)
        llm._requires_eval = True

    def _from_own(self, slot: Slot) -> None:
        """The slot made a copy of the Llama's own sequence (empty where the copy fails)."""
        llm = self._llm
        own = llm.input_ids[: llm.n_tokens].tolist()
        slot.tokens = own if copy_sequence(llm.ctx, 0, self.ctx, slot.seq) else []

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    if not self._waiting and all(slot.reply is None for slot in self.slots):
                        self._running = False
                        return
                if self._worker.pending > 1 and self._step_aside():
                    return
                self._admit()
                self._step()
        except BaseException as exc:  # a broken decode: every reply in hand learns it, none hangs
            _log.exception("the decode loop stopped")
            with self._lock:
                replies = [slot.reply for slot in self.slots if slot.reply] + list(self._waiting)
                self._waiting.clear()
                for slot in self.slots:
                    slot.reply = None
                self._running = False
            self.forget()
            error = exc if isinstance(exc, ModelError) else ModelError(f"the model failed: {exc}")
            for reply in replies:
                try:
                    reply.emit("error", error)
                except Exception:  # one reader gone must not leave the others waiting
                    _log.exception("a reply could not be told")

    def _step_aside(self) -> bool:
        """Let the jobs waiting on the worker run, then carry on behind them."""
        try:
            self._worker.submit(self._run)
        except (BusyError, RuntimeError):  # a full queue (they get their turn when it drains), or closing
            return False
        return True

    def _admit(self) -> None:
        """Give waiting replies free slots: the slot holding their channel, else the least recently used."""
        while True:
            with self._lock:
                free = [slot for slot in self.slots if slot.reply is None]
                if not self._waiting or not free:
                    return
                reply = self._waiting.popleft()
                own = [slot for slot in free if slot.session == reply.session and slot.tokens]
                slot = own[0] if own else min(free, key=lambda s: (bool(s.tokens), s.used))
                slot.reply, reply.slot = reply, slot
            if reply.cancel.is_set() or self._cancel_all.is_set():
                self._finish(reply, "cancelled")
                continue
            try:
                self._take(slot, reply)
            except ModelError as exc:  # this prompt's own problem (too long): the others go on
                self._finish(reply, "error", exc)

    def _take(self, slot: Slot, reply: Reply) -> None:
        import llama_cpp

        memory = self._memory
        if slot.session != reply.session or not slot.tokens:
            if slot.tokens:
                self._states.save(slot.seq, ("reply", slot.session), slot.tokens, self.ctx)
            llama_cpp.llama_memory_seq_rm(memory, slot.seq, -1, -1)
            slot.tokens = self._states.restore(slot.seq, ("reply", reply.session), self.ctx)
            slot.session = reply.session
        reply.started = time.perf_counter()
        reply.deadline = time.monotonic() + reply.timeout
        tokens = reply.tokens = reply.prompt()
        reply.stats.prompt_tokens = len(tokens)
        if len(tokens) >= self._n_ctx:
            raise ModelError(f"prompt of {len(tokens)} tokens does not fit the {self._n_ctx}-token context")
        own = self._llm.input_ids[: self._llm.n_tokens].tolist()
        if common_prefix(own, tokens) > common_prefix(slot.tokens, tokens):
            # The Llama's own sequence read more of this prompt (the speaker question reads the window).
            self._from_own(slot)
        if reply.shift:
            read = self._line_up(slot, tokens)
            reply.evaluated += read
            self._llm.evaluated += read
        held = min(common_prefix(slot.tokens, tokens), len(tokens) - 1)
        llama_cpp.llama_memory_seq_rm(memory, slot.seq, held, -1)
        slot.tokens = tokens[:held]
        reply.read = held
        reply.chain = reply.sampler()

    def _line_up(self, slot: Slot, tokens: list[int]) -> int:
        """A moved window's kept stretches shifted into place in the slot (see kv_reuse); the tokens read
        for it. New text between stretches can only be read in a unified cache: then the slot's sequence
        is arranged in the Llama's own context and copied back."""
        runs = reusable(slot.tokens, tokens)
        if len(runs) < 2 or not can_shift(self.ctx):
            return 0
        if not gaps(runs):
            try:
                slot.tokens = tokens[: move_runs(self._memory, slot.seq, runs)]
            except RuntimeError:
                self._empty(slot)
                slot.session = None
            return 0
        self._states.set_aside()
        self._to_own(slot)
        read = line_up(self._llm, tokens)
        self._from_own(slot)
        return read

    def _step(self) -> None:
        """One decode: a token of every reply being written, and some prompt of those being read."""
        import llama_cpp

        if self._batch is None:
            self._batch = llama_cpp.llama_batch_init(self._llm.n_batch, 0, 1)
        batch = self._batch
        outputs: list[tuple[Reply, int]] = []
        sequences: set[int] = set()
        n = 0

        def put(token: int, slot: Slot, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = len(slot.tokens)
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = slot.seq
            batch.logits[n] = logits
            slot.tokens.append(token)
            sequences.add(slot.seq)
            n += 1

        now = time.monotonic()
        active = [slot.reply for slot in self.slots if slot.reply is not None]
        for reply in active:
            if reply.cancel.is_set() or self._cancel_all.is_set():
                self._finish(reply, "cancelled")
            elif now > reply.deadline:
                self._finish(reply, "error", self._timed_out())
        active = [reply for reply in active if reply.slot is not None]
        writing = [reply for reply in active if reply.token is not None]
        for reply in writing:
            assert reply.slot is not None and reply.token is not None
            outputs.append((reply, n))
            put(reply.token, reply.slot, True)
        budget = self._llm.n_batch - n
        if writing:
            budget = min(budget, STEP_READ)
        for reply in active:
            if reply.token is not None or budget <= 0:
                continue
            assert reply.slot is not None
            take = min(budget, len(reply.tokens) - reply.read)
            for token in reply.tokens[reply.read : reply.read + take]:
                put(token, reply.slot, False)
            reply.read += take
            reply.evaluated += take
            budget -= take
            if reply.read == len(reply.tokens):
                batch.logits[n - 1] = True
                outputs.append((reply, n - 1))
        if n == 0:
            return
        self._set_threads(len(sequences) > 1)
        batch.n_tokens = n
        status = llama_cpp.llama_decode(self.ctx, batch)
        if status != 0:
            raise ModelError(f"llama.cpp could not decode a batch of {n} tokens (status {status})")
        self._llm.evaluated += n - len(writing)
        for reply, index in outputs:
            self._sample(reply, index)

    def _set_threads(self, shared: bool) -> None:
        """A step of several sequences runs on the prompt-reading threads throughout. A non-unified cache
        decodes only neighbouring sequences together, so writers in slots 1 and 3 are two one-token
        passes, which llama.cpp would run on the (fewer) decode threads: 1.5x slower on two cores."""
        if shared == self._shared:
            return
        import llama_cpp

        decode, prompt = self._threads
        llama_cpp.llama_set_n_threads(self.ctx, prompt if shared else decode, prompt)
        self._shared = shared

    def _sample(self, reply: Reply, index: int) -> None:
        import llama_cpp

        llm = self._llm
        assert reply.slot is not None
        token = llama_cpp.llama_sampler_sample(reply.chain.sampler, self.ctx, index)
        stats = reply.stats
        if reply.first is None:
            reply.first = time.perf_counter()
            stats.evaluated_tokens = reply.evaluated
        stats.generated_tokens += 1
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            self._finish(reply, "stop")
            return
        reply.text += reply.decoder.decode(llm.detokenize([token]))
        cut = min((i for i in (reply.text.find(s) for s in reply.stop if s) if i >= 0), default=-1)
        if cut >= 0:
            reply.text = reply.text[:cut]
            self._finish(reply, "stop")
            return
        held = max((_overlap(reply.text, s) for s in reply.stop if s), default=0)
        if len(reply.text) > held:
            reply.emit("text", reply.text[: len(reply.text) - held])
            reply.text = reply.text[len(reply.text) - held :]
        if stats.generated_tokens >= reply.max_tokens or len(reply.slot.tokens) + 1 >= self._n_ctx:
            self._finish(reply, "length")
            return
        reply.token = token

    def _finish(self, reply: Reply, reason: str, error: BaseException | None = None) -> None:
        end = time.perf_counter()
        stats = reply.stats
        stats.finish_reason = reason
        stats.prompt_seconds = (reply.first or end) - reply.started
        stats.decode_seconds = end - (reply.first or end)
        if reason in ("stop", "length") and reply.text:
            reply.emit("text", reply.text)
        slot = reply.slot
        if slot is not None:
            import llama_cpp

            # A prompt read in part leaves a sequence the next turn can still start from.
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, len(slot.tokens), -1)
            if slot.stale:
                self._empty(slot)
            slot.used = end
            with self._lock:
                slot.reply, reply.slot = None, None
        if error is not None:
            reply.emit("error", error)
        else:
            reply.emit("done", None)


def _slot_context(llama: Any, slots: int, n_ctx: int) -> Any:
    """A context of the Llama's model for the reply slots: its settings, a stream of n_ctx cells each."""
    import llama_cpp

    source = llama.context_params
    params = type(source).from_buffer_copy(source)
    params.n_ctx = n_ctx * slots
    params.n_seq_max = slots
    params.kv_unified = False
    ctx = llama_cpp.llama_init_from_model(llama._model.model, params)
    if not ctx:
        raise ModelError(f"llama.cpp could not make a context for {slots} reply slots of {n_ctx} tokens")
    return ctx


def _overlap(text: str, stop: str) -> int:
    """Length of the longest end of `text` that begins `stop`: held back until the next token shows."""
    for length in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:length]):
            return length
    return 0
