"""A position: its state folded from its events, and the decisions its commands lead to.

    evolve(state, event) -> state       how an event changes a position
    decide(command, state) -> [events]  what a command leads to, or a DomainError

Both are pure. A position that does not exist yet is `None`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Literal
from uuid import UUID

import msgspec
from msgspec import UNSET

from . import rules
from .commands import (
    AmendPosition,
    ClosePosition,
    Command,
    DeletePosition,
    FillPosition,
    IncreasePosition,
    OpenPosition,
    UpdateMarketPrices,
)
from .errors import (
    AlreadyClosed,
    FieldError,
    InvalidCommand,
    NoExitPrice,
    NotOpen,
    NotPending,
    PositionAlreadyExists,
    PositionNotFound,
)
from .events import (
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
    Side,
    StopLossMoved,
    StrategyChanged,
    TakeProfitMoved,
)

Status = Literal["pending", "open", "closed"]
ZERO = Decimal(0)


# gc=False: only scalars, so never part of a reference cycle; untracked, the many held by read
# models and rebuilds cost the garbage collector nothing.
class Position(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    position_id: UUID
    owner: str
    symbol: str
    side: Side
    status: Status
    quantity: Decimal
    """What is open now: 0 once closed."""
    entry_price: Decimal
    """The average price of what is open."""
    current_price: Decimal | None
    """The last price set on this position itself: its last mark, or its closing price.
    Market prices for the symbol live in the read model."""
    stop_loss: Decimal | None
    take_profit: Decimal | None
    strategy: str | None
    notes: str | None
    realized_pnl: Decimal
    closed_quantity: Decimal
    closed_value: Decimal
    """Sum of quantity x price over every close: the exit price is its average."""
    exit_price: Decimal | None
    opened_at: datetime | None
    closed_at: datetime | None
    created_at: datetime
    updated_at: datetime
    deleted: bool = False
    version: int = 1


# -- evolve ------------------------------------------------------------------------------------


def evolve(state: Position | None, event: Event) -> Position:
    if isinstance(event, PositionOpened):
        assert state is None, "PositionOpened on an existing position"
        return _opened(event)
    assert state is not None, f"{type(event).__name__} before PositionOpened"
    # A replay runs this for every event of the log: the most frequent events come first (a match
    # tries its cases in order), and only the cases that compute enter the exact decimal context
    # (entering one costs about a microsecond, a fifth of the fold).
    match event:
        case PositionMarked(price=price):
            return _next(state, event, current_price=price)
        case StopLossMoved(stop_loss=stop_loss):
            return _next(state, event, stop_loss=stop_loss)
        case PositionFilled(entry_price=price):
            return _next(state, event, status="open", entry_price=price, opened_at=event.at)
        case PositionIncreased(quantity=quantity, price=price):
            with rules.exact():
                total = state.quantity + quantity
                average = (state.entry_price * state.quantity + price * quantity) / total
                return _next(state, event, quantity=total, entry_price=rules.price_places(average))
        case TakeProfitMoved(take_profit=take_profit):
            return _next(state, event, take_profit=take_profit)
        case NotesChanged(notes=notes):
            return _next(state, event, notes=notes)
        case StrategyChanged(strategy=strategy):
            return _next(state, event, strategy=strategy)
        case PositionReduced(quantity=quantity, price=price, realized_pnl=pnl):
            with rules.exact():
                return _next(
                    state,
                    event,
                    quantity=state.quantity - quantity,
                    **_closing(state, quantity, price, pnl),
                )
        case PositionClosed(quantity=quantity, price=price, realized_pnl=pnl):
            # A closed position keeps the price it last traded at.
            with rules.exact():
                return _next(
                    state,
                    event,
                    status="closed",
                    quantity=ZERO,
                    current_price=price,
                    closed_at=event.at,
                    **{**_closing(state, quantity, price, pnl), "exit_price": event.exit_price},
                )
        case PositionCancelled():
            return _next(state, event, status="closed", quantity=ZERO, closed_at=event.at)
        case PositionDeleted():
            return _next(state, event, deleted=True)
    raise TypeError(f"a position does not know {type(event).__name__}")


def fold(events: Iterable[Event], state: Position | None = None) -> Position | None:
    for event in events:
        state = evolve(state, event)
    return state


def _opened(event: PositionOpened) -> Position:
    return Position(
        position_id=event.position_id,
        owner=event.owner,
        symbol=event.symbol,
        side=event.side,
        status="pending" if event.pending else "open",
        quantity=event.quantity,
        entry_price=event.entry_price,
        current_price=None,
        stop_loss=event.stop_loss,
        take_profit=event.take_profit,
        strategy=event.strategy,
        notes=event.notes,
        realized_pnl=ZERO,
        closed_quantity=ZERO,
        closed_value=ZERO,
        exit_price=None,
        opened_at=None if event.pending else event.at,
        closed_at=None,
        created_at=event.at,
        updated_at=event.at,
    )


def _next(state: Position, event: Event, **changes: object) -> Position:
    return msgspec.structs.replace(state, updated_at=event.at, version=state.version + 1, **changes)


def _closing(
    state: Position, quantity: Decimal, price: Decimal, pnl: Decimal
) -> dict[str, Decimal]:
    """What closing `quantity` at `price` adds up; the exit price is the average of every closing
    price so far, a partial close's too (rounded as a final close records it)."""
    closed_quantity = state.closed_quantity + quantity
    closed_value = state.closed_value + quantity * price
    return {
        "realized_pnl": state.realized_pnl + pnl,
        "closed_quantity": closed_quantity,
        "closed_value": closed_value,
        "exit_price": rules.price_places(closed_value / closed_quantity),
    }


