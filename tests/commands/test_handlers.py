"""Command handlers against a real store: what a retried command does."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from commands import PositionHandlers
from domain.errors import PositionAlreadyExists
from domain.streams import position_stream
from eventstore import EventStore
from projections.positions import project_positions

from ..domain.given import open_position


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
