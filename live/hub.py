"""The instance's live subscribers: each change handed to the subscribers it concerns.

The feed publishes every change, in log order, to the hub; the hub only fans out. Each
subscriber has a bounded queue: one that falls that far behind is dropped (its queue freed at
once) and told so, instead of letting memory grow with a client that does not read. How a
subscriber is consumed (its backlog first, what it is owed) is live/subscription.py.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from eventstore import START, LogPosition

from .changes import Change

Filter = Callable[[Change], bool]


class TooSlow(Exception):
    """The subscriber's queue overflowed: it was dropped and should resume with `after=`."""


class HubClosed(Exception):
    """The service is shutting down."""


class Expired(Exception):
    """The subscriber's time is up (its token expired)."""


class Revoked(Exception):
    """The subscriber's token was revoked."""


class Subscriber:
    __slots__ = (
        "owner",
        "joined_at",
        "_wants",
        "_limit",
        "_queue",
        "failure",
        "on_change",
        "on_failure",
        "until",
        "token_id",
    )

    def __init__(
        self, owner: str | None, wants: Filter, limit: int, joined_at: LogPosition
    ) -> None:
        self.owner = owner
        """Only this owner's positions (None: everyone's)."""
        self.joined_at = joined_at
        """The hub's position when the subscriber joined: later changes reach its queue."""
        self._wants = wants
        self._limit = limit
        self._queue: deque[Change] | None = None
        """Made for the first change and dropped once empty: most subscribers are idle."""
        self.failure: Exception | None = None
        self.on_change: Callable[[], object] | None = None
        """Called for each change queued: to start a sender that is not running."""
        self.on_failure: Callable[[], object] | None = None
        """Called once on failure: e.g. to stop a sender that is stuck writing to a slow client."""
        self.until: datetime | None = None
        """When the hub ends the subscription with Expired."""
        self.token_id: str | None = None
        """The `jti` of the subscriber's token: its revocation ends the subscription."""

    def accepts(self, change: Change) -> bool:
        mine = self.owner is None or change.owner is None or change.owner == self.owner
        return mine and self._wants(change)

    def offer(self, change: Change) -> None:
        if self.failure is not None or not self.accepts(change):
            return
        if self._queue is None:
            self._queue = deque()
        if len(self._queue) >= self._limit:
            self.fail(TooSlow())
            return
        self._queue.append(change)
        if self.on_change is not None:
            self.on_change()

    def fail(self, failure: Exception) -> None:
        if self.failure is not None:
            return
        self.failure = failure
        self._queue = None
        if self.on_failure is not None:
            self.on_failure()

    def take(self) -> Change | None:
        """The next change queued; None when there is none (or the subscriber failed)."""
        if not self._queue:
            return None
        change = self._queue.popleft()
        if not self._queue:
            self._queue = None
        return change


class Hub:
    def __init__(self, queue_limit: int) -> None:
        self._queue_limit = queue_limit
        self.cursor: LogPosition = START
        """The last change published: where the feed goes on from."""
        self._everyone: set[Subscriber] = set()
        self._by_owner: dict[str, set[Subscriber]] = {}
        self._ending: dict[datetime, tuple[asyncio.TimerHandle, set[Subscriber]]] = {}
        """Subscribers by the moment they expire: one timer for all those that end together (the
        sockets of one token), not one each."""
        self._by_token: dict[str, set[Subscriber]] = {}

    @property
    def has_subscribers(self) -> bool:
        return bool(self._everyone or self._by_owner)  # an owner's emptied group is dropped

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

    def subscribe(
        self,
        owner: str | None,
        wants: Filter,
        until: datetime | None = None,
        token_id: str | None = None,
    ) -> Subscriber:
        """A subscriber to the changes it wants; with `until`, failed with Expired then; with
        `token_id`, failed with Revoked when that token is revoked."""
        subscriber = Subscriber(owner, wants, self._queue_limit, self.cursor)
        if token_id is not None:
            subscriber.token_id = token_id
            self._by_token.setdefault(token_id, set()).add(subscriber)
        if owner is None:
            self._everyone.add(subscriber)
        else:
            self._by_owner.setdefault(owner, set()).add(subscriber)
        if until is not None:
            subscriber.until = until
            if (ending := self._ending.get(until)) is None:
                seconds = max((until - datetime.now(UTC)).total_seconds(), 0)
                timer = asyncio.get_running_loop().call_later(seconds, self._expire, until)
                ending = self._ending[until] = (timer, set())
            ending[1].add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber.owner is None:
            self._everyone.discard(subscriber)
        elif (group := self._by_owner.get(subscriber.owner)) is not None:
            group.discard(subscriber)
            if not group:
                del self._by_owner[subscriber.owner]
        if (token_id := subscriber.token_id) is not None and token_id in self._by_token:
            same_token = self._by_token[token_id]
            same_token.discard(subscriber)
            if not same_token:
                del self._by_token[token_id]
        if subscriber.until in self._ending:
            timer, ending = self._ending[subscriber.until]
            ending.discard(subscriber)
            if not ending:
                timer.cancel()
                del self._ending[subscriber.until]

    def _expire(self, until: datetime) -> None:
        for subscriber in self._ending.pop(until)[1]:
            subscriber.fail(Expired())

    def revoke(self, token_ids: Iterable[str]) -> None:
        """Ends the subscriptions of these tokens."""
        for token_id in token_ids:
            for subscriber in self._by_token.pop(token_id, ()):
                subscriber.fail(Revoked())

    def close(self) -> None:
        """Ends every subscription: the service is going away."""
        for subscriber in [*self._everyone, *(s for g in self._by_owner.values() for s in g)]:
            subscriber.fail(HubClosed())
