"""Recall by words in the store: the full-text index is keyed by channel, so a lookup reads one channel's
range of it and ranks with that channel's own statistics; lines of other channels, of other casts and
from after the asked line are never found; an upgraded database is indexed whole."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import bot.store.memory as memory_queries
from bot.memory.recall import match_words
from bot.store import Store
from bot.store.migrations import FTS_KEY_BITS

from .support.old_database import old_database

HERE, THERE = 7, 8
EVERYTHING = 1 << 62  # before_id past every line


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "bot.sqlite3")
    yield s
    await s.close()


async def say(store: Store, text: str, channel: int = HERE, persona: str = "mira") -> int:
    return await store.add_message(channel, role="user", author_name="Ann", content=text, persona=persona)


async def test_a_word_rare_in_the_channel_ranks_first_however_common_elsewhere(store: Store) -> None:
    """Ranked over the whole database, "dragon" (in 300 lines of another channel) would weigh less than
    "castle" (in 11 lines here) and the castle lines would come first."""
    dragon = await say(store, "The dragon sleeps under the hill.")
    for n in range(11):
        await say(store, f"The castle wall number {n} is cold.")
    for n in range(300):
        await say(store, f"A dragon flew over town {n}.", channel=THERE)
    found = await store.recall(HERE, ["mira"], match_words("the dragon and the castle"), EVERYTHING, 3)
    assert found[0].id == dragon
    assert {m.channel_id for m in found} == {HERE}


async def test_only_this_channels_cast_and_earlier_lines_are_found(store: Store) -> None:
    await say(store, "The lantern is in the cellar.", channel=THERE)
    await say(store, "The lantern is in the attic.", persona="tobin")
    early = await say(store, "The lantern is under the stairs.")
    late = await say(store, "The lantern went out.")
    words = match_words("where is the lantern")
    assert sorted(m.id for m in await store.recall(HERE, ["mira"], words, EVERYTHING, 5)) == [early, late]
    assert [m.id for m in await store.recall(HERE, ["mira"], words, late, 5)] == [early]
    assert await store.recall(HERE, ["mira"], words, early, 5) == []
    assert await store.recall(9, ["mira"], words, EVERYTHING, 5) == []  # a channel with no lines
    assert await store.recall(HERE, ["mira"], [], EVERYTHING, 5) == []


async def test_the_index_keys_put_each_channel_in_its_own_range(store: Store) -> None:
    first = await say(store, "Harbour fog again.")
    other = await say(store, "Harbour fog there.", channel=THERE)
    raw = sqlite3.connect(store.path)
    numbers = dict(raw.execute("SELECT channel_id, number FROM fts_channels").fetchall())
    keys = sorted(r[0] for r in raw.execute("SELECT rowid FROM messages_fts WHERE messages_fts MATCH 'fog'"))
    assert keys == sorted([(numbers[HERE] << FTS_KEY_BITS) + first, (numbers[THERE] << FTS_KEY_BITS) + other])
    raw.close()


async def test_a_word_on_too_many_lines_is_not_listed_unless_it_is_the_rarest(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory_queries, "MAX_POSTINGS", 3)
    common = [await say(store, f"The weather again, day {n}.") for n in range(5)]
    rare = await say(store, "The weather and the lighthouse.")
    assert [m.id for m in await store.recall(HERE, ["mira"], ["lighthouse", "weather"], EVERYTHING, 9)] == [
        rare
    ]
    found = await store.recall(HERE, ["mira"], ["weather"], EVERYTHING, 9)
    assert sorted(m.id for m in found) == [common[3], common[4], rare]  # the rarest word's newest lines


async def test_each_channel_counts_its_lines_for_the_weights(store: Store) -> None:
    first = await say(store, "One.")
    await say(store, "Two.")
    await say(store, "Elsewhere.", channel=THERE)
    await store._write("DELETE FROM messages WHERE id = ?", (first,))
    raw = sqlite3.connect(store.path)
    assert dict(raw.execute("SELECT channel_id, lines FROM fts_channels").fetchall()) == {HERE: 1, THERE: 1}
    raw.close()


async def test_words_with_quotes_or_query_syntax_are_searched_for_as_words(store: Store) -> None:
    line = await say(store, 'She said "NEAR" and OR twice.')
    assert [m.id for m in await store.recall(HERE, ["mira"], ['"near', "or)", "*"], EVERYTHING, 5)] == [line]
    assert await store.recall(HERE, ["mira"], ["*", '"', "-"], EVERYTHING, 5) == []


async def test_an_upgraded_database_indexes_every_channels_lines(tmp_path: Path) -> None:
    """A database from before the channel-keyed index (schema 7) keeps recall for every line it held;
    erasing one of them afterwards takes it out of the index."""
    lines = [(HERE, "The key is under the mat.", 1), (THERE, "The key is in the drawer.", 2)]
    path = old_database(tmp_path / "old.sqlite3", 7, lines)
    store = await Store.open(path)
    try:
        words = match_words("where is the key")
        assert [m.content for m in await store.recall(HERE, ["mira"], words, EVERYTHING, 5)] == [
            "The key is under the mat."
        ]
        assert [m.content for m in await store.recall(THERE, ["mira"], words, EVERYTHING, 5)] == [
            "The key is in the drawer."
        ]
        raw = sqlite3.connect(path)
        assert dict(raw.execute("SELECT channel_id, lines FROM fts_channels").fetchall()) == {
            HERE: 1,
            THERE: 1,
        }
        raw.close()
        await store.delete_messages({1})
        assert await store.recall(HERE, ["mira"], words, EVERYTHING, 5) == []
        assert await store.index_holds('"mat"') == 0 and await store.index_holds('"drawer"') == 1
    finally:
        await store.close()
