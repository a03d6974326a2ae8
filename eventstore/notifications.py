"""Waking readers of the log when something was written.

A notification only says "look again": readers always re-read the table, and poll as a backstop,
so a lost notification costs latency, never an event.

Appends do not NOTIFY inside their own transaction: PostgreSQL serialises the commits of every
transaction that notifies (one lock held through the commit's WAL flush), which would cap writes as
surely as a global append lock. Instead each process sends at most one notification per
NOTIFY_INTERVAL after its appends end, from a transaction that does nothing else and does not wait
for its WAL flush. Readers in the same process are woken at once, without the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

CHANNEL = "events_appended"
NOTIFY_INTERVAL = 0.005  # seconds: bounds the notifications a busy process sends to ~200/s
_NOTIFY = f"BEGIN; SET LOCAL synchronous_commit TO off; NOTIFY {CHANNEL}; COMMIT;"

log = logging.getLogger(__name__)


class LogNotifier:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._waiters: set[asyncio.Event] = set()
        self._sending = False
        self._resend = False
        self._listener: asyncpg.pool.PoolConnectionProxy | None = None
        self._listen_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- writers -------------------------------------------------------------------------------

    def appended(self) -> None:
        """An append just ended (committed or not): wake local readers and tell other processes."""
        self._wake_all()
        if self._sending:
            self._resend = True
            return
        self._sending = True
        task = asyncio.get_running_loop().create_task(self._send())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self) -> None:
        try:
            while True:
                self._resend = False
                await self._pool.execute(_NOTIFY)
                await asyncio.sleep(NOTIFY_INTERVAL)
                if not self._resend:
                    return
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as error:
            log.warning("could not notify other processes of an append: %s", error)
        finally:
            self._sending = False

    # -- readers -------------------------------------------------------------------------------

    @asynccontextmanager
    async def waiter(self) -> AsyncIterator[asyncio.Event]:
        """An event set whenever the log may have grown; the reader clears it before reading."""
        await self.ensure_listening()
        wake = asyncio.Event()
        self._waiters.add(wake)
        try:
            yield wake
        finally:
            self._waiters.discard(wake)

    async def ensure_listening(self) -> None:
        """(Re-)establish LISTEN, e.g. after the database restarted; readers call it when idle."""
        if self._listener is not None and not self._listener.is_closed():
            return
        async with self._listen_lock:
            if self._listener is not None and not self._listener.is_closed():
                return
            await self._drop_listener()
            try:
                connection = await self._pool.acquire()
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as error:
                log.warning("cannot LISTEN for appends, polling only: %s", error)
                return
            try:
                await connection.add_listener(CHANNEL, self._on_notification)
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as error:
                log.warning("cannot LISTEN for appends, polling only: %s", error)
                await self._pool.release(connection)
                return
            self._listener = connection

    def _on_notification(self, *_: object) -> None:
        self._wake_all()

    def _wake_all(self) -> None:
        for wake in self._waiters:
            wake.set()

    async def _drop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        try:
            if not listener.is_closed():
                await listener.remove_listener(CHANNEL, self._on_notification)
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
            pass
        await self._pool.release(listener)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._drop_listener()
