"""Health: no authentication, so that load balancers and orchestrators can ask."""

from __future__ import annotations

import time

import asyncpg
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import __version__
from ..json import JSONResponse


async def health(request: Request) -> Response:
    services = request.app.state.services
    started = time.perf_counter()
    try:
        await services.pool.fetchval("SELECT 1")
    except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
        return JSONResponse(
            {"status": "unhealthy", "database": {"reachable": False}, "version": __version__},
            status_code=503,
        )
    return JSONResponse(
        {
            "status": "healthy",
            "database": {
                "reachable": True,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            },
            "version": __version__,
            "uptime_seconds": round(time.monotonic() - services.started_at, 3),
        }
    )


routes = [Route("/health", health, methods=["GET"])]
