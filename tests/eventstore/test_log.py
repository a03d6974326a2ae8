"""Reading the whole log: order, filters, the snapshot barrier, and no global append lock."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from eventstore import START, EventStore, LogPosition, UnknownPosition

from .factories import new_event, new_stream, settled


async def read_everything(store: EventStore, after: LogPosition = START, **filters) -> list:
    await settled(store)
    return [e async for batch in store.read_all(after, **filters) for e in batch]


async def test_read_all_returns_the_log_in_order_in_batches(store: EventStore) -> None:
    for n in range(7):
        await store.append(new_stream(), [new_event(n=n)])
    await settled(store)

    batches = [b async for b in store.read_all(batch_size=3)]

    assert [len(b) for b in batches] == [3, 3, 1]
    assert [e.data["n"] for b in batches for e in b] == list(range(7))


async def test_read_all_resumes_after_a_position(store: EventStore) -> None:
    for n in range(5):
        await store.append(new_stream(), [new_event(n=n)])
    third = (await read_everything(store))[2]

    rest = await read_everything(store, third.position)

    assert [e.data["n"] for e in rest] == [3, 4]
    assert await store.position_of(third.global_position) == third.position


async def test_read_all_filters_by_category_and_event_type(store: EventStore) -> None:
    await store.append(new_stream("position"), [new_event("Opened"), new_event("Marked")])
    await store.append(new_stream("market"), [new_event("PricesUpdated")])
    await store.append(new_stream("position"), [new_event("Closed")])

    positions = await read_everything(store, categories=["position"])
    marks_and_prices = await read_everything(store, event_types=["Marked", "PricesUpdated"])
    both = await read_everything(store, categories=["position"], event_types=["Closed"])

    assert [e.event_type for e in positions] == ["Opened", "Marked", "Closed"]
    assert [e.event_type for e in marks_and_prices] == ["Marked", "PricesUpdated"]
    assert [e.event_type for e in both] == ["Closed"]


async def test_unknown_positions_are_refused(store: EventStore) -> None:
    assert await store.position_of(0) == START
    with pytest.raises(UnknownPosition):
        await store.position_of(12345)


async def test_head_reaches_the_last_event_once_it_is_final(store: EventStore) -> None:
    assert await store.head() == START
    await store.append(new_stream(), [new_event()])
    last = await store.append(new_stream(), [new_event()])
    await settled(store)
    assert await store.head() == last[0].position


async def test_heads_says_the_head_again_soon_after_each_append(pool: asyncpg.Pool) -> None:
    store = EventStore(pool, poll_interval=30)  # so only the append's wake-up can be seen in time
    try:
        async with asyncio.timeout(5):
            heads = store.heads()
            assert await anext(heads) == START
            appended = await store.append(new_stream(), [new_event()])
            assert await anext(heads) == appended[0].position
            await heads.aclose()
    finally:
        await store.close()


async def test_newest_is_the_last_committed_event_even_when_not_yet_final(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    blocker = await pool.acquire()
    try:
        await blocker.execute("BEGIN")
        await blocker.fetchval("SELECT pg_current_xact_id()")
        later = await store.append(new_stream(), [new_event()])

        assert await store.newest() == later[0].position
        assert await store.head() < later[0].position  # held back by the open transaction
    finally:
        await blocker.execute("ROLLBACK")
        await pool.release(blocker)
    await settled(store)
    assert await store.head() == later[0].position


class Held:
    """An inline projector that keeps chosen appends' transactions open until released."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.fail = False

    async def __call__(self, connection: asyncpg.Connection, events) -> None:
        if events[0].data.get("hold"):
            self.entered.set()
            await self.release.wait()
            if self.fail:
                raise RuntimeError("rolled back on purpose")


@pytest.mark.parametrize("outcome", ["commits", "rolls back"])
async def test_an_open_append_blocks_no_writer_and_no_reader_skips_it(
    pool: asyncpg.Pool, outcome: str
) -> None:
    held = Held()
    held.fail = outcome == "rolls back"
    store = EventStore(pool, inline_projectors=[held])
    try:
        slow = asyncio.create_task(store.append(new_stream(), [new_event(hold=True)]))
        await held.entered.wait()

        # A second writer is not queued behind the open transaction: no global append lock.
        fast = await asyncio.wait_for(store.append(new_stream(), [new_event()]), timeout=10)

        # Its event is committed, but a reader must not pass it while an older writer is open:
        # the older one could still commit behind the reader's cursor.
        assert [e async for batch in store.read_all() for e in batch] == []

        held.release.set()
        if held.fail:
            with pytest.raises(RuntimeError):
                await slow
            expected = [fast[0].event_id]
        else:
            expected = [(await slow)[0].event_id, fast[0].event_id]
    finally:
        held.release.set()
        await store.close()

    assert [e.event_id for e in await read_everything(store)] == expected


async def test_a_snapshot_tells_which_events_above_the_barrier_it_already_sees(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    """A read model read in a snapshot shows exactly the events `includes` names."""
    async with pool.acquire() as writer:
        older = writer.transaction()
        await older.start()  # an append still open while a younger one commits
        try:
            [open_event] = await store.append(new_stream(), [new_event()], connection=writer)
            [committed] = await store.append(new_stream(), [new_event()])
            async with (
                pool.acquire() as reader,
                reader.transaction(isolation="repeatable_read", readonly=True),
            ):
                snapshot = await store.snapshot(reader)
                seen = await reader.fetchval(
                    "SELECT count(*) FROM events WHERE global_position = $1",
                    committed.global_position,
                )
        finally:
            await older.commit()

    assert seen == 1 and snapshot.includes(committed.position)
    assert not snapshot.includes(open_event.position)  # committed after the snapshot
    assert snapshot.head < open_event.position < committed.position


async def test_a_snapshot_includes_everything_committed_before_it(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    appended = [(await store.append(new_stream(), [new_event()]))[0] for _ in range(3)]
    async with pool.acquire() as reader:
        snapshot = await store.snapshot(reader)

    assert all(snapshot.includes(event.position) for event in appended)
    assert snapshot.head <= appended[-1].position  # the barrier may lag: another open transaction
