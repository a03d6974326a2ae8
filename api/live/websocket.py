"""`WS /ws/positions`: the caller's book, then every change to it as it happens.

Close codes: 4401 bad, expired or revoked token (before any data, or when the token expires or is
revoked), 4400 a
malformed `after`, 4408 too slow to keep up (resume with `after=`), 1001 the service is stopping.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from typing import Any

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from eventstore import EventStore, LogPosition, LogSnapshot, UnknownPosition
from projections import queries

from .. import json
from ..auth import AuthError
from ..query import BIGGEST
from ..security import READERS_OF_EVERYTHING, refuse_if_revoked
from ..services import Services, services_of
from .changes import Change
from .hub import Expired, HubClosed, Revoked, Subscriber, TooSlow

log = logging.getLogger(__name__)

CLOSE_SECONDS = 5.0
"""How long a closing handshake may take before the connection is dropped."""


class _ClientLeft(Exception):
    pass


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
    # This task only waits for the client to leave (what it sends is ignored: uvicorn bounds its
    # size). The sending is done by a task that exists only while something is due: thousands of
    # sockets are held at once, mostly idle. Every other ending (too slow, expired, shutdown, a
    # failed send) is a failure of the subscriber, which cancels both tasks: a send stuck on a
    # client that does not read must stop too.
    sender = _Sender(websocket, subscriber)
    sender.start(services, after)
    try:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass
    except asyncio.CancelledError:
        if subscriber.failure is None:
            raise  # cancelled from outside: not ours to swallow
        sender.receiving.uncancel()
    finally:
        hub.unsubscribe(subscriber)
        open_sockets.dec()
        sender.stop()
    failure = subscriber.failure
    if type(failure) in _CLOSE_CODES:
        await _close(websocket, *_CLOSE_CODES[type(failure)])
    elif failure is not None and not isinstance(failure, _ClientLeft):
        raise failure  # the sender's fault: uvicorn logs it and drops the connection


def _everything(change: Change) -> bool:
    return True


class _Sender:
    """Sends one socket's messages, in order, from a task that runs only while some are due."""

    __slots__ = ("_websocket", "_subscriber", "_after", "_xmax", "_running", "_task", "receiving")

    def __init__(self, websocket: WebSocket, subscriber: Subscriber) -> None:
        self._websocket = websocket
        self._subscriber = subscriber
        self._after: LogPosition | None = None
        """Resuming: the client has the changes up to here (None once one has passed it)."""
        self._xmax: int | None = None
        self._running: frozenset[int] | None = None
        """After the initial data: the client lacks the changes of transactions from `_xmax` on
        and of those `_running` (None once a change is past `_xmax`)."""
        self._task: asyncio.Task[None] | None = None
        receiving = asyncio.current_task()
        assert receiving is not None
        self.receiving = receiving
        """The handler's task, which waits for the client to leave."""

    def start(self, services: Services, after: LogPosition | None) -> None:
        """First the book (or, from `after`, the changes the hub passed before the subscriber
        joined), then each change as it comes."""
        self._after = after
        self._task = asyncio.create_task(self._send(services))
        self._subscriber.on_change = self._wake
        self._subscriber.on_failure = self._failed

    def stop(self) -> None:
        self._subscriber.on_change = self._subscriber.on_failure = None
        if self._task is not None:
            self._task.cancel()

    def _wake(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._send())

    def _failed(self) -> None:
        self.stop()
        self.receiving.cancel()

    async def _send(self, services: Services | None = None) -> None:
        """Sends the changes queued, then ends. The first run (given the services) sends the
        book, or the backlog, before them."""
        try:
            if services is not None:
                await self._first(services)
            while (change := self._subscriber.take()) is not None:
                if self._owed(change):
                    await self._websocket.send_text(change.message)
        except (WebSocketDisconnect, OSError):
            self._subscriber.fail(_ClientLeft())
        except Exception as error:
            self._subscriber.fail(error)
        finally:
            self._task = None

    async def _first(self, services: Services) -> None:
        if self._after is None:
            snapshot, message = await _initial_data(services, self._subscriber.owner)
            # The snapshot sees every transaction below its xmax but those then running, and its
            # head is older than any of those: the client lacks exactly the changes of the
            # transactions that were running or had not begun. That much is kept, not the
            # snapshot: thousands of idle sockets hold it.
            self._xmax, self._running = snapshot.xmax, snapshot.running or None
            await self._websocket.send_text(message)
            return
        backlog = services.hub.backlog(self._subscriber, self._after)
        async with aclosing(backlog) as changes:
            async for change in changes:
                if self._owed(change):
                    await self._websocket.send_text(change.message)

    def _owed(self, change: Change) -> bool:
        """Whether the client lacks the change. Changes come in log order: once one is past
        what the client was given, so are all the later ones, and the checks end."""
        if self._xmax is not None:
            if change.tx_id < self._xmax:
                return self._running is not None and change.tx_id in self._running
            self._xmax = self._running = None
        elif self._after is not None:
            if change.cursor <= self._after:
                return False
            self._after = None
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
