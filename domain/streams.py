"""Where the events live: one stream per position, and one for market prices.

A stream id starts with its category and a dash, which the event store indexes for filtering.
"""

from __future__ import annotations

from uuid import UUID

POSITION_CATEGORY = "position"
MARKET_STREAM = "market-prices"

_PREFIX = POSITION_CATEGORY + "-"


def position_stream(position_id: UUID) -> str:
    return _PREFIX + str(position_id)


def position_id_of(stream_id: str) -> UUID | None:
    """The position a stream belongs to; None for any other stream."""
    return UUID(stream_id[len(_PREFIX) :]) if stream_id.startswith(_PREFIX) else None
