"""Applies the numbered `.sql` files of a folder, in order, once each.

Runs under a session advisory lock so that several instances starting together apply each file
once. Every applied file is recorded with its SHA-256; a recorded file that was edited since, or
that is missing, stops the service: the schema would no longer be what the files say.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from .errors import MigrationError

log = logging.getLogger(__name__)

_LOCK_KEY = 7_340_021_118_551_640_501  # any constant; shared by every instance of the service
_FILE_NAME = re.compile(r"^(\d+)_[\w-]+\.sql$")

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(folder: Path) -> list[Migration]:
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNN_description.sql")
        migrations.append(Migration(int(match[1]), path.name, path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a number in {folder}")
    return sorted(migrations, key=lambda m: m.version)


async def migrate(connection: asyncpg.Connection, folder: Path) -> list[str]:
    """Apply every pending migration in `folder`; returns the names of those applied now."""
    migrations = discover(folder)
    await connection.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await connection.execute(_CREATE_LEDGER)
        applied = {
            row["version"]: row
            for row in await connection.fetch(
                "SELECT version, name, checksum FROM schema_migrations"
            )
        }
        _check_applied(applied, migrations)
        done = []
        for migration in migrations:
            if migration.version in applied:
                continue
            async with connection.transaction():
                await connection.execute(migration.sql)
                await connection.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("applied migration %s", migration.name)
            done.append(migration.name)
        return done
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


def _check_applied(applied: dict[int, asyncpg.Record], migrations: list[Migration]) -> None:
    known = {m.version: m for m in migrations}
    for version, row in sorted(applied.items()):
        migration = known.get(version)
        if migration is None:
            raise MigrationError(
                f"the database has migration {row['name']} that these files do not: "
                "is this an older release than the one that migrated it?"
            )
        if migration.checksum != row["checksum"]:
            raise MigrationError(
                f"{migration.name} was edited after it was applied; "
                "write a new migration instead of changing an applied one"
            )
