"""Per-user and per-channel state that stays bounded however many users and channels a bot meets."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUDict(OrderedDict[K, V], Generic[K, V]):
    """A dict holding at most `limit` keys; setting a key makes it the newest, the oldest goes first.
    For state whose loss costs little (a cooldown forgotten, a prompt window rebuilt once)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


class KeyedLocks(Generic[K]):
    """One asyncio lock per key, kept only while some task holds or waits for it: the map holds as many
    entries as there are channels with a turn in progress, never one per channel ever seen."""

    def __init__(self) -> None:
        self._locks: dict[K, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, key: K) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
