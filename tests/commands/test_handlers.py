"""Command handlers against a real store: what a retried command does."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from commands import PositionHandlers
from domain.commands import AmendPosition
from domain.errors import PositionAlreadyExists
from domain.streams import position_stream
from eventstore import EventStore
from projections.positions import project_positions

from ..domain.given import NOW, open_position


async def test_opening_again_an_id_already_recorded_is_refused_and_records_nothing(
    pool: asyncpg.Pool,
) -> None:
    """What a create whose shared commit lost its answer meets when it runs again alone."""
    store = EventStore(pool, inline_projectors=[project_positions])
    handlers = PositionHandlers(store)
    position_id = uuid.uuid4()
    command = open_position(position_id=position_id)
    try:
        [outcome] = await handlers.open_together([(command, {"actor": "ann"})])
        async with pool.acquire() as connection, connection.transaction():
            with pytest.raises(PositionAlreadyExists):
                await handlers.handle(position_id, command, {"actor": "ann"}, connection=connection)
        stored = await store.read_stream(position_stream(position_id))
    finally:
        await store.close()

    assert not isinstance(outcome, Exception) and outcome.state is not None
    assert [event.event_type for event in stored] == ["PositionOpened"]


async def test_commands_of_one_transaction_keep_each_positions_order_in_the_log(
    pool: asyncpg.Pool,
) -> None:
    """Bulk updates over overlapping positions racing single commands: in the log, which orders
    transactions, each position's events still come in the order of their versions."""
    store = EventStore(pool, inline_projectors=[project_positions])
    handlers = PositionHandlers(store)
    ids = [uuid.uuid4() for _ in range(4)]
    await handlers.open_together([(open_position(position_id=i), {"actor": "ann"}) for i in ids])

    async def each(position_ids: list[uuid.UUID]) -> None:
        async with pool.acquire() as connection, connection.transaction():
            await handlers.handle_each(
                [(i, AmendPosition(at=NOW, notes=uuid.uuid4().hex)) for i in position_ids],
                {"actor": "ann"},
                connection=connection,
            )

    async def one(position_id: uuid.UUID) -> None:
        async with pool.acquire() as connection, connection.transaction():
            await handlers.handle(
                position_id,
                AmendPosition(at=NOW, notes=uuid.uuid4().hex),
                {"actor": "bob"},
                connection=connection,
            )

    try:
        for _ in range(30):
            await asyncio.gather(each(ids), one(ids[1]), one(ids[2]), each(ids[::-1]), one(ids[3]))
        in_log_order: dict[str, list[int]] = {}
        async for batch in store.read_all():
            for event in batch:
                in_log_order.setdefault(event.stream_id, []).append(event.stream_version)
    finally:
        await store.close()

    for position_id in ids:
        versions = in_log_order[position_stream(position_id)]
        assert versions == list(range(1, len(versions) + 1)), position_id
