"""Command handlers against a real store: retries on the new state, queuing on a position's lock,
all-or-nothing batches, and the order of a position's events in the log."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import asyncpg
import pytest

from commands import AtomicFailure, PositionHandlers, StalePosition
from domain.commands import AmendPosition
from domain.errors import InvalidCommand, PositionAlreadyExists
from domain.streams import position_stream
from eventstore import EventStore, WrongExpectedVersion
from projections.positions import project_positions

from ..domain.given import NOW, amend, close, open_position


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


async def test_commands_of_one_transaction_keep_each_positions_order_in_the_log(
    pool: asyncpg.Pool,
) -> None:
    """Bulk updates over overlapping positions racing single commands: in the log, which orders
    transactions, each position's events still come in the order of their versions."""
    store = EventStore(pool, inline_projectors=[project_positions])
    handlers = PositionHandlers(store)
    ids = [uuid.uuid4() for _ in range(4)]
    await handlers.open_together([(open_position(position_id=i), {"actor": "ann"}) for i in ids])

    async def each(position_ids: list[uuid.UUID]) -> None:
        async with pool.acquire() as connection, connection.transaction():
            await handlers.handle_each(
                [(i, AmendPosition(at=NOW, notes=uuid.uuid4().hex)) for i in position_ids],
                {"actor": "ann"},
                connection=connection,
            )

    async def one(position_id: uuid.UUID) -> None:
        async with pool.acquire() as connection, connection.transaction():
            await handlers.handle(
                position_id,
                AmendPosition(at=NOW, notes=uuid.uuid4().hex),
                {"actor": "bob"},
                connection=connection,
            )

    try:
        for _ in range(30):
            await asyncio.gather(each(ids), one(ids[1]), one(ids[2]), each(ids[::-1]), one(ids[3]))
        in_log_order: dict[str, list[int]] = {}
        async for batch in store.read_all():
            for event in batch:
                in_log_order.setdefault(event.stream_id, []).append(event.stream_version)
    finally:
        await store.close()

    for position_id in ids:
        versions = in_log_order[position_stream(position_id)]
        assert versions == list(range(1, len(versions) + 1)), position_id


def _handlers(pool: asyncpg.Pool, *projectors) -> tuple[EventStore, PositionHandlers]:
    store = EventStore(pool, inline_projectors=[project_positions, *projectors])
    return store, PositionHandlers(store)


async def test_a_command_that_lost_a_race_is_decided_again_on_the_new_state(
    pool: asyncpg.Pool,
) -> None:
    """Without a transaction nothing is locked: a rival's close lands between this close's read
    and its append. Decided again on the new state, the close no longer fits and is refused."""
    store, handlers = _handlers(pool)
    position_id = uuid.uuid4()
    await handlers.open_together([(open_position(position_id=position_id), {"actor": "ann"})])
    append, raced = store.append, []

    async def append_after_a_rival(*arguments, **keywords):
        if not raced:
            raced.append(True)
            await handlers.handle(position_id, close("110", quantity="6"), {"actor": "bob"})
        return await append(*arguments, **keywords)

    store.append = append_after_a_rival  # type: ignore[method-assign]
    try:
        with pytest.raises(InvalidCommand) as refused:
            await handlers.handle(position_id, close("120", quantity="6"), {"actor": "ann"})
        retried = await handlers.handle(position_id, close("120", quantity="4"), {"actor": "ann"})
        stale = handlers.handle(position_id, amend(notes="x"), {"actor": "ann"}, expected_version=2)
        with pytest.raises(StalePosition):
            await stale
    finally:
        await store.close()

    assert [e.field for e in refused.value.errors] == ["quantity"]
    assert retried.state is not None and retried.state.status == "closed"
    assert retried.state.realized_pnl == Decimal("140")  # 6 * 10 by bob, 4 * 20 by ann


async def test_two_commands_on_one_position_queue_instead_of_racing(pool: asyncpg.Pool) -> None:
    store, handlers = _handlers(pool)
    position_id = uuid.uuid4()
    await handlers.open_together([(open_position(position_id=position_id), {"actor": "ann"})])
    conflicts = []
    append = store.append

    async def counted(*arguments, **keywords):
        try:
            return await append(*arguments, **keywords)
        except WrongExpectedVersion:
            conflicts.append(True)
            raise

    store.append = counted  # type: ignore[method-assign]
    first_done, release = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with pool.acquire() as connection, connection.transaction():
            await handlers.handle(
                position_id, close("110", quantity="6"), {"actor": "ann"}, connection=connection
            )
            first_done.set()
            await release.wait()  # holds the position's lock until it commits

    async def second():
        await first_done.wait()
        async with pool.acquire() as connection, connection.transaction():
            return await handlers.handle(
                position_id, close("120", quantity="4"), {"actor": "bob"}, connection=connection
            )

    try:
        holder = asyncio.create_task(first())
        waiter = asyncio.create_task(second())
        await first_done.wait()
        await asyncio.sleep(0.3)
        queued = not waiter.done()
        release.set()
        await holder
        outcome = await waiter
    finally:
        await store.close()

    assert queued  # the second waited for the first's commit
    assert outcome.state is not None and outcome.state.version == 3
    assert outcome.state.status == "closed" and not conflicts  # decided once, on the new state


async def test_an_atomic_bulk_update_refused_part_way_records_nothing(pool: asyncpg.Pool) -> None:
    async def refuse_the_third(connection: asyncpg.Connection, events) -> None:
        if any(event.stream_id == position_stream(ids[2]) for event in events):
            raise RuntimeError("the database refused a row")

    store, handlers = _handlers(pool)
    ids = [uuid.uuid4() for _ in range(4)]
    await handlers.open_together([(open_position(position_id=i), {"actor": "ann"}) for i in ids])
    await handlers.handle(ids[1], close("110"), {"actor": "ann"})
    failing_store, failing = _handlers(pool, refuse_the_third)
    try:
        async with pool.acquire() as connection, connection.transaction():
            with pytest.raises(AtomicFailure) as refused:
                await handlers.handle_atomically(
                    [(i, amend(notes="all or nothing")) for i in ids],
                    {"actor": "ann"},
                    connection=connection,
                )
        with pytest.raises(RuntimeError, match="refused a row"):
            async with pool.acquire() as connection, connection.transaction():
                await failing.handle_atomically(
                    [(i, amend(notes="all or nothing")) for i in ids[2:]],
                    {"actor": "ann"},
                    connection=connection,
                )
        versions = [await store.stream_version(position_stream(i)) for i in ids]
    finally:
        await store.close()
        await failing_store.close()

    assert list(refused.value.failures) == [ids[1]]  # closed: the one refusal, named
    assert versions == [1, 2, 1, 1]  # nothing of either batch was recorded
