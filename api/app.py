"""The Starlette application: the composition root that wires the layers together."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from eventstore import EventStore

from . import __version__
from .config import Settings
from .database import apply_migrations, create_pool, resolve_database_url


@dataclass
class Services:
    pool: asyncpg.Pool
    store: EventStore
    started_at: float


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        dsn = await resolve_database_url(settings)
        await apply_migrations(dsn)
        pool = await create_pool(dsn, settings)
        store = EventStore(pool)
        app.state.services = Services(pool=pool, store=store, started_at=time.monotonic())
        try:
            yield
        finally:
            await store.close()
            await pool.close()

    return Starlette(routes=[Route("/health", health)], lifespan=lifespan)


async def health(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
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
