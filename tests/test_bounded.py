"""Per-user and per-channel state stays bounded: driven with many channels and users."""

from __future__ import annotations

import asyncio

from bot.bounded import KeyedLocks, LRUDict


def test_lru_dict_keeps_the_newest_keys() -> None:
    seen: LRUDict[int, float] = LRUDict(100)
    for user in range(10_000):
        seen[user] = float(user)
    seen[9_950] = 1.0  # touched again: now the newest
    seen[10_000] = 2.0
    assert len(seen) == 100 and 9_950 in seen and 9_900 not in seen and next(iter(seen)) == 9_901


async def test_keyed_locks_keep_only_channels_in_use() -> None:
    locks: KeyedLocks[int] = KeyedLocks()
    order: list[str] = []
    release = asyncio.Event()

    async def turn(channel: int, name: str) -> None:
        async with locks.hold(channel):
            order.append(f"{name} in")
            if name == "first":
                await release.wait()
            order.append(f"{name} out")

    first = asyncio.create_task(turn(1, "first"))
    second = asyncio.create_task(turn(1, "second"))  # same channel: must wait for the first
    others = [asyncio.create_task(turn(channel, f"c{channel}")) for channel in range(2, 2002)]
    await asyncio.gather(*others)
    assert len(locks) == 1  # 2,000 finished channels left nothing behind; channel 1 is still busy
    assert order[:1] == ["first in"] and "second in" not in order
    release.set()
    await asyncio.gather(first, second)
    assert order.index("first out") < order.index("second in")  # never two turns at once in a channel
    assert len(locks) == 0


async def test_engine_and_chat_state_stay_bounded(config, model) -> None:
    """Many channels through the real engine: the window map is capped, the lock map empties."""
    import bot.core.scene as scene_module
    from bot.core import Engine
    from bot.personas import PersonaLibrary
    from bot.store import Store

    store = await Store.open(config.resolve(config.store.path))
    try:
        engine = Engine(config, store, model, PersonaLibrary.from_config(config))
        engine.scene.windows = LRUDict(3)  # a small bound, to see it hold with few real turns
        assert scene_module.MAX_WINDOWS >= 1000
        for channel in range(6):
            await engine.turn(channel, f"User{channel}", "Hello!")
        assert len(engine.scene.windows) == 3 and len(engine.scene._locks) == 0
    finally:
        await store.close()
