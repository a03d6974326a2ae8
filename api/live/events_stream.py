"""`GET /events/stream`: the event log as Server-Sent Events, resumable at any event.

Each event: `id:` its position, `event:` its type, `data:` the event with its metadata. A client
that reconnects with `Last-Event-ID` (or `?after=`) gets every later event exactly once. Filters:
`type` (event types) and `position_id`, each comma-separated or repeated. A user follows only its
own positions (and market prices); admins and services follow everything.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from prometheus_client import Gauge
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from eventstore import LogPosition, UnknownPosition

from ..errors import ApiError
from ..parameters import BIGGEST, EventsQuery
from ..query import parse_query
from ..security import READERS_OF_EVERYTHING, authenticate
from ..services import services_of
from .changes import Change
from .hub import Hub, HubClosed, Revoked, Subscriber, TooSlow

KEEPALIVE_SECONDS = 15.0
"""A comment line this often keeps proxies from closing a quiet stream."""


async def events_stream(request: Request) -> Response:
    principal = authenticate(request)
    services = services_of(request)
    resume = request.headers.get("last-event-id")
    if resume is not None and (not resume.isdigit() or int(resume) > BIGGEST):
        raise ApiError(
            422,
            "validation failed",
            [{"loc": ["header", "Last-Event-ID"], "msg": "must be a whole number >= 0"}],
        )
    # Last-Event-ID, when given, says where to resume: `after` is not read then.
    query = parse_query(
        request, EventsQuery, ignore=frozenset() if resume is None else frozenset({"after"})
    )
    after = query.after if resume is None else int(resume)
    types, position_ids = query.type, query.position_id
    where = ["header", "Last-Event-ID"] if resume is not None else ["query", "after"]
    try:
        start = None if after is None else await services.store.position_of(after)
    except UnknownPosition:
        raise ApiError(
            422,
            "validation failed",
            [{"loc": where, "msg": "no event has this position"}],
        ) from None

    wanted_types = None if types is None else set(types)
    wanted_ids = None if position_ids is None else {str(i) for i in position_ids}

    def wants(change: Change) -> bool:
        return (wanted_types is None or change.event_type in wanted_types) and (
            wanted_ids is None or change.position_id in wanted_ids
        )

    everything = principal.role in READERS_OF_EVERYTHING
    subscriber = services.hub.subscribe(
        None if everything else principal.subject, wants, token_id=principal.token_id
    )
    if start is None:  # from now: after everything committed before the request
        start = max(subscriber.joined_at, await services.store.head())
    return StreamingResponse(
        _events(services.hub, subscriber, start, services.metrics.open_streams.labels("sse")),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(
    hub: Hub, subscriber: Subscriber, after: LogPosition, open_streams: Gauge
) -> AsyncIterator[bytes]:
    open_streams.inc()
    try:
        yield b"retry: 1000\n\n"
        async for change in hub.changes(subscriber, after, idle=KEEPALIVE_SECONDS):
            if change is None:
                yield b": keep-alive\n\n"
                continue
            yield b"id: %d\nevent: %s\ndata: %s\n\n" % (
                change.global_position,
                change.event_type.encode(),
                change.event,
            )
    except (TooSlow, HubClosed, Revoked):
        return  # the client reconnects with Last-Event-ID: it misses nothing, or is refused
    finally:
        hub.unsubscribe(subscriber)
        open_streams.dec()


routes = [Route("/events/stream", events_stream, methods=["GET"])]
