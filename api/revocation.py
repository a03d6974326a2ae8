"""Revoked tokens: a token id (`jti`) revoked on one instance is refused by every instance.

The list lives in Redis when configured (a sorted set of ids scored by their tokens' expiry),
else in the database. Each instance keeps a copy in memory, so that checking a request costs
nothing: it reloads the list every second, and the instance that revokes knows at once. So a
revocation takes effect everywhere within about a second, live connections included: they are
ended as each instance learns of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

REFRESH_SECONDS = 1.0


class Revocations:
    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis | None, key_prefix: str) -> None:
        self._pool = pool
        self._redis = redis
        self._key = f"{key_prefix}:revoked"
        self._revoked: dict[str, float] = {}
        """Revoked ids, each with the time (epoch seconds) its token expires."""
        self.on_revoked: Callable[[set[str]], object] | None = None
        """Told of the ids revoked since it was last told: to end the live connections of their
        tokens."""

    def is_revoked(self, token_id: str | None) -> bool:
        return token_id is not None and token_id in self._revoked

    async def revoke(self, token_id: str, expires_at: datetime) -> None:
        if expires_at <= datetime.now(UTC):
            return  # refused as expired already
        if self._redis is not None:
            await self._redis.zadd(self._key, {token_id: expires_at.timestamp()}, gt=True)
        else:
            await self._pool.execute(
                "INSERT INTO revoked_tokens AS r (jti, expires_at) VALUES ($1, $2) "
                "ON CONFLICT (jti) DO UPDATE SET expires_at = greatest(r.expires_at, $2)",
                token_id,
                expires_at,
            )
        self._revoked[token_id] = expires_at.timestamp()
        self._tell({token_id})

    async def forget_expired(self) -> None:
        """Drop the rows of tokens that have expired anyway (Redis drops its own on reload)."""
        if self._redis is None:
            await self._pool.execute("DELETE FROM revoked_tokens WHERE expires_at < now()")

    async def follow(self) -> None:
        """Keep the copy in memory current, until cancelled."""
        while True:
            try:
                await self._reload()
            except (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("could not reload revoked tokens: %s", error)
            await asyncio.sleep(REFRESH_SECONDS)

    async def _reload(self) -> None:
        now = time.time()
        if self._redis is not None:
            await self._redis.zremrangebyscore(self._key, "-inf", now)
            pairs = await self._redis.zrange(self._key, 0, -1, withscores=True)
            revoked = {jti.decode(): expires for jti, expires in pairs}
        else:
            rows = await self._pool.fetch(
                "SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > now()"
            )
            revoked = {row["jti"]: row["expires_at"].timestamp() for row in rows}
        # Keep what this instance revoked a moment ago even if the reload raced it.
        recent = {jti: t for jti, t in self._revoked.items() if t > now and jti not in revoked}
        known, self._revoked = self._revoked, revoked | recent
        self._tell(self._revoked.keys() - known.keys())

    def _tell(self, token_ids: set[str]) -> None:
        if token_ids and self.on_revoked is not None:
            self.on_revoked(token_ids)
