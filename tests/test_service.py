"""The service as an operator runs it: a real process, a real socket, the embedded database."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import httpx
import jwt
import pytest
import websockets.exceptions
import websockets.sync.client

from api.auth import Role, mint_token
from api.config import PROJECT_ROOT
from api.database import with_database
from commands import PositionHandlers
from eventstore import EventStore, create_pool
from projections.positions import project_positions

from .conftest import run_admin
from .domain.given import open_position


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def service_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "PORT", "DATA_DIR"}}
    env.update(overrides)
    return env


def run_cli(*arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api", *arguments],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.mark.embedded
def test_without_database_url_the_embedded_database_is_created_and_kept(data_dir: Path) -> None:
    env = service_env(DATA_DIR=str(data_dir))

    first = run_cli("migrate", env=env)
    second = run_cli("migrate", env=env)

    assert first.returncode == 0, first.stderr
    assert "applied: 001_event_store.sql" in first.stdout
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
    assert (data_dir / "postgres" / "PG_VERSION").exists()


def test_an_edited_migration_stops_the_service_with_the_reason(
    database_url: str, tmp_path: Path
) -> None:
    import asyncio

    import asyncpg

    async def tamper() -> None:
        connection = await asyncpg.connect(database_url)
        await connection.execute("UPDATE schema_migrations SET checksum = 'x' WHERE version = 1")
        await connection.close()

    asyncio.run(tamper())
    result = run_cli("migrate", env=service_env(DATABASE_URL=database_url))

    assert result.returncode == 2
    assert "001_event_store.sql was edited" in result.stderr


def start_service(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    # Its log goes to a file: a pipe nobody reads would fill, and the service would stop in a write.
    log = tempfile.NamedTemporaryFile("w+", prefix="service-", suffix=".log")
    process = subprocess.Popen(
        [sys.executable, "-m", "api", "serve"],
        cwd=PROJECT_ROOT,
        env={**env, "PORT": str(port)},
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    process.log_file = log  # type: ignore[attr-defined]
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(base + "/health", timeout=1)
            return process, base
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                log.seek(0)
                pytest.fail(f"service did not start:\n{log.read()}")
            time.sleep(0.1)


@pytest.fixture
def service(database_url: str, data_dir: Path) -> Iterator[str]:
    process, base = start_service(
        service_env(
            DATABASE_URL=database_url.replace("postgresql://", "postgresql+asyncpg://"),
            DATA_DIR=str(data_dir),  # the development secret goes there
            DB_POOL_SIZE="2",
        )
    )
    try:
        yield base
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.embedded
def test_stopping_the_service_stops_its_embedded_database(data_dir: Path) -> None:
    process, base = start_service(service_env(DATA_DIR=str(data_dir), DB_POOL_SIZE="2"))
    assert httpx.get(base + "/health").json()["status"] == "healthy"
    postmaster = data_dir / "postgres" / "postmaster.pid"
    assert postmaster.exists()

    process.terminate()
    process.wait(30)

    assert not postmaster.exists(), "the embedded PostgreSQL outlived the service"


def test_health_answers_over_a_real_socket(service: str) -> None:
    response = httpx.get(service + "/health")
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "healthy"
    assert body["database"]["reachable"] is True
    assert body["database"]["latency_ms"] >= 0


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({}, "production needs DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://db.example/positions"}, "production needs JWT_SECRET"),
        (
            {"DATABASE_URL": "postgresql://db.example/positions", "JWT_SECRET": "short"},
            "JWT_SECRET",
        ),
    ],
    ids=["no database", "no key", "weak secret"],
)
def test_production_refuses_to_start_without_its_settings(env: dict[str, str], reason: str) -> None:
    base = {k: v for k, v in service_env().items() if not k.startswith("JWT_")}
    result = subprocess.run(
        [sys.executable, "-m", "api", "serve", "--production"],
        cwd=PROJECT_ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert reason in line
    assert "short" not in line  # a secret never reaches the output


def test_the_token_command_mints_a_token_the_service_accepts(database_url: str) -> None:
    secret = "a-secret-of-at-least-thirty-two-bytes!!"
    env = service_env(DATABASE_URL=database_url, JWT_SECRET=secret, DB_POOL_SIZE="2")
    minted = run_cli("token", "--sub", "alice", "--role", "admin", "--ttl", "60", env=env)
    assert minted.returncode == 0, minted.stderr
    process, base = start_service(env)
    try:
        token = minted.stdout.strip()
        answer = httpx.get(
            base + "/positions?owner=bob", headers={"Authorization": f"Bearer {token}"}
        )
        refused = httpx.get(base + "/positions", headers={"Authorization": f"Bearer {token}x"})
    finally:
        process.terminate()
        process.wait(10)
    assert answer.status_code == 200  # admin may filter by another owner
    assert refused.status_code == 401


def test_production_serves_with_several_workers(database_url: str) -> None:
    secret = "a-secret-of-at-least-thirty-two-bytes!!"
    env = service_env(DATABASE_URL=database_url, JWT_SECRET=secret, WORKERS="2", DB_POOL_SIZE="2")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "api", "serve", "--production"],
        cwd=PROJECT_ROOT,
        env={**env, "PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read()
                assert time.monotonic() < deadline, "production did not start"
                time.sleep(0.2)
        workers = subprocess.run(  # uvicorn's workers, not multiprocessing's resource tracker
            ["pgrep", "-P", str(process.pid), "-f", "spawn_main"], capture_output=True, text=True
        ).stdout.split()
    finally:
        process.terminate()
        process.wait(20)
    assert health.status_code == 200
    assert len(workers) == 2


def test_sigterm_during_a_burst_loses_nothing_acknowledged_and_says_going_away(
    database_url: str, data_dir: Path
) -> None:
    secret = "sigterm-test-secret-long-enough-for-hs256"
    process, base = start_service(
        service_env(DATABASE_URL=database_url, DATA_DIR=str(data_dir), JWT_SECRET=secret)
    )
    bearer = trader_token(secret)
    acknowledged: list[str] = []
    stop = threading.Event()

    def send_commands() -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {bearer}"}) as http:
            while not stop.is_set():
                try:
                    response = http.post(
                        "/positions",
                        json={"symbol": "AAPL", "side": "long", "quantity": 1, "entry_price": 10},
                    )
                except httpx.TransportError:
                    return  # the service has gone: nothing was acknowledged
                if response.status_code == 201:
                    acknowledged.append(response.json()["id"])

    socket_url = base.replace("http://", "ws://") + f"/ws/positions?token={bearer}"
    with websockets.sync.client.connect(socket_url) as live:
        live.recv(timeout=10)  # initial_data
        senders = [threading.Thread(target=send_commands) for _ in range(8)]
        for sender in senders:
            sender.start()
        time.sleep(1)
        process.send_signal(signal.SIGTERM)
        try:
            while True:
                live.recv(timeout=15)
        except websockets.exceptions.ConnectionClosed as closed:
            close_code = closed.rcvd.code if closed.rcvd else None
    stop.set()
    for sender in senders:
        sender.join(30)
    process.wait(30)

    assert close_code == 1001
    assert len(acknowledged) > 8
    logged = {
        str(row["position_id"])
        for row in db_rows(database_url, "SELECT position_id FROM positions")
    }
    assert set(acknowledged) <= logged
    opened = db_rows(
        database_url, "SELECT count(*) AS n FROM events WHERE event_type = 'PositionOpened'"
    )[0]["n"]
    assert opened == len(logged)  # every event has its row: nothing is half-applied


def db_rows(dsn: str, statement: str) -> list:
    async def fetch() -> list:
        connection = await asyncpg.connect(dsn)
        try:
            return await connection.fetch(statement)
        finally:
            await connection.close()

    return asyncio.run(fetch())


def trader_token(secret: str) -> str:
    return mint_token(
        secret_or_private_key=secret,
        algorithm="HS256",
        subject="trader",
        role=Role.USER,
        ttl=timedelta(minutes=5),
    )


def service_log(process: subprocess.Popen[str]) -> list[dict]:
    log = process.log_file  # type: ignore[attr-defined]
    log.seek(0)
    return [json.loads(line) for line in log.read().splitlines() if line.startswith("{")]


def test_each_request_is_one_json_line_with_its_correlation_id_and_no_secret(
    database_url: str, data_dir: Path
) -> None:
    secret = "log-test-secret-long-enough-for-hs256!!"
    process, base = start_service(
        service_env(
            DATABASE_URL=database_url,
            DATA_DIR=str(data_dir),
            JWT_SECRET=secret,
            SQL_ECHO="true",
            LOG_LEVEL="DEBUG",  # uvicorn's own lines too (the WebSocket's URL among them)
        )
    )
    bearer = trader_token(secret)
    try:
        created = httpx.post(
            f"{base}/positions",
            json={"symbol": "AAPL", "side": "long", "quantity": 1, "entry_price": 10},
            headers={"Authorization": f"Bearer {bearer}", "X-Correlation-ID": "trace-42"},
        )
        socket_url = base.replace("http://", "ws://") + f"/ws/positions?token={bearer}"
        with websockets.sync.client.connect(socket_url) as live:
            live.recv(timeout=10)
        time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(20)
    lines = service_log(process)

    assert created.status_code == 201
    [access] = [
        line
        for line in lines
        if line.get("correlation_id") == "trace-42" and line["logger"] == "api.access"
    ]
    assert access["method"] == "POST" and access["route"] == "/positions"
    assert access["status"] == 201 and access["user"] == "trader" and access["duration_ms"] > 0
    statements = [line for line in lines if line["logger"] == "api.sql"]
    assert any(
        "INSERT INTO events" in line["message"] and line["correlation_id"] == "trace-42"
        for line in statements
    )
    everything = json.dumps(lines)
    assert bearer not in everything and secret not in everything
    assert "token=[redacted]" in everything
    stored = db_rows(database_url, "SELECT metadata->>'correlation_id' AS c FROM events")
    assert [row["c"] for row in stored] == ["trace-42"]


def test_production_names_every_missing_setting_at_once() -> None:
    base = {k: v for k, v in service_env().items() if not k.startswith("JWT_")}
    result = run_cli("serve", "--production", env=base)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "DATABASE_URL" in line and "JWT_SECRET" in line


def test_production_with_an_unreachable_database_exits_with_a_one_line_reason() -> None:
    env = service_env(
        DATABASE_URL="postgresql://positions:hunter2-password@127.0.0.1:1/positions",
        JWT_SECRET="a-secret-of-at-least-thirty-two-bytes!!",
    )
    result = run_cli("serve", "--production", env=env)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: cannot reach the database at 127.0.0.1:1/positions")
    assert "hunter2" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def _claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def test_the_projects_own_tokens_carry_a_jti_so_they_can_be_revoked(
    database_url: str, data_dir: Path
) -> None:
    env = service_env(JWT_SECRET="a-secret-of-at-least-thirty-two-bytes!!")
    minted = [run_cli("token", "--sub", "alice", env=env).stdout.strip() for _ in range(2)]
    process, _ = start_service(service_env(DATABASE_URL=database_url, DATA_DIR=str(data_dir)))
    process.terminate()
    process.wait(10)
    log = process.log_file  # type: ignore[attr-defined]
    log.seek(0)
    output = log.read()
    printed = re.findall(r"^  (admin|user) +\w+ +(\S+)$", output, re.MULTILINE)
    # What a newcomer reads first: where, which database, the tokens; uvicorn's lines only at DEBUG.
    assert output.startswith("position service (development) at http://127.0.0.1:")
    assert "database: " in output and "Started server process" not in output

    assert [role for role, _ in printed] == ["admin", "user"]
    ids = [_claims(token)["jti"] for token in [*minted, *(token for _, token in printed)]]
    assert len(set(ids)) == 4 and all(len(token_id) == 32 for token_id in ids)


def test_the_token_command_signs_with_the_development_secret_when_there_is_one(
    data_dir: Path,
) -> None:
    env = {k: v for k, v in service_env(DATA_DIR=str(data_dir)).items() if k != "JWT_SECRET"}
    without = run_cli("token", "--sub", "alice", env=env)
    data_dir.mkdir()
    secret = "the-development-secret-of-this-data-dir-0123"
    (data_dir / "dev-jwt-secret").write_text(secret)
    with_it = run_cli("token", "--sub", "alice", env=env)

    assert without.returncode == 2 and "JWT_SECRET" in without.stderr
    assert "public key" not in without.stderr  # a public key cannot sign
    assert with_it.returncode == 0, with_it.stderr
    assert "development secret" in with_it.stderr
    claims = jwt.decode(with_it.stdout.strip(), secret, algorithms=["HS256"])
    assert claims["sub"] == "alice"


async def test_a_command_whose_output_is_data_logs_to_stderr(pg_server: str) -> None:
    """export's stdout is JSON lines of events and nothing else, even while it applies the
    migrations and logs at DEBUG; verify's holds only its findings."""
    name = f"pms_cli_{uuid.uuid4().hex[:10]}"
    await run_admin(pg_server, f'CREATE DATABASE "{name}"')
    dsn = with_database(pg_server, name)
    env = service_env(DATABASE_URL=dsn, LOG_LEVEL="DEBUG")
    try:
        first = await asyncio.to_thread(run_cli, "export", env=env)  # migrates the new database
        pool = await create_pool(dsn, min_size=1, max_size=2)
        store = EventStore(pool, inline_projectors=[project_positions])
        try:
            await PositionHandlers(store).open_together([(open_position(), {"actor": "ann"})])
        finally:
            await store.close()
            await pool.close()
        exported = await asyncio.to_thread(run_cli, "export", env=env)
        verified = await asyncio.to_thread(run_cli, "verify", env=env)
    finally:
        await run_admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    assert first.returncode == 0 and first.stdout == "", first.stdout
    assert "applied migration" in first.stderr  # the log went to stderr
    assert exported.returncode == 0, exported.stderr
    [line] = [json.loads(line) for line in exported.stdout.splitlines()]
    assert line["type"] == "PositionOpened" and line["actor"] == "ann"
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.strip() == "the read models agree with the log"
