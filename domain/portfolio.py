"""Figures of a position and of a book, as docs/domain.md defines them. Pure functions of
Decimals.

A missing market price is not zero: until one arrives, a position's market value and exposure use
its entry price and its unrealized P&L is 0. The sums over a book (exposures, positions at risk)
are one SQL aggregate in projections/queries.py, so that a large book is summed where it lives.
"""

from __future__ import annotations

from decimal import Decimal

from . import rules
from .events import Side

ZERO = Decimal(0)
HUNDRED = Decimal(100)
PERCENT_PLACES = Decimal("0.000001")


def market_value(quantity: Decimal, current_price: Decimal | None, entry_price: Decimal) -> Decimal:
    """A size, never negative: quantity x the price, or x the entry price while unpriced."""
    with rules.exact():
        return quantity * (entry_price if current_price is None else current_price)


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


def unrealized_pnl_pct(
    unrealized: Decimal, entry_price: Decimal, quantity: Decimal
) -> Decimal | None:
    with rules.exact():
        return percent(unrealized, entry_price * quantity)


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
