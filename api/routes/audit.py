"""The audit trail: a position's history, and a search over the whole log for administrators."""

from __future__ import annotations

import base64
import binascii
from typing import Any
from uuid import UUID

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from domain.events import EVENT_TYPES
from domain.streams import position_stream
from eventstore import LogPosition, RecordedEvent
from projections import audit

from ..as_of import settled
from ..auth import Role
from ..errors import ApiError
from ..json import JSONResponse
from ..query import BIGGEST, QueryParams
from ..security import READERS_OF_EVERYTHING, authenticate, require

_METADATA = (
    "actor",
    "role",
    "client_ip",
    "user_agent",
    "correlation_id",
    "causation_id",
    "idempotency_key",
)


def entry(event: RecordedEvent) -> dict[str, Any]:
    """An event as auditors read it: what happened, to which stream, when, by whom, from where."""
    return {
        "position": event.global_position,
        "stream_id": event.stream_id,
        "version": event.stream_version,
        "type": event.event_type,
        "schema_version": event.schema_version,
        "event_id": event.event_id,
        "recorded_at": event.recorded_at,
        "data": event.data,
        **{name: event.metadata.get(name) for name in _METADATA},
    }


async def position_history(request: Request) -> Response:
    principal = authenticate(request)
    try:
        position_id = UUID(request.path_params["position_id"])
    except ValueError:
        raise ApiError(404, "position not found") from None
    store = request.app.state.services.store
    events = await store.read_stream(position_stream(position_id))
    # Whose position it is never changes: its first event says. Deleted positions keep their past.
    mine = bool(events) and events[0].data.get("owner") == principal.subject
    if not events or not (mine or principal.role in READERS_OF_EVERYTHING):
        raise ApiError(404, "position not found")
    return JSONResponse([entry(event) for event in events])


async def audit_events(request: Request) -> Response:
    principal = authenticate(request)
    require(principal, {Role.ADMIN})
    query = QueryParams(request)
    order = query.text("order", choices=("newest", "oldest")) or "newest"
    criteria = audit.EventSearch(
        position_ids=query.uuids("position_id"),
        owner=query.text("owner"),
        actor=query.text("actor"),
        event_types=query.listed("type", tuple(EVENT_TYPES)),
        recorded_from=query.moment("from"),
        recorded_to=query.moment("to"),
        from_position=query.integer("from_position", None, 0),
        to_position=query.integer("to_position", None, 0),
        newest_first=order == "newest",
    )
    limit = query.integer("limit", 100, 1, 1000)
    cursor = _cursor(query, "cursor")
    query.done()
    services = request.app.state.services
    await settled(services.store)
    # One more than asked: whether there is a next page.
    events = await audit.search(
        services.pool, services.store, criteria, after=cursor, limit=limit + 1
    )
    page = events[:limit]
    more = len(events) > limit
    return JSONResponse(
        {
            "events": [entry(event) for event in page],
            "next_cursor": _encode_cursor(page[-1].position) if more else None,
        }
    )


def _encode_cursor(position: LogPosition) -> str:
    raw = f"{position.tx_id}:{position.global_position}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor(query: QueryParams, name: str) -> LogPosition | None:
    value = query.params.get(name)
    if value is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        tx_id, global_position = (int(part) for part in raw.split(":"))
        if not (0 <= tx_id <= BIGGEST and 0 <= global_position <= BIGGEST):
            raise ValueError("out of range")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        query.errors.append({"loc": ["query", name], "msg": "not a cursor this service gave"})
        return None
    return LogPosition(tx_id, global_position)


routes = [
    Route("/positions/{position_id}/history", position_history, methods=["GET"]),
    Route("/audit/events", audit_events, methods=["GET"]),
]
