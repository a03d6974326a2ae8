"""The instance's live subscribers, and the changes each of them is owed.

The feed publishes every change, in log order, to the hub; the hub hands it to the subscribers it
concerns. Each subscriber has a bounded queue: one that falls that far behind is dropped (its
queue freed at once) and told so, instead of letting memory grow with a client that does not read.

A subscriber that starts from an earlier position (a reconnect with `after=`) gets the events
between there and the moment it joined from the log, then the changes queued since: nothing is
missed in the handover, and nothing is sent twice.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

import asyncpg

from eventstore import START, EventStore, Position
from projections.live import LiveView

from .changes import Change, render

Filter = Callable[[Change], bool]


class TooSlow(Exception):
    """The subscriber's queue overflowed: it was dropped and should resume with `after=`."""


class HubClosed(Exception):
    """The service is shutting down."""


class Subscriber:
    def __init__(self, owner: str | None, wants: Filter, limit: int, joined_at: Position) -> None:
        self.owner = owner
        """Only this owner's positions (None: everyone's)."""
        self.joined_at = joined_at
        """The hub's position when the subscriber joined: later changes reach its queue."""
        self._wants = wants
        self._limit = limit
        self._queue: deque[Change] = deque()
        self._waiter: asyncio.Future[None] | None = None
        """Set while the subscriber waits for a change: fewer objects than an Event."""
        self.failure: Exception | None = None
        self.on_failure: Callable[[], object] | None = None
        """Called once on failure: e.g. to stop a sender that is stuck writing to a slow client."""

    def accepts(self, change: Change) -> bool:
        mine = self.owner is None or change.owner is None or change.owner == self.owner
        return mine and self._wants(change)

    def offer(self, change: Change) -> None:
        if self.failure is not None or not self.accepts(change):
            return
        if len(self._queue) >= self._limit:
            self.fail(TooSlow())
            return
        self._queue.append(change)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def fail(self, failure: Exception) -> None:
        if self.failure is not None:
            return
        self.failure = failure
        self._queue.clear()
        self._wake()
        if self.on_failure is not None:
            self.on_failure()

    async def next(self, idle: float | None = None) -> Change | None:
        """The next change; None after `idle` seconds without one."""
        while not self._queue and self.failure is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(idle):  # not wait_for: see eventstore/store.py _wait
                    await self._waiter
            except TimeoutError:
                return None
            finally:
                self._waiter = None
        if self.failure is not None:
            raise self.failure
        return self._queue.popleft()


class Hub:
    def __init__(self, store: EventStore, pool: asyncpg.Pool, queue_limit: int) -> None:
        self._store = store
        self._pool = pool
        self._queue_limit = queue_limit
        self.cursor: Position = START
        """The last change published: where the feed goes on from."""
        self._everyone: set[Subscriber] = set()
        self._by_owner: dict[str, set[Subscriber]] = {}

    @property
    def subscriber_count(self) -> int:
        return len(self._everyone) + sum(len(group) for group in self._by_owner.values())

    def publish(self, change: Change) -> None:
        self.cursor = change.cursor
        for subscriber in list(self._everyone):
            subscriber.offer(change)
        if change.owner is None:
            groups = list(self._by_owner.values())
        else:
            groups = [self._by_owner.get(change.owner, ())]
        for group in groups:
            for subscriber in list(group):
                subscriber.offer(change)

    def subscribe(self, owner: str | None, wants: Filter) -> Subscriber:
        subscriber = Subscriber(owner, wants, self._queue_limit, self.cursor)
        if owner is None:
            self._everyone.add(subscriber)
        else:
            self._by_owner.setdefault(owner, set()).add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber.owner is None:
            self._everyone.discard(subscriber)
        elif (group := self._by_owner.get(subscriber.owner)) is not None:
            group.discard(subscriber)
            if not group:
                del self._by_owner[subscriber.owner]

    def close(self) -> None:
        """Ends every subscription: the service is going away."""
        for subscriber in [*self._everyone, *(s for g in self._by_owner.values() for s in g)]:
            subscriber.fail(HubClosed())

    async def changes(
        self,
        subscriber: Subscriber,
        after: Position,
        seen: Callable[[Position], bool] | None = None,
        idle: float | None = None,
    ) -> AsyncIterator[Change | None]:
        """Every change after `after` that the subscriber wants, in log order, exactly once.

        `seen` names changes the subscriber has already (a snapshot it was given). With `idle`,
        None comes after that many seconds without a change. Raises the subscriber's failure
        (TooSlow when it fell too far behind).
        """

        def owed(change: Change) -> bool:
            return change.cursor > after and not (seen is not None and seen(change.cursor))

        if after < subscriber.joined_at:
            # The hub passed these before the subscriber joined: read them from the log.
            view = LiveView(self._store, self._pool)
            async with aclosing(self._store.read_all(after, batch_size=500)) as batches:
                async for batch in batches:
                    due = [event for event in batch if event.position <= subscriber.joined_at]
                    for update in await view.updates(due):
                        change = render(update)
                        if owed(change) and subscriber.accepts(change):
                            yield change
                    if len(due) < len(batch):
                        break
        while True:
            change = await subscriber.next(idle)
            if change is None or owed(change):
                yield change
