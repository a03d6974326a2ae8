"""The migration runner: in order, once, under a lock, and never over an edited history."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from api.database import with_database
from eventstore import MigrationError, migrate
from eventstore.migrations import discover


@pytest.fixture
async def empty_database(pg_server: str) -> AsyncIterator[str]:
    name = f"pms_empty_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(pg_server, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "001_things.sql").write_text("CREATE TABLE things (id int PRIMARY KEY);")
    (tmp_path / "002_more_things.sql").write_text("ALTER TABLE things ADD COLUMN name text;")
    return tmp_path


async def test_pending_files_are_applied_in_order_and_recorded(
    empty_database: str, folder: Path
) -> None:
    connection = await asyncpg.connect(empty_database)
    try:
        assert await migrate(connection, folder) == ["001_things.sql", "002_more_things.sql"]
        assert await migrate(connection, folder) == []
        (folder / "003_index.sql").write_text("CREATE INDEX things_name ON things (name);")
        assert await migrate(connection, folder) == ["003_index.sql"]

        rows = await connection.fetch("SELECT version, name, checksum FROM schema_migrations")
        assert [(r["version"], r["name"]) for r in rows] == [
            (1, "001_things.sql"),
            (2, "002_more_things.sql"),
            (3, "003_index.sql"),
        ]
        assert all(len(r["checksum"]) == 64 for r in rows)
        assert await connection.fetchval("SELECT count(*) FROM things") == 0
    finally:
        await connection.close()


async def test_an_edited_applied_file_stops_the_runner(empty_database: str, folder: Path) -> None:
    connection = await asyncpg.connect(empty_database)
    try:
        await migrate(connection, folder)
        (folder / "001_things.sql").write_text("CREATE TABLE things (id bigint PRIMARY KEY);")
        (folder / "003_new.sql").write_text("CREATE TABLE others (id int);")

        with pytest.raises(MigrationError, match="001_things.sql was edited"):
            await migrate(connection, folder)
        assert await connection.fetchval("SELECT to_regclass('others')") is None
    finally:
        await connection.close()


async def test_an_applied_file_missing_from_the_folder_stops_the_runner(
    empty_database: str, folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    connection = await asyncpg.connect(empty_database)
    try:
        await migrate(connection, folder)
        older = tmp_path_factory.mktemp("older")
        shutil.copy(folder / "001_things.sql", older)
        with pytest.raises(MigrationError, match="002_more_things.sql"):
            await migrate(connection, older)
    finally:
        await connection.close()


async def test_a_failing_migration_leaves_nothing_half_applied(
    empty_database: str, folder: Path
) -> None:
    (folder / "003_broken.sql").write_text("CREATE TABLE half (id int); SELECT no_such_function();")
    connection = await asyncpg.connect(empty_database)
    try:
        with pytest.raises(asyncpg.UndefinedFunctionError):
            await migrate(connection, folder)
        assert await connection.fetchval("SELECT to_regclass('half')") is None
        versions = await connection.fetch("SELECT version FROM schema_migrations ORDER BY 1")
        assert [r["version"] for r in versions] == [1, 2]
    finally:
        await connection.close()


async def test_instances_starting_together_apply_each_file_once(
    empty_database: str, folder: Path
) -> None:
    (folder / "003_slow.sql").write_text("SELECT pg_sleep(0.3); CREATE TABLE slow (id int);")
    connections = [await asyncpg.connect(empty_database) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(migrate(c, folder) for c in connections))
    finally:
        for connection in connections:
            await connection.close()

    assert sorted(applied, key=len) == [
        [],
        [],
        [],
        ["001_things.sql", "002_more_things.sql", "003_slow.sql"],
    ]


def test_badly_named_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "first.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNN_description.sql"):
        discover(tmp_path)


def test_two_files_with_one_number_are_refused(tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("SELECT 1;")
    (tmp_path / "01_b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="share a number"):
        discover(tmp_path)
