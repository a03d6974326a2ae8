"""The read models as they were at any point of the log, rebuilt from the events.

The tables are built in the connection's own temporary schema, in one transaction, by the same
projector that keeps the live ones; the ordinary read-side queries then run against them. Only
the events asked about are replayed (one position's, one owner's, or the whole book's, with the
market prices), so the cost grows with that part of the log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

import asyncpg

from eventstore import EventStore, LogPosition

from . import audit
from .positions import TABLES, project_positions

BATCH = 5000


@asynccontextmanager
async def read_models_at(
    pool: asyncpg.Pool,
    store: EventStore,
    at: LogPosition,
    *,
    owner: str | None = None,
    position_id: UUID | None = None,
) -> AsyncIterator[asyncpg.Connection]:
    """A connection on which the read-model tables hold the state at `at` (inclusive).

    Only `owner`'s positions, or only `position_id`, when given.
    """
    async with pool.acquire() as connection, connection.transaction():
        for table in TABLES:
            await connection.execute(
                f"CREATE TEMPORARY TABLE {table} (LIKE public.{table} INCLUDING ALL) ON COMMIT DROP"
            )
        # A changed search_path also makes PostgreSQL re-plan statements prepared before.
        await connection.execute("SET LOCAL search_path TO pg_temp, public")
        criteria = audit.EventSearch(
            owner=owner,
            position_ids=None if position_id is None else [position_id],
            include_market=True,
        )
        cursor = None
        while True:
            batch = await audit.search(
                connection, store, criteria, after=cursor, until=at, limit=BATCH
            )
            if batch:
                await project_positions(connection, batch)
                cursor = batch[-1].position
            if len(batch) < BATCH:
                break
        yield connection
