"""Read-side queries over the read models, answering in the shapes the API returns."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from domain import portfolio
from domain.events import Side

NO_STRATEGY = "(none)"
"""The `by_strategy` key of positions without a strategy."""


class PositionView(msgspec.Struct, kw_only=True):
    id: UUID
    owner: str
    symbol: str
    side: Side
    quantity: Decimal
    entry_price: Decimal
    current_price: Decimal | None
    stop_loss: Decimal | None
    take_profit: Decimal | None
    strategy: str | None
    notes: str | None
    status: str
    market_value: Decimal
    unrealized_pnl: Decimal
    unrealized_pnl_pct: Decimal | None
    realized_pnl: Decimal
    closed_quantity: Decimal
    exit_price: Decimal | None
    opened_at: datetime | None
    closed_at: datetime | None
    created_at: datetime
    updated_at: datetime
    version: int


def position_view(row: asyncpg.Record | dict[str, Any]) -> PositionView:
    """A row selected with _PRICED: `price` is the position's price as of now."""
    quantity, entry, price = row["quantity"], row["entry_price"], row["price"]
    held = quantity if row["status"] == "open" else portfolio.ZERO  # nothing is held otherwise
    unrealized = portfolio.unrealized_pnl(row["side"], held, entry, price)
    return PositionView(
        id=row["position_id"],
        owner=row["owner"],
        symbol=row["symbol"],
        side=row["side"],
        quantity=quantity,
        entry_price=entry,
        current_price=price,
        stop_loss=row["stop_loss"],
        take_profit=row["take_profit"],
        strategy=row["strategy"],
        notes=row["notes"],
        status=row["status"],
        market_value=portfolio.market_value(quantity, price, entry),
        unrealized_pnl=unrealized,
        unrealized_pnl_pct=portfolio.unrealized_pnl_pct(unrealized, entry, quantity),
        realized_pnl=row["realized_pnl"],
        closed_quantity=row["closed_quantity"],
        exit_price=row["exit_price"],
        opened_at=row["opened_at"],
        closed_at=row["closed_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        version=row["version"],
    )


# A position's price now: see migrations/006_position_price.sql.
_PRICE = (
    "position_price(p.status, p.current_price, p.mark_tx, p.mark_position,"
    " m.price, m.tx_id, m.last_event)"
)
_FROM = "positions p LEFT JOIN market_prices m USING (symbol)"
_PRICED = f"SELECT p.*, {_PRICE} AS price FROM {_FROM}"

_SELECT_POSITION = f"""
{_PRICED}
WHERE p.position_id = $1 AND ($2::text IS NULL OR p.owner = $2)
"""

_SELECT_POSITIONS = f"{_PRICED} WHERE p.position_id = ANY ($1::uuid[])"

_FILTERABLE = ("owner", "status", "symbol", "strategy", "side")


def _where(where: PositionFilter) -> tuple[str, list[Any]]:
    """Only the filters given, so that an index can serve the page (values stay parameters)."""
    clauses, arguments = [], []
    for column in _FILTERABLE:
        value = getattr(where, column)
        if value is not None:
            arguments.append(value)
            clauses.append(f"p.{column} = ${len(arguments)}")
    return " AND ".join(clauses) or "TRUE", arguments


async def get_position(
    connection: asyncpg.Connection | asyncpg.Pool, position_id: UUID, owner: str | None
) -> PositionView | None:
    """The position, if it exists and (when `owner` is given) belongs to that owner."""
    row = await connection.fetchrow(_SELECT_POSITION, position_id, owner)
    return None if row is None else position_view(row)


async def get_positions(
    connection: asyncpg.Connection | asyncpg.Pool, position_ids: list[UUID]
) -> dict[UUID, PositionView]:
    """Those of the positions that exist, by id, in one query."""
    rows = await connection.fetch(_SELECT_POSITIONS, position_ids)
    return {row["position_id"]: position_view(row) for row in rows}


class PositionFilter(msgspec.Struct, frozen=True, kw_only=True):
    owner: str | None = None
    status: str | None = None
    symbol: str | None = None
    strategy: str | None = None
    side: str | None = None


async def list_positions(
    connection: asyncpg.Connection | asyncpg.Pool, where: PositionFilter, limit: int, offset: int
) -> tuple[list[PositionView], int]:
    """A page of positions, newest first, and how many match in all."""
    condition, arguments = _where(where)
    n = len(arguments)
    rows = await connection.fetch(
        f"{_PRICED} WHERE {condition} ORDER BY p.created_at DESC, p.position_id DESC "
        f"LIMIT ${n + 1} OFFSET ${n + 2}",
        *arguments,
        limit,
        offset,
    )
    total = await connection.fetchval(
        f"SELECT count(*) FROM positions p WHERE {condition}", *arguments
    )
    return [position_view(row) for row in rows], total


async def live_book(
    connection: asyncpg.Connection | asyncpg.Pool, owner: str | None
) -> list[PositionView]:
    """The positions still pending or open, `owner`'s or (None) everyone's, newest first."""
    rows = await connection.fetch(
        f"{_PRICED} WHERE p.status <> 'closed' AND ($1::text IS NULL OR p.owner = $1) "
        "ORDER BY p.created_at DESC, p.position_id DESC",
        owner,
    )
    return [position_view(row) for row in rows]


async def current_price(
    connection: asyncpg.Connection | asyncpg.Pool, position_id: UUID
) -> Decimal | None:
    """The position's price now (see _PRICE); None when it has none or does not exist."""
    return await connection.fetchval(
        f"SELECT price FROM ({_PRICED}) AS priced WHERE position_id = $1", position_id
    )


async def count_open(
    connection: asyncpg.Connection | asyncpg.Pool, symbols: list[str]
) -> dict[str, int]:
    """The number of open positions in each of these symbols (a symbol with none is absent)."""
    rows = await connection.fetch(
        "SELECT symbol, count(*) FROM positions WHERE status = 'open' AND symbol = ANY ($1) "
        "GROUP BY symbol",
        symbols,
    )
    return dict(rows)


# -- portfolio summary -------------------------------------------------------------------------

# Per-row figures as domain/portfolio.py defines them, summed per book, symbol and strategy: one
# pass over the rows into (symbol, strategy) cells, whose sums the three groupings add up. A trade
# is a position closed after it was filled (a cancelled order closed nothing).
# "Within x percent": the level is at most mark * x/100 (`near`) beyond the mark on its side, with
# x/100 made exactly in Python (numeric division would round). The short side's exposure is what
# the long side leaves of the total.
# OFFSET 0 keeps each step a step of its own: otherwise the planner folds the steps together and
# works out a row's price, mark and status tests again in every expression that uses them (a
# quarter of the query's time at 10,000 rows).
_SUMMARY = f"""
WITH priced AS (
    SELECT p.symbol, coalesce(p.strategy, $3) AS strategy, p.status,
           p.status = 'open' AS is_open, p.side = 'long' AS is_long,
           p.status = 'closed' AND p.closed_quantity > 0 AS is_trade,
           p.quantity, p.entry_price, p.realized_pnl, p.stop_loss, p.take_profit,
           {_PRICE} AS price
    FROM {_FROM}
    WHERE $1::text IS NULL OR p.owner = $1
    OFFSET 0
),
marked AS (
    SELECT *, coalesce(price, entry_price) AS mark,
           CASE WHEN is_open AND (stop_loss IS NOT NULL OR take_profit IS NOT NULL)
                THEN coalesce(price, entry_price) * $2 END AS near
    FROM priced
    OFFSET 0
),
held AS (  -- what is held, at its mark
    SELECT symbol, strategy, status, is_open, is_long, is_trade, realized_pnl,
           is_open AND price IS NULL AS unpriced,
           CASE WHEN is_open THEN quantity * mark END AS market_value,
           CASE WHEN is_open AND price IS NOT NULL
                THEN (mark - entry_price) * (CASE WHEN is_long THEN quantity ELSE -quantity END)
                ELSE 0 END AS unrealized_pnl,
           is_open AND stop_loss IS NOT NULL AND
               (CASE WHEN is_long THEN mark - stop_loss ELSE stop_loss - mark END) <= near
               AS at_risk,
           is_open AND take_profit IS NOT NULL AND
               (CASE WHEN is_long THEN take_profit - mark ELSE mark - take_profit END) <= near
               AS near_target
    FROM marked
    OFFSET 0
),
cell AS (  -- one pass over the rows, per (symbol, strategy); the sets below add the cells up
    SELECT symbol, strategy,
           count(*) AS total_positions,
           count(*) FILTER (WHERE is_open) AS open_positions,
           count(*) FILTER (WHERE status = 'closed') AS closed_positions,
           count(*) FILTER (WHERE status = 'pending') AS pending_positions,
           count(*) FILTER (WHERE is_open AND is_long) AS long_positions,
           count(*) FILTER (WHERE is_open AND NOT is_long) AS short_positions,
           count(*) FILTER (WHERE unpriced) AS unpriced_positions,
           sum(market_value) AS market_value,
           max(market_value) AS largest_market_value,
           sum(market_value) FILTER (WHERE is_long) AS long_exposure,
           sum(unrealized_pnl) AS unrealized_pnl,
           sum(realized_pnl) AS realized_pnl,
           count(*) FILTER (WHERE is_trade) AS trades,
           count(*) FILTER (WHERE is_trade AND realized_pnl > 0) AS winning_trades,
           sum(realized_pnl) FILTER (WHERE is_trade AND realized_pnl > 0) AS gross_profit,
           sum(realized_pnl) FILTER (WHERE is_trade AND realized_pnl < 0) AS gross_loss,
           count(*) FILTER (WHERE at_risk) AS positions_at_risk,
           count(*) FILTER (WHERE near_target) AS positions_near_target
    FROM held
    GROUP BY symbol, strategy
)
SELECT grouping(symbol) AS all_symbols, grouping(strategy) AS all_strategies, symbol, strategy,
       coalesce(sum(total_positions), 0)::bigint AS total_positions,
       coalesce(sum(open_positions), 0)::bigint AS open_positions,
       coalesce(sum(closed_positions), 0)::bigint AS closed_positions,
       coalesce(sum(pending_positions), 0)::bigint AS pending_positions,
       coalesce(sum(long_positions), 0)::bigint AS long_positions,
       coalesce(sum(short_positions), 0)::bigint AS short_positions,
       coalesce(sum(unpriced_positions), 0)::bigint AS unpriced_positions,
       coalesce(sum(market_value), 0) AS total_market_value,
       coalesce(max(largest_market_value), 0) AS largest_market_value,
       coalesce(sum(long_exposure), 0) AS long_exposure,
       coalesce(sum(long_exposure), 0) - coalesce(sum(market_value), 0) AS short_exposure,
       sum(unrealized_pnl) AS total_unrealized_pnl,
       sum(realized_pnl) AS total_realized_pnl,
       coalesce(sum(trades), 0)::bigint AS trades,
       coalesce(sum(winning_trades), 0)::bigint AS winning_trades,
       coalesce(sum(gross_profit), 0) AS gross_profit,
       coalesce(sum(gross_loss), 0) AS gross_loss,
       coalesce(sum(positions_at_risk), 0)::bigint AS positions_at_risk,
       coalesce(sum(positions_near_target), 0)::bigint AS positions_near_target,
       -- The newest event these figures include: read in the same snapshot as the figures.
       (SELECT global_position FROM events ORDER BY tx_id DESC, global_position DESC LIMIT 1)
           AS as_of_position
FROM cell
GROUP BY GROUPING SETS ((), (symbol), (strategy))
"""

_COUNTS = (
    "total_positions",
    "open_positions",
    "closed_positions",
    "pending_positions",
    "long_positions",
    "short_positions",
    "unpriced_positions",
    "positions_at_risk",
    "positions_near_target",
)


def _figures(row: asyncpg.Record) -> dict[str, Any]:
    """The sums and counts of one group, and what follows from them."""
    figures: dict[str, Any] = {name: row[name] for name in _COUNTS}
    long_exposure, short_exposure = row["long_exposure"], row["short_exposure"]
    unrealized, realized = row["total_unrealized_pnl"] or 0, row["total_realized_pnl"] or 0
    figures.update(
        total_market_value=row["total_market_value"],
        long_exposure=long_exposure,
        short_exposure=short_exposure,
        net_exposure=long_exposure + short_exposure,
        gross_exposure=long_exposure + abs(short_exposure),
        total_unrealized_pnl=Decimal(unrealized),
        total_realized_pnl=Decimal(realized),
        total_pnl=Decimal(unrealized) + Decimal(realized),
        closed_trades=row["trades"],
        winning_trades=row["winning_trades"],
        win_rate=portfolio.win_rate(row["winning_trades"], row["trades"]),
        profit_factor=portfolio.profit_factor(row["gross_profit"], row["gross_loss"]),
        largest_position_pct=portfolio.percent(
            row["largest_market_value"], row["total_market_value"]
        )
        or portfolio.ZERO,
    )
    return figures


async def portfolio_summary(
    connection: asyncpg.Connection | asyncpg.Pool, owner: str | None, risk_proximity_pct: Decimal
) -> dict[str, Any]:
    """The figures of docs/domain.md over `owner`'s positions, or over the whole book for None."""
    rows = await connection.fetch(_SUMMARY, owner, risk_proximity_pct.scaleb(-2), NO_STRATEGY)
    summary: dict[str, Any] = {}  # the grand total row exists even for an empty book
    by_symbol: dict[str, Any] = {}
    by_strategy: dict[str, Any] = {}
    for row in rows:
        if row["all_symbols"] and row["all_strategies"]:
            summary = _figures(row)
        elif not row["all_symbols"]:
            by_symbol[row["symbol"]] = _figures(row)
        else:
            by_strategy[row["strategy"]] = _figures(row)
    summary["by_symbol"] = dict(sorted(by_symbol.items()))
    summary["by_strategy"] = dict(sorted(by_strategy.items()))
    summary["as_of_position"] = rows[0]["as_of_position"] or 0
    return summary
