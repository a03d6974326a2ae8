"""An event as the live channels send it, and the log read as such changes.

Each event is rendered once, when the feed reads it: the WebSocket message and the Server-Sent
Event's data, then handed (through Redis, between instances) to every subscriber it concerns.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import asyncpg
import msgspec

from eventstore import EventStore, LogPosition
from projections.live import LiveUpdate, LiveView

# The WebSocket message type of each event; any other position event is an update.
_MESSAGE_TYPES = {
    "PositionOpened": "position_created",
    "PositionClosed": "position_closed",
    "PositionCancelled": "position_closed",
    "PositionDeleted": "position_deleted",
    "MarketPricesUpdated": "price_update",
}

BATCH_SIZE = 500


class Change(msgspec.Struct, frozen=True, array_like=True):
    tx_id: int
    global_position: int
    event_type: str
    position_id: str | None
    """The position the event belongs to (None: market prices)."""
    owner: str | None
    """Whose position it is; None means the change is for everyone (market prices)."""
    message: str
    """The WebSocket message."""
    event: bytes
    """The Server-Sent Event's data."""

    @property
    def cursor(self) -> LogPosition:
        return LogPosition(self.tx_id, self.global_position)


class LiveLog:
    """The log as live subscribers see it: each event with the position right after it, rendered.

    `encode` writes JSON the way the API does (exact decimals): the transport's to choose.
    """

    def __init__(
        self, store: EventStore, pool: asyncpg.Pool, encode: Callable[[Any], bytes]
    ) -> None:
        self._store = store
        self._pool = pool
        self._encode = encode

    async def read(self, after: LogPosition, upto: LogPosition) -> AsyncIterator[Change]:
        """The changes after `after` up to `upto` (inclusive), in log order: what a feed
        catching up and a subscriber resuming both read."""
        if after >= upto:
            return
        view = LiveView(self._store, self._pool)
        async with aclosing(self._store.read_all(after, batch_size=BATCH_SIZE)) as batches:
            async for batch in batches:
                due = [event for event in batch if event.position <= upto]
                for update in await view.updates(due):
                    yield self.render(update)
                if len(due) < len(batch):
                    return

    async def follow(self, after: LogPosition) -> AsyncIterator[Change]:
        """Every change after `after` as it is committed, endlessly. A view made afresh loads what
        it needs as of its first event, so nothing it cached while others wrote is used."""
        view = LiveView(self._store, self._pool)
        async with aclosing(self._store.subscribe(after)) as events:
            async for event in events:
                for update in await view.updates([event]):
                    yield self.render(update)

    def render(self, update: LiveUpdate) -> Change:
        recorded = update.event
        view = update.position
        message: dict[str, Any] = {
            "type": _MESSAGE_TYPES.get(recorded.event_type, "position_updated"),
            "position": recorded.global_position,
            "timestamp": recorded.recorded_at,
            "event_type": recorded.event_type,
        }
        if view is not None:
            message["data"] = view
        else:
            message["prices"] = update.prices
        event = {
            "position": recorded.global_position,
            "type": recorded.event_type,
            "stream_id": recorded.stream_id,
            "position_id": None if view is None else view.id,
            "version": recorded.stream_version,
            "schema_version": recorded.schema_version,
            "event_id": recorded.event_id,
            "recorded_at": recorded.recorded_at,
            "data": recorded.data,
            "metadata": recorded.metadata,
        }
        return Change(
            tx_id=recorded.tx_id,
            global_position=recorded.global_position,
            event_type=recorded.event_type,
            position_id=None if view is None else str(view.id),
            owner=None if view is None else view.owner,
            message=self._encode(message).decode(),
            event=self._encode(event),
        )
