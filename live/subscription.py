"""A subscriber consumed: the changes it is owed sent in log order, each exactly once.

Both channels deliver this way. A subscriber joins the hub at the hub's position; what it is owed
from before then (a client resuming after an earlier position) is read from the log, then its
queue. One rule (Owed) says which changes the client already has, whether it resumed after a
position or was given the book as of a snapshot.

Thousands of subscribers are held at once, mostly idle: the sending runs in a task that exists
only while something is due. It sends what is due and ends; the next queued change starts
another. The connection's own task only waits for the client to leave.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import aclosing

from eventstore import LogPosition, LogSnapshot

from .changes import Change, LiveLog
from .hub import Subscriber


class Owed:
    """Which changes the client lacks. Changes come in log order: once one is past what the
    client has, so are all the later ones, and the checks end."""

    __slots__ = ("resumed_after", "_xmax", "_running")

    def __init__(
        self, resumed_after: LogPosition | None, xmax: int | None, running: frozenset[int] | None
    ) -> None:
        self.resumed_after = resumed_after
        self._xmax = xmax
        self._running = running

    @classmethod
    def after(cls, position: LogPosition) -> Owed:
        """The client has every change up to `position`."""
        return cls(position, None, None)

    @classmethod
    def beyond(cls, snapshot: LogSnapshot) -> Owed:
        """The client has what `snapshot` saw. It sees every transaction below its xmax but those
        then running, and its head is older than any of those: the client lacks exactly the
        changes of the transactions that were running or had not begun. That much is kept, not
        the snapshot: thousands of idle sockets hold one."""
        return cls(None, snapshot.xmax, snapshot.running or None)

    def __call__(self, change: Change) -> bool:
        if self._xmax is not None:
            if change.tx_id < self._xmax:
                return self._running is not None and change.tx_id in self._running
            self._xmax = self._running = None
        elif self.resumed_after is not None:
            if change.cursor <= self.resumed_after:
                return False
            self.resumed_after = None
        return True


class ClientLeft(Exception):
    """A send failed: the client is gone, and there is nothing to tell it."""


Send = Callable[[Change], Awaitable[None]]


class Delivery:
    __slots__ = ("_log", "_subscriber", "_send", "_gone", "_owed", "_task")

    def __init__(
        self,
        log: LiveLog,
        subscriber: Subscriber,
        send: Send,
        gone: tuple[type[Exception], ...],
    ) -> None:
        """`send` writes one change; an exception of `gone` from it means the client left."""
        self._log = log
        self._subscriber = subscriber
        self._send = send
        self._gone = gone
        self._owed: Owed | None = None
        self._task: asyncio.Task[None] | None = None

    async def run(
        self,
        begin: Callable[[], Awaitable[Owed]],
        until_client_leaves: Callable[[], Awaitable[None]],
    ) -> Exception | None:
        """Deliver until the client leaves or the subscriber fails (too slow, expired, revoked,
        the service stopping, a failed send); the failure (None: the client left).

        `begin` sends what comes first (the book, say) and tells what the client has then. A
        failure cancels both the sending (a send stuck on a client that does not read must stop
        too) and the wait for the client.
        """
        subscriber = self._subscriber
        waiting = asyncio.current_task()
        assert waiting is not None

        def failed() -> None:
            self._stop()
            waiting.cancel()

        subscriber.on_failure = failed
        subscriber.on_change = self._wake
        self._task = asyncio.create_task(self._deliver(begin))
        try:
            await until_client_leaves()
        except asyncio.CancelledError:
            if subscriber.failure is None:
                raise  # cancelled from outside: not ours to swallow
            waiting.uncancel()
        finally:
            self._stop()
        failure = subscriber.failure
        return None if isinstance(failure, ClientLeft) else failure

    def when_idle(self, send: Callable[[], Awaitable[None]]) -> None:
        """`send` (a keep-alive), unless changes are being sent anyway."""
        if self._task is None and self._owed is not None:
            self._task = asyncio.create_task(self._deliver(extra=send))

    def _stop(self) -> None:
        self._subscriber.on_change = self._subscriber.on_failure = None
        if self._task is not None:
            self._task.cancel()

    def _wake(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._deliver())

    async def _deliver(
        self,
        begin: Callable[[], Awaitable[Owed]] | None = None,
        extra: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """What is due, then the end of the task: the first run begins, and sends the backlog."""
        subscriber, send = self._subscriber, self._send
        try:
            if begin is not None:
                self._owed = owed = await begin()
                if (after := owed.resumed_after) is not None:
                    # What the hub passed before the subscriber joined is not in its queue.
                    async with aclosing(self._log.read(after, subscriber.joined_at)) as backlog:
                        async for change in backlog:
                            if subscriber.accepts(change) and owed(change):
                                await send(change)
            if extra is not None:
                await extra()
            owed = self._owed
            assert owed is not None
            while (change := subscriber.take()) is not None:
                if owed(change):
                    await send(change)
        except self._gone:
            subscriber.fail(ClientLeft())
        except Exception as error:
            subscriber.fail(error)
        finally:
            self._task = None
