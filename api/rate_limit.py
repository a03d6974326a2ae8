"""Per-caller rate limits: a token bucket per token subject (per client address without a token).

A bucket holds up to RATE_LIMIT_BURST requests and refills at RATE_LIMIT_PER_SECOND. With Redis
the buckets live there, updated by one atomic script, so a caller has one budget across every
instance; without Redis (or while it is unreachable) each instance keeps its own. A refused
request gets 429 with `Retry-After`. Health, metrics and the API description are never limited.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import AuthError, TokenVerifier
from .errors import ApiError, error_response
from .security import verified

log = logging.getLogger(__name__)

EXEMPT = ("/health", "/metrics", "/openapi.json", "/docs")

# KEYS[1] the bucket; ARGV: rate per second, burst. Returns the seconds to wait (as a string, 0
# when the request may go). Redis's clock, so that instances with skewed clocks agree; the bucket
# is kept only while it matters.
_TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(bucket[1]) or burst
local at = tonumber(bucket[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class _LocalBuckets:
    """This instance's buckets, the least recently used forgotten beyond `kept`."""

    def __init__(self, rate: float, burst: int, kept: int = 100_000) -> None:
        self._rate, self._burst, self._kept = rate, burst, kept
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, caller: str) -> float:
        now = time.monotonic()
        tokens, at = self._buckets.pop(caller, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self._rate
        self._buckets[caller] = (tokens, now)
        if len(self._buckets) > self._kept:
            self._buckets.popitem(last=False)
        return wait


class RateLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: TokenVerifier,
        rate: float,
        burst: int,
        redis: aioredis.Redis | None,
        key_prefix: str,
    ) -> None:
        self.app = app
        self._verifier = verifier
        self._rate, self._burst = rate, burst
        self._local = _LocalBuckets(rate, burst)
        self._redis = redis
        self._take = None if redis is None else redis.register_script(_TAKE)
        self._prefix = f"{key_prefix}:rate:"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(EXEMPT):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        wait = await self._wait(self._caller(request))
        if wait > 0:
            retry = str(max(1, math.ceil(wait)))
            refusal = ApiError(429, "too many requests", headers={"Retry-After": retry})
            await error_response(request, refusal)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _caller(self, request: Request) -> str:
        """The token's subject; a request without a valid token is counted by its address."""
        principal = verified(request.scope, self._verifier)
        if isinstance(principal, AuthError):
            return "ip:" + (request.client.host if request.client else "unknown")
        return "sub:" + principal.subject

    async def _wait(self, caller: str) -> float:
        if self._take is not None:
            try:
                key = self._prefix + caller
                return float(await self._take([key], [self._rate, self._burst]))
            except (RedisError, OSError) as error:
                log.warning("rate limits kept locally: Redis unreachable (%s)", error)
        return self._local.take(caller)
