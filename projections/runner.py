"""Feeding a projector from the log, and rebuilding read models from nothing.

A projector is a plain function of (connection, events). The runner reads the log in batches and
applies each batch together with its checkpoint in one transaction: a crash between batches loses
nothing and repeats nothing. A rebuild folds the whole log in memory with the projector's own fold
and writes the result into fresh tables in a schema of its own, so the live tables keep serving
meanwhile and the two can be compared row by row; the projector then takes the new tables over
from the rebuild's checkpoint.
"""

from __future__ import annotations

import asyncio
import gc
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import islice

import asyncpg

from eventstore import (
    START,
    EventStore,
    LogPosition,
    RecordedEvent,
    load_checkpoint,
    reset_checkpoint,
    save_checkpoint,
)

from .positions import TABLES, FoldedPositions, project_positions

Projector = Callable[[asyncpg.Connection, Sequence[RecordedEvent]], Awaitable[None]]
Progress = Callable[[int], object]
"""Told the number of events applied so far, after each batch."""

_HELD_BACK_PAUSE = 0.02  # seconds between looks while an older transaction holds readers back
REBUILD_BATCH = 5000  # events per read of the log in a rebuild
WRITE_CHUNK = 5000  # rows per COPY (and transaction) when a rebuild writes its tables
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
    progress: Progress | None = None,
) -> int:
    """Apply every event committed before the call (and any after it met on the way), once."""
    applied = batches = 0
    async with pool.acquire() as connection:
        position = await load_checkpoint(connection, subscriber)
        async for batch in _final_batches(store, position, batch_size):
            async with connection.transaction():
                if schema is not None:
                    await connection.execute(f"SET LOCAL search_path TO {_schema(schema)}, public")
                await project(connection, batch)
                await save_checkpoint(connection, subscriber, position, batch[-1].position)
            position = batch[-1].position
            applied += len(batch)
            batches += 1
            if schema is not None and batches in _ANALYZE_AFTER:
                await _analyze(connection, schema)
            if progress is not None:
                progress(applied)
    return applied


async def _final_batches(
    store: EventStore, after: LogPosition, batch_size: int
) -> AsyncIterator[list[RecordedEvent]]:
    """The log after `after` up to where it stood at the call, and whatever follows on the way.

    The log is final only below the oldest open transaction; when one holds readers back, this
    waits for it rather than stop short of events that were committed before it started.
    """
    goal = await store.newest()
    while True:
        async for batch in store.read_all(after, batch_size=batch_size):
            yield batch
            after = batch[-1].position
        if after >= goal:
            return
        await asyncio.sleep(_HELD_BACK_PAUSE)


async def rebuild_into(
    pool: asyncpg.Pool, store: EventStore, schema: str, progress: Progress | None = None
) -> int:
    """Build the read model tables afresh, from the whole log, in `schema`.

    The log is folded in memory (no transaction is open meanwhile), then written in short
    transactions of WRITE_CHUNK rows, so nothing holds live readers back for long. The tables are
    complete once the checkpoint is saved, with the last of them; a rebuild that stops before
    leaves a schema the next one drops.
    """
    quoted = _schema(schema)
    async with pool.acquire() as connection:
        async with connection.transaction():
            await connection.execute(f"DROP SCHEMA IF EXISTS {quoted} CASCADE")
            await connection.execute(f"CREATE SCHEMA {quoted}")
            for table in TABLES:
                await connection.execute(
                    f"CREATE TABLE {quoted}.{table} (LIKE public.{table} INCLUDING ALL)"
                )
            await reset_checkpoint(connection, _subscriber(schema))
        folded, applied, position = FoldedPositions(), 0, START
        with _collector_paused():
            async for batch in _prefetched(_final_batches(store, position, REBUILD_BATCH)):
                folded.apply(batch)
                applied += len(batch)
                position = batch[-1].position
                if progress is not None:
                    progress(applied)
        for table, (columns, records) in folded.records().items():
            while chunk := list(islice(records, WRITE_CHUNK)):
                await connection.copy_records_to_table(
                    table, schema_name=schema, columns=columns, records=chunk
                )
        await _analyze(connection, schema)  # the projector's row lookups need statistics
        async with connection.transaction():
            await save_checkpoint(connection, _subscriber(schema), START, position)
    return applied


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The fold makes millions of short-lived objects and keeps a row per position, none of them
    in a cycle: the garbage collector would only walk the kept ones again and again."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


async def _prefetched(
    batches: AsyncIterator[list[RecordedEvent]],
) -> AsyncIterator[list[RecordedEvent]]:
    """`batches`, the next one read while the caller works on this one."""
    ahead: asyncio.Queue[list[RecordedEvent] | Exception | None] = asyncio.Queue(maxsize=1)

    async def read() -> None:
        try:
            async for batch in batches:
                await ahead.put(batch)
        except Exception as error:
            await ahead.put(error)
        else:
            await ahead.put(None)

    reader = asyncio.create_task(read())
    try:
        while (batch := await ahead.get()) is not None:
            if isinstance(batch, Exception):
                raise batch
            yield batch
    finally:
        reader.cancel()


