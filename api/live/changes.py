"""An event as the live channels send it: rendered once, then handed to every subscriber."""

from __future__ import annotations

from typing import Any

import msgspec

from eventstore import LogPosition
from projections.live import LiveUpdate

from .. import json

# The WebSocket message type of each event; any other position event is an update.
_MESSAGE_TYPES = {
    "PositionOpened": "position_created",
    "PositionClosed": "position_closed",
    "PositionCancelled": "position_closed",
    "PositionDeleted": "position_deleted",
    "MarketPricesUpdated": "price_update",
}


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


def render(update: LiveUpdate) -> Change:
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
        message=json.encode(message).decode(),
        event=json.encode(event),
    )
