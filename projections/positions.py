"""The positions read model: one row per live position, and the last market price per symbol.

Rows are folded with the domain's own `evolve`, so the read model cannot disagree with the
decisions made on the event streams. The projector is a plain function of (connection, events):
the store runs it inside each append's transaction (so a read after a command sees its result),
and the catch-up runner feeds it the whole log to rebuild. A batch costs a few statements however
many events it holds: rows are loaded together, folded in memory and written back together.

Market prices are set-based: one event re-marks every open position of its symbols in one UPDATE.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from uuid import UUID

import asyncpg
import msgspec

from domain.events import MarketPricesUpdated, PositionOpened, event_from
from domain.position import Position, evolve
from eventstore import RecordedEvent

CATEGORY = "position"
MARKET_STREAM = "market-prices"
TABLES = ("positions", "market_prices")

# Column types, in the order of the domain's Position fields (`deleted` rows are removed instead).
_TYPES = {
    "position_id": "uuid", "owner": "text", "symbol": "text", "side": "text", "status": "text",
    "quantity": "numeric", "entry_price": "numeric", "current_price": "numeric",
    "stop_loss": "numeric", "take_profit": "numeric", "strategy": "text", "notes": "text",
    "realized_pnl": "numeric", "closed_quantity": "numeric", "closed_value": "numeric",
    "exit_price": "numeric", "opened_at": "timestamptz", "closed_at": "timestamptz",
    "created_at": "timestamptz", "updated_at": "timestamptz", "version": "bigint",
}
_FIELDS = list(_TYPES)
assert set(_FIELDS) == set(Position.__struct_fields__) - {"deleted"}

_LOAD = f"SELECT {', '.join(_FIELDS)} FROM positions WHERE position_id = ANY ($1)"

_SAVE = f"""
INSERT INTO positions ({", ".join(_FIELDS)}, last_event)
SELECT * FROM unnest({", ".join(f"${i}::{t}[]" for i, t in enumerate(_TYPES.values(), 1))},
                     ${len(_TYPES) + 1}::bigint[])
ON CONFLICT (position_id) DO UPDATE SET
    {", ".join(f"{f} = excluded.{f}" for f in _FIELDS[1:])}, last_event = excluded.last_event
"""

_DELETE = "DELETE FROM positions WHERE position_id = ANY ($1)"

_LOAD_MARKET_PRICES = "SELECT symbol, price FROM market_prices WHERE symbol = ANY ($1)"

_SAVE_MARKET_PRICES = """
INSERT INTO market_prices (symbol, price, updated_at, last_event)
SELECT symbol, price, $3, $4 FROM unnest($1::text[], $2::numeric[]) AS p(symbol, price)
ON CONFLICT (symbol) DO UPDATE
    SET price = excluded.price, updated_at = excluded.updated_at, last_event = excluded.last_event
"""

_REMARK_OPEN = """
UPDATE positions AS p SET current_price = m.price, last_event = $3
FROM unnest($1::text[], $2::numeric[]) AS m(symbol, price)
WHERE p.symbol = m.symbol AND p.status = 'open'
"""


def stream_of(position_id: UUID) -> str:
    return f"{CATEGORY}-{position_id}"


def position_id_of(stream_id: str) -> UUID:
    return UUID(stream_id.removeprefix(f"{CATEGORY}-"))


async def project_positions(connection: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
    """Apply `events`, in log order, to the read model."""
    batch = await _Batch.load(connection, events)
    for recorded in events:
        if recorded.stream_id == MARKET_STREAM:
            await batch.flush()
            await batch.apply_market_prices(recorded)
        elif recorded.stream_id.startswith(CATEGORY + "-"):
            batch.apply(recorded)
    await batch.flush()


class _Batch:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection
        self.rows: dict[UUID, Position] = {}
        self.changed: dict[UUID, int] = {}  # position id -> log position of its last event
        self.market_prices: dict[str, Decimal] = {}

    @classmethod
    async def load(cls, connection: asyncpg.Connection, events: Sequence[RecordedEvent]) -> _Batch:
        """Everything the batch reads, in two queries: its existing rows and the prices it needs."""
        batch = cls(connection)
        opened: set[UUID] = set()
        existing: set[UUID] = set()
        symbols: set[str] = set()
        for recorded in events:
            if not recorded.stream_id.startswith(CATEGORY + "-"):
                continue
            position_id = position_id_of(recorded.stream_id)
            if recorded.event_type == PositionOpened.__name__:
                opened.add(position_id)
                symbols.add(recorded.data["symbol"])
            elif position_id not in opened:
                existing.add(position_id)
        if existing:
            for row in await connection.fetch(_LOAD, list(existing)):
                batch.rows[row["position_id"]] = Position(**dict(row))
        if symbols:
            for row in await connection.fetch(_LOAD_MARKET_PRICES, list(symbols)):
                batch.market_prices[row["symbol"]] = row["price"]
        return batch

    def apply(self, recorded: RecordedEvent) -> None:
        position_id = position_id_of(recorded.stream_id)
        event = event_from(recorded.event_type, recorded.data)
        state = evolve(self.rows.get(position_id), event)
        if isinstance(event, PositionOpened):
            # A known market price applies from the start: the position is priced at once.
            state = msgspec.structs.replace(
                state, current_price=self.market_prices.get(state.symbol)
            )
        self.rows[position_id] = state
        self.changed[position_id] = recorded.global_position

    async def apply_market_prices(self, recorded: RecordedEvent) -> None:
        event = event_from(recorded.event_type, recorded.data)
        assert isinstance(event, MarketPricesUpdated)
        symbols, prices = list(event.prices), list(event.prices.values())
        await self.connection.execute(
            _SAVE_MARKET_PRICES, symbols, prices, event.at, recorded.global_position
        )
        await self.connection.execute(_REMARK_OPEN, symbols, prices, recorded.global_position)
        self.market_prices.update(event.prices)
        # The same re-mark on the rows held in memory, which later events of the batch fold on.
        for position_id, state in self.rows.items():
            if state.status == "open" and state.symbol in event.prices:
                self.rows[position_id] = msgspec.structs.replace(
                    state, current_price=event.prices[state.symbol]
                )

    async def flush(self) -> None:
        changed = [self.rows[position_id] for position_id in self.changed]
        live = [s for s in changed if not s.deleted]
        deleted = [s.position_id for s in changed if s.deleted]
        if live:
            columns = [[getattr(s, f) for s in live] for f in _FIELDS]
            columns.append([self.changed[s.position_id] for s in live])
            await self.connection.execute(_SAVE, *columns)
        if deleted:
            await self.connection.execute(_DELETE, deleted)
        self.changed.clear()
