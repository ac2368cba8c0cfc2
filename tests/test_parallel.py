"""Replies of several channels written together by the real embedded model (bot/llm/batch.py): none waits
for another's whole reply, a new prompt's reading does not stall replies being written, and what worked one
reply at a time (cancelling, limits, each channel's kept context, the emotion question) still does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from bot.config import ModelConfig
from bot.errors import ModelError
from bot.llm import LlamaBackend
from bot.llm.base import Generation

from .support.watched import until

LONG = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]  # 150+ tokens


class Stream:
    """A generation consumed in the background, each chunk's arrival noted."""

    def __init__(self, generation: Generation) -> None:
        self.generation = generation
        self.chunks: list[tuple[float, str]] = []
        self._iterator: AsyncIterator[str] = generation.chunks()
        self.task = asyncio.create_task(self._consume())

    async def _consume(self) -> str:
        async for chunk in self._iterator:
            self.chunks.append((time.perf_counter(), chunk))
        return self.text

    @property
    def text(self) -> str:
        return "".join(chunk for _, chunk in self.chunks)

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self._iterator.aclose()  # type: ignore[attr-defined]


def long_context(channel: str, lines: int = 40) -> list[dict[str, str]]:
    return [
        {
            "role": "system",
            "content": f"Channel {channel}. " + "The tide comes in over the old stones. " * lines,
        },
        {"role": "user", "content": "Hello"},
    ]


async def test_a_second_channel_is_answered_while_the_first_reply_is_written(model: LlamaBackend) -> None:
    first = Stream(model.generate(model.render(LONG), max_tokens=90, session="first"))
    await until(lambda: len(first.chunks) >= 3)
    second = model.generate(model.render([{"role": "user", "content": "Say hi."}]), max_tokens=5, session="b")
    text = "".join([chunk async for chunk in second.chunks()])
    assert text and second.stats.finish_reason in ("length", "stop")
    assert not first.task.done()  # the first was still being written: the second did not wait for it
    assert await first.task and first.generation.stats.generated_tokens == 90


async def test_reading_a_long_prompt_does_not_stall_replies_being_written(model: LlamaBackend) -> None:
    writing = Stream(model.generate(model.render(LONG), max_tokens=150, session="writer"))
    await until(lambda: len(writing.chunks) >= 2)
    asked = time.perf_counter()
    long = model.generate(model.render(long_context("reader", 120)), max_tokens=2, session="reader")
    reading = Stream(long)
    await until(lambda: bool(reading.chunks))
    answered = reading.chunks[0][0]
    await reading.task
    assert long.stats.evaluated_tokens > 1000  # it read its whole prompt meanwhile...
    during = [at for at, _ in writing.chunks if asked < at < answered]
    # ...and the writer got a token for every 128 prompt tokens read (a step of ~0.5 s on 2 cores).
    steps = long.stats.evaluated_tokens // 128
    assert len(during) >= steps - 2, (len(during), steps)
    assert not writing.task.done()
    await writing.close()


async def test_the_emotion_question_is_answered_between_steps_of_a_reply(model: LlamaBackend) -> None:
    writing = Stream(model.generate(model.render(LONG), max_tokens=120, session="writer"))
    await until(lambda: len(writing.chunks) >= 2)
    prompt = model.render([{"role": "user", "content": "I won the lottery!!! Which emotion: joy or anger?"}])
    probs = await model.classify(prompt, ["joy", "anger"], session="judge")
    assert abs(sum(probs.values()) - 1) < 1e-6
    assert not writing.task.done()  # it did not wait for the reply's end
    assert await writing.task  # and the reply went on after it
    assert writing.generation.stats.generated_tokens == 120


async def test_cancelling_one_reply_leaves_the_others_writing(model: LlamaBackend) -> None:
    left = Stream(model.generate(model.render(LONG), max_tokens=60, session="left"))
    right = Stream(model.generate(model.render(LONG), max_tokens=60, session="right"))
    await until(lambda: len(left.chunks) >= 2 and len(right.chunks) >= 2)
    await left.close()  # the consumer went away (a deleted message, Ctrl-C)
    assert left.generation.stats.finish_reason == "cancelled"
    assert await right.task
    assert right.generation.stats.finish_reason == "length" and right.generation.stats.generated_tokens == 60
    assert model.pending == 0


async def test_a_prompt_too_long_fails_alone(model: LlamaBackend) -> None:
    writing = Stream(model.generate(model.render(LONG), max_tokens=40, session="writer"))
    await until(lambda: bool(writing.chunks))
    huge = model.generate("word " * (model.n_ctx + 10), max_tokens=4, session="huge")
    with pytest.raises(ModelError, match="does not fit"):
        _ = [chunk async for chunk in huge.chunks()]
    assert await writing.task and writing.generation.stats.generated_tokens == 40


