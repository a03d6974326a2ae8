"""The event store: append to streams, read streams, read and follow the whole log.

It knows streams, versions and positions, nothing of what the events mean.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
import msgspec

from . import codec
from .connections import create_pool
from .errors import DuplicateEventIds, UnknownPosition, WrongExpectedVersion
from .events import (
    START,
    ExpectedVersion,
    LogPosition,
    LogSnapshot,
    NewEvent,
    RecordedEvent,
    StreamAppend,
)
from .notifications import LogNotifier
from .upcasting import Upcasters

InlineProjector = Callable[[asyncpg.Connection, Sequence[RecordedEvent]], Awaitable[None]]
"""Runs inside the append's transaction: its writes commit or roll back with the events."""

# One statement checks the expected version and inserts the events; the unique (stream_id,
# stream_version) index settles races (of two writers that decided on one version, the second gets
# a unique violation). An expected version n needs only "version n exists" (n = 0: nothing to
# check); only "any version" looks up the stream's last version. One event, one stream and several
# streams each have a statement: the general form costs about twice as much on the server.
# A single event (nearly every command) is inserted ON CONFLICT DO NOTHING: one row is written
# whole or not at all, so a refusal writes nothing and raises nothing, and an append inside a
# caller's transaction needs no savepoint (two round trips fewer). A statement of several rows
# could write some before the conflict: it raises, and the savepoint undoes it.
# The first event of a new stream, the commonest append of all (every new position): its version
# is 1, and the unique index refuses it if the stream exists.
_START_STREAM = """
INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, data, metadata)
VALUES ($2, $1, 1, $3, $4, $5, $6)
ON CONFLICT DO NOTHING
RETURNING event_id, global_position, tx_id, stream_version, recorded_at
"""

_APPEND_EVENT = """
INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, data, metadata)
SELECT $2, $1,
       coalesce($7, (SELECT max(stream_version) FROM events WHERE stream_id = $1), 0) + 1,
       $3, $4, $5, $6
WHERE $7::bigint IS NULL OR $7 = 0
   OR EXISTS (SELECT FROM events WHERE stream_id = $1 AND stream_version = $7)
ON CONFLICT DO NOTHING
RETURNING event_id, global_position, tx_id, stream_version, recorded_at
"""

_APPEND_TO_STREAM = """
INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, data, metadata)
SELECT i.event_id, $1,
       coalesce($7, (SELECT max(stream_version) FROM events WHERE stream_id = $1), 0) + i.ord,
       i.event_type, i.schema_version, i.data, i.metadata
FROM unnest($2::uuid[], $3::text[], $4::integer[], $5::jsonb[], $6::jsonb[])
         WITH ORDINALITY AS i(event_id, event_type, schema_version, data, metadata, ord)
WHERE $7::bigint IS NULL OR $7 = 0
   OR EXISTS (SELECT FROM events WHERE stream_id = $1 AND stream_version = $7)
ORDER BY i.ord
RETURNING event_id, global_position, tx_id, stream_version, recorded_at
"""

# Rows arrive sorted by stream id, so two atomic appends over the same streams claim index entries
# in the same order and cannot deadlock.
_APPEND_TO_STREAMS = """
WITH streams AS (
    SELECT s.stream_id,
           coalesce(s.expected,
                    (SELECT max(e.stream_version) FROM events e WHERE e.stream_id = s.stream_id),
                    0) AS base,
           s.expected IS NULL OR s.expected = 0
               OR EXISTS (SELECT FROM events e
                          WHERE e.stream_id = s.stream_id AND e.stream_version = s.expected)
               AS ready
    FROM unnest($1::text[], $2::bigint[]) AS s(stream_id, expected)
)
INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, data, metadata)
SELECT i.event_id, i.stream_id,
       s.base + row_number() OVER (PARTITION BY i.stream_id ORDER BY i.ord),
       i.event_type, i.schema_version, i.data, i.metadata
FROM unnest($3::text[], $4::uuid[], $5::text[], $6::integer[], $7::jsonb[], $8::jsonb[])
         WITH ORDINALITY AS i(stream_id, event_id, event_type, schema_version, data, metadata, ord)
JOIN streams s USING (stream_id)
WHERE NOT EXISTS (SELECT FROM streams WHERE NOT ready)
ORDER BY i.ord
RETURNING event_id, global_position, tx_id, stream_version, recorded_at
"""

