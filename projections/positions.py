"""The positions read model: one row per live position, and the last market price per symbol.

Rows are folded with the domain's own `evolve`, so the read model cannot disagree with the
decisions made on the event streams. The projector is a plain function of (connection, events):
the store runs it inside each append's transaction (so a read after a command sees its result),
and the catch-up runner feeds it the whole log to rebuild. A batch costs a few statements however
many events it holds: rows are loaded together, folded in memory and written back together.

Inline, transactions apply their events in commit order, a rebuild in log order; the two must
give the same tables. So nothing here reads one stream's state to change another's: a market
price is one row per symbol, a position's own mark is kept with its log position, and reads show
whichever of the two is later in the log (see queries.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from operator import attrgetter
from uuid import UUID

import asyncpg
import msgspec

from domain.events import (
    MarketPricesUpdated,
    PositionClosed,
    PositionMarked,
    PositionOpened,
    event_from,
)
from domain.position import Position, evolve
from domain.streams import MARKET_STREAM, position_id_of
from eventstore import RecordedEvent

TABLES = {"positions": "position_id", "market_prices": "symbol"}
"""The read-model tables, each with its key."""

# Column types, in the order of the domain's Position fields (`deleted` rows are removed instead).
_TYPES = {
    "position_id": "uuid",
    "owner": "text",
    "symbol": "text",
    "side": "text",
    "status": "text",
    "quantity": "numeric",
    "entry_price": "numeric",
    "current_price": "numeric",
    "stop_loss": "numeric",
    "take_profit": "numeric",
    "strategy": "text",
    "notes": "text",
    "realized_pnl": "numeric",
    "closed_quantity": "numeric",
    "closed_value": "numeric",
    "exit_price": "numeric",
    "opened_at": "timestamptz",
    "closed_at": "timestamptz",
    "created_at": "timestamptz",
    "updated_at": "timestamptz",
    "version": "bigint",
}
_FIELDS = list(_TYPES)
assert set(_FIELDS) == set(Position.__struct_fields__) - {"deleted"}
# Besides the domain's fields: the log position of the event that set current_price, and of the
# last event applied.
_BOOKKEEPING = {"mark_tx": "bigint", "mark_position": "bigint", "last_event": "bigint"}
_COLUMNS = [*_FIELDS, *_BOOKKEEPING]
_MARKET_COLUMNS = ["symbol", "price", "updated_at", "tx_id", "last_event"]

_LOAD = f"SELECT {', '.join(_COLUMNS)} FROM positions WHERE position_id = ANY ($1)"

# The rows travel as one JSON document, written by the connection's jsonb codec (exact decimals):
# as 24 arrays, one per column, asyncpg would encode them element by element, at three times the
# client's CPU per row.
_SAVE = f"""
INSERT INTO positions ({", ".join(_COLUMNS)})
SELECT {", ".join(_COLUMNS)}
FROM jsonb_to_recordset($1::jsonb) AS r({
    ", ".join(f"{c} {t}" for c, t in [*_TYPES.items(), *_BOOKKEEPING.items()])
})
ON CONFLICT (position_id) DO UPDATE SET
    {", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:])}
"""

_DELETE = "DELETE FROM positions WHERE position_id = ANY ($1)"

# Kept only if it is later in the log than the price already there, whatever the commit order.
# Rows come in symbol order, so that two writers lock the rows they share in the same order.
_SAVE_MARKET_PRICES = """
INSERT INTO market_prices AS m (symbol, price, updated_at, tx_id, last_event)
SELECT * FROM unnest($1::text[], $2::numeric[], $3::timestamptz[], $4::bigint[], $5::bigint[])
ON CONFLICT (symbol) DO UPDATE
    SET price = excluded.price, updated_at = excluded.updated_at, tx_id = excluded.tx_id,
        last_event = excluded.last_event
    WHERE (m.tx_id, m.last_event) < (excluded.tx_id, excluded.last_event)
"""


async def project_positions(
    connection: asyncpg.Connection, events: Sequence[RecordedEvent]
) -> None:
    """Apply `events`, in log order, to the read model."""
    batch = await _Batch.load(connection, events)
    prices: dict[str, MarketPrice] = {}
    for recorded in events:
        if recorded.stream_id == MARKET_STREAM:
            newest_prices(prices, recorded)
        elif (position_id := position_id_of(recorded.stream_id)) is not None:
            batch.apply(position_id, recorded)
    if prices:  # one write however many price updates the batch holds
        await connection.execute(
            _SAVE_MARKET_PRICES,
            *(list(column) for column in zip(*sorted(prices.values()), strict=True)),
        )
    await batch.flush()


MarketPrice = tuple[str, Decimal, datetime, int, int]
"""A market_prices row: symbol, price, updated_at, tx_id, last_event."""


def newest_prices(prices: dict[str, MarketPrice], recorded: RecordedEvent) -> None:
    """Keep each symbol's price from `recorded`, which comes after everything in `prices`."""
    event = event_from(recorded.event_type, recorded.data)
    assert isinstance(event, MarketPricesUpdated)
    for symbol, price in event.prices.items():
        prices[symbol] = (symbol, price, event.at, recorded.tx_id, recorded.global_position)


class FoldedPositions:
    """The read model folded in memory from the log, for a rebuild into empty tables.

    The projector loads and upserts the rows each batch touches; a rebuild starts from nothing, so
    it keeps every row in memory (about 2 KB per position) and writes each one once, by COPY, at
    the end: a fifth of the work per event. The fold is the projector's own `advance`.
    """

    def __init__(self) -> None:
        self._rows: dict[str, PositionRow] = {}
        """By stream id: the position id is parsed once per position, not once per event."""
        self._prices: dict[str, MarketPrice] = {}

    def apply(self, events: Sequence[RecordedEvent]) -> None:
        rows, prices = self._rows, self._prices
        for recorded in events:
            stream_id = recorded.stream_id
            if (row := rows.get(stream_id)) is not None:
                rows[stream_id] = advance(row, recorded)
            elif stream_id == MARKET_STREAM:
                newest_prices(prices, recorded)
            elif position_id_of(stream_id) is not None:
                rows[stream_id] = advance(None, recorded)

    def __len__(self) -> int:
        return len(self._rows)

    def records(self) -> dict[str, tuple[list[str], Iterator[tuple]]]:
        """Per table: its columns, and its rows as tuples of them."""
        live = (_record(row) for row in self._rows.values() if not row.state.deleted)
        return {
            "positions": (_COLUMNS, live),
            "market_prices": (_MARKET_COLUMNS, iter(self._prices.values())),
        }


class PositionRow(msgspec.Struct, gc=False):  # a Position and integers: no cycle (see Position)
    """A position's state and the log positions the read model keeps beside it."""

    state: Position
    mark_tx: int | None
    mark_position: int | None
    last_event: int

    @property
    def marked_at(self) -> tuple[int, int] | None:
        """Where in the log the position's own price was last set (None: never)."""
        return None if self.mark_tx is None else (self.mark_tx, self.mark_position or 0)


def advance(row: PositionRow | None, recorded: RecordedEvent) -> PositionRow:
    """`row` after one more of its position's events (a new row for the first)."""
    event = event_from(recorded.event_type, recorded.data)
    state = evolve(row.state if row else None, event)
    if row is None:
        row = PositionRow(state, None, None, recorded.global_position)
    row.state, row.last_event = state, recorded.global_position
    if isinstance(event, (PositionMarked, PositionClosed)):
        row.mark_tx, row.mark_position = recorded.tx_id, recorded.global_position
    return row


def priced(row: PositionRow, market: tuple[Decimal, tuple[int, int]] | None) -> Decimal | None:
    """The position's price: its own or its symbol's market price, whichever is later in the log.

    The rule of the SQL function position_price (migrations/006_position_price.sql), for the live
    view, which holds the row in memory and must not wait for a pooled connection on every event
    (asking the function cost a 2,000-socket feed seconds of delay under load).
    tests/projections/test_price.py holds the two to the same answers in every order of events.
    A closed position keeps the price it closed at.
    """
    state = row.state
    if market is None or state.status == "closed":
        return state.current_price
    price, priced_at = market
    marked_at = row.marked_at
    return price if marked_at is None or priced_at > marked_at else state.current_price


class _Batch:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection
        self.rows: dict[UUID, PositionRow] = {}
        self.changed: set[UUID] = set()

    @classmethod
    async def load(cls, connection: asyncpg.Connection, events: Sequence[RecordedEvent]) -> _Batch:
        """The existing rows the batch changes, in one query (none for a batch that only opens)."""
        batch = cls(connection)
        opened: set[UUID] = set()
        ids: set[UUID] = set()
        for event in events:
            if (position_id := position_id_of(event.stream_id)) is not None:
                if event.event_type == PositionOpened.__name__:
                    opened.add(position_id)  # new: there is no row to load
                elif position_id not in opened:
                    ids.add(position_id)
        if ids:
            for row in await connection.fetch(_LOAD, list(ids)):
                values = dict(row)
                bookkeeping = {name: values.pop(name) for name in _BOOKKEEPING}
                batch.rows[row["position_id"]] = PositionRow(Position(**values), **bookkeeping)
        return batch

    def apply(self, position_id: UUID, recorded: RecordedEvent) -> None:
        self.rows[position_id] = advance(self.rows.get(position_id), recorded)
        self.changed.add(position_id)

    async def flush(self) -> None:
        changed = [self.rows[position_id] for position_id in self.changed]
        live = [row for row in changed if not row.state.deleted]
        deleted = [row.state.position_id for row in changed if row.state.deleted]
        if live:
            await self.connection.execute(_SAVE, list(map(_document, live)))
        if deleted:
            await self.connection.execute(_DELETE, deleted)
        self.changed.clear()


_fields = attrgetter(*_FIELDS)


def _record(row: PositionRow) -> tuple:
    """The row's values in the order of _COLUMNS."""
    return (*_fields(row.state), row.mark_tx, row.mark_position, row.last_event)


def _document(row: PositionRow) -> dict[str, object]:
    """The row's values by column, as _SAVE reads them."""
    return dict(zip(_COLUMNS, _record(row), strict=True))
