"""Following the log live: exactly once, in order, across rollbacks, restarts and processes."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from uuid import UUID

import asyncpg
import msgspec
import pytest

from eventstore import (
    START,
    CheckpointConflict,
    EventStore,
    LogPosition,
    RecordedEvent,
    load_checkpoint,
    save_checkpoint,
)

from .factories import new_event, new_stream


async def take(subscription: AsyncIterator[RecordedEvent], count: int) -> list[RecordedEvent]:
    taken = []
    async for event in subscription:
        taken.append(event)
        if len(taken) == count:
            break
    return taken


async def until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.05)


async def test_subscription_catches_up_then_follows_live(store: EventStore) -> None:
    await store.append(new_stream(), [new_event(n=0), new_event(n=1)])
    subscription = store.subscribe()
    caught_up = await asyncio.wait_for(take(subscription, 2), 10)

    later = asyncio.create_task(take(subscription, 2))
    await store.append(new_stream(), [new_event(n=2)])
    await store.append(new_stream(), [new_event(n=3)])

    live = await asyncio.wait_for(later, 10)
    assert [e.data["n"] for e in caught_up + live] == [0, 1, 2, 3]


async def test_subscription_after_a_position_starts_right_after_it(store: EventStore) -> None:
    recorded = await store.append(new_stream(), [new_event(n=n) for n in range(4)])
    after = await store.position_of(recorded[1].global_position)

    events = await asyncio.wait_for(take(store.subscribe(after), 2), 10)

    assert [e.data["n"] for e in events] == [2, 3]


async def test_subscription_filters_by_category_and_type(store: EventStore) -> None:
    await store.append(new_stream("market"), [new_event("PricesUpdated")])
    await store.append(new_stream("position"), [new_event("Opened"), new_event("Closed")])

    events = await asyncio.wait_for(
        take(store.subscribe(categories=["position"], event_types=["Closed"]), 1), 10
    )

    assert [e.event_type for e in events] == ["Closed"]


async def test_appends_in_another_process_wake_a_subscriber_without_polling(
    pool: asyncpg.Pool, other_process_store: EventStore
) -> None:
    # Polling every minute: only a notification can deliver within the test's patience.
    subscriber = EventStore(pool, poll_interval=60)
    try:
        subscription = subscriber.subscribe()
        waiting = asyncio.create_task(take(subscription, 1))
        await asyncio.sleep(0.3)  # let it read the empty log and go idle

        recorded = await other_process_store.append(new_stream(), [new_event()])

        [event] = await asyncio.wait_for(waiting, 10)
        assert event.event_id == recorded[0].event_id
    finally:
        await subscriber.close()


async def test_an_append_in_the_callers_transaction_wakes_subscribers_when_it_commits(
    pool: asyncpg.Pool,
) -> None:
    """A wake-up before the commit would find nothing and leave the event for the next poll."""
    store = EventStore(pool, poll_interval=60)  # only a wake-up can deliver in time
    try:
        waiting = asyncio.create_task(take(store.subscribe(), 1))
        await asyncio.sleep(0.3)  # let it read the empty log and go idle
        async with pool.acquire() as connection:
            async with connection.transaction():
                [recorded] = await store.append(new_stream(), [new_event()], connection=connection)
                await asyncio.sleep(0.3)  # a reader woken now finds nothing committed
            store.committed()

        [event] = await asyncio.wait_for(waiting, 10)
        assert event.event_id == recorded.event_id
    finally:
        await store.close()


async def test_checkpoint_compare_and_set_detects_a_second_runner(pool: asyncpg.Pool) -> None:
    first, second = LogPosition(10, 5), LogPosition(11, 6)
    async with pool.acquire() as connection:
        assert await load_checkpoint(connection, "read-model") == START
        await save_checkpoint(connection, "read-model", START, first)

        # Two runners both loaded `first`; the one that saves second must fail.
        await save_checkpoint(connection, "read-model", first, second)
        with pytest.raises(CheckpointConflict):
            await save_checkpoint(connection, "read-model", first, LogPosition(12, 7))
        # And a runner that started from nothing while another had already moved on.
        with pytest.raises(CheckpointConflict):
            await save_checkpoint(connection, "read-model", START, LogPosition(12, 7))

        assert await load_checkpoint(connection, "read-model") == second


class Consumer:
    """Applies each event to a table and saves its checkpoint in the same transaction."""

    def __init__(self, pool: asyncpg.Pool, store: EventStore, name: str) -> None:
        self.pool, self.store, self.name = pool, store, name

    async def run(self, stop_after: int | None = None) -> int:
        handled = 0
        async with self.pool.acquire() as connection:
            position = await load_checkpoint(connection, self.name)
            async for event in self.store.subscribe(position):
                async with connection.transaction():
                    # Durability of a test table is not what is under test; speed is welcome.
                    await connection.execute("SET LOCAL synchronous_commit TO off")
                    await connection.execute(
                        "INSERT INTO consumed (subscriber, global_position, event_id) "
                        "VALUES ($1, $2, $3)",
                        self.name,
                        event.global_position,
                        event.event_id,
                    )
                    await save_checkpoint(connection, self.name, position, event.position)
                position = event.position
                handled += 1
                if handled == stop_after:
                    return handled
        return handled


async def test_sixteen_writers_with_rollbacks_two_subscribers_each_event_exactly_once(
    pool: asyncpg.Pool, other_process_store: EventStore
) -> None:
    target, writers = 20_000, 16
    await pool.execute(
        "CREATE TABLE consumed (subscriber text, seq bigserial, global_position bigint, "
        "event_id uuid, PRIMARY KEY (subscriber, event_id))"
    )
    doomed_ids: set[UUID] = set()

    async def roll_back_doomed(connection: asyncpg.Connection, events) -> None:
        if events[0].metadata.get("doomed"):
            raise RuntimeError("rolled back on purpose")

    writing = EventStore(pool, inline_projectors=[roll_back_doomed])
    committed = 0

    async def writer(seed: int) -> None:
        nonlocal committed
        rng = random.Random(seed)
        while committed < target:
            events = [new_event(writer=seed) for _ in range(rng.randint(1, 3))]
            if rng.random() < 0.1:
                events = [msgspec.structs.replace(e, metadata={"doomed": True}) for e in events]
                doomed_ids.update(e.event_id for e in events)
                with pytest.raises(RuntimeError):
                    await writing.append(new_stream(), events)
            else:
                await writing.append(new_stream(), events)
                committed += len(events)

    # Subscriber A: in memory, on this process's store. Subscriber B: another process's store,
    # stopped midway and restarted from its checkpoint.
    received_a: list[RecordedEvent] = []

    async def subscriber_a() -> None:
        async for event in writing.subscribe():
            received_a.append(event)

    consumer_b = Consumer(pool, other_process_store, "b")
    task_a = asyncio.create_task(subscriber_a())
    first_run_b = asyncio.create_task(consumer_b.run(stop_after=7_000))
    try:
        await asyncio.gather(*(writer(seed) for seed in range(writers)))
        handled_first = await asyncio.wait_for(first_run_b, 120)
        total = await pool.fetchval("SELECT count(*) FROM events")
        second_run_b = asyncio.create_task(consumer_b.run(stop_after=total - handled_first))
        await asyncio.wait_for(second_run_b, 120)
        await asyncio.wait_for(until(lambda: len(received_a) >= total), 120)
    finally:
        task_a.cancel()
        await writing.close()

    log_order = [
        row["event_id"]
        for row in await pool.fetch("SELECT event_id FROM events ORDER BY tx_id, global_position")
    ]
    order_b = [
        row["event_id"]
        for row in await pool.fetch(
            "SELECT event_id FROM consumed WHERE subscriber = 'b' ORDER BY seq"
        )
    ]
    assert total >= target
    assert 0.05 < len(doomed_ids) / (total + len(doomed_ids)) < 0.2
    assert doomed_ids.isdisjoint(log_order)
    assert [e.event_id for e in received_a] == log_order
    assert order_b == log_order
    assert handled_first == 7_000
