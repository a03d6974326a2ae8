"""`GET /events/stream`: the event log as Server-Sent Events, resumable at any event.

Each event: `id:` its position, `event:` its type, `data:` the event with its metadata. A client
that reconnects with `Last-Event-ID` (or `?after=`) gets every later event exactly once. Filters:
`type` (event types) and `position_id`, each comma-separated or repeated. A user follows only its
own positions (and market prices); admins and services follow everything.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from eventstore import LogPosition, UnknownPosition
from live import Change, Delivery, HubClosed, Owed, Revoked, Subscriber, TooSlow

from ..errors import ApiError
from ..parameters import BIGGEST, EventsQuery
from ..query import parse_query
from ..security import READERS_OF_EVERYTHING, authenticate
from ..services import Services, services_of

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
    return _EventStream(services, subscriber, start)


class _EventStream(Response):
    """The stream itself: written by the subscriber's Delivery, ended by its failure."""

    media_type = "text/event-stream"

    def __init__(self, services: Services, subscriber: Subscriber, after: LogPosition) -> None:
        self._services, self._subscriber, self._after = services, subscriber, after
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services, subscriber = self._services, self._subscriber

        async def write(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        async def begin() -> Owed:
            await write(b"retry: 1000\n\n")
            return Owed.after(self._after)

        async def send_change(change: Change) -> None:
            await write(
                b"id: %d\nevent: %s\ndata: %s\n\n"
                % (change.global_position, change.event_type.encode(), change.event)
            )

        async def keep_alive() -> None:
            await write(b": keep-alive\n\n")

        async def until_client_leaves() -> None:
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE_SECONDS):
                        if (await receive())["type"] == "http.disconnect":
                            return
                except TimeoutError:
                    delivery.when_idle(keep_alive)

        open_streams = services.metrics.open_streams.labels("sse")
        open_streams.inc()
        delivery = Delivery(services.live_log, subscriber, send_change, gone=(OSError,))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            failure = await delivery.run(begin, until_client_leaves)
        finally:
            services.hub.unsubscribe(subscriber)
            open_streams.dec()
        if isinstance(failure, (TooSlow, HubClosed, Revoked)):
            # The client reconnects with Last-Event-ID: it misses nothing, or is refused.
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        elif failure is not None:
            raise failure


routes = [Route("/events/stream", events_stream, methods=["GET"])]
