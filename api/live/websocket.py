"""`WS /ws/positions`: the caller's book, then every change to it as it happens.

Close codes: 4401 bad or expired token (before any data, or when the token expires), 4400 a
malformed `after`, 4408 too slow to keep up (resume with `after=`), 1001 the service is stopping.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from eventstore import LogSnapshot, Position, UnknownPosition
from projections import queries

from .. import json
from ..auth import AuthError
from ..query import BIGGEST
from ..security import READERS_OF_EVERYTHING, refuse_if_revoked
from .hub import HubClosed, Subscriber, TooSlow

log = logging.getLogger(__name__)

CLOSE_SECONDS = 5.0
"""How long a closing handshake may take before the connection is dropped."""


class _TokenExpired(Exception):
    pass


class _ClientLeft(Exception):
    pass


_CLOSE_CODES: dict[type[Exception], tuple[int, str]] = {
    TooSlow: (4408, "too slow to keep up: reconnect with after=<last position>"),
    _TokenExpired: (4401, "token expired"),
    HubClosed: (1001, "service stopping"),
}


async def positions_socket(websocket: WebSocket) -> None:
    services = websocket.app.state.services
    await websocket.accept()
    try:
        principal = websocket.app.state.verifier.verify(websocket.query_params.get("token", ""))
        refuse_if_revoked(websocket, principal)
    except AuthError as error:
        await websocket.close(4401, error.reason)
        return
    try:
        after = await _after(services.store, websocket.query_params.get("after"))
    except ValueError as error:
        await websocket.close(4400, f"after: {error}")
        return
    owner = None if principal.role in READERS_OF_EVERYTHING else principal.subject
    hub = services.hub
    subscriber = hub.subscribe(owner, lambda change: True)
    open_sockets = services.metrics.open_streams.labels("websocket")
    open_sockets.inc()
    seconds_left = (principal.expires_at - datetime.now(UTC)).total_seconds()
    expiry = asyncio.get_running_loop().call_later(
        max(seconds_left, 0), subscriber.fail, _TokenExpired()
    )
    # This task sends; every ending (the client left, too slow, expired, shutdown) is a failure
    # of the subscriber, which cancels the task: a send stuck on a client that does not read
    # must stop too. One task and one pending receive per socket: thousands are held at once.
    sending = asyncio.current_task()
    assert sending is not None
    subscriber.on_failure = sending.cancel
    leaving = asyncio.ensure_future(_until_disconnected(websocket))
    leaving.add_done_callback(lambda _: subscriber.fail(_ClientLeft()))
    try:
        await _send(websocket, services, subscriber, after)
    except asyncio.CancelledError:
        if subscriber.failure is None:
            raise  # cancelled from outside: not ours to swallow
        sending.uncancel()
    except (WebSocketDisconnect, OSError, _ClientLeft):
        pass
    except tuple(_CLOSE_CODES):
        pass  # the subscriber's failure, raised where it waited: answered below
    finally:
        subscriber.on_failure = None
        hub.unsubscribe(subscriber)
        open_sockets.dec()
        expiry.cancel()
        leaving.cancel()
    if type(subscriber.failure) in _CLOSE_CODES:
        await _close(websocket, *_CLOSE_CODES[type(subscriber.failure)])


async def _send(
    websocket: WebSocket, services: Any, subscriber: Subscriber, after: Position | None
) -> None:
    seen = None
    if after is None:
        snapshot, book = await _initial_data(services, subscriber.owner)
        await websocket.send_text(
            _text({"type": "initial_data", "positions": book, "position": snapshot.head[1]})
        )
        after, seen = snapshot.head, snapshot.includes
    async for change in services.hub.changes(subscriber, after, seen):
        assert change is not None
        await websocket.send_text(change.message)


async def _until_disconnected(websocket: WebSocket) -> None:
    """Returns when the client leaves; what it sends is ignored (uvicorn bounds its size)."""
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


async def _after(store: Any, raw: str | None) -> Position | None:
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) > BIGGEST:
        raise ValueError(f"must be a whole number from 0 to {BIGGEST}")
    try:
        return await store.position_of(int(raw))
    except UnknownPosition:
        raise ValueError("no event has this position") from None


async def _initial_data(services: Any, owner: str | None) -> tuple[LogSnapshot, list[Any]]:
    """The caller's open and pending positions, and exactly which events they reflect."""
    async with (
        services.pool.acquire() as connection,
        connection.transaction(isolation="repeatable_read", readonly=True),
    ):
        snapshot = await services.store.snapshot(connection)
        return snapshot, await queries.live_book(connection, owner)


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    try:
        async with asyncio.timeout(CLOSE_SECONDS):
            await websocket.close(code, reason)
    except (TimeoutError, WebSocketDisconnect, RuntimeError):
        # The client stopped reading: the close frame cannot reach it. Drop the connection
        # rather than keep its buffers: uvicorn's own close waits for the buffer to drain.
        _abort(websocket)


def _abort(websocket: WebSocket) -> None:
    transport = getattr(getattr(websocket._send, "__self__", None), "transport", None)
    if transport is not None:
        transport.abort()


def _text(message: dict[str, Any]) -> str:
    return json.encode(message).decode()


routes = [WebSocketRoute("/ws/positions", positions_socket)]
