"""The Starlette application: the composition root that wires the layers together."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from commands import REFUSALS, CommandService, KeyReused, ReadBack
from commands.idempotency import forget_expired
from eventstore import EventStore
from live import Feed, Hub, LiveLog
from projections import queries
from projections.positions import project_positions

from . import json, openapi
from .access_log import AccessLog
from .auth import AuthError, AuthSettings, TokenVerifier
from .config import Settings
from .context import RequestContextMiddleware
from .database import apply_migrations, create_pool, resolve_database_url
from .deadlines import DeadlineMiddleware, deadline_classes
from .errors import DATABASE_OUTAGES, ApiError, handle_error
from .metrics import Metrics, note_recorded
from .proxies import ClientAddressMiddleware, TrustedProxies
from .rate_limit import RateLimitMiddleware
from .revocation import Revocations
from .routes import audit, events_stream, health, portfolio, positions, tokens, websocket
from .services import CommandObserver, Services

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL = 600  # seconds
SHUTDOWN_WAIT_SECONDS = 5.0
GOING_AWAY_SECONDS = 0.25
"""Time the live connections get to close with 1001 before uvicorn closes what is left."""


def create_app(settings: Settings | None = None, auth: AuthSettings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    verifier = TokenVerifier(auth or AuthSettings.from_env(settings.environment))
    metrics = Metrics()
    redis = _redis_client(settings.redis_url)  # connects on first use, in the server's loop

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        dsn = await resolve_database_url(settings)
        await apply_migrations(dsn)
        pool = await create_pool(dsn, settings)
        # The positions read model is updated inside each append's transaction: a read after a
        # successful command always sees it.
        store = EventStore(pool, inline_projectors=[project_positions, note_recorded])
        hub = Hub(settings.live_queue_limit)
        live_log = LiveLog(store, pool, json.encode)
        feed = Feed(hub, live_log, store, redis, settings.redis_key_prefix)
        revocations = Revocations(pool, redis, settings.redis_key_prefix)
        revocations.on_revoked = hub.revoke
        read_back = ReadBack(positions=queries.get_positions, open_positions=queries.count_open)
        app.state.services = Services(
            settings=settings,
            pool=pool,
            store=store,
            commands=CommandService(pool, store, read_back, CommandObserver(metrics)),
            hub=hub,
            live_log=live_log,
            feed=feed,
            redis=redis,
            metrics=metrics,
            revocations=revocations,
            started_at=time.monotonic(),
            stopping=asyncio.Event(),
        )
        background = [
            asyncio.create_task(
                _housekeeping(pool, revocations, timedelta(hours=settings.idempotency_ttl_hours))
            ),
            asyncio.create_task(feed.run()),
            asyncio.create_task(revocations.follow()),
        ]
        _go_away_first(asyncio.get_running_loop(), app.state.services)
        _tune_garbage_collection()
        try:
            yield
        finally:
            hub.close()
            for task in background:
                task.cancel()
            # Bounded: a task that swallowed its cancellation must not hold the shutdown up.
            await asyncio.wait(background, timeout=SHUTDOWN_WAIT_SECONDS)
            if redis is not None:
                await redis.aclose()
            await store.close()
            await pool.close()

    app = Starlette(
        routes=[
            # Starlette tries routes in order: the busiest first.
            *positions.routes,
            *health.routes,
            *portfolio.routes,
            *audit.routes,
            *tokens.routes,
            *websocket.routes,
            *events_stream.routes,
            *openapi.routes(),
        ],
        middleware=[
            *_client_addresses(settings),
            Middleware(RequestContextMiddleware, access_log=AccessLog(metrics)),
            *_rate_limits(settings, verifier, redis),
            Middleware(
                DeadlineMiddleware,
                deadline=deadline_classes(
                    settings.read_deadline_seconds, settings.audit_deadline_seconds
                ),
            ),
        ],
        exception_handlers={
            # Expected refusals. Anything else: a bare 500 from RequestContextMiddleware.
            kind: handle_error
            for kind in (
                ApiError,
                AuthError,
                HTTPException,
                KeyReused,
                *REFUSALS,  # raised where no Reply renders them (queries, a refused request)
                *DATABASE_OUTAGES,  # 503: inside the access log, which records the answer given
                asyncpg.exceptions.QueryCanceledError,  # statement_timeout: 503 as well
            )
        },
        lifespan=lifespan,
    )
    app.state.verifier = verifier
    app.state.openapi = openapi.document()
    return app


def _client_addresses(settings: Settings) -> list[Middleware]:
    """Behind trusted proxies, the client's address in place of the proxy's, before anything
    (the access log, the rate limiter, the audit trail) reads it."""
    if not settings.trusted_proxies:
        return []
    proxies = TrustedProxies(settings.trusted_proxies, settings.trusted_proxy_header)
    return [Middleware(ClientAddressMiddleware, proxies=proxies)]


def _rate_limits(
    settings: Settings, verifier: TokenVerifier, redis: aioredis.Redis | None
) -> list[Middleware]:
    """The rate limiter, when limits are set (off, it would only cost every request a step)."""
    if settings.rate_limit_per_second <= 0:
        return []
    rate = settings.rate_limit_per_second
    return [
        Middleware(
            RateLimitMiddleware,
            verifier=verifier,
            rate=rate,
            burst=settings.rate_limit_burst or max(1, int(2 * rate)),
            redis=redis,
            key_prefix=settings.redis_key_prefix,
        )
    ]


def _tune_garbage_collection() -> None:
    """Fewer, cheaper collections: thousands of open sockets are millions of live objects.

    With the defaults, the collector ran for a third of the CPU of a busy fan-out and stopped the
    loop for up to a second at a time (bench/live.py). What exists after start-up never becomes
    garbage: it is moved out of the collector's sight.
    """
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def _go_away_first(loop: asyncio.AbstractEventLoop, services: Services) -> None:
    """On SIGTERM or SIGINT, say "going away" before uvicorn stops.

    uvicorn stops accepting, lets requests in flight finish and closes WebSockets with 1012. First
    the service marks itself not ready and ends its live connections itself: WebSockets with 1001
    (what docs/api.md promises), SSE streams at an event boundary. Then uvicorn's own handler runs.
    Signals reach only the main thread: a server run in another thread (tests) is stopped directly.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def begin(number: int, frame: object, previous: object) -> None:
        services.stopping.set()
        services.hub.close()
        if callable(previous):  # uvicorn's: it sets a flag its main loop looks at
            loop.call_later(GOING_AWAY_SECONDS, previous, number, frame)

    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)

        def handler(number: int, frame: object, previous: object = previous) -> None:
            loop.call_soon_threadsafe(begin, number, frame, previous)

        signal.signal(signum, handler)


def _redis_client(url: str | None) -> aioredis.Redis | None:
    """Carries live traffic between instances; without it each instance follows the log."""
    if url is None:
        return None
    # XREAD blocks for a second at a time: the read timeout must be longer. A pooled connection
    # that Redis closed (a restart) is retried on a fresh one rather than failing the command.
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=5,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


async def _housekeeping(pool: asyncpg.Pool, revocations: Revocations, kept: timedelta) -> None:
    """Every few minutes, drop Idempotency-Key answers older than IDEMPOTENCY_TTL_HOURS and the
    revocations of tokens that have expired anyway."""
    while True:
        try:
            await forget_expired(pool, kept)
            await revocations.forget_expired()
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as error:
            log.warning("housekeeping failed (will try again): %s", error)
        await asyncio.sleep(HOUSEKEEPING_INTERVAL)
