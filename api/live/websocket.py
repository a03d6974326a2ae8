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
    sender = asyncio.create_task(_send(websocket, services, subscriber, after))
    # A failure (too slow, expired, shutdown) stops the sender even while it waits on a client
    # that does not read.
    subscriber.on_failure = sender.cancel
    try:
        await _until_disconnect(websocket, sender)
    finally:
        hub.unsubscribe(subscriber)
        open_sockets.dec()
        expiry.cancel()
        sender.cancel()
    if subscriber.failure is not None and type(subscriber.failure) in _CLOSE_CODES:
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


async def _until_disconnect(websocket: WebSocket, sender: asyncio.Task[None]) -> None:
    """Until the client leaves or the sender stops; what the client sends is ignored."""
    receiving = asyncio.ensure_future(websocket.receive())
    try:
        while True:
            await asyncio.wait({receiving, sender}, return_when=asyncio.FIRST_COMPLETED)
            if sender.done():
                if not sender.cancelled() and sender.exception() is not None:
                    exception = sender.exception()
                    if not isinstance(exception, WebSocketDisconnect | OSError):
                        raise exception
                return
            if receiving.result()["type"] == "websocket.disconnect":
                return
            receiving = asyncio.ensure_future(websocket.receive())
    finally:
        receiving.cancel()


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
