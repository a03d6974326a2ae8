"""Old event shapes stay readable forever: upcasters lift them when read."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import asyncpg
import msgspec
import pytest

from eventstore import EventStore, NewEvent, Upcasters

from .factories import new_stream, settled


async def write_old_shape(pool: asyncpg.Pool, stream: str) -> None:
    """A v1 event as an older release wrote it: `price` was a string and `qty` had another name."""
    await pool.execute(
        "INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, data)"
        " VALUES ($1, $2, 1, 'Filled', 1, $3)",
        uuid.uuid4(),
        stream,
        msgspec.Raw(b'{"price": "10.50", "size": 3}'),
    )


def v1_to_v2(data: dict) -> dict:
    return {"price": Decimal(data["price"]), "quantity": data["size"]}


def v2_to_v3(data: dict) -> dict:
    return {**data, "venue": "unknown"}


@pytest.fixture
def upcasters() -> Upcasters:
    upcasters = Upcasters()
    upcasters.register("Filled", 1, v1_to_v2)
    upcasters.register("Filled", 2, v2_to_v3, renamed_to="PositionFilled")
    return upcasters


async def test_old_events_are_upcast_step_by_step_on_every_read_path(
    pool: asyncpg.Pool, upcasters: Upcasters
) -> None:
    stream = new_stream()
    await write_old_shape(pool, stream)
    store = EventStore(pool, upcasters=upcasters)
    try:
        from_stream = (await store.read_stream(stream))[0]
        await settled(store)
        from_log = [e async for batch in store.read_all() for e in batch][0]
        from_subscription = await asyncio.wait_for(anext(store.subscribe()), 10)
    finally:
        await store.close()

    for event in (from_stream, from_log, from_subscription):
        assert event.event_type == "PositionFilled"
        assert event.schema_version == 3
        assert event.data == {"price": Decimal("10.50"), "quantity": 3, "venue": "unknown"}
    stored = await pool.fetchrow("SELECT event_type, schema_version FROM events")
    assert tuple(stored) == ("Filled", 1)


async def test_current_events_pass_through_untouched(
    pool: asyncpg.Pool, upcasters: Upcasters
) -> None:
    store = EventStore(pool, upcasters=upcasters)
    try:
        stream = new_stream()
        await store.append(
            stream, [NewEvent(uuid.uuid4(), "PositionFilled", {"price": 1}, schema_version=3)]
        )
        [event] = await store.read_stream(stream)
    finally:
        await store.close()
    assert (event.event_type, event.schema_version, event.data) == (
        "PositionFilled",
        3,
        {"price": 1},
    )


def test_a_step_can_be_registered_once() -> None:
    upcasters = Upcasters()
    upcasters.register("Filled", 1, v1_to_v2)
    with pytest.raises(ValueError):
        upcasters.register("Filled", 1, v1_to_v2)
