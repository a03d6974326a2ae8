"""Health and metrics: no authentication, so that load balancers and Prometheus can ask.

/health        everything an operator looks at first; 503 when the database is unreachable
/health/live   the process answers (restart it if not)
/health/ready  it can serve: the database answers and it is not shutting down
/metrics       Prometheus text
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import __version__
from ..json import JSONResponse
from ..services import Services, services_of

PROBE_SECONDS = 2.0
"""A dependency that has not answered by then counts as unreachable."""
LAG_DEGRADED = 1000
"""Events the live feed may trail the log by before the service calls itself degraded."""


async def _timed(probe: Awaitable[Any]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(PROBE_SECONDS):
            await probe
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, RedisError):
        return {"reachable": False}
    return {"reachable": True, "latency_ms": round((time.perf_counter() - started) * 1000, 3)}


SERVICE_NAME = "position-service"


async def _live_feed_lag(services: Services) -> int | None:
    try:
        async with asyncio.timeout(PROBE_SECONDS):
            return await services.store.count_after(services.hub.cursor)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return None


async def health(request: Request) -> Response:
    services = services_of(request)
    database = await _timed(services.pool.fetchval("SELECT 1"))
    redis: dict[str, Any] = {"configured": services.redis is not None}
    if services.redis is not None:
        redis |= await _timed(services.redis.ping())
    lag = await _live_feed_lag(services) if database["reachable"] else None
    if not database["reachable"]:
        status = "unhealthy"
    elif (redis["configured"] and not redis["reachable"]) or lag is None or lag > LAG_DEGRADED:
        status = "degraded"  # serving, but live updates go the slow way or trail behind
    else:
        status = "healthy"
    return JSONResponse(
        {
            "status": status,
            "database": database,
            "redis": redis,
            "projections": {
                "positions": {"mode": "inline", "lag_events": 0},
                "live_feed": {"lag_events": lag},
            },
            "version": __version__,
            "uptime_seconds": round(time.monotonic() - services.started_at, 3),
            # Kept for clients of the original API, which read these two.
            "service": SERVICE_NAME,
            "timestamp": datetime.now(UTC),
        },
        status_code=503 if status == "unhealthy" else 200,
    )


async def live(request: Request) -> Response:
    return JSONResponse({"status": "alive"})


async def ready(request: Request) -> Response:
    services = services_of(request)
    if services.stopping.is_set():
        return JSONResponse({"status": "stopping"}, status_code=503)
    database = await _timed(services.pool.fetchval("SELECT 1"))
    if not database["reachable"]:
        return JSONResponse({"status": "not ready", "database": database}, status_code=503)
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    services = services_of(request)
    services.metrics.observe_pool(services.pool)
    lag = await _live_feed_lag(services)
    if lag is not None:
        services.metrics.live_feed_lag.set(lag)
    return Response(
        services.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


routes = [
    Route("/health", health, methods=["GET"]),
    Route("/health/live", live, methods=["GET"]),
    Route("/health/ready", ready, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