async def test_each_channel_keeps_its_context_with_more_channels_than_slots() -> None:
    backend = await LlamaBackend.load(
        ModelConfig(n_ctx=2048, parallel=2, max_reply_tokens=6, temperature=0.0)
    )
    try:
        conversations = {channel: long_context(channel) for channel in ("a", "b", "c")}
        evaluated: dict[str, list[int]] = {channel: [] for channel in conversations}
        for turn in range(2):
            for channel, messages in conversations.items():
                generation = backend.generate(backend.render(messages), session=channel)
                text = "".join([c async for c in generation.chunks()])
                evaluated[channel].append(generation.stats.evaluated_tokens)
                messages += [
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": f"And {turn}?"},
                ]
        # Three channels, two slots: each slot's context is saved aside when lent to another channel.
        assert all(first > 300 and second < 30 for first, second in evaluated.values()), evaluated
    finally:
        await backend.close()


async def test_the_emotion_question_starts_from_the_replys_context(model: LlamaBackend) -> None:
    messages = long_context("judged")
    reply = model.generate(model.render(messages), max_tokens=8, session="judged")
    text = "".join([chunk async for chunk in reply.chunks()])
    question = model.render([*messages, {"role": "assistant", "content": text}]) + "Emotion:"
    before = model._llm.evaluated
    await model.classify(question, ["joy", "anger"], session="judged")
    assert model._llm.evaluated - before < 40, model._llm.evaluated - before  # not the 400 before the reply


async def test_a_reply_starts_from_what_the_model_read_for_its_speaker_question(model: LlamaBackend) -> None:
    messages = long_context("speaker")
    prompt = model.render(messages)
    await model.classify(prompt + "Who speaks next?", ["Mira", "Tom"], session="speaker")
    reply = model.generate(prompt, max_tokens=2, session="speaker")
    _ = [chunk async for chunk in reply.chunks()]
    assert reply.stats.evaluated_tokens < 30, reply.stats


async def test_a_reply_whose_reader_went_away_leaves_the_others_going(model: LlamaBackend) -> None:
    """A reply's reader can vanish with its event loop (a closed front-end, a finished test) while the
    reply is still being written: the loop stops writing it and the other replies carry on."""
    import gc
    import sys
    import threading

    unraisable: list[BaseException | None] = []

    def abandon() -> None:
        loop = asyncio.new_event_loop()
        stream = model.generate(model.render(LONG), max_tokens=150, session="abandoned").chunks()
        loop.run_until_complete(anext(stream))
        loop.close()  # the reader's loop is gone, its reply still in a slot
        # The stream is finalised with no loop to run its clean-up on: it must end quietly.
        hook, sys.unraisablehook = sys.unraisablehook, lambda seen: unraisable.append(seen.exc_value)
        try:
            del stream
            gc.collect()
        finally:
            sys.unraisablehook = hook

    writing = Stream(model.generate(model.render(LONG), max_tokens=80, session="writer"))
    await until(lambda: bool(writing.chunks))
    thread = threading.Thread(target=abandon)
    thread.start()
    await asyncio.to_thread(thread.join)
    assert not writing.task.done()  # the reader went away while this reply was written beside it
    assert await writing.task
    assert writing.generation.stats.finish_reason == "length"
    assert writing.generation.stats.generated_tokens == 80
    await until(lambda: model.pending == 0)  # the abandoned reply was let go
    assert unraisable == []


async def test_replies_in_slots_apart_decode_on_the_prompt_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-unified cache decodes only neighbouring sequences in one pass: replies in slots 0 and 2 are two
    one-token passes, which llama.cpp runs on the decode threads. A step of several replies runs on the
    prompt-reading threads throughout; a lone reply keeps the decode threads (steady beside a busy core)."""
    import llama_cpp

    backend = await LlamaBackend.load(
        ModelConfig(n_ctx=1024, parallel=3, n_threads=1, n_threads_batch=2, temperature=0.0)
    )
    decodes: list[tuple[list[int], int]] = []
    decode = llama_cpp.llama_decode

    def watched(ctx, batch):  # type: ignore[no-untyped-def]
        if ctx == backend._loop.ctx:
            seqs = sorted({batch.seq_id[i][0] for i in range(batch.n_tokens)})
            decodes.append((seqs, llama_cpp.llama_n_threads(ctx)))
        return decode(ctx, batch)

    monkeypatch.setattr(llama_cpp, "llama_decode", watched)
    try:
        prompt = backend.render(LONG)
        left = Stream(backend.generate(prompt, max_tokens=30, session="left"))  # slot 0
        middle = Stream(backend.generate(prompt, max_tokens=2, session="middle"))  # slot 1, ends first
        right = Stream(backend.generate(prompt, max_tokens=30, session="right"))  # slot 2
        await asyncio.gather(left.task, middle.task, right.task)
        await until(lambda: backend.pending == 0)
        apart = [threads for seqs, threads in decodes if seqs == [0, 2]]
        assert apart and set(apart) == {2}, decodes  # the two replies left, a slot apart, on both threads
        assert all(threads == 2 for seqs, threads in decodes if len(seqs) > 1), decodes
        alone = Stream(backend.generate(prompt, max_tokens=3, session="left"))
        await alone.task
        assert decodes[-1] == ([0], 1), decodes[-3:]  # a lone reply decodes on the decode thread
    finally:
        await backend.close()
