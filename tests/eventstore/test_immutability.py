"""The database itself refuses to change or remove an event, whoever connects."""

from __future__ import annotations

import asyncpg
import pytest

from eventstore import EventStore

from .factories import new_event, new_stream


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET data = '{}'::jsonb",
        "UPDATE events SET event_type = 'Forged' WHERE stream_version = 1",
        "DELETE FROM events",
        "TRUNCATE events",
    ],
)
async def test_events_cannot_be_updated_deleted_or_truncated(
    store: EventStore, pool: asyncpg.Pool, statement: str
) -> None:
    stream = new_stream()
    before = await store.append(stream, [new_event(n=1)])

    with pytest.raises(asyncpg.RestrictViolationError, match="events are immutable"):
        await pool.execute(statement)

    assert await store.read_stream(stream) == before
