"""Appending: expected versions, conflicts, idempotent retries, atomic multi-stream appends."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import asyncpg
import pytest

from eventstore import (
    DuplicateEventIds,
    EventStore,
    ExpectedVersion,
    NewEvent,
    StreamAppend,
    WrongExpectedVersion,
    create_pool,
)

from .factories import new_event, new_stream


async def test_appended_events_are_read_back_in_stream_order(store: EventStore) -> None:
    stream = new_stream()
    first, second = new_event("Opened", n=1), new_event("Marked", n=2)

    recorded = await store.append(stream, [first, second], ExpectedVersion.NO_STREAM)

    assert [e.stream_version for e in recorded] == [1, 2]
    assert recorded[0].global_position < recorded[1].global_position
    read = await store.read_stream(stream)
    assert [(e.event_id, e.event_type, e.data) for e in read] == [
        (first.event_id, "Opened", {"n": 1}),
        (second.event_id, "Marked", {"n": 2}),
    ]
    assert read == recorded
    assert await store.stream_version(stream) == 2


async def test_decimals_and_metadata_survive_the_round_trip_exactly(store: EventStore) -> None:
    stream = new_stream()
    data = {"price": Decimal("0.1") + Decimal("0.2"), "qty": Decimal("123456789.12345678")}
    event = NewEvent(
        event_id=new_event().event_id,
        event_type="Priced",
        data=data,
        metadata={"actor": "alice", "correlation_id": "c-1", "causation_id": None},
    )
    await store.append(stream, [event])

    [read] = await store.read_stream(stream)
    assert read.data == {"price": Decimal("0.3"), "qty": Decimal("123456789.12345678")}
    assert str(read.data["price"]) == "0.3"
    assert read.metadata == {"actor": "alice", "correlation_id": "c-1", "causation_id": None}


async def test_no_stream_expectation_fails_once_the_stream_exists(store: EventStore) -> None:
    stream = new_stream()
    await store.append(stream, [new_event()], ExpectedVersion.NO_STREAM)

    with pytest.raises(WrongExpectedVersion) as conflict:
        await store.append(stream, [new_event()], ExpectedVersion.NO_STREAM)

    assert (conflict.value.stream_id, conflict.value.expected, conflict.value.actual) == (
        stream,
        0,
        1,
    )


async def test_exact_expectation_appends_only_at_that_version(store: EventStore) -> None:
    stream = new_stream()
    await store.append(stream, [new_event(), new_event()])

    with pytest.raises(WrongExpectedVersion) as stale:
        await store.append(stream, [new_event()], 1)
    with pytest.raises(WrongExpectedVersion):
        await store.append(stream, [new_event()], 5)
    recorded = await store.append(stream, [new_event()], 2)

    assert stale.value.actual == 2
    assert [e.stream_version for e in recorded] == [3]


async def test_exact_expectation_on_a_missing_stream_is_a_conflict(store: EventStore) -> None:
    with pytest.raises(WrongExpectedVersion) as conflict:
        await store.append(new_stream(), [new_event()], 3)
    assert conflict.value.actual == 0


async def test_any_expectation_appends_whatever_the_version(store: EventStore) -> None:
    stream = new_stream()
    await store.append(stream, [new_event()], ExpectedVersion.ANY)
    recorded = await store.append(stream, [new_event()], ExpectedVersion.ANY)
    assert recorded[0].stream_version == 2


async def test_twenty_concurrent_appends_at_one_version_one_wins(store: EventStore) -> None:
    stream = new_stream()
    await store.append(stream, [new_event()])

    results = await asyncio.gather(
        *(store.append(stream, [new_event(writer=i)], 1) for i in range(20)),
        return_exceptions=True,
    )

    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert len(losers) == 19
    assert all(isinstance(r, WrongExpectedVersion) for r in losers)
    assert [e.stream_version for e in await store.read_stream(stream)] == [1, 2]


@pytest.mark.parametrize("size", [1, 2], ids=["one-event", "two-events"])
async def test_concurrent_any_appends_to_one_stream_all_land_without_gaps(
    store: EventStore, size: int
) -> None:
    stream = new_stream()
    await asyncio.gather(
        *(store.append(stream, [new_event() for _ in range(size)]) for _ in range(10))
    )
    assert [e.stream_version for e in await store.read_stream(stream)] == list(
        range(1, 10 * size + 1)
    )


async def test_any_appends_from_64_writers_in_two_processes_queue_and_never_fail(
    store: EventStore, other_process_store: EventStore, pool: asyncpg.Pool
) -> None:
    """They queue on the stream's lock, inside callers' transactions or not, instead of racing
    for one version (before, about one in ten gave up after its retries)."""
    stream = new_stream()

    async def in_a_transaction(writer: int) -> None:
        async with pool.acquire() as connection, connection.transaction():
            await store.append(stream, [new_event(writer=writer)], connection=connection)

    writers = [
        *(store.append(stream, [new_event(writer=i)]) for i in range(16)),
        *(in_a_transaction(16 + i) for i in range(16)),
        *(other_process_store.append(stream, [new_event(), new_event()]) for _ in range(32)),
    ]
    await asyncio.gather(*writers)

    stored = await store.read_stream(stream)
    assert [e.stream_version for e in stored] == list(range(1, 16 + 16 + 64 + 1))
    in_log_order = [
        e.stream_version
        for batch in [b async for b in store.read_all()]
        for e in batch
        if e.stream_id == stream
    ]
    assert in_log_order == sorted(in_log_order)


async def test_a_streams_order_in_the_log_follows_its_versions_when_writers_lock_first(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    """A transaction that writes one stream and then waits for another gets its id (which orders
    the log) before the writer it waits for: locking every stream first keeps the orders alike."""
    first, second = new_stream(), new_stream()
    await store.append(second, [new_event()])
    waiting, written = asyncio.Event(), asyncio.Event()

    async def writes_first_then_second() -> None:
        async with pool.acquire() as connection, connection.transaction():
            await store.lock_streams(connection, [first, second])
            await store.append(first, [new_event()], connection=connection)
            waiting.set()
            await written.wait()
            await store.append(second, [new_event()], 1, connection=connection)

    async def writes_second() -> None:
        await waiting.wait()
        async with pool.acquire() as connection, connection.transaction():
            task = asyncio.ensure_future(store.lock_streams(connection, [second]))
            await asyncio.sleep(0.2)
            assert not task.done()  # queued behind the first writer
            written.set()
            await task
            await store.append(second, [new_event()], connection=connection)

    await asyncio.gather(writes_first_then_second(), writes_second())
    in_log_order = [
        e.stream_version
        for batch in [b async for b in store.read_all()]
        for e in batch
        if e.stream_id == second
    ]
    assert in_log_order == [1, 2, 3]


async def test_retried_append_with_same_event_ids_stores_nothing_twice(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    stream = new_stream()
    events = [new_event(n=1), new_event(n=2)]
    first = await store.append(stream, events, ExpectedVersion.NO_STREAM)

    retried = await store.append(stream, events, ExpectedVersion.NO_STREAM)

    assert [e.global_position for e in retried] == [e.global_position for e in first]
    assert await pool.fetchval("SELECT count(*) FROM events WHERE stream_id = $1", stream) == 2
    assert await store.stream_version(stream) == 2


async def test_concurrent_twins_of_one_append_store_it_once(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    stream = new_stream()
    await store.append(stream, [new_event()])
    events = [new_event(n=1)]

    results = await asyncio.gather(*(store.append(stream, events, 1) for _ in range(8)))

    assert len({tuple(e.global_position for e in r) for r in results}) == 1
    assert await pool.fetchval("SELECT count(*) FROM events WHERE stream_id = $1", stream) == 2


async def test_append_reusing_some_stored_event_ids_is_refused(store: EventStore) -> None:
    stream = new_stream()
    stored = new_event()
    await store.append(stream, [stored])

    with pytest.raises(DuplicateEventIds):
        await store.append(stream, [stored, new_event()])
    assert await store.stream_version(stream) == 1


async def test_multi_stream_append_writes_every_stream(store: EventStore) -> None:
    a, b = new_stream(), new_stream()
    await store.append(b, [new_event()])

    recorded = await store.append_streams(
        [
            StreamAppend(a, [new_event(), new_event()], ExpectedVersion.NO_STREAM),
            StreamAppend(b, [new_event()], 1),
        ]
    )

    # One transaction; in the log the streams follow each other in stream-id order.
    expected = sorted([(a, 1), (a, 2), (b, 2)])
    assert [(e.stream_id, e.stream_version) for e in recorded] == expected
    assert [e.global_position for e in recorded] == sorted(e.global_position for e in recorded)
    assert len({e.tx_id for e in recorded}) == 1


async def test_multi_stream_append_with_one_conflict_writes_nothing(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    a, b = new_stream(), new_stream()
    await store.append(b, [new_event()])

    with pytest.raises(WrongExpectedVersion) as conflict:
        await store.append_streams(
            [StreamAppend(a, [new_event()], 0), StreamAppend(b, [new_event()], 0)]
        )

    assert conflict.value.stream_id == b
    assert await store.stream_version(a) == 0
    assert await pool.fetchval("SELECT count(*) FROM events WHERE stream_id = $1", a) == 0


async def test_crossing_multi_stream_appends_do_not_deadlock(store: EventStore) -> None:
    streams = [new_stream() for _ in range(4)]

    async def append_in(order: list[str]) -> None:
        for _ in range(15):
            await store.append_streams([StreamAppend(s, [new_event()]) for s in order])

    await asyncio.gather(append_in(streams), append_in(streams[::-1]), append_in(streams[1:]))

    assert [await store.stream_version(s) for s in streams] == [30, 45, 45, 45]


async def test_inline_projector_runs_in_the_append_transaction(pool: asyncpg.Pool) -> None:
    await pool.execute("CREATE TABLE seen (event_id uuid PRIMARY KEY)")

    async def record(connection: asyncpg.Connection, events) -> None:
        await connection.executemany(
            "INSERT INTO seen VALUES ($1)", [(e.event_id,) for e in events]
        )
        if any(e.data.get("fail") for e in events):
            raise RuntimeError("the read model refused this change")

    store = EventStore(pool, inline_projectors=[record])
    try:
        kept = await store.append(new_stream(), [new_event()])
        with pytest.raises(RuntimeError):
            await store.append(new_stream(), [new_event(fail=True)])
        await store.append(kept[0].stream_id, [new_event("SomethingHappened")], None)
        # A retried append is not news: the projector must not see it twice.
        retry = await store.append(kept[0].stream_id, [NewEvent(kept[0].event_id, "X", {})])
    finally:
        await store.close()

    assert retry[0].global_position == kept[0].global_position
    assert await pool.fetchval("SELECT count(*) FROM seen") == 2
    assert await pool.fetchval("SELECT count(*) FROM events") == 2


async def test_read_stream_forward_backward_and_in_pages(store: EventStore) -> None:
    stream = new_stream()
    await store.append(stream, [new_event(n=n) for n in range(1, 6)])

    def versions(events):
        return [e.stream_version for e in events]

    assert versions(await store.read_stream(stream, from_version=3)) == [3, 4, 5]
    assert versions(await store.read_stream(stream, from_version=2, limit=2)) == [2, 3]
    assert versions(await store.read_stream(stream, backward=True)) == [5, 4, 3, 2, 1]
    assert versions(await store.read_stream(stream, backward=True, from_version=2)) == [2, 1]
    assert await store.read_stream(new_stream()) == []


@pytest.mark.parametrize(
    "appends",
    [
        [],
        [StreamAppend("a-1", [])],
        [StreamAppend("a-1", [new_event()]), StreamAppend("a-1", [new_event()])],
        [StreamAppend("a-1", [new_event()], -1)],
    ],
    ids=["nothing", "empty-stream", "same-stream-twice", "negative-version"],
)
async def test_malformed_appends_are_refused_before_the_database(
    store: EventStore, appends: list[StreamAppend]
) -> None:
    with pytest.raises(ValueError):
        await store.append_streams(appends)


# One event is written whole or not at all (no savepoint); several go through a savepoint.
@pytest.mark.parametrize("size", [1, 3], ids=["one-event", "three-events"])
async def test_a_refused_append_in_a_callers_transaction_leaves_it_usable(
    database_url: str, size: int
) -> None:
    # One connection in all: explaining the refusal must not wait for a second one.
    pool = await create_pool(database_url, min_size=1, max_size=1)
    store = EventStore(pool)
    stream = new_stream()
    try:
        async with pool.acquire() as connection:
            await connection.execute("CREATE TABLE notes (text text)")
            async with connection.transaction():
                await store.append(stream, [new_event()], connection=connection)
                with pytest.raises(WrongExpectedVersion):
                    await asyncio.wait_for(
                        store.append(
                            stream, [new_event() for _ in range(size)], 0, connection=connection
                        ),
                        5,
                    )
                await connection.execute("INSERT INTO notes VALUES ('still usable')")
            assert await connection.fetchval("SELECT text FROM notes") == "still usable"
        assert await store.stream_version(stream) == 1
    finally:
        await store.close()
        await pool.close()


async def test_an_append_joins_the_callers_transaction(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    stream = new_stream()
    async with pool.acquire() as connection:
        transaction = connection.transaction()
        await transaction.start()
        await store.append(stream, [new_event()], connection=connection)
        await transaction.rollback()
    assert await store.stream_version(stream) == 0
