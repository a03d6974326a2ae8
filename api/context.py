"""Who is asking, from where, in what conversation: correlation ids and event metadata."""

from __future__ import annotations

import os
import re
import time
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import logs
from .access_log import AccessLog
from .auth import Principal
from .errors import error_response

_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class RequestContextMiddleware:
    """Each request's correlation id and access log line, and the answer to an unexpected fault.

    The id is taken from X-Correlation-ID (or X-Request-ID) when it is a sane id, else made, and
    echoed in the answer. A fault is answered with a bare 500 (its stack goes to the log only):
    Starlette's own last resort sits outside every middleware, so its answer would lack the id.
    The access log shares this layer (each layer costs every request a few microseconds).
    """

    def __init__(self, app: ASGIApp, access_log: AccessLog | None = None) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in {"http", "websocket"}:
            await self.app(scope, receive, send)
            return
        # In a function of its own: this frame lives as long as the connection (thousands of
        # WebSockets), and must not keep the headers alive.
        correlation_id = _correlation_id(scope)
        scope.setdefault("state", {})["correlation_id"] = correlation_id
        logs.correlation_id.set(correlation_id)
        if scope["type"] == "websocket":  # no headers to add; the socket ends its own faults
            await self.app(scope, receive, send)
            return
        echoed = (b"x-correlation-id", correlation_id.encode())
        started_at = time.perf_counter()
        status = None  # until the answer starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), echoed]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as error:
            if status is not None:
                raise
            await error_response(Request(scope), error)(scope, receive, send_with_id)
        finally:
            if self.access_log is not None:
                self.access_log.record(scope, status or 500, time.perf_counter() - started_at)


def _correlation_id(scope: Scope) -> str:
    headers = dict(scope["headers"])
    given = (headers.get(b"x-correlation-id") or headers.get(b"x-request-id") or b"").decode(
        "latin-1"
    )
    return given if _SAFE_ID.fullmatch(given) else new_id()


def new_id() -> str:
    """A random 128-bit id, as 32 hex digits (`str(uuid.uuid4())` costs every request several
    times as much)."""
    return os.urandom(16).hex()


def event_metadata(connection: HTTPConnection, principal: Principal) -> dict[str, Any]:
    """What every event recorded by this request carries: actor, origin, conversation."""
    metadata: dict[str, Any] = {
        "actor": principal.subject,
        "role": str(principal.role),
        "client_ip": connection.client.host if connection.client else None,
        "user_agent": connection.headers.get("user-agent"),
        "correlation_id": connection.scope["state"]["correlation_id"],
        "causation_id": new_id(),
    }
    key = connection.headers.get("idempotency-key")
    if key:
        metadata["idempotency_key"] = key
    return metadata