_STREAM_VERSIONS = """
SELECT stream_id, max(stream_version) AS version FROM events
WHERE stream_id = ANY ($1) GROUP BY stream_id
"""

# A stream's writer lock, held until the transaction ends. Appends to "any version" take it before
# reading the stream's last version, in a statement of its own (a READ COMMITTED statement sees
# what had committed when it began: in the INSERT itself the lock would come after the snapshot),
# so such appends queue one behind the other instead of racing for the same version, in any
# number of processes. Several streams are locked in stream-id order: no two lockers deadlock.
_LOCK_STREAMS = (
    "SELECT pg_advisory_xact_lock(hashtextextended(stream_id, 0)) "
    "FROM unnest($1::text[]) WITH ORDINALITY AS s(stream_id, ord) ORDER BY ord"
)

# An append to "any version" loses a race only to a writer that takes no lock (one that expects
# an exact version): it is tried again on the new version. Each lost race means a rival
# committed, so the bound only guards against a pathological pile-up.
_ANY_VERSION_ATTEMPTS = 100

COLUMNS = """global_position, tx_id, event_id, stream_id, stream_version, event_type,
              schema_version, data, metadata, recorded_at"""

# Only below the snapshot's xmin is the log final: every transaction there has ended, so no event
# can later appear behind the cursor. Row comparison keeps the cursor an index range scan.
_READ_LOG = f"""
SELECT {COLUMNS}
FROM events
WHERE (tx_id, global_position) > ($1::xid8, $2::bigint)
  AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
  AND ($3::text[] IS NULL OR stream_category = ANY ($3))
  AND ($4::text[] IS NULL OR event_type = ANY ($4))
ORDER BY tx_id, global_position
LIMIT $5
"""

# Everything the reader's snapshot sees, final or not: only for a reader that has locked out the
# writers whose late commits it would otherwise miss.
_READ_VISIBLE = _READ_LOG.replace("AND tx_id < pg_snapshot_xmin(pg_current_snapshot())", "")
assert _READ_VISIBLE != _READ_LOG

_POSITION_AT = """
SELECT tx_id, global_position FROM events
WHERE recorded_at <= $1 AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY recorded_at DESC, tx_id DESC, global_position DESC
LIMIT 1
"""

# Committed events waiting above the barrier: some older transaction is still open. Asked as
# "is the newest event above it", so that the index answers: the planner would scan the whole
# table for "does any event lie above it" (it cannot tell how few do).
_HELD_BACK = """
SELECT coalesce(
    (SELECT tx_id FROM events ORDER BY tx_id DESC LIMIT 1)
        >= pg_snapshot_xmin(pg_current_snapshot()),
    false)
"""

_HEAD = """
SELECT tx_id, global_position FROM events
WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY tx_id DESC, global_position DESC
LIMIT 1
"""

_SNAPSHOT = """
SELECT pg_snapshot_xmin(s) AS xmin, pg_snapshot_xmax(s) AS xmax,
       ARRAY(SELECT pg_snapshot_xip(s)) AS running, head.tx_id, head.global_position
FROM pg_current_snapshot() AS s
LEFT JOIN LATERAL (
    SELECT tx_id, global_position FROM events
    WHERE tx_id < pg_snapshot_xmin(s)
    ORDER BY tx_id DESC, global_position DESC
    LIMIT 1
) AS head ON TRUE
"""

_NEWEST = """
SELECT tx_id, global_position FROM events ORDER BY tx_id DESC, global_position DESC LIMIT 1
"""

_READ_STREAM_FORWARD = f"""
SELECT {COLUMNS} FROM events
WHERE stream_id = $1 AND stream_version >= $2
ORDER BY stream_version
LIMIT $3
"""

_READ_STREAM_BACKWARD = f"""
SELECT {COLUMNS} FROM events
WHERE stream_id = $1 AND stream_version <= $2
ORDER BY stream_version DESC
LIMIT $3
"""

