"""Every read has a deadline, and a read whose client has gone stops working for it.

A read past its class's deadline is cancelled (asyncpg cancels its statement on the server) and
answered 503 with `Retry-After`. A read still running after `WATCH_AFTER` seconds starts watching
its connection: if the client leaves, the read is cancelled too. Fast reads, nearly all of them,
never pay for the watch. Only GET and HEAD are read requests; commands run to their end (a
command cut off mid-way is retried with its Idempotency-Key, never half-applied) and the live
channels (`/events/stream`, WebSockets) are long-lived by design.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_body
from .json import JSONResponse

WATCH_AFTER = 0.25  # seconds
READS = {"GET", "HEAD"}
RETRY_AFTER = "1"


def deadline_classes(read: float, audit: float) -> Callable[[str], float | None]:
    """The deadline of a read of `path`: the audit trail's searches get longer than the rest;
    the live stream, health and metrics none."""

    def deadline(path: str) -> float | None:
        if path == "/events/stream" or path.startswith(("/health", "/metrics")):
            return None
        if path.startswith("/audit/") or path.endswith("/history"):
            return audit or None
        return read or None

    return deadline


class DeadlineMiddleware:
    def __init__(self, app: ASGIApp, deadline: Callable[[str], float | None]) -> None:
        self.app, self.deadline = app, deadline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        seconds = None
        if scope["type"] == "http" and scope["method"] in READS:
            seconds = self.deadline(scope["path"])
        if seconds is None:
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None
        answered = False
        left: list[bool] = []  # set once the client is seen gone

        async def send_noting(message: Message) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        async def watch() -> None:
            # A read has no body to take: the next message is the client leaving.
            while (await receive())["type"] != "http.disconnect":
                pass
            left.append(True)
            task.cancel()

        watcher: asyncio.Task[None] | None = None

        def start_watching() -> None:
            nonlocal watcher
            watcher = asyncio.ensure_future(watch())

        timer = asyncio.get_running_loop().call_later(WATCH_AFTER, start_watching)
        try:
            async with asyncio.timeout(seconds):
                await self.app(scope, receive, send_noting)
        except TimeoutError:
            if not answered:
                await self._too_slow(scope, send, seconds)
        except asyncio.CancelledError:
            if not left:
                raise  # the server is stopping: not ours to swallow
            task.uncancel()  # the client left: nobody to answer
        finally:
            timer.cancel()
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    @staticmethod
    async def _too_slow(scope: Scope, send: Send, seconds: float) -> None:
        detail = f"the read took longer than its deadline of {seconds:g} s; try again"
        body = error_body(Request(scope), 503, detail)
        response = JSONResponse(body, status_code=503, headers={"Retry-After": RETRY_AFTER})
        await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}
