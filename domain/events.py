"""What happened to a position, and to market prices. Past tense; never changed once written.

Each event carries the moment it happened (`at`, given by the caller) and nothing derivable from
the events before it, except figures worth keeping as they were computed (realized P&L).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal
from uuid import UUID

import msgspec

Side = Literal["long", "short"]


class Event(msgspec.Struct, frozen=True, kw_only=True):
    at: datetime

    SCHEMA_VERSION = 1


class PositionOpened(Event, frozen=True, kw_only=True):
    position_id: UUID
    owner: str
    symbol: str
    side: Side
    quantity: Decimal
    entry_price: Decimal
    stop_loss: Decimal | None = None
    take_profit: Decimal | None = None
    strategy: str | None = None
    notes: str | None = None
    pending: bool = False
    """An order not yet filled: it becomes open with PositionFilled."""


class PositionFilled(Event, frozen=True, kw_only=True):
    entry_price: Decimal


class PositionIncreased(Event, frozen=True, kw_only=True):
    quantity: Decimal
    price: Decimal


class StopLossMoved(Event, frozen=True, kw_only=True):
    stop_loss: Decimal | None


class TakeProfitMoved(Event, frozen=True, kw_only=True):
    take_profit: Decimal | None


class NotesChanged(Event, frozen=True, kw_only=True):
    notes: str | None


class StrategyChanged(Event, frozen=True, kw_only=True):
    strategy: str | None


class PositionMarked(Event, frozen=True, kw_only=True):
    """A price set on this one position."""

    price: Decimal


class PositionReduced(Event, frozen=True, kw_only=True):
    quantity: Decimal
    price: Decimal
    realized_pnl: Decimal


class PositionClosed(Event, frozen=True, kw_only=True):
    """The last of the position was closed; `exit_price` averages every closing price."""

    quantity: Decimal
    price: Decimal
    realized_pnl: Decimal
    exit_price: Decimal


class PositionCancelled(Event, frozen=True, kw_only=True):
    """A pending position closed before it was filled: no trade took place."""


class PositionDeleted(Event, frozen=True, kw_only=True):
    pass


class MarketPricesUpdated(Event, frozen=True, kw_only=True):
    """Prices for many symbols at once, on the market stream."""

    prices: dict[str, Decimal]


POSITION_EVENTS: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        PositionOpened,
        PositionFilled,
        PositionIncreased,
        StopLossMoved,
        TakeProfitMoved,
        NotesChanged,
        StrategyChanged,
        PositionMarked,
        PositionReduced,
        PositionClosed,
        PositionCancelled,
        PositionDeleted,
    )
}
EVENT_TYPES: dict[str, type[Event]] = {
    **POSITION_EVENTS,
    "MarketPricesUpdated": MarketPricesUpdated,
}


def event_from(event_type: str, data: dict) -> Event:
    """An event from its stored type name and JSON data."""
    return msgspec.convert(data, EVENT_TYPES[event_type], strict=False)
