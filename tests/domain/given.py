"""Given / when / then for the position domain, in the spirit of Commanded's aggregate_case.

    given(opened()).when(close(exit_price="110")).then(closed(...))
    given(opened()).when(close(quantity="11")).then_refuses(InvalidCommand, errors=["quantity"])

`given` folds the history with `evolve`; `when` runs `decide` (or `decide_market_prices` for market
prices); `then` compares the events exactly and folds them onto the state, returning that state so
a test can look at what the events did. Builders below make events and commands with a fixed clock
and fixed ids: nothing here reads the time or draws a random number.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from msgspec import UNSET

from domain.commands import (
    AmendPosition,
    ClosePosition,
    Command,
    DeletePosition,
    FillPosition,
    IncreasePosition,
    OpenPosition,
    UpdateMarketPrices,
)
from domain.errors import DomainError
from domain.events import (
    Event,
    MarketPricesUpdated,
    NotesChanged,
    PositionCancelled,
    PositionClosed,
    PositionDeleted,
    PositionFilled,
    PositionIncreased,
    PositionMarked,
    PositionOpened,
    PositionReduced,
    StopLossMoved,
    StrategyChanged,
    TakeProfitMoved,
)
from domain.position import Position, decide, decide_market_prices, fold

# -- a fixed clock and fixed ids ---------------------------------------------------------------

T0 = datetime(2024, 3, 4, 9, 30, tzinfo=UTC)
NOW = T0
POSITION_ID = UUID(int=1)
OWNER = "alice"


def t(minutes: int) -> datetime:
    """A moment `minutes` after T0."""
    return T0 + timedelta(minutes=minutes)


Number = str | int | Decimal


def D(value: Number) -> Decimal:
    """An exact decimal from a string, an int or a Decimal; a float is a mistake in a test."""
    if isinstance(value, float):
        raise TypeError(f"write {value!r} as a string: a float is not an exact price")
    return value if isinstance(value, Decimal) else Decimal(value)


def _maybe(value: Number | None) -> Decimal | None:
    return None if value is None else D(value)


# -- given / when / then -----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    history: tuple[Event, ...]
    command: Command | None = None

    @property
    def state(self) -> Position | None:
        return fold(self.history)

    def when(self, command: Command) -> Case:
        return Case(self.history, command)

    def _decide(self) -> list[Event]:
        assert self.command is not None, "when(command) first"
        if isinstance(self.command, UpdateMarketPrices):
            assert not self.history, "market prices have no history to be given"
            return decide_market_prices(self.command)
        return decide(self.command, self.state)

    def then(self, *expected: Event) -> Position | None:
        """The command leads to exactly these events, in order; returns the state after them."""
        events = self._decide()
        assert events == list(expected)
        if isinstance(self.command, UpdateMarketPrices):
            return None
        return fold(events, self.state)

    def then_nothing(self) -> Position | None:
        return self.then()

    def then_refuses(self, error_type: type[DomainError], **attrs: Any) -> DomainError:
        """The command is refused with this error. `errors=[field, ...]` names exactly the fields
        an InvalidCommand reports (in any order); any other attribute is compared as it is."""
        with pytest.raises(error_type) as raised:
            self._decide()
        error = raised.value
        assert type(error) is error_type
        for name, expected in attrs.items():
            actual = getattr(error, name)
            if name == "errors":
                reported = {e.field for e in actual}
                assert reported == set(expected), (
                    f"{sorted(reported)} != {sorted(expected)}: {error}"
                )
            else:
                assert actual == expected
        return error


def given(*events: Event) -> Case:
    return Case(tuple(events))


# -- events ------------------------------------------------------------------------------------


def opened(
    *,
    side: str = "long",
    quantity: Number = "10",
    entry_price: Number = "100",
    stop_loss: Number | None = None,
    take_profit: Number | None = None,
    strategy: str | None = None,
    notes: str | None = None,
    pending: bool = False,
    symbol: str = "AAPL",
    owner: str = OWNER,
    position_id: UUID = POSITION_ID,
    at: datetime = NOW,
) -> PositionOpened:
    return PositionOpened(
        at=at,
        position_id=position_id,
        owner=owner,
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        quantity=D(quantity),
        entry_price=D(entry_price),
        stop_loss=_maybe(stop_loss),
        take_profit=_maybe(take_profit),
        strategy=strategy,
        notes=notes,
        pending=pending,
    )


def ordered(**fields: Any) -> PositionOpened:
    """A pending position: an order not yet filled."""
    return opened(pending=True, **fields)


def filled(entry_price: Number = "100", *, at: datetime = NOW) -> PositionFilled:
    return PositionFilled(at=at, entry_price=D(entry_price))


def increased(quantity: Number, price: Number, *, at: datetime = NOW) -> PositionIncreased:
    return PositionIncreased(at=at, quantity=D(quantity), price=D(price))


def stop_loss_moved(stop_loss: Number | None, *, at: datetime = NOW) -> StopLossMoved:
    return StopLossMoved(at=at, stop_loss=_maybe(stop_loss))


def take_profit_moved(take_profit: Number | None, *, at: datetime = NOW) -> TakeProfitMoved:
    return TakeProfitMoved(at=at, take_profit=_maybe(take_profit))


def notes_changed(notes: str | None, *, at: datetime = NOW) -> NotesChanged:
    return NotesChanged(at=at, notes=notes)


def strategy_changed(strategy: str | None, *, at: datetime = NOW) -> StrategyChanged:
    return StrategyChanged(at=at, strategy=strategy)


def marked(price: Number, *, at: datetime = NOW) -> PositionMarked:
    return PositionMarked(at=at, price=D(price))


def reduced(
    quantity: Number, price: Number, realized_pnl: Number, *, at: datetime = NOW
) -> PositionReduced:
    return PositionReduced(
        at=at, quantity=D(quantity), price=D(price), realized_pnl=D(realized_pnl)
    )


def closed(
    quantity: Number, price: Number, realized_pnl: Number, exit_price: Number, *, at: datetime = NOW
) -> PositionClosed:
    return PositionClosed(
        at=at,
        quantity=D(quantity),
        price=D(price),
        realized_pnl=D(realized_pnl),
        exit_price=D(exit_price),
    )


def cancelled(*, at: datetime = NOW) -> PositionCancelled:
    return PositionCancelled(at=at)


def deleted(*, at: datetime = NOW) -> PositionDeleted:
    return PositionDeleted(at=at)


def prices_updated(prices: dict[str, Number], *, at: datetime = NOW) -> MarketPricesUpdated:
    return MarketPricesUpdated(at=at, prices={s: D(p) for s, p in prices.items()})


# -- commands ----------------------------------------------------------------------------------


def open_position(
    *,
    side: str = "long",
    quantity: Number = "10",
    entry_price: Number = "100",
    stop_loss: Number | None = None,
    take_profit: Number | None = None,
    strategy: str | None = None,
    notes: str | None = None,
    pending: bool = False,
    symbol: str = "AAPL",
    owner: str = OWNER,
    position_id: UUID = POSITION_ID,
    at: datetime = NOW,
) -> OpenPosition:
    return OpenPosition(
        at=at,
        position_id=position_id,
        owner=owner,
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        quantity=D(quantity),
        entry_price=D(entry_price),
        stop_loss=_maybe(stop_loss),
        take_profit=_maybe(take_profit),
        strategy=strategy,
        notes=notes,
        pending=pending,
    )


def fill(entry_price: Number | None = None, *, at: datetime = NOW) -> FillPosition:
    return FillPosition(at=at, entry_price=_maybe(entry_price))


_AMENDABLE_PRICES = ("current_price", "stop_loss", "take_profit")


def amend(*, at: datetime = NOW, **changes: Any) -> AmendPosition:
    """Only the fields named change; a field given as None is cleared."""
    fields = {
        name: (_maybe(value) if name in _AMENDABLE_PRICES else value)
        for name, value in changes.items()
        if value is not UNSET
    }
    return AmendPosition(at=at, **fields)


def increase(quantity: Number, price: Number, *, at: datetime = NOW) -> IncreasePosition:
    return IncreasePosition(at=at, quantity=D(quantity), price=D(price))


def close(
    exit_price: Number | None = "110", quantity: Number | None = None, *, at: datetime = NOW
) -> ClosePosition:
    return ClosePosition(at=at, exit_price=_maybe(exit_price), quantity=_maybe(quantity))


def delete(*, at: datetime = NOW) -> DeletePosition:
    return DeletePosition(at=at)


def update_prices(prices: dict[str, Number], *, at: datetime = NOW) -> UpdateMarketPrices:
    return UpdateMarketPrices(at=at, prices={s: D(p) for s, p in prices.items()})