async def rebuild(pool: asyncpg.Pool, store: EventStore, progress: Progress | None = None) -> int:
    """Replace the live read models with ones rebuilt from the log, while they keep serving.

    The new tables are built beside the live ones, then swapped in: in one short transaction that
    locks the live tables, the events committed since are applied to them and they take the live
    tables' place (names, indexes and all). Readers and writers wait only for that transaction.
    """
    schema = f"rebuild_{int(time.time())}"
    applied = await rebuild_into(pool, store, schema, progress)
    return applied + await _swap_in(pool, store, schema)


async def _swap_in(pool: asyncpg.Pool, store: EventStore, schema: str) -> int:
    quoted = _schema(schema)
    tables = ", ".join(f"public.{table}" for table in TABLES)
    applied = 0
    async with pool.acquire() as connection, connection.transaction():
        # Everyone waits from here (briefly: the rebuild is close to the head by now). Every
        # writer that touched the tables has committed. A weaker lock would deadlock with a
        # writer that has read the tables and waits to write them.
        await connection.execute(f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE")
        position = await load_checkpoint(connection, _subscriber(schema))
        await connection.execute(f"SET LOCAL search_path TO {quoted}, public")
        # Not only the final events: a writer still open cannot have touched the tables, and it
        # will write its own events to the new ones once they are in place.
        async for batch in store.read_all(position, connection=connection, final_only=False):
            await project_positions(connection, batch)
            applied += len(batch)
        await _analyze(connection, schema)  # the live tables' successors come with statistics
        for table in TABLES:
            names = await _index_names(connection, schema, table)
            await connection.execute(f"DROP TABLE public.{table}")
            await connection.execute(f"ALTER TABLE {quoted}.{table} SET SCHEMA public")
            for new, old in names.items():
                await connection.execute(f'ALTER INDEX public."{new}" RENAME TO "{old}"')
        await connection.execute(f"DROP SCHEMA {quoted}")
        await reset_checkpoint(connection, _subscriber(schema))
    return applied


_INDEXES = """
SELECT indexname AS name, indexdef LIKE 'CREATE UNIQUE%' AS is_unique,
       substring(indexdef FROM ' USING .*$') AS definition
FROM pg_indexes WHERE schemaname = $1 AND tablename = $2
"""


async def _index_names(connection: asyncpg.Connection, schema: str, table: str) -> dict[str, str]:
    """The rebuilt table's index names that differ from the live one's, mapped to those."""
    live = {
        (row["is_unique"], row["definition"]): row["name"]
        for row in await connection.fetch(_INDEXES, "public", table)
    }
    renames = {}
    for row in await connection.fetch(_INDEXES, schema, table):
        old = live[(row["is_unique"], row["definition"])]
        if old != row["name"]:
            renames[row["name"]] = old
    return renames


# Fresh tables have no statistics (and autovacuum may be off): without them the projector's row
# lookups can be planned as scans of a table that grows with every batch.
_ANALYZE_AFTER = {1, 10, 100, 1000, 10_000}


async def _analyze(connection: asyncpg.Connection, schema: str) -> None:
    tables = ", ".join(f"{_schema(schema)}.{table}" for table in TABLES)
    await connection.execute(f"ANALYZE {tables}")


def _subscriber(schema: str) -> str:
    return f"rebuild:{schema}"


async def differing_rows(pool: asyncpg.Pool, schema: str) -> dict[str, list[str]]:
    """Per table, the keys of the rows that differ between the live read model and `schema`'s."""
    quoted = _schema(schema)
    found = {}
    for table, key in TABLES.items():
        rows = await pool.fetch(
            f"""SELECT DISTINCT {key}::text AS key FROM (
                    (TABLE public.{table} EXCEPT ALL TABLE {quoted}.{table})
                    UNION ALL
                    (TABLE {quoted}.{table} EXCEPT ALL TABLE public.{table})
                ) AS different ORDER BY 1"""
        )
        found[table] = [row["key"] for row in rows]
    return found


async def verify(
    pool: asyncpg.Pool, store: EventStore, progress: Progress | None = None
) -> dict[str, list[str]]:
    """Rebuild into scratch tables and name every live row that differs (the live ones stay)."""
    schema = f"verify_{int(time.time())}"
    try:
        await rebuild_into(pool, store, schema, progress)
        return await differing_rows(pool, schema)
    finally:
        async with pool.acquire() as connection, connection.transaction():
            await connection.execute(f"DROP SCHEMA IF EXISTS {_schema(schema)} CASCADE")
            await reset_checkpoint(connection, _subscriber(schema))
