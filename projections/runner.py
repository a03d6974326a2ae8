"""Feeding a projector from the log, and rebuilding read models from nothing.

A projector is a plain function of (connection, events). The runner reads the log in batches and
applies each batch together with its checkpoint in one transaction: a crash between batches loses
nothing and repeats nothing. A rebuild runs the same projector into fresh tables in a schema of its
own (the connection's search_path names it for the length of each transaction), so the live tables
keep serving meanwhile and the two can be compared row by row.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from eventstore import EventStore, RecordedEvent, load_checkpoint, reset_checkpoint, save_checkpoint

from .positions import TABLES

Projector = Callable[[asyncpg.Connection, Sequence[RecordedEvent]], Awaitable[None]]

_HELD_BACK_PAUSE = 0.02  # seconds between looks while an older transaction holds readers back
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _schema(name: str) -> str:
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"{name!r} is not a plain lower-case identifier")
    return f'"{name}"'


async def catch_up(
    pool: asyncpg.Pool,
    store: EventStore,
    subscriber: str,
    project: Projector,
    *,
    schema: str | None = None,
    batch_size: int = 1000,
) -> int:
    """Apply every event committed before the call (and any after it met on the way), once.

    The log is final only below the oldest open transaction; when one holds readers back, this
    waits for it rather than stop short of events that were committed before it started.
    """
    applied = 0
    goal = await store.newest()
    async with pool.acquire() as connection:
        position = await load_checkpoint(connection, subscriber)
        while True:
            async for batch in store.read_all(position, batch_size=batch_size):
                async with connection.transaction():
                    if schema is not None:
                        await connection.execute(
                            f"SET LOCAL search_path TO {_schema(schema)}, public"
                        )
                    await project(connection, batch)
                    await save_checkpoint(connection, subscriber, position, batch[-1].position)
                position = batch[-1].position
                applied += len(batch)
            if position >= goal:
                return applied
            await asyncio.sleep(_HELD_BACK_PAUSE)


async def rebuild_into(
    pool: asyncpg.Pool, store: EventStore, schema: str, project: Projector
) -> int:
    """Build the read model tables afresh, from the whole log, in `schema`."""
    quoted = _schema(schema)
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute(f"DROP SCHEMA IF EXISTS {quoted} CASCADE")
        await connection.execute(f"CREATE SCHEMA {quoted}")
        for table in TABLES:
            await connection.execute(
                f"CREATE TABLE {quoted}.{table} (LIKE public.{table} INCLUDING ALL)"
            )
        await reset_checkpoint(connection, f"rebuild:{schema}")
    return await catch_up(pool, store, f"rebuild:{schema}", project, schema=schema)


async def differences(pool: asyncpg.Pool, schema: str) -> dict[str, int]:
    """Per table, how many rows differ between the live read model and the one in `schema`."""
    quoted = _schema(schema)
    counts = {}
    for table in TABLES:
        counts[table] = await pool.fetchval(
            f"""SELECT (SELECT count(*) FROM (TABLE public.{table} EXCEPT ALL
                                              TABLE {quoted}.{table}) AS live_only)
                     + (SELECT count(*) FROM (TABLE {quoted}.{table} EXCEPT ALL
                                              TABLE public.{table}) AS rebuilt_only)"""
        )
    return counts
