"""The live view of each event equals what the read model answered right after that event.

A workload runs one command at a time; after every append, inside its transaction, the read model
is asked for each position the append touched. A LiveView fed the log must produce the same
positions, whether it starts at the beginning or in the middle (where it must find the market
prices as they were then, though they have changed since).
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import asyncpg
import pytest

from commands import PositionHandlers
from domain.streams import position_id_of
from eventstore import START, EventStore, LogPosition, RecordedEvent
from projections import queries
from projections.live import LiveView
from projections.positions import project_positions

from ..eventstore.factories import settled
from .test_rebuild import random_workload


async def _log(store: EventStore, after: LogPosition = START) -> list[RecordedEvent]:
    await settled(store)
    return [event async for batch in store.read_all(after) for event in batch]


@pytest.mark.parametrize("seed", [3, 11, 29])
async def test_live_updates_equal_the_read_model_after_each_event(
    pool: asyncpg.Pool, seed: int
) -> None:
    answered: dict[int, queries.PositionView | None] = {}

    async def remember_answers(connection, events: Sequence[RecordedEvent]) -> None:
        last: dict[UUID, RecordedEvent] = {}
        for event in events:
            if (position_id := position_id_of(event.stream_id)) is not None:
                last[position_id] = event
        for position_id, event in last.items():
            view = await queries.get_position(connection, position_id, None)
            answered[event.global_position] = view

    store = EventStore(pool, inline_projectors=[project_positions, remember_answers])
    try:
        await random_workload(PositionHandlers(store), seed, 150)
        log = await _log(store)
        middle = log[len(log) // 2].position

        from_start = await LiveView(store, pool).updates(log)
        from_middle = await LiveView(store, pool).updates(await _log(store, middle))
    finally:
        await store.close()

    compared = 0
    for updates in (from_start, from_middle):
        for update in updates:
            expected = answered.get(update.event.global_position)
            if update.position is None or expected is None:
                continue  # market prices, events before the last of an append, deletions
            assert update.position == expected, update.event
            compared += 1
    assert compared > 100
    prices = [u for u in from_start if u.prices is not None]
    assert prices and all(u.position is None for u in prices)
