"""The read models are a function of the log: rebuilt from scratch, they come back identical."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest

from commands import PositionHandlers, PriceUpdate
from domain.commands import (
    AmendPosition,
    ClosePosition,
    DeletePosition,
    FillPosition,
    IncreasePosition,
    OpenPosition,
    UpdateMarketPrices,
)
from domain.errors import DomainError
from domain.position import Position
from eventstore import EventStore
from projections import runner
from projections.positions import project_positions
from projections.runner import catch_up, differing_rows, rebuild_into

AT = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
SYMBOLS = ["AAPL", "MSFT", "BRK.B"]


def price(rng: random.Random) -> Decimal:
    return Decimal(rng.randint(5000, 15000)) / 100


async def random_workload(handlers: PositionHandlers, seed: int, steps: int) -> None:
    rng = random.Random(seed)
    ids: list[uuid.UUID] = []
    meta = {"actor": "workload"}
    for _ in range(steps):
        roll = rng.random()
        try:
            if roll < 0.25 or not ids:
                ids.append(uuid.uuid4())
                entry = price(rng)
                side = rng.choice(["long", "short"])
                await handlers.handle(
                    ids[-1],
                    OpenPosition(
                        at=AT,
                        position_id=ids[-1],
                        owner=rng.choice(["ann", "bob"]),
                        symbol=rng.choice(SYMBOLS),
                        side=side,
                        quantity=Decimal(rng.randint(1, 50)),
                        entry_price=entry,
                        strategy=rng.choice([None, "swing", "carry"]),
                        pending=rng.random() < 0.2,
                    ),
                    meta,
                )
            elif roll < 0.4:
                prices = {s: price(rng) for s in rng.sample(SYMBOLS, 2)}
                await handlers.update_market_prices(
                    [PriceUpdate(UpdateMarketPrices(at=AT, prices=prices), meta, uuid.uuid4())]
                )
            else:
                target = rng.choice(ids)
                command = rng.choice(
                    [
                        AmendPosition(at=AT, current_price=price(rng)),
                        AmendPosition(at=AT, notes=f"note {rng.random()}", strategy="swing"),
                        FillPosition(at=AT),
                        IncreasePosition(
                            at=AT, quantity=Decimal(rng.randint(1, 5)), price=price(rng)
                        ),
                        ClosePosition(at=AT, exit_price=price(rng), quantity=Decimal(1)),
                        ClosePosition(at=AT, exit_price=price(rng)),
                        DeletePosition(at=AT),
                    ]
                )
                await handlers.handle(target, command, meta)
        except DomainError:
            pass  # refusals are part of a realistic workload; they record nothing


@pytest.fixture
async def live_store(pool: asyncpg.Pool):
    store = EventStore(pool, inline_projectors=[project_positions])
    yield store
    await store.close()


async def test_a_rebuild_after_a_random_workload_equals_the_live_read_model(
    pool: asyncpg.Pool, live_store: EventStore
) -> None:
    handlers = PositionHandlers(live_store)
    await asyncio.gather(*(random_workload(handlers, seed, 120) for seed in range(4)))
    assert await pool.fetchval("SELECT count(*) FROM positions") > 10

    applied = await rebuild_into(pool, live_store, "rebuilt")

    assert applied == await pool.fetchval("SELECT count(*) FROM events")
    assert await differing_rows(pool, "rebuilt") == {"positions": [], "market_prices": []}


async def test_a_rebuild_read_and_written_in_small_pieces_equals_the_live_read_model(
    pool: asyncpg.Pool, live_store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await random_workload(PositionHandlers(live_store), seed=11, steps=80)
    monkeypatch.setattr(runner, "REBUILD_BATCH", 7)  # many reads, each folded as the next arrives
    monkeypatch.setattr(runner, "WRITE_CHUNK", 3)  # many COPYs

    applied = await rebuild_into(pool, live_store, "rebuilt")

    assert applied == await pool.fetchval("SELECT count(*) FROM events")
    assert await pool.fetchval("SELECT count(*) FROM rebuilt.positions") > 3
    assert await differing_rows(pool, "rebuilt") == {"positions": [], "market_prices": []}


async def test_differing_rows_names_a_tampered_row(
    pool: asyncpg.Pool, live_store: EventStore
) -> None:
    await random_workload(PositionHandlers(live_store), seed=7, steps=30)
    await rebuild_into(pool, live_store, "rebuilt")

    tampered = await pool.fetchval(
        "UPDATE positions SET notes = 'tampered' WHERE position_id = "
        "(SELECT position_id FROM positions LIMIT 1) RETURNING position_id"
    )

    assert await differing_rows(pool, "rebuilt") == {
        "positions": [str(tampered)],
        "market_prices": [],
    }


async def test_a_price_committed_after_an_opening_earlier_in_the_log_prices_it_the_same_way(
    pool: asyncpg.Pool,
) -> None:
    """Inline, transactions project in commit order; a rebuild projects in log order."""
    release, entered = asyncio.Event(), asyncio.Event()

    async def hold_price_updates(connection, events) -> None:
        if events[0].event_type == "MarketPricesUpdated":
            entered.set()
            await release.wait()

    store = EventStore(pool, inline_projectors=[project_positions, hold_price_updates])
    handlers = PositionHandlers(store)
    meta = {"actor": "test"}
    try:
        # The price update takes its place in the log first, but commits last.
        update = asyncio.create_task(
            handlers.update_market_prices(
                [
                    PriceUpdate(
                        UpdateMarketPrices(at=AT, prices={"AAPL": Decimal("101")}),
                        meta,
                        uuid.uuid4(),
                    )
                ]
            )
        )
        await entered.wait()
        position_id = uuid.uuid4()
        await handlers.handle(
            position_id,
            OpenPosition(
                at=AT,
                position_id=position_id,
                owner="ann",
                symbol="AAPL",
                side="long",
                quantity=Decimal(1),
                entry_price=Decimal(100),
            ),
            meta,
        )
        release.set()
        await update
    finally:
        release.set()
    try:
        await rebuild_into(pool, store, "rebuilt")
    finally:
        await store.close()

    assert await differing_rows(pool, "rebuilt") == {"positions": [], "market_prices": []}


async def test_catching_up_twice_applies_each_event_once(
    pool: asyncpg.Pool, live_store: EventStore
) -> None:
    await random_workload(PositionHandlers(live_store), seed=3, steps=40)
    first = await rebuild_into(pool, live_store, "rebuilt")

    again = await catch_up(pool, live_store, "rebuild:rebuilt", project_positions, schema="rebuilt")
    await random_workload(PositionHandlers(live_store), seed=4, steps=20)
    more = await catch_up(pool, live_store, "rebuild:rebuilt", project_positions, schema="rebuilt")

    assert first > 0 and again == 0 and more > 0
    assert await differing_rows(pool, "rebuilt") == {"positions": [], "market_prices": []}


async def test_a_rebuild_schema_must_be_a_plain_identifier(
    pool: asyncpg.Pool, live_store: EventStore
) -> None:
    with pytest.raises(ValueError):
        await rebuild_into(pool, live_store, 'x"; DROP TABLE events; --')


async def test_catch_up_waits_for_events_held_behind_an_older_open_transaction(
    pool: asyncpg.Pool, live_store: EventStore
) -> None:
    await random_workload(PositionHandlers(live_store), seed=5, steps=5)
    blocker = await pool.acquire()
    try:
        # Any transaction holding an id, in any database of the server, holds readers back.
        await blocker.execute("BEGIN")
        await blocker.fetchval("SELECT pg_current_xact_id()")
        await random_workload(PositionHandlers(live_store), seed=6, steps=5)

        rebuilding = asyncio.create_task(rebuild_into(pool, live_store, "rebuilt"))
        await asyncio.sleep(0.3)
        assert not rebuilding.done(), "the rebuild stopped short of committed events"
    finally:
        await blocker.execute("ROLLBACK")
        await pool.release(blocker)
    applied = await asyncio.wait_for(rebuilding, 10)

    assert applied == await pool.fetchval("SELECT count(*) FROM events")
    assert await differing_rows(pool, "rebuilt") == {"positions": [], "market_prices": []}


async def test_the_inline_projector_writes_the_folded_state_digit_for_digit(
    pool: asyncpg.Pool, live_store: EventStore
) -> None:
    handlers = PositionHandlers(live_store)
    position_id = uuid.uuid4()
    meta = {"actor": "tester"}
    opened_at = datetime(2026, 1, 5, 14, 30, 1, 123456, tzinfo=UTC)
    await handlers.handle(
        position_id,
        OpenPosition(
            at=opened_at,
            position_id=position_id,
            owner='ann "the \\ trader"',
            symbol="BRK.B",
            side="short",
            quantity=Decimal("0.00000001"),
            entry_price=Decimal("999999999999.12345678"),
            stop_loss=Decimal("1E+12"),
            take_profit=Decimal("0.50"),
            strategy="mean-reversion ✓",
            notes='line one\nline two, "quoted", tab\there',
        ),
        meta,
    )
    outcome = await handlers.handle(
        position_id,
        IncreasePosition(at=AT, quantity=Decimal("3.00000000"), price=Decimal("0.00000003")),
        meta,
    )

    row = await pool.fetchrow("SELECT * FROM positions WHERE position_id = $1", position_id)
    text = await pool.fetchrow(
        "SELECT quantity::text AS quantity, entry_price::text AS entry_price, "
        "stop_loss::text AS stop_loss, take_profit::text AS take_profit "
        "FROM positions WHERE position_id = $1",
        position_id,
    )
    state = outcome.state
    assert state is not None
    for field in Position.__struct_fields__:
        if field != "deleted":
            assert row[field] == getattr(state, field), field
    # Not only equal in value: the digits (and so the scale) the domain computed.
    assert text["quantity"] == str(state.quantity)
    assert text["entry_price"] == str(state.entry_price)
    assert text["take_profit"] == "0.50"
    assert Decimal(text["stop_loss"]) == Decimal("1E+12")
    assert row["created_at"] == opened_at and row["owner"] == 'ann "the \\ trader"'
