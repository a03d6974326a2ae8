"""`WS /ws/positions`: the caller's book, then every change to it as it happens.

Close codes: 4401 bad, expired or revoked token (before any data, or when the token expires or is
revoked), 4400 a malformed `after`, 4408 too slow to keep up (resume with `after=`), 1001 the
service is stopping.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from eventstore import EventStore, LogPosition, LogSnapshot, UnknownPosition
from live import Change, Delivery, Expired, HubClosed, Owed, Revoked, TooSlow
from projections import queries

from .. import json
from ..auth import AuthError
from ..query import BIGGEST
from ..security import READERS_OF_EVERYTHING, refuse_if_revoked
from ..services import Services, services_of

log = logging.getLogger(__name__)

CLOSE_SECONDS = 5.0
"""How long a closing handshake may take before the connection is dropped."""


_CLOSE_CODES: dict[type[Exception], tuple[int, str]] = {
    TooSlow: (4408, "too slow to keep up: reconnect with after=<last position>"),
    Expired: (4401, "token expired"),
    Revoked: (4401, "token revoked"),
    HubClosed: (1001, "service stopping"),
}


async def positions_socket(websocket: WebSocket) -> None:
    services = services_of(websocket)
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
    subscriber = hub.subscribe(
        owner, _everything, until=principal.expires_at, token_id=principal.token_id
    )
    open_sockets = services.metrics.open_streams.labels("websocket")
    open_sockets.inc()

    async def begin() -> Owed:
        """The book, unless the client resumes."""
        if after is not None:
            return Owed.after(after)
        snapshot, message = await _initial_data(services, subscriber.owner)
        await websocket.send_text(message)
        return Owed.beyond(snapshot)

    async def send(change: Change) -> None:
        await websocket.send_text(change.message)

    async def until_client_leaves() -> None:
        # What the client sends is ignored: uvicorn bounds its size.
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    delivery = Delivery(services.live_log, subscriber, send, gone=(WebSocketDisconnect, OSError))
    try:
        failure = await delivery.run(begin, until_client_leaves)
    finally:
        hub.unsubscribe(subscriber)
        open_sockets.dec()
    if type(failure) in _CLOSE_CODES:
        await _close(websocket, *_CLOSE_CODES[type(failure)])
    elif failure is not None:
        raise failure  # the sending's fault: uvicorn logs it and drops the connection


def _everything(change: Change) -> bool:
    return True


async def _after(store: EventStore, raw: str | None) -> LogPosition | None:
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) > BIGGEST:
        raise ValueError(f"must be a whole number from 0 to {BIGGEST}")
    try:
        return await store.position_of(int(raw))
    except UnknownPosition:
        raise ValueError("no event has this position") from None


async def _initial_data(services: Services, owner: str | None) -> tuple[LogSnapshot, str]:
    """The caller's open and pending positions, and exactly which events they reflect."""
    async with (
        services.pool.acquire() as connection,
        connection.transaction(isolation="repeatable_read", readonly=True),
    ):
        snapshot = await services.store.snapshot(connection)
        book = await queries.live_book(connection, owner)
    message = {"type": "initial_data", "positions": book, "position": snapshot.head[1]}
    return snapshot, _text(message)


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