# -- decide ------------------------------------------------------------------------------------


def decide(command: Command, state: Position | None) -> list[Event]:
    match command:
        case OpenPosition():
            return _open(command, state)
        case FillPosition():
            return _fill(command, state)
        case AmendPosition():
            return _amend(command, state)
        case IncreasePosition():
            return _increase(command, state)
        case ClosePosition():
            return _close(command, state)
        case DeletePosition():
            _existing(state)
            return [PositionDeleted(at=command.at)]
    raise TypeError(f"a position does not handle {type(command).__name__}")


def _existing(state: Position | None) -> Position:
    if state is None or state.deleted:
        raise PositionNotFound()
    return state


def _changeable(state: Position | None) -> Position:
    state = _existing(state)
    if state.status == "closed":
        raise AlreadyClosed()
    return state


def _refuse_if_any(errors: list[FieldError]) -> None:
    if errors:
        raise InvalidCommand(errors)


def check_open(command: OpenPosition) -> list[FieldError]:
    """Every rule an opening breaks, all at once."""
    errors = rules.check_fields(msgspec.structs.asdict(command))
    if not any(e.field == "entry_price" for e in errors):
        rules.protective_levels(
            command.side, command.entry_price, command.stop_loss, command.take_profit, errors
        )
    return errors


def _open(command: OpenPosition, state: Position | None) -> list[Event]:
    if state is not None:
        raise PositionAlreadyExists()
    _refuse_if_any(check_open(command))
    fields = msgspec.structs.asdict(command)
    fields["symbol"] = rules.symbol("symbol", command.symbol, [])  # as checked: upper-cased
    return [PositionOpened(**fields)]


def _fill(command: FillPosition, state: Position | None) -> list[Event]:
    state = _changeable(state)
    if state.status != "pending":
        raise NotPending()
    entry_price = state.entry_price if command.entry_price is None else command.entry_price
    errors: list[FieldError] = []
    rules.amount("entry_price", entry_price, errors)
    _refuse_if_any(errors)
    rules.protective_levels(state.side, entry_price, state.stop_loss, state.take_profit, errors)
    _refuse_if_any(errors)
    return [PositionFilled(at=command.at, entry_price=entry_price)]


def check_amend(command: AmendPosition, state: Position) -> list[FieldError]:
    """Every rule the changes break; a level is checked against the entry only if it changes."""
    changes = {k: v for k, v in msgspec.structs.asdict(command).items() if v is not UNSET}
    errors = rules.check_fields(changes)
    broken = {e.field for e in errors}
    stop = changes.get("stop_loss") if "stop_loss" not in broken else None
    target = changes.get("take_profit") if "take_profit" not in broken else None
    rules.protective_levels(state.side, state.entry_price, stop, target, errors)
    return errors


