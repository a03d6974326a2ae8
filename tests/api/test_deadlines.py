"""Every read has a deadline: past it the answer is 503 with Retry-After, and its statement is
cancelled on the server; a client that leaves cancels its read's database work."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from api.auth import Role

from .conftest import running_service, token

HOLD = "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE"  # every read of the table waits behind it


def _waiting(dsn: str) -> int:
    """How many other backends of this database wait for a lock."""

    async def count() -> int:
        connection = await asyncpg.connect(dsn)
        try:
            return await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
        finally:
            await connection.close()

    return asyncio.run(count())


def _until(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


class TableHeld:
    """An ACCESS EXCLUSIVE lock on a table, held from a connection of its own until released."""

    def __init__(self, dsn: str, table: str) -> None:
        self.dsn, self.table = dsn, table
        self._loop = asyncio.new_event_loop()
        self._connection = self._loop.run_until_complete(asyncpg.connect(dsn))
        self._loop.run_until_complete(self._connection.execute("BEGIN"))
        self._loop.run_until_complete(self._connection.execute(HOLD.format(table)))

    def release(self) -> None:
        self._loop.run_until_complete(self._connection.execute("ROLLBACK"))
        self._loop.run_until_complete(self._connection.close())
        self._loop.close()


@pytest.fixture(scope="module")
def slow_service(api_database: str) -> Iterator[str]:
    with running_service({"DATABASE_URL": api_database, "READ_DEADLINE_SECONDS": "1.5"}) as url:
        yield url


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {token('deadline-admin', Role.ADMIN)}"}


def _in_thread(call, *arguments, **keywords) -> concurrent.futures.Future:
    return concurrent.futures.ThreadPoolExecutor(1).submit(call, *arguments, **keywords)


def test_a_read_past_its_deadline_is_503_with_retry_after_and_its_statement_is_cancelled(
    slow_service: str, api_database: str
) -> None:
    held = TableHeld(api_database, "positions")
    try:
        started = time.monotonic()
        request = _in_thread(httpx.get, f"{slow_service}/positions", headers=_headers(), timeout=30)
        seen_waiting = _until(lambda: _waiting(api_database) == 1, seconds=1.2)
        answer = request.result()
        took = time.monotonic() - started
        waiting_after = _waiting(api_database)
    finally:
        held.release()
    afterwards = httpx.get(f"{slow_service}/positions", headers=_headers(), timeout=30)

    assert seen_waiting, "the read never reached the database"
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    body = answer.json()
    assert "deadline of 1.5 s" in body["detail"]
    assert body["path"] == "/positions" and body["correlation_id"]
    assert 1.4 < took < 5
    assert waiting_after == 0, "the read's statement still waits in the database"
    assert afterwards.status_code == 200, "the connection of the cancelled read is not usable"


def test_a_client_that_leaves_cancels_its_reads_database_work(
    service_url: str, api_database: str
) -> None:
    held = TableHeld(api_database, "positions")
    try:
        url = f"{service_url}/positions"
        request = _in_thread(httpx.get, url, headers=_headers(), timeout=1.5)
        seen_waiting = _until(lambda: _waiting(api_database) == 1, seconds=1.4)
        with pytest.raises(httpx.ReadTimeout):
            request.result()
        # Its deadline is 10 s: only the client's leaving can end the wait this soon.
        cancelled = _until(lambda: _waiting(api_database) == 0, seconds=3)
    finally:
        held.release()

    assert seen_waiting, "the read never reached the database"
    assert cancelled, "the service kept waiting for the database after its client left"


def test_the_statement_timeout_is_a_backstop_answered_503(api_database: str) -> None:
    env = {"DATABASE_URL": api_database, "DB_STATEMENT_TIMEOUT_SECONDS": "0.5"}
    with running_service(env) as url:
        held = TableHeld(api_database, "positions")
        try:
            answer = httpx.get(f"{url}/positions", headers=_headers(), timeout=30)
        finally:
            held.release()

    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    assert answer.json()["detail"] == "the database took too long; try again"
