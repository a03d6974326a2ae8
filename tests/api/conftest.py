"""A real service on a real socket for the API tests.

One uvicorn server per test session, in a thread of its own (its own event loop), on a database
cloned from the migrated template. Tests stay independent by acting as fresh users: each `caller`
has an id no other test uses.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest
import uvicorn

from api.app import create_app
from api.auth import AuthSettings, Role, mint_token
from api.cli import SERVER_OPTIONS
from api.config import Settings
from api.database import with_database

from ..conftest import run_admin

SECRET = "api-tests-secret-that-is-long-enough-for-hs256"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def api_database(pg_server: str, template_database: str) -> Iterator[str]:
    name = f"pms_api_{uuid.uuid4().hex[:12]}"
    asyncio.run(run_admin(pg_server, f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"'))
    yield with_database(pg_server, name)
    asyncio.run(run_admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def running_service(env: dict[str, str]) -> Iterator[str]:
    """An instance of the service, configured by `env`, on a free port; its base URL."""
    settings = Settings.from_env({"DB_POOL_SIZE": "4", "DB_MAX_OVERFLOW": "28", **env})
    app = create_app(settings, auth=AuthSettings(algorithm="HS256", secret=SECRET, public_key=None))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            loop="asyncio",
            **SERVER_OPTIONS,
        )
    )
    thread = threading.Thread(target=server.run, name=f"service-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the service did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture(scope="session")
def service_url(api_database: str) -> Iterator[str]:
    with running_service({"DATABASE_URL": api_database}) as url:
        yield url


def token(
    subject: str,
    role: Role | str = Role.USER,
    *,
    ttl: timedelta = timedelta(hours=1),
    token_id: str | None = None,
) -> str:
    return mint_token(
        secret_or_private_key=SECRET,
        algorithm="HS256",
        subject=subject,
        role=Role(role),
        ttl=ttl,
        token_id=token_id,
    )


@dataclass
class Caller:
    """Someone calling the API: an httpx client that sends their token."""

    subject: str
    role: Role
    http: httpx.Client

    def open(self, **fields: object) -> dict:
        """Open a position (default: 10 AAPL long at 100) and return it; refused: the test fails."""
        body = {"symbol": "AAPL", "side": "long", "quantity": 10, "entry_price": 100, **fields}
        response = self.http.post("/positions", json=body)
        assert response.status_code == 201, response.text
        return response.json()


@pytest.fixture
def make_caller(service_url: str) -> Iterator:
    clients: list[httpx.Client] = []

    def make(role: Role | str = Role.USER, subject: str | None = None) -> Caller:
        subject = subject or f"{Role(role).value}-{uuid.uuid4().hex[:10]}"
        client = httpx.Client(
            base_url=service_url,
            timeout=30,
            headers={"Authorization": f"Bearer {token(subject, role)}"},
        )
        clients.append(client)
        return Caller(subject, Role(role), client)

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def user(make_caller) -> Caller:
    return make_caller(Role.USER)


@pytest.fixture
def other_user(make_caller) -> Caller:
    return make_caller(Role.USER)


@pytest.fixture
def admin(make_caller) -> Caller:
    return make_caller(Role.ADMIN)


@pytest.fixture
def service(make_caller) -> Caller:
    return make_caller(Role.SERVICE)


@pytest.fixture
def anonymous(service_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service_url, timeout=30) as client:
        yield client
