"""What each event of the log looks like to a live subscriber.

A position's update carries the whole position as it was right after that event, priced as the
read model prices it (its own price or its symbol's market price, whichever is later in the log)
at that point of the log. So a subscriber that applies the updates in order holds what
`GET /positions/{id}` answered at each step, and a replay from any position tells the same story
as the live stream did.

A LiveView must be fed the log in order and without gaps: it keeps the market prices it has seen.
Positions it has not seen yet are loaded as of the event, so it can start anywhere.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from decimal import Decimal
from typing import Generic, TypeVar

import asyncpg
import msgspec

from domain.events import MarketPricesUpdated, event_from
from domain.streams import MARKET_STREAM, position_id_of
from eventstore import EventStore, LogPosition, RecordedEvent

from .positions import PositionRow, advance, priced
from .queries import PositionView, position_view

MarketPrice = tuple[Decimal, LogPosition]
"""A symbol's price and the log position of the event that set it."""

_MARKET_PRICE = "SELECT price, tx_id, last_event FROM market_prices WHERE symbol = $1"

_SEARCH_PAGE = 200
"""Market-price events read per step when looking back for a symbol's earlier price."""


class LiveUpdate(msgspec.Struct, frozen=True):
    event: RecordedEvent
    position: PositionView | None = None
    """After a position's event: the position as it was then."""
    prices: dict[str, Decimal] | None = None
    """After a market-price event: the prices it set."""


class LiveView:
    # Enough for the positions that are busy now; a position not kept costs one stream read when
    # it changes. The cache is most of what a long-running feed holds: it stays small (soak test).
    POSITIONS_KEPT = 5_000
    SYMBOLS_KEPT = 10_000

    def __init__(self, store: EventStore, pool: asyncpg.Pool) -> None:
        self._store = store
        self._pool = pool
        self._rows: _Lru[PositionRow] = _Lru(self.POSITIONS_KEPT)
        self._prices: _Lru[MarketPrice | None] = _Lru(self.SYMBOLS_KEPT)

    async def updates(self, events: Sequence[RecordedEvent]) -> list[LiveUpdate]:
        """The updates for `events`, the next ones of the log, in order."""
        updates = []
        for recorded in events:
            if recorded.stream_id == MARKET_STREAM:
                prices = _prices_of(recorded)
                for symbol, price in prices.items():
                    self._prices.put(symbol, (price, recorded.position))
                updates.append(LiveUpdate(recorded, prices=prices))
            elif (position_id := position_id_of(recorded.stream_id)) is not None:
                row = await self._row_after(str(position_id), recorded)
                market = await self._market_price(row.state.symbol, recorded.position)
                view = position_view(
                    {**msgspec.structs.asdict(row.state), "price": priced(row, market)}
                )
                updates.append(LiveUpdate(recorded, position=view))
        return updates

    async def _row_after(self, key: str, recorded: RecordedEvent) -> PositionRow:
        row = self._rows.get(key)
        if row is not None and row.state.version == recorded.stream_version - 1:
            row = advance(row, recorded)
        else:  # not seen, or seen out of step: fold the stream up to this event
            row = None
            before = recorded.stream_version - 1
            earlier = (
                await self._store.read_stream(recorded.stream_id, limit=before) if before else []
            )
            for event in [*earlier, recorded]:
                row = advance(row, event)
            assert row is not None
        self._rows.put(key, row)
        return row

    async def _market_price(self, symbol: str, at: LogPosition) -> MarketPrice | None:
        """The symbol's market price as of `at` (the view has seen the log up to there)."""
        if self._prices.has(symbol):
            return self._prices.get(symbol)
        price = await self._market_price_before(symbol, at)
        self._prices.put(symbol, price)
        return price

    async def _market_price_before(self, symbol: str, at: LogPosition) -> MarketPrice | None:
        latest = await self._pool.fetchrow(_MARKET_PRICE, symbol)
        if latest is None:
            return None  # never priced
        set_at = LogPosition(latest["tx_id"], latest["last_event"])
        if set_at < at:
            return latest["price"], set_at
        # The price changed since `at`: look back through the market stream for the one before.
        # Versions follow the log order except between concurrent appends, hence the whole page.
        from_version = None
        while True:
            page = await self._store.read_stream(
                MARKET_STREAM, backward=True, from_version=from_version, limit=_SEARCH_PAGE
            )
            found = [
                (prices[symbol], event.position)
                for event in page
                if event.position < at and symbol in (prices := _prices_of(event))
            ]
            if found:
                return max(found, key=lambda item: item[1])
            if len(page) < _SEARCH_PAGE:
                return None
            from_version = page[-1].stream_version - 1


def _prices_of(recorded: RecordedEvent) -> dict[str, Decimal]:
    event = event_from(recorded.event_type, recorded.data)
    assert isinstance(event, MarketPricesUpdated)
    return event.prices


T = TypeVar("T")


class _Lru(Generic[T]):
    """A dict that forgets its least recently used entries beyond `capacity`."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: OrderedDict[str, T] = OrderedDict()

    def has(self, key: str) -> bool:
        return key in self._items

    def get(self, key: str) -> T | None:
        item = self._items.get(key)
        if key in self._items:
            self._items.move_to_end(key)
        return item

    def put(self, key: str, item: T) -> None:
        self._items[key] = item
        self._items.move_to_end(key)
        if len(self._items) > self._capacity:
            self._items.popitem(last=False)