_STORED = f"SELECT {COLUMNS} FROM events WHERE event_id = ANY ($1) ORDER BY global_position"

_NO_LIMIT = 2**62
_LAST_VERSION = 2**62


class EventStore:
    """Append-only log of events in PostgreSQL, gap-free for readers, concurrent for writers."""

    COLUMNS = COLUMNS
    """The columns `recorded` needs, for readers that select events with SQL of their own."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        upcasters: Upcasters | None = None,
        inline_projectors: Sequence[InlineProjector] = (),
        poll_interval: float = 1.0,
    ) -> None:
        self._pool = pool
        self._upcasters = upcasters or Upcasters()
        self._inline_projectors = tuple(inline_projectors)
        self._poll_interval = poll_interval
        self._notifier = LogNotifier(pool)

    async def close(self) -> None:
        await self._notifier.close()

    # -- writing -------------------------------------------------------------------------------

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int | None = None,
        *,
        connection: asyncpg.Connection | None = None,
    ) -> list[RecordedEvent]:
        """Append to one stream; `expected_version` None = any, 0 = no stream, n = exactly n."""
        return await self.append_streams(
            [StreamAppend(stream_id, list(events), expected_version)], connection=connection
        )

    async def append_streams(
        self, appends: Sequence[StreamAppend], *, connection: asyncpg.Connection | None = None
    ) -> list[RecordedEvent]:
        """Append to several streams atomically: all of them are written, or none.

        Events go into the log stream by stream, in stream-id order. Repeating an append whose
        events are stored already returns them and writes nothing. With `connection`, the append
        joins the caller's transaction (in a savepoint, so a refusal leaves that transaction
        usable) and commits with it; the caller then calls `committed()`, so that subscribers
        read the events at once rather than at their next poll.
        """
        appends = sorted(appends, key=lambda append: append.stream_id)
        # Inside the caller's transaction the events are not visible before its commit: waking
        # readers now would find nothing, and they would sleep a whole poll interval. The caller
        # calls committed() instead.
        in_callers_transaction = connection is not None and connection.is_in_transaction()
        pending = _pending(appends)
        statement = _statement(appends, pending)
        queued = [a.stream_id for a in appends if a.expected_version is ExpectedVersion.ANY]
        retry_on_race = len(queued) == len(appends)
        try:
            for attempt in range(1, _ANY_VERSION_ATTEMPTS + 1):
                error = None
                try:
                    return await self._append_once(connection, pending, statement, queued)
                except asyncpg.UniqueViolationError as violation:
                    error = violation
                except _NothingWritten:
                    pass
                try:
                    return await self._explain_refusal(appends, pending, error, connection)
                except WrongExpectedVersion:
                    if not (retry_on_race and attempt < _ANY_VERSION_ATTEMPTS):
                        raise
            raise AssertionError("unreachable")
        finally:
            if not in_callers_transaction:
                self._notifier.appended()

    def committed(self) -> None:
        """Wake subscribers: a transaction holding appends made with `connection=` committed."""
        self._notifier.appended()

    @staticmethod
    async def lock_streams(connection: asyncpg.Connection, stream_ids: Sequence[str]) -> None:
        """Queue behind every other writer of these streams until `connection`'s transaction ends.

        The lock appends to "any version" take: a caller that reads a stream, decides and appends
        takes it first, so that its rivals wait for its decision instead of racing it.
        """
        await connection.execute(_LOCK_STREAMS, sorted(stream_ids))

    async def _append_once(
        self,
        connection: asyncpg.Connection | None,
        pending: Sequence[_Pending],
        statement: tuple[str, list[Any]],
        queued: Sequence[str],
    ) -> list[RecordedEvent]:
        sql, arguments = statement
        alone = connection is None or not connection.is_in_transaction()
        if alone and not self._inline_projectors and not queued:
            # A single statement outside a transaction commits by itself: one round trip.
            rows = await (connection or self._pool).fetch(sql, *arguments)
            if not rows:
                raise _NothingWritten()
            return _recorded(pending, rows)
        async with AsyncExitStack() as stack:
            if connection is None:
                connection = await stack.enter_async_context(self._pool.acquire())
            if alone or len(pending) > 1:  # a savepoint in the caller's transaction: see above
                await stack.enter_async_context(connection.transaction())
            if queued:
                await self.lock_streams(connection, queued)
            rows = await connection.fetch(sql, *arguments)
            if not rows:
                raise _NothingWritten()
            recorded = _recorded(pending, rows)
            for project in self._inline_projectors:
                await project(connection, recorded)
            return recorded

    async def _explain_refusal(
        self,
        appends: Sequence[StreamAppend],
        pending: Sequence[_Pending],
        error: asyncpg.UniqueViolationError | None,
        connection: asyncpg.Connection | None,
    ) -> list[RecordedEvent]:
        """Nothing was written: a retry of a stored append (answer it), or a real refusal.

        On the caller's connection when there is one (its transaction is still usable: nothing
        was written, or the savepoint was rolled back): a caller holding a connection must not
        wait for a second one from a full pool.
        """
        reader = connection or self._pool
        stored = await reader.fetch(_STORED, [item.event.event_id for item in pending])
        if len(stored) == len(pending):
            return [self.recorded(row) for row in stored]
        if stored or (error is not None and _is_constraint(error, "events_event_id_key")):
            raise DuplicateEventIds(
                "some of these event ids are stored already, as part of another append"
            )
        versions = {
            row["stream_id"]: row["version"]
            for row in await reader.fetch(_STREAM_VERSIONS, [a.stream_id for a in appends])
        }
        for append in appends:
            actual = versions.get(append.stream_id, 0)
            if append.expected_version is None or append.expected_version != actual:
                raise WrongExpectedVersion(append.stream_id, append.expected_version, actual)
        # The rival that held the version rolled back since: the caller may simply retry.
        first = appends[0]
        raise WrongExpectedVersion(
            first.stream_id, first.expected_version, versions.get(first.stream_id, 0)
        )

    # -- reading one stream --------------------------------------------------------------------

    async def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int | None = None,
        backward: bool = False,
        limit: int | None = None,
        connection: asyncpg.Connection | None = None,
    ) -> list[RecordedEvent]:
        """A stream's events in version order (or reverse), starting at `from_version`."""
        if backward:
            sql, start = _READ_STREAM_BACKWARD, from_version or _LAST_VERSION
        else:
            sql, start = _READ_STREAM_FORWARD, from_version or 1
        rows = await (connection or self._pool).fetch(sql, stream_id, start, limit or _NO_LIMIT)
        return [self.recorded(row) for row in rows]

    async def stream_version(self, stream_id: str) -> int:
        """The stream's current version: its number of events, 0 when it does not exist."""
        return await self._pool.fetchval(
            "SELECT coalesce(max(stream_version), 0) FROM events WHERE stream_id = $1", stream_id
        )

    # -- reading the log -----------------------------------------------------------------------

    async def read_all(
        self,
        after: LogPosition = START,
        *,
        batch_size: int = 1000,
        categories: Iterable[str] | None = None,
        event_types: Iterable[str] | None = None,
        connection: asyncpg.Connection | None = None,
        final_only: bool = True,
    ) -> AsyncIterator[list[RecordedEvent]]:
        """The log in order after `after`, in batches, up to what is final now.

        `final_only=False` reads whatever the connection's snapshot sees, including commits above
        the barrier: for a reader that holds locks keeping out the writers it must not miss.
        """
        categories, event_types = _filter(categories), _filter(event_types)
        sql = _READ_LOG if final_only else _READ_VISIBLE
        reader = connection or self._pool
        while True:
            rows = await reader.fetch(
                sql, after.tx_id, after.global_position, categories, event_types, batch_size
            )
            batch = [self.recorded(row) for row in rows]
            if batch:
                yield batch
                after = batch[-1].position
            if len(batch) < batch_size:
                return

    async def subscribe(
        self,
        after: LogPosition = START,
        *,
        batch_size: int = 500,
        categories: Iterable[str] | None = None,
        event_types: Iterable[str] | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Every event after `after`, exactly once and in log order: catch up, then follow live.

        Never ends by itself; the consumer stops it by leaving the loop or cancelling its task.
        """
        categories, event_types = _filter(categories), _filter(event_types)
        retry = _Backoff(first=0.002, limit=self._poll_interval)
        async with self._notifier.waiter() as wake:
            while True:
                wake.clear()
                batch = await self._read_batch(after, batch_size, categories, event_types)
                for event in batch:
                    yield event
                    after = event.position
                if len(batch) == batch_size:
                    continue
                if batch:
                    retry.reset()
                if await self._pool.fetchval(_HELD_BACK):
                    await _wait(wake, retry.next())
                else:
                    retry.reset()
                    await self._notifier.ensure_listening()
                    await _wait(wake, self._poll_interval)

    async def head(self) -> LogPosition:
        """The last final position of the log (START when empty): readers can go this far now."""
        row = await self._pool.fetchrow(_HEAD)
        return LogPosition(row["tx_id"], row["global_position"]) if row else START

    async def heads(self) -> AsyncIterator[LogPosition]:
        """`head()`, now and again each time the log may have grown: for a follower that needs to
        know where the log is, not what it holds. Never ends by itself, like subscribe()."""
        async with self._notifier.waiter() as wake:
            while True:
                wake.clear()
                yield await self.head()
                await self._notifier.ensure_listening()
                await _wait(wake, self._poll_interval)

    async def snapshot(self, connection: asyncpg.Connection) -> LogSnapshot:
        """What the transaction on `connection` sees of the log.

        In a REPEATABLE READ transaction every query sees this same snapshot, so a read model read
        there shows exactly the events the snapshot `includes`.
        """
        row = await connection.fetchrow(_SNAPSHOT)
        head = START if row["tx_id"] is None else LogPosition(row["tx_id"], row["global_position"])
        return LogSnapshot(head, row["xmin"], row["xmax"], frozenset(row["running"]))

    async def newest(self) -> LogPosition:
        """The position of the newest committed event, final or not (START when empty).

        Readers reach it once every transaction older than its own has ended.
        """
        row = await self._pool.fetchrow(_NEWEST)
        return LogPosition(row["tx_id"], row["global_position"]) if row else START

    async def wait_until_final(self, position: LogPosition, timeout: float) -> bool:
        """Wait until readers can reach `position` (every older transaction has ended).

        False if that takes longer than `timeout` seconds.
        """
        retry = _Backoff(first=0.002, limit=0.05)
        try:
            async with asyncio.timeout(timeout):
                while await self.head() < position:
                    await asyncio.sleep(retry.next())
        except TimeoutError:
            return False
        return True

    async def count_after(self, after: LogPosition) -> int:
        """How many committed events lie after `after`: how far behind a reader there is."""
        return await self._pool.fetchval(
            "SELECT count(*) FROM events WHERE (tx_id, global_position) > ($1::xid8, $2::bigint)",
            after.tx_id,
            after.global_position,
        )

    async def position_at(self, moment: datetime) -> LogPosition:
        """Where the log stood at `moment`: its last final event recorded then or before."""
        row = await self._pool.fetchrow(_POSITION_AT, moment)
        return LogPosition(row["tx_id"], row["global_position"]) if row else START

    async def position_of(self, global_position: int) -> LogPosition:
        """The log position of an event given by its public (integer) position; 0 is START."""
        if global_position == 0:
            return START
        tx_id = await self._pool.fetchval(
            "SELECT tx_id FROM events WHERE global_position = $1", global_position
        )
        if tx_id is None:
            raise UnknownPosition(global_position)
        return LogPosition(tx_id, global_position)

    async def _read_batch(
        self,
        after: LogPosition,
        batch_size: int,
        categories: list[str] | None,
        event_types: list[str] | None,
    ) -> list[RecordedEvent]:
        rows = await self._pool.fetch(
            _READ_LOG, after.tx_id, after.global_position, categories, event_types, batch_size
        )
        return [self.recorded(row) for row in rows]

    def recorded(self, row: asyncpg.Record) -> RecordedEvent:
        """An events row selected with COLUMNS, upcast to its current schema."""
        recorded = RecordedEvent(*row)  # the columns are selected in the struct's field order
        if not self._upcasters:
            return recorded
        event_type, schema_version, data = self._upcasters.upcast(
            recorded.event_type, recorded.schema_version, recorded.data
        )
        return msgspec.structs.replace(
            recorded, event_type=event_type, schema_version=schema_version, data=data
        )


class _Backoff:
    def __init__(self, *, first: float, limit: float) -> None:
        self._first, self._limit, self._next = first, limit, first

    def next(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self._limit)
        return delay

    def reset(self) -> None:
        self._next = self._first


async def _wait(wake: asyncio.Event, timeout: float) -> None:
    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
    # arrives as the wait ends, and a subscriber must always stop when cancelled.
    try:
        async with asyncio.timeout(timeout):
            await wake.wait()
    except TimeoutError:
        pass


def _filter(values: Iterable[str] | None) -> list[str] | None:
    return None if values is None else list(values)


class _Pending(NamedTuple):
    """An event on its way in, encoded once."""

    stream_id: str
    event: NewEvent
    data: bytes
    metadata: bytes


def _pending(appends: Sequence[StreamAppend]) -> list[_Pending]:
    if not appends:
        raise ValueError("nothing to append")
    stream_ids = [append.stream_id for append in appends]
    if len(set(stream_ids)) != len(stream_ids):
        raise ValueError("each stream may appear once in an atomic append")
    pending = []
    for append in appends:
        if not append.events:
            raise ValueError(f"no events to append to {append.stream_id!r}")
        if append.expected_version is not None and append.expected_version < 0:
            raise ValueError(f"expected version of {append.stream_id!r} must be >= 0 or None")
        pending.extend(
            _Pending(
                append.stream_id, event, codec.encode(event.data), codec.encode(event.metadata)
            )
            for event in append.events
        )
    return pending


def _statement(
    appends: Sequence[StreamAppend], pending: Sequence[_Pending]
) -> tuple[str, list[Any]]:
    if len(pending) == 1:
        [item], append = pending, appends[0]
        event = [
            append.stream_id,
            item.event.event_id,
            item.event.event_type,
            item.event.schema_version,
            msgspec.Raw(item.data),
            msgspec.Raw(item.metadata),
        ]
        if append.expected_version == ExpectedVersion.NO_STREAM:
            return _START_STREAM, event
        return _APPEND_EVENT, [*event, append.expected_version]
    events = [
        [item.event.event_id for item in pending],
        [item.event.event_type for item in pending],
        [item.event.schema_version for item in pending],
        [msgspec.Raw(item.data) for item in pending],
        [msgspec.Raw(item.metadata) for item in pending],
    ]
    if len(appends) == 1:
        return _APPEND_TO_STREAM, [appends[0].stream_id, *events, appends[0].expected_version]
    return _APPEND_TO_STREAMS, [
        [append.stream_id for append in appends],
        [append.expected_version for append in appends],
        [item.stream_id for item in pending],
        *events,
    ]


def _recorded(pending: Sequence[_Pending], rows: Sequence[asyncpg.Record]) -> list[RecordedEvent]:
    """The appended events as a reader of the log will see them (decoded JSON, not our objects)."""
    by_id = {row["event_id"]: row for row in rows}
    recorded = []
    for item in pending:
        row = by_id[item.event.event_id]
        recorded.append(
            RecordedEvent(
                global_position=row["global_position"],
                tx_id=row["tx_id"],
                event_id=item.event.event_id,
                stream_id=item.stream_id,
                stream_version=row["stream_version"],
                event_type=item.event.event_type,
                schema_version=item.event.schema_version,
                data=codec.decode(item.data),
                metadata=codec.decode(item.metadata),
                recorded_at=row["recorded_at"],
            )
        )
    return recorded


class _NothingWritten(Exception):
    """The append statement wrote nothing: a stream was not at its expected version, or the
    events were stored already."""


def _is_constraint(error: asyncpg.PostgresError, name: str) -> bool:
    return getattr(error, "constraint_name", None) == name


@asynccontextmanager
async def opened_store(
    dsn: str, **pool_options: Any
) -> AsyncIterator[tuple[asyncpg.Pool, EventStore]]:
    """A pool on `dsn` and a store on it, both closed at the end: for a tool's one job."""
    pool = await create_pool(dsn, **pool_options)
    store = EventStore(pool)
    try:
        yield pool, store
    finally:
        await store.close()
        await pool.close()
