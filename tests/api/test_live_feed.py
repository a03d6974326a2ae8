"""The live feed without Redis: it reads the log only while someone listens."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from api import json
from commands import PositionHandlers
from eventstore import EventStore
from live import Feed, Hub, LiveLog
from projections.positions import project_positions

from ..domain.given import open_position
from ..projections.test_rebuild import random_workload


async def _until(condition, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.02)


async def test_a_feed_nobody_listens_to_reads_no_event_yet_the_next_listener_misses_none(
    pool: asyncpg.Pool,
) -> None:
    store = EventStore(pool, inline_projectors=[project_positions], poll_interval=0.2)
    handlers = PositionHandlers(store)
    hub = Hub(queue_limit=100)
    read_back: list[object] = []
    reader = store._read_batch

    async def counted(*args: object, **kwargs: object) -> object:
        read_back.append(args)
        return await reader(*args, **kwargs)

    store._read_batch = counted  # type: ignore[method-assign]  # a spy on the real store
    feeding = asyncio.create_task(Feed(hub, LiveLog(store, pool, json.encode), store, None).run())
    try:
        await random_workload(handlers, seed=7, steps=60)
        head = await store.head()

        async def at_head() -> bool:
            return hub.cursor == head

        await _until(at_head)
        unheard_reads = len(read_back)
        listener = hub.subscribe(None, lambda change: True)
        arrived = asyncio.Event()
        listener.on_change = arrived.set
        position_id = uuid.uuid4()
        command = open_position(position_id=position_id)
        await handlers.handle(position_id, command, {"actor": "ann"})
        await asyncio.wait_for(arrived.wait(), 10)
        change = listener.take()
    finally:
        feeding.cancel()
        await asyncio.gather(feeding, return_exceptions=True)
        await store.close()

    assert unheard_reads == 0  # the log grew by 60 commands: not one event was read back
    assert change is not None and change.position_id == str(position_id)
    assert change.cursor > head and change.event_type == "PositionOpened"
