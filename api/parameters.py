"""Each endpoint's query parameters, declared as types.

`api.query.parse_query` reads a request's query string as one of these (every problem answered
together, 422), and the OpenAPI document describes each parameter from the same declaration.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from msgspec import Meta

from domain.events import EVENT_TYPES
from eventstore import LogPosition

BIGGEST = 2**63 - 1
"""The largest whole number PostgreSQL's bigint holds: positions, offsets and limits fit in it."""

Upper = Annotated[str, Meta(extra={"upper": True})]
"""Text taken in upper case (symbols)."""
Limit = Annotated[int, Meta(ge=1, le=1000)]
Count = Annotated[int, Meta(ge=0)]
"""A whole number from 0 up (offsets, event positions)."""
DECIMAL = {"type": "string", "pattern": r"^-?\d+(\.\d+)?$"}
Amount = Annotated[Decimal, Meta(extra_json_schema=DECIMAL)]
Ids = Annotated[list[UUID], Meta(description="ids, comma-separated")]
EventType = Literal[tuple(EVENT_TYPES)]  # type: ignore[valid-type]
EventTypes = Annotated[list[EventType], Meta(description="event types, comma-separated")]
Moment = Annotated[datetime, Meta(extra_json_schema={"format": "date-time"})]
"""An ISO-8601 time with its offset (`Z` for UTC)."""


class Query(msgspec.Struct, kw_only=True):
    def problems(self) -> list[dict[str, Any]]:
        """What the parameters break together (each one alone was converted already)."""
        return []


class AsOf(Query, kw_only=True):
    """A read of the state as it was: at a moment or after an event."""

    as_of: Annotated[Moment, Meta(description="the state as it was then")] | None = None
    at: Annotated[int, Meta(ge=0, description="the state after this event position")] | None = None

    def problems(self) -> list[dict[str, Any]]:
        if self.as_of is not None and self.at is not None:
            return [{"loc": ["query", "at"], "msg": "give as_of or at, not both"}]
        return []

    @property
    def point(self) -> datetime | int | None:
        """The moment or event position asked for; None for now."""
        return self.as_of if self.as_of is not None else self.at


class PositionQuery(AsOf, kw_only=True):
    pass


class PositionListQuery(AsOf, kw_only=True):
    status: Literal["pending", "open", "closed"] | None = None
    symbol: Upper | None = None
    strategy: str | None = None
    side: Literal["long", "short"] | None = None
    owner: Annotated[str, Meta(description="admin and service only")] | None = None
    limit: Limit = 100
    offset: Count = 0


class SummaryQuery(AsOf, kw_only=True):
    owner: Annotated[str, Meta(description="admin and service")] | None = None


class FillQuery(Query, kw_only=True):
    entry_price: Amount | None = None


class CloseQuery(Query, kw_only=True):
    exit_price: Amount | None = None
    quantity: Amount | None = None


def encode_cursor(position: LogPosition) -> str:
    """Where the next page of an audit search starts, as an opaque text."""
    raw = f"{position.tx_id}:{position.global_position}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> LogPosition:
    """ValueError unless `text` is a cursor this service gave."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        tx_id, global_position = (int(part) for part in raw.split(":"))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValueError("not a cursor") from None
    if not (0 <= tx_id <= BIGGEST and 0 <= global_position <= BIGGEST):
        raise ValueError("out of range")
    return LogPosition(tx_id, global_position)


class AuditQuery(Query, kw_only=True):
    position_id: Ids | None = None
    owner: str | None = None
    actor: str | None = None
    type: EventTypes | None = None
    recorded_from: Moment | None = msgspec.field(default=None, name="from")
    recorded_to: Moment | None = msgspec.field(default=None, name="to")
    from_position: Count | None = None
    to_position: Count | None = None
    order: Literal["newest", "oldest"] = "newest"
    limit: Limit = 100
    cursor: Annotated[str, Meta(description="next_cursor of the page before")] | None = None

    def problems(self) -> list[dict[str, Any]]:
        if self.cursor is not None:
            try:
                decode_cursor(self.cursor)
            except ValueError:
                return [{"loc": ["query", "cursor"], "msg": "not a cursor this service gave"}]
        return []


class EventsQuery(Query, kw_only=True):
    after: Annotated[int, Meta(ge=0, description="resume after this event position")] | None = None
    type: EventTypes | None = None
    position_id: Ids | None = None
