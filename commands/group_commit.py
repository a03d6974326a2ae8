"""Group commit: requests that arrive while earlier ones are being written share the next write."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupWriteFailed(Exception):
    """The shared transaction failed as a whole: nothing of it was recorded, or (the connection
    lost while committing) it cannot be known. The caller runs its command alone instead."""


class GroupCommit(Generic[Item, Result]):
    """Items submitted while earlier ones are being written go together into the next write.

    A transaction costs round trips, a WAL flush and statements that cost about as much for fifty
    rows as for one; under load, writing whatever has queued in one transaction multiplies the
    throughput. A request that finds a writer free is written at once: nothing waits on a timer.
    `write` gets the items in arrival order and answers each one, with a result or a refusal.
    """

    def __init__(
        self,
        write: Callable[[list[Item]], Awaitable[Sequence[Result | Exception]]],
        *,
        limit: int = 100,
        writers: int = 4,
    ) -> None:
        self._write = write
        self._limit = limit
        self._writers = writers
        """Writes in flight at once: while one waits on the database, the next is prepared."""
        self._queue: list[tuple[Item, asyncio.Future[Result]]] = []
        self._writing = 0
        self._tasks: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak references

    async def submit(self, item: Item) -> Result:
        """`item`'s result once its transaction has committed; raises its refusal."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._writing < self._writers:
            self._writing += 1
            # A context of its own: the writer serves many requests, not the one that woke it.
            task = asyncio.create_task(self._drain(), context=contextvars.Context())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self) -> None:
        try:
            await self._write_queued()
        finally:
            # At once, not in a done-callback: a request queued in between would find no writer.
            self._writing -= 1

    async def _write_queued(self) -> None:
        while self._queue:
            group, self._queue = self._queue[: self._limit], self._queue[self._limit :]
            try:
                results = await self._write([item for item, _ in group])
            except BaseException as error:
                log.warning("a shared write of %d requests failed: %r", len(group), error)
                for _, future in group:
                    if not future.done():
                        future.set_exception(GroupWriteFailed(str(error)))
                if not isinstance(error, Exception):
                    raise
                continue
            for (_, future), result in zip(group, results, strict=True):
                if future.done():  # its request was cancelled; the write stands
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
