"""Command line: `python -m api serve|migrate`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from eventstore import MigrationError

from .config import ConfigError, Settings
from .database import apply_migrations, resolve_database_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="position-service")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP service (settings from the environment)")
    commands.add_parser("migrate", help="apply pending database migrations and exit")
    arguments = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
        if arguments.command == "migrate":
            return _migrate(settings)
        return _serve(settings)
    except (ConfigError, MigrationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _migrate(settings: Settings) -> int:
    async def run() -> list[str]:
        return await apply_migrations(await resolve_database_url(settings))

    applied = asyncio.run(run())
    print("applied: " + ", ".join(applied) if applied else "the database is up to date")
    return 0


def _serve(settings: Settings) -> int:
    import uvicorn

    from .app import create_app

    # uvicorn shuts down gracefully, then re-raises the signal that stopped it. Let SIGTERM end the
    # process the way Ctrl-C does, so that exit handlers run (they stop the embedded database).
    signal.signal(signal.SIGTERM, _exit)

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
    )
    return 0


def _exit(signum: int, frame: object) -> None:
    sys.exit(128 + signum)
