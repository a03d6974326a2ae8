"""The audit trail: a position's history, and a search over the whole log for administrators."""

from __future__ import annotations

from uuid import UUID

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from domain.streams import position_stream
from projections import audit

from ..as_of import settled
from ..auth import Role
from ..errors import ApiError
from ..json import JSONResponse
from ..parameters import AuditQuery, decode_cursor, encode_cursor
from ..query import parse_query
from ..security import READERS_OF_EVERYTHING, authenticate
from ..services import services_of


async def position_history(request: Request) -> Response:
    principal = authenticate(request)
    try:
        position_id = UUID(request.path_params["position_id"])
    except ValueError:
        raise ApiError(404, "position not found") from None
    store = services_of(request).store
    events = await store.read_stream(position_stream(position_id))
    # Whose position it is never changes: its first event says. Deleted positions keep their past.
    mine = bool(events) and events[0].data.get("owner") == principal.subject
    if not events or not (mine or principal.role in READERS_OF_EVERYTHING):
        raise ApiError(404, "position not found")
    return JSONResponse([audit.entry(event) for event in events])


async def audit_events(request: Request) -> Response:
    authenticate(request, {Role.ADMIN})
    query = parse_query(request, AuditQuery)
    criteria = audit.EventSearch(
        position_ids=query.position_id,
        owner=query.owner,
        actor=query.actor,
        event_types=query.type,
        recorded_from=query.recorded_from,
        recorded_to=query.recorded_to,
        from_position=query.from_position,
        to_position=query.to_position,
        newest_first=query.order == "newest",
    )
    limit = query.limit
    cursor = None if query.cursor is None else decode_cursor(query.cursor)
    services = services_of(request)
    await settled(services.store)
    # One more than asked: whether there is a next page.
    events = await audit.search(
        services.pool, services.store, criteria, after=cursor, limit=limit + 1
    )
    page = events[:limit]
    more = len(events) > limit
    return JSONResponse(
        {
            "events": [audit.entry(event) for event in page],
            "next_cursor": encode_cursor(page[-1].position) if more else None,
        }
    )


routes = [
    Route("/positions/{position_id}/history", position_history, methods=["GET"]),
    Route("/audit/events", audit_events, methods=["GET"]),
]
