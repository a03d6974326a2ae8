"""A position's price has one definition (migrations/006_position_price.sql): a read, the summary
and the live view agree on it, whatever the order of its own marks and its symbol's prices."""

from __future__ import annotations

import itertools
import uuid
from decimal import Decimal

import asyncpg
import pytest

from commands import PositionHandlers, PriceUpdate
from domain.commands import UpdateMarketPrices
from eventstore import EventStore
from projections import queries
from projections.live import LiveView
from projections.positions import project_positions

from ..domain.given import NOW, amend, close, open_position
from ..eventstore.factories import settled

STEPS = ("mark 101", "market 102", "mark 103", "market 104")


async def _apply(
    handlers: PositionHandlers, step: str, position_id: uuid.UUID, symbol: str
) -> None:
    kind, price = step.split()
    if kind == "mark":
        await handlers.handle(position_id, amend(current_price=price), {"actor": "ann"})
    elif kind == "market":
        command = UpdateMarketPrices(at=NOW, prices={symbol: Decimal(price)})
        await handlers.update_market_prices([PriceUpdate(command, {"actor": "feed"}, uuid.uuid4())])
    else:
        await handlers.handle(position_id, close(price), {"actor": "ann"})


@pytest.mark.parametrize("order", list(itertools.permutations(STEPS)), ids="-".join)
@pytest.mark.parametrize("closes", [False, True], ids=["open", "closed at 99"])
async def test_a_read_the_summary_and_the_live_view_agree_on_the_price(
    pool: asyncpg.Pool, order: tuple[str, ...], closes: bool
) -> None:
    store = EventStore(pool, inline_projectors=[project_positions])
    handlers = PositionHandlers(store)
    owner, symbol, position_id = (
        f"o-{uuid.uuid4().hex[:8]}",
        f"P{uuid.uuid4().hex[:6]}",
        uuid.uuid4(),
    )
    opened = open_position(position_id=position_id, owner=owner, symbol=symbol.upper())
    seen: list[tuple[Decimal | None, Decimal, Decimal]] = []
    try:
        await handlers.handle(position_id, opened, {"actor": "ann"})
        steps = [*order, "close 99", "market 98"] if closes else list(order)
        probes = []  # the position's own event after each step, which the live view prices
        for step in steps:
            await _apply(handlers, step, position_id, symbol.upper())
            read = await queries.get_position(pool, position_id, None)
            assert read is not None
            if read.status != "closed":  # an event that sets no price (a closed one takes none)
                await handlers.handle(position_id, amend(notes=step), {"actor": "ann"})
            stream = await store.read_stream(f"position-{position_id}", backward=True, limit=1)
            probes.append(stream[0].global_position)
            summary = await queries.portfolio_summary(pool, owner, Decimal(2))
            seen.append((read.current_price, summary["total_market_value"], read.market_value))
        await settled(store)
        log = [e async for batch in store.read_all() for e in batch]
        priced = {
            update.event.global_position: update.position.current_price
            for update in await LiveView(store, pool).updates(log)
            if update.position is not None
        }
        live = [priced[probe] for probe in probes]
    finally:
        await store.close()

    # The model: each event that sets a price wins over those before it; a closed position keeps
    # the price it closed at; the summary values what is still open.
    expected, price, closed = [], None, False
    for step in steps:
        kind, value = step.split()
        if kind == "close" or not closed:
            price, closed = Decimal(value), closed or kind == "close"
        expected.append((price, Decimal(0) if closed else 10 * price))
    assert [(price, total) for price, total, _ in seen] == expected
    assert live == [price for price, _, _ in seen], (live, seen)
