"""The instance's feed: the log's changes, in order, into the hub.

Without Redis every instance follows the log itself. With Redis, one instance at a time (holding
a short lease) follows the log and relays each change into a Redis stream, and every instance
reads that stream: the database serves one live reader however many instances there are.

Each relayed change names the change before it. An instance that finds the chain broken (a new
relay took over from an older position, Redis lost its data, the stream was trimmed past a slow
instance) reads what it missed from the log before going on, so Redis may lose anything without
a subscriber missing an event. While Redis is unreachable, each instance follows the log itself.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing, suppress

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import LockError, RedisError

from eventstore import EventStore, LogPosition

from .changes import Change, LiveLog
from .hub import Hub

log = logging.getLogger(__name__)

LEASE_SECONDS = 5.0
"""A relay that stops renewing its lease is replaced after at most this long."""
HEARTBEAT_SECONDS = 1.0
"""A quiet relay still says where it is, so an instance that missed something soon notices."""
STREAM_LENGTH = 10_000
"""Changes kept in the Redis stream: how far behind an instance may fall before it reads the log."""
RETRY_SECONDS = 1.0


class Link(msgspec.Struct, frozen=True, array_like=True):
    """A change relayed through Redis, with the position of the change relayed before it.

    A heartbeat has no change: `prev` is where the relay is.
    """

    prev: LogPosition
    change: Change | None = None


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Link).decode


class Feed:
    def __init__(
        self,
        hub: Hub,
        log: LiveLog,
        store: EventStore,
        redis: aioredis.Redis | None,
        key_prefix: str = "positions",
    ) -> None:
        # Deployments that share a Redis keep apart by their key prefix.
        self._stream = f"{key_prefix}:live"
        self._lease_key = f"{key_prefix}:live:relay"
        self._hub = hub
        self._log = log
        self._store = store
        self._redis = redis
        self.redis_reachable: bool | None = None if redis is None else True

    async def run(self) -> None:
        """Feed the hub until cancelled, from the log's head as it is now.

        With Redis, relaying (while this instance holds the lease) and reading the stream are two
        tasks that each handle their own failures: neither waits on the other to stop.
        """
        self._hub.cursor = await self._store.head()
        relay = None if self._redis is None else asyncio.create_task(self._relay_forever())
        try:
            while True:
                try:
                    if self._redis is None:
                        await self._follow_log()
                    else:
                        await self._follow_redis()
                except Exception:  # the database went away, most likely: resume from the hub
                    log.exception("live feed interrupted; resuming from %s", self._hub.cursor)
                    await asyncio.sleep(RETRY_SECONDS)
        finally:
            if relay is not None:
                relay.cancel()

    # -- from the log ------------------------------------------------------------------------

    async def _follow_log(self) -> None:
        while True:
            await self._pass_over_while_unheard()
            await self._publish_while_heard()

    async def _pass_over_while_unheard(self) -> None:
        """While no one subscribes (an instance that only serves commands), keep the hub at the
        log's head without reading an event: reading, decoding and rendering each one back would
        cost every command CPU for nothing."""
        async with aclosing(self._store.heads()) as heads:
            async for head in heads:
                # Checked after the read: a subscriber that joined meanwhile is owed the changes
                # from the cursor it joined at, so the cursor stays.
                if self._hub.has_subscribers:
                    return
                self._hub.cursor = max(self._hub.cursor, head)

    async def _publish_while_heard(self) -> None:
        """Publish every change until no one subscribes."""
        async with aclosing(self._log.follow(self._hub.cursor)) as changes:
            async for change in changes:
                if not self._hub.has_subscribers:
                    self._hub.cursor = change.cursor  # passed over: no one to tell
                    return
                self._hub.publish(change)

    async def _catch_up(self, upto: LogPosition) -> None:
        """Publish from the log what lies between the hub's position and `upto` (inclusive)."""
        async with aclosing(self._log.read(self._hub.cursor, upto)) as changes:
            async for change in changes:
                self._hub.publish(change)

    # -- through Redis -----------------------------------------------------------------------

    async def _follow_redis(self) -> None:
        try:
            await self._consume()
        except (RedisError, OSError) as error:
            log.warning("Redis unreachable (%s): following the log directly", error)
            self.redis_reachable = False
            await self._follow_log_until_redis_returns()
            self.redis_reachable = True

    async def _follow_log_until_redis_returns(self) -> None:
        assert self._redis is not None
        follower = asyncio.create_task(self._follow_log())
        try:
            while True:
                await asyncio.sleep(RETRY_SECONDS)
                if follower.done():
                    follower.result()  # a database failure: let run() retry
                try:
                    await self._redis.ping()
                    return
                except (RedisError, OSError):
                    continue
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)

    async def _consume(self) -> None:
        assert self._redis is not None
        newest = await self._redis.xrevrange(self._stream, count=1)
        last_id = newest[0][0] if newest else b"0-0"  # from the last one: no gap on joining
        while True:
            read = await self._redis.xread({self._stream: last_id}, count=500, block=1000)
            for _, entries in read:
                for entry_id, fields in entries:
                    await self._accept(_decode(fields[b"link"]))
                    last_id = entry_id

    async def _accept(self, link: Link) -> None:
        if link.prev > self._hub.cursor:
            # A change we did not see (or a relay ahead of us): read it from the log.
            await self._catch_up(link.prev)
        change = link.change
        if change is not None and change.cursor > self._hub.cursor:
            self._hub.publish(change)

    async def _relay_forever(self) -> None:
        while True:
            try:
                await self._relay_while_leading()
            except (RedisError, OSError, LockError) as error:
                log.info("live relay paused: %s", error)
            except Exception:  # the database, most likely: another instance may relay meanwhile
                log.exception("live relay interrupted")
            await asyncio.sleep(LEASE_SECONDS / 3)

    async def _relay_while_leading(self) -> None:
        assert self._redis is not None
        lease = self._redis.lock(self._lease_key, timeout=LEASE_SECONDS, blocking=False)
        if not await lease.acquire():
            return
        try:
            await self._relay(lease)
        finally:
            with suppress(LockError, RedisError, OSError):
                await lease.release()

    async def _relay(self, lease: aioredis.lock.Lock) -> None:
        """Follow the log into the Redis stream while this instance holds the lease.

        The lease is renewed (and a heartbeat sent) beside the relay; once that fails, the relay
        stops at its next event. Until then another relay may have taken over: a change sent by
        both reaches each instance once, as instances skip what they have.
        """
        assert self._redis is not None
        newest = await self._redis.xrevrange(self._stream, count=1)
        if newest:  # go on from where the chain ends, so that no instance needs the log
            link = _decode(newest[0][1][b"link"])
            relayed = _Relayed(link.prev if link.change is None else link.change.cursor)
        else:
            relayed = _Relayed(await self._store.head())
        renewal = asyncio.create_task(self._renew_and_beat(lease, relayed))
        try:
            async with aclosing(self._log.follow(relayed.prev)) as changes:
                async for change in changes:
                    if renewal.done():
                        break
                    await self._xadd(Link(relayed.prev, change))
                    relayed.prev = change.cursor
        finally:
            renewal.cancel()
        if renewal.done() and not renewal.cancelled() and (failure := renewal.exception()):
            raise failure

    async def _renew_and_beat(self, lease: aioredis.lock.Lock, relayed: _Relayed) -> None:
        while True:
            await self._xadd(Link(relayed.prev))
            await asyncio.sleep(HEARTBEAT_SECONDS)
            await lease.reacquire()  # LockNotOwnedError once another instance took over

    async def _xadd(self, link: Link) -> None:
        assert self._redis is not None
        await self._redis.xadd(
            self._stream, {"link": _encode(link)}, maxlen=STREAM_LENGTH, approximate=True
        )


class _Relayed:
    """Where the relay is: the last change it put in the stream."""

    def __init__(self, prev: LogPosition) -> None:
        self.prev = prev
