"""Command line: `python -m api serve [--production] | migrate | token`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.config
import os
import secrets
import signal
import sys
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit
from uuid import UUID

import asyncpg

from eventstore import LogClockAhead, MigrationError

from . import operations
from .auth import AuthSettings, Role, mint_token
from .config import ConfigError, Settings
from .database import apply_migrations, resolve_database_url
from .logs import logging_config

DEV_TOKEN_TTL = timedelta(hours=24)

SERVER_OPTIONS = {
    # The sans-I/O WebSocket protocol keeps no tasks per connection; compression would keep a
    # zlib context (hundreds of KiB) per socket. Pings every 20 s keep idle sockets alive
    # through proxies and find dead peers. Clients send nothing that needs more than 64 KiB.
    "ws": "websockets-sansio",
    "ws_per_message_deflate": False,
    "ws_max_size": 64 * 1024,
    "ws_ping_interval": 20.0,
    "ws_ping_timeout": 20.0,
    # On SIGTERM, requests in flight get this long to finish before their connections are closed.
    "timeout_graceful_shutdown": 10,
    # Forwarding headers are believed from TRUSTED_PROXIES only, by the app (api/proxies.py).
    "proxy_headers": False,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="position-service")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="run the HTTP service (settings from the environment)"
    )
    serve.add_argument(
        "--production",
        action="store_true",
        help="refuse to start without DATABASE_URL and a JWT key; several workers",
    )
    commands.add_parser("migrate", help="apply pending database migrations and exit")
    commands.add_parser(
        "rebuild", help="rebuild the read models from the log beside the live ones, then swap"
    )
    commands.add_parser(
        "reclock",
        help="after restoring a logical backup into another cluster: renumber the log's "
        "transaction ids, in the same order, then rebuild the read models",
    )
    commands.add_parser(
        "verify", help="rebuild into scratch tables; list rows that differ (exit 1 if any)"
    )
    export = commands.add_parser("export", help="events as JSON lines, oldest first")
    export.add_argument("--position", type=UUID, help="the events of one position")
    export.add_argument("--owner", help="the events of one owner's positions")
    export.add_argument("--from", dest="recorded_from", type=_moment, help="ISO time, inclusive")
    export.add_argument("--to", dest="recorded_to", type=_moment, help="ISO time, inclusive")
    export.add_argument("--output", type=Path, help="a file (default: standard output)")
    token = commands.add_parser("token", help="print a signed token (HS256, JWT_SECRET)")
    token.add_argument("--sub", required=True, help="the user id")
    token.add_argument("--role", choices=[r.value for r in Role], default=Role.USER.value)
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    arguments = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
        # The server logs to stdout; every other command keeps stdout for its output (export's
        # JSON lines, verify's findings) and logs to stderr.
        stream = "stdout" if arguments.command == "serve" else "stderr"
        logging.config.dictConfig(logging_config(settings.log_level, stream))
        if arguments.command == "migrate":
            return _migrate(settings)
        if arguments.command == "rebuild":
            return asyncio.run(operations.rebuild_read_models(settings))
        if arguments.command == "reclock":
            return asyncio.run(operations.reclock_log(settings))
        if arguments.command == "verify":
            return asyncio.run(operations.verify_read_models(settings))
        if arguments.command == "export":
            return _export(settings, arguments)
        if arguments.command == "token":
            return _token(settings, arguments.sub, Role(arguments.role), arguments.ttl)
        if arguments.production:
            return _serve_production(settings)
        return _serve_development(settings)
    except (ConfigError, MigrationError, LogClockAhead) as error:
        repair = "; run `python -m api reclock` once, then start again"
        hint = repair if isinstance(error, LogClockAhead) else ""
        print(f"error: {error}{hint}", file=sys.stderr)
        return 2


def _moment(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError("give the UTC offset, e.g. 2026-01-05T14:30:00Z")
    return value


def _export(settings: Settings, arguments: argparse.Namespace) -> int:
    filters = {
        "position_id": arguments.position,
        "owner": arguments.owner,
        "recorded_from": arguments.recorded_from,
        "recorded_to": arguments.recorded_to,
    }
    if arguments.output is None:
        return asyncio.run(operations.export_events(settings, sys.stdout.buffer, **filters))
    with arguments.output.open("wb") as output:
        return asyncio.run(operations.export_events(settings, output, **filters))


def _migrate(settings: Settings) -> int:
    async def run() -> list[str]:
        return await apply_migrations(await resolve_database_url(settings))

    applied = asyncio.run(run())
    print("applied: " + ", ".join(applied) if applied else "the database is up to date")
    return 0


def _token(settings: Settings, subject: str, role: Role, ttl: int) -> int:
    env = settings.environment
    if not (env.get("JWT_SECRET") or _has_public_key(env)):
        path = _development_secret_path(settings)
        if not path.exists():
            raise ConfigError(
                "minting needs JWT_SECRET, or the development secret that ./start.sh makes "
                f"in {path}"
            )
        print(f"signed with the development secret in {path}", file=sys.stderr)
        env = {**env, "JWT_SECRET": path.read_text().strip()}
    auth = AuthSettings.from_env(env)
    if auth.secret is None:
        raise ConfigError("minting needs JWT_SECRET: a public key verifies tokens, it cannot sign")
    print(
        mint_token(
            secret_or_private_key=auth.secret,
            algorithm=auth.algorithm,
            subject=subject,
            role=role,
            ttl=timedelta(seconds=ttl),
            issuer=auth.issuer,
            audience=auth.audience,
            token_id=new_token_id(),
        )
    )
    return 0


def new_token_id() -> str:
    """A `jti` for the tokens the project mints itself, so that each one can be revoked."""
    return secrets.token_hex(16)


def _has_public_key(env: dict[str, str]) -> bool:
    return bool(env.get("JWT_PUBLIC_KEY") or env.get("JWT_PUBLIC_KEY_FILE"))


def _development_secret_path(settings: Settings) -> Path:
    return settings.data_dir / "dev-jwt-secret"


def _development_secret(settings: Settings) -> str:
    """A random secret kept in the data folder, so tokens outlive a restart; never in the log."""
    path = _development_secret_path(settings)
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def _serve_development(settings: Settings) -> int:
    env = settings.environment
    print(f"position service (development) at http://{settings.host}:{settings.port}/docs")
    print(f"database: {_database_in_use(settings)}")
    if not (env.get("JWT_SECRET") or _has_public_key(env)):
        secret = _development_secret(settings)
        os.environ["JWT_SECRET"] = secret
        settings = Settings.from_env()
        print(f"tokens (valid 24 h; the secret is in {_development_secret_path(settings)}):")
        for role, subject in ((Role.ADMIN, "admin"), (Role.USER, "trader")):
            token = mint_token(
                secret_or_private_key=secret,
                algorithm="HS256",
                subject=subject,
                role=role,
                ttl=DEV_TOKEN_TTL,
                token_id=new_token_id(),
            )
            print(f"  {role.value:<5} {subject:<7} {token}")
    sys.stdout.flush()
    if settings.database_url:  # where a restored backup may be: refuse it in one line
        asyncio.run(_reach_database(settings))
    return _serve(settings, workers=1, quiet=True)


def _database_in_use(settings: Settings) -> str:
    """Where the data lives, without the URL's password."""
    if not settings.database_url:
        return f"embedded PostgreSQL in {settings.data_dir} (set DATABASE_URL for another)"
    parts = urlsplit(settings.database_url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"


def _serve_production(settings: Settings) -> int:
    env = settings.environment
    missing = []
    if not settings.database_url:
        missing.append("DATABASE_URL (the embedded database is for development)")
    if not (env.get("JWT_SECRET") or _has_public_key(env)):
        missing.append("JWT_SECRET, JWT_PUBLIC_KEY or JWT_PUBLIC_KEY_FILE")
    if missing:
        raise ConfigError("production needs " + "; and ".join(missing))
    AuthSettings.from_env(env)  # refuse a weak or inconsistent key before any worker starts
    asyncio.run(_reach_database(settings))  # before the workers: one reason, not a traceback each
    workers = settings.workers if "WORKERS" in env else max(2, os.cpu_count() or 2)
    return _serve(settings, workers=workers)


async def _reach_database(settings: Settings) -> None:
    dsn = await resolve_database_url(settings)
    try:
        connection = await asyncpg.connect(dsn, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(
            f"cannot reach the database at {_database_in_use(settings)}: {reason}"
        ) from None
    await connection.close()
    await apply_migrations(dsn)  # once, here; and a restored log that needs reclock is refused


def _serve(settings: Settings, *, workers: int, quiet: bool = False) -> int:
    """`quiet`: uvicorn's own start-up lines only with LOG_LEVEL=DEBUG (the caller said where)."""
    import uvicorn

    # uvicorn shuts down gracefully, then re-raises the signal that stopped it. Let SIGTERM end the
    # process the way Ctrl-C does, so that exit handlers run (they stop the embedded database).
    signal.signal(signal.SIGTERM, _exit)
    log_config, log_level = logging_config(settings.log_level), settings.log_level.lower()
    if quiet and settings.log_level != "DEBUG":
        for name in ("uvicorn", "uvicorn.error", "api.database", "eventstore.migrations"):
            log_config["loggers"].setdefault(name, {"handlers": [], "propagate": True})
            log_config["loggers"][name]["level"] = "WARNING"
        log_level = "warning"  # uvicorn sets its own loggers to this after reading log_config
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers if workers > 1 else None,
        log_level=log_level,
        log_config=log_config,
        **SERVER_OPTIONS,
    )
    return 0


def _exit(signum: int, frame: object) -> None:
    sys.exit(128 + signum)
