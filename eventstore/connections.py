"""Connection pools for the store: exact-decimal JSON codecs, and no per-release reset query.

asyncpg's default pool reset sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
RESET ALL` every time a connection goes back to the pool: a second round trip for every one-query
use. This code leaves no session state behind (no SET, no session advisory locks, no LISTEN
outside the notifier, which UNLISTENs itself), and asyncpg still rolls back any open transaction
on release, so the pool skips that query.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg

from .codec import init_connection


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Nothing to reset (see the module's docstring)."""


async def create_pool(
    dsn: str, *, query_logger: Callable[[Any], object] | None = None, **options: Any
) -> asyncpg.Pool:
    """`query_logger` is told of every statement each connection runs (asyncpg's LoggedQuery)."""

    async def init(connection: asyncpg.Connection) -> None:
        await init_connection(connection)
        if query_logger is not None:
            connection.add_query_logger(query_logger)

    return await asyncpg.create_pool(dsn, init=init, reset=_keep_session, **options)
