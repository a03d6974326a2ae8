"""Figures of a position and of a book, as DOMAIN.md defines them. Pure functions of Decimals.

A missing market price is not zero: until one arrives, a position's market value and exposure use
its entry price and its unrealized P&L is 0.
"""

from __future__ import annotations

from decimal import Decimal

from . import rules
from .events import Side

ZERO = Decimal(0)
HUNDRED = Decimal(100)
PERCENT_PLACES = Decimal("0.000001")


def mark(current_price: Decimal | None, entry_price: Decimal) -> Decimal:
    return entry_price if current_price is None else current_price


def market_value(quantity: Decimal, current_price: Decimal | None, entry_price: Decimal) -> Decimal:
    """A size, never negative: quantity x mark."""
    with rules.exact():
        return quantity * mark(current_price, entry_price)


def exposure(side: Side, value: Decimal) -> Decimal:
    return value if side == "long" else -value


def unrealized_pnl(
    side: Side, quantity: Decimal, entry_price: Decimal, current_price: Decimal | None
) -> Decimal:
    """(mark - average) x signed quantity; 0 when unpriced or nothing is open."""
    if current_price is None or quantity == 0:
        return ZERO
    with rules.exact():
        signed = quantity if side == "long" else -quantity
        return (current_price - entry_price) * signed


def percent(part: Decimal, whole: Decimal) -> Decimal | None:
    """part / whole x 100, to six places; None when the whole is 0."""
    if whole == 0:
        return None
    with rules.exact():
        return (part / whole * HUNDRED).quantize(PERCENT_PLACES)


def unrealized_pnl_pct(unrealized: Decimal, entry_price: Decimal, quantity: Decimal) -> Decimal | None:
    with rules.exact():
        return percent(unrealized, entry_price * quantity)


def stop_near(side: Side, price: Decimal, stop_loss: Decimal | None, proximity_pct: Decimal) -> bool:
    """The stop is hit (inclusive) or within `proximity_pct` percent of the price."""
    if stop_loss is None:
        return False
    with rules.exact():
        distance = price - stop_loss if side == "long" else stop_loss - price
        return distance <= price * proximity_pct / HUNDRED


def target_near(
    side: Side, price: Decimal, take_profit: Decimal | None, proximity_pct: Decimal
) -> bool:
    """The target is hit (inclusive) or within `proximity_pct` percent of the price."""
    if take_profit is None:
        return False
    with rules.exact():
        distance = take_profit - price if side == "long" else price - take_profit
        return distance <= price * proximity_pct / HUNDRED


def win_rate(winners: int, trades: int) -> Decimal:
    """Percent of closed trades with a positive P&L; breakeven trades count as trades."""
    return percent(Decimal(winners), Decimal(trades)) or ZERO


def profit_factor(gross_profit: Decimal, gross_loss: Decimal) -> Decimal | None:
    """Winning P&L / |losing P&L|: 0 when nothing won, None when something won and nothing lost."""
    if gross_profit == 0:
        return ZERO
    if gross_loss == 0:
        return None
    with rules.exact():
        return (gross_profit / abs(gross_loss)).quantize(PERCENT_PLACES)