def _amend(command: AmendPosition, state: Position | None) -> list[Event]:
    state = _changeable(state)
    _refuse_if_any(check_amend(command, state))
    at, events = command.at, []
    if command.stop_loss is not UNSET and command.stop_loss != state.stop_loss:
        events.append(StopLossMoved(at=at, stop_loss=command.stop_loss))
    if command.take_profit is not UNSET and command.take_profit != state.take_profit:
        events.append(TakeProfitMoved(at=at, take_profit=command.take_profit))
    if command.notes is not UNSET and command.notes != state.notes:
        events.append(NotesChanged(at=at, notes=command.notes))
    if command.strategy is not UNSET and command.strategy != state.strategy:
        events.append(StrategyChanged(at=at, strategy=command.strategy))
    if command.current_price is not UNSET:
        # A mark is news even at an unchanged price: it says the price was checked now.
        events.append(PositionMarked(at=at, price=command.current_price))
    return events


def _increase(command: IncreasePosition, state: Position | None) -> list[Event]:
    state = _changeable(state)
    if state.status != "open":
        raise NotOpen()
    errors: list[FieldError] = []
    rules.amount("quantity", command.quantity, errors)
    rules.amount("price", command.price, errors)
    _refuse_if_any(errors)
    if state.quantity + command.quantity > rules.MAX_MAGNITUDE:  # the total obeys the same bound
        room = rules.MAX_MAGNITUDE - state.quantity
        held, limit = f"{state.quantity:f}", f"{rules.MAX_MAGNITUDE:f}"
        errors.append(
            FieldError("quantity", f"must be at most {room:f} ({held} held, {limit} in all)")
        )
    _refuse_if_any(errors)
    return [PositionIncreased(at=command.at, quantity=command.quantity, price=command.price)]


def realized_pnl(side: Side, quantity: Decimal, average: Decimal, exit_price: Decimal) -> Decimal:
    """Long: quantity x (exit - average). Short: quantity x (average - exit)."""
    with rules.exact():
        move = exit_price - average if side == "long" else average - exit_price
        return quantity * move


def _close(command: ClosePosition, state: Position | None) -> list[Event]:
    state = _changeable(state)
    if state.status == "pending":
        return [PositionCancelled(at=command.at)]
    if command.exit_price is None:
        raise NoExitPrice()
    quantity = state.quantity if command.quantity is None else command.quantity
    price = abs(command.exit_price)  # a price of -0 is 0
    errors: list[FieldError] = []
    rules.amount("exit_price", command.exit_price, errors, zero_allowed=True)
    rules.amount("quantity", quantity, errors)
    if not any(e.field == "quantity" for e in errors) and quantity > state.quantity:
        errors.append(FieldError("quantity", f"must not exceed the open quantity {state.quantity}"))
    _refuse_if_any(errors)

    pnl = realized_pnl(state.side, quantity, state.entry_price, price)
    if quantity < state.quantity:
        return [PositionReduced(at=command.at, quantity=quantity, price=price, realized_pnl=pnl)]
    with rules.exact():
        closed_quantity = state.closed_quantity + quantity
        exit_price = (state.closed_value + quantity * price) / closed_quantity
    return [
        PositionClosed(
            at=command.at,
            quantity=quantity,
            price=price,
            realized_pnl=pnl,
            exit_price=rules.price_places(exit_price),
        )
    ]


def decide_market_prices(command: UpdateMarketPrices) -> list[Event]:
    """Prices for many symbols; the market stream has no state that could refuse them."""
    errors: list[FieldError] = []
    prices = {}
    for raw_symbol, price in command.prices.items():
        symbol = rules.symbol(raw_symbol, raw_symbol, errors)
        if symbol in prices:
            errors.append(FieldError(raw_symbol, f"{symbol} is given twice"))
        prices[symbol] = rules.amount(raw_symbol, price, errors)
    if not prices:
        errors.append(FieldError("prices", "must name at least one symbol"))
    _refuse_if_any(errors)
    return [MarketPricesUpdated(at=command.at, prices=prices)]
