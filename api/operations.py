"""Operators' commands on the read models and the log: rebuild, verify, export, reclock."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import IO
from uuid import UUID

import asyncpg

import eventstore
from eventstore import EventStore
from projections import audit
from projections.runner import rebuild, verify

from . import json
from .config import MIGRATIONS, Settings
from .database import apply_migrations, resolve_database_url


@asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[tuple[asyncpg.Pool, EventStore]]:
    dsn = await resolve_database_url(settings)
    await apply_migrations(dsn)
    # One batch at a time: a few connections are plenty, and leave the service its own.
    async with eventstore.opened_store(dsn, min_size=1, max_size=4) as opened:
        yield opened


class _Progress:
    """A line on stderr at most once a second, and a last one: how many events, how fast."""

    def __init__(self, verb: str) -> None:
        self._verb = verb
        self._started = self._shown = time.monotonic()
        self._count = 0

    def __call__(self, count: int) -> None:
        self._count = count
        if time.monotonic() - self._shown >= 1:
            self._show()

    def done(self) -> None:
        self._show()

    def _show(self) -> None:
        self._shown = now = time.monotonic()
        rate = self._count / max(now - self._started, 1e-9)
        print(f"{self._verb} {self._count:,} events ({rate:,.0f}/s)", file=sys.stderr, flush=True)


async def rebuild_read_models(settings: Settings) -> int:
    async with _store(settings) as (pool, store):
        progress = _Progress("rebuilt")
        await rebuild(pool, store, progress)
        progress.done()
    print("the rebuilt read models are live")
    return 0


async def reclock_log(settings: Settings) -> int:
    """After a logical restore from a cluster that was ahead: renumber the log's transaction ids
    in the same order, then rebuild the read models (they keep places in the log of their own)."""
    dsn = await resolve_database_url(settings)
    connection = await asyncpg.connect(dsn)
    try:
        await eventstore.migrate(connection, MIGRATIONS)
        renumbered = await eventstore.reclock(connection)
    finally:
        await connection.close()
    if not renumbered:
        print("the log's transaction ids are this cluster's already: nothing to do")
        return 0
    print(f"renumbered the transaction ids of {renumbered:,} events, in the same order")
    return await rebuild_read_models(settings)


async def verify_read_models(settings: Settings) -> int:
    """Exit status 0 when the live read models equal a rebuild from the log, 1 when not."""
    async with _store(settings) as (pool, store):
        progress = _Progress("replayed")
        different = await verify(pool, store, progress)
        progress.done()
    for table, keys in different.items():
        for key in keys:
            print(f"{table}: {key} differs from the log")
    if any(different.values()):
        return 1
    print("the read models agree with the log")
    return 0


async def export_events(
    settings: Settings,
    output: IO[bytes],
    *,
    position_id: UUID | None,
    owner: str | None,
    recorded_from: datetime | None,
    recorded_to: datetime | None,
) -> int:
    """The events asked for, oldest first, one JSON object per line, as auditors read them."""
    criteria = audit.EventSearch(
        position_ids=None if position_id is None else [position_id],
        owner=owner,
        recorded_from=recorded_from,
        recorded_to=recorded_to,
    )
    progress = _Progress("exported")
    count = 0
    async with _store(settings) as (pool, store):
        cursor = None
        while batch := await audit.search(pool, store, criteria, after=cursor, limit=5000):
            output.writelines(json.encode(audit.entry(event)) + b"\n" for event in batch)
            cursor = batch[-1].position
            count += len(batch)
            progress(count)
    output.flush()
    progress.done()
    return 0
