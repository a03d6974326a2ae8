"""The shipped load balancer, deploy/nginx.conf, run by a real nginx in front of two instances.

The file is used as shipped, adapted only in its upstream and listening addresses. The instances
share PostgreSQL and Redis and trust the balancer's address (127.0.0.1, the source of its upstream
connections); the test's client connects from an address of its own (127.0.0.9), so whose address
reached the audit trail is plain.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import connect

from api.auth import Role
from api.config import PROJECT_ROOT

from .conftest import free_port, token
from .test_live_instances import LiveSocket, instance, instance_env, open_events, until, ws_url

CLIENT = "127.0.0.9"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="module")
def nginx() -> str:
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if binary is None:
        if IN_CI:
            pytest.fail("nginx is not installed: .ci/run installs it")
        pytest.skip("nginx is not installed (Debian: apt-get install nginx)")
    return binary


def adapted(config: str, upstreams: list[str], port: int) -> str:
    """deploy/nginx.conf with its upstream servers and listening address replaced, nothing else."""
    servers = re.findall(r"server\s+([\w.-]+:\d+)", config)
    assert len(servers) == len(upstreams), servers
    for server, upstream in zip(servers, upstreams, strict=True):
        config = config.replace(f"server {server}", f"server {upstream}", 1)
    assert "listen 80;" in config
    return config.replace("listen 80;", f"listen 127.0.0.1:{port};")


@contextmanager
def balancer(binary: str, upstreams: list[str], folder: Path) -> Iterator[str]:
    port = free_port()
    folder.mkdir()
    folder.chmod(0o777)  # nginx's workers drop root and write their temporary files here
    shipped = (PROJECT_ROOT / "deploy" / "nginx.conf").read_text()
    (folder / "balancer.conf").write_text(adapted(shipped, upstreams, port))
    temporary = "\n".join(
        f"{kind}_temp_path {folder}/{kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    (folder / "nginx.conf").write_text(
        f"""daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log {folder}/access.log;
    {temporary}
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    include {folder}/balancer.conf;
}}
"""
    )
    process = subprocess.Popen(
        [binary, "-p", str(folder), "-c", str(folder / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if httpx.get(f"{base}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"nginx did not start: {process.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        yield base
    finally:
        process.terminate()
        process.wait(10)


def _client(base: str, subject: str, role: Role = Role.USER) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base,
        transport=httpx.AsyncHTTPTransport(local_address=CLIENT),
        timeout=30,
        headers={"Authorization": f"Bearer {token(subject, role)}"},
    )


async def _create(client: httpx.AsyncClient, symbol: str, **headers: str) -> str:
    body = {"symbol": symbol, "side": "long", "quantity": 1, "entry_price": 10}
    response = await client.post("/positions", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def _creates_answered(base: str) -> int:
    async with httpx.AsyncClient(base_url=base) as client:
        text = (await client.get("/metrics")).text
    match = re.search(
        r'^http_requests_total\{method="POST",route="/positions",status="201"\} (\S+)$',
        text,
        re.MULTILINE,
    )
    return int(float(match.group(1))) if match else 0


async def _socket(stack: AsyncExitStack, base: str, subject: str) -> LiveSocket:
    connection = await connect(ws_url(base, subject, Role.USER), local_addr=(CLIENT, 0))
    socket = LiveSocket(base, connection, subject)
    stack.push_async_callback(socket.close)
    await until(lambda: bool(socket.messages), f"{base}: initial data")
    return socket


def _created_ids(socket: LiveSocket) -> list[str]:
    return [m["data"]["id"] for m in socket.events if m["type"] == "position_created"]


async def test_the_shipped_balancer_in_front_of_two_instances(
    nginx: str, api_database: str, redis_url: str, tmp_path: Path
) -> None:
    env = {
        **instance_env(api_database, redis_url, f"balancer-{uuid.uuid4().hex[:8]}"),
        "TRUSTED_PROXIES": "127.0.0.1",
    }
    subject = f"desk-{uuid.uuid4().hex[:8]}"
    symbol = "BAL" + uuid.uuid4().hex[:6].upper()
    async with instance(env) as first, instance(env) as second, AsyncExitStack() as stack:
        upstreams = [base.removeprefix("http://") for base in (first, second)]
        front = stack.enter_context(balancer(nginx, upstreams, tmp_path / "nginx"))
        through = await stack.enter_async_context(_client(front, subject))
        on_first = await stack.enter_async_context(_client(first, subject))
        on_second = await stack.enter_async_context(_client(second, subject))

        # Live clients on each instance, and one through the balancer (WebSocket and SSE).
        socket_first = await _socket(stack, first, subject)
        socket_second = await _socket(stack, second, subject)
        socket_front = await _socket(stack, front, subject)
        head = socket_front.messages[0]["position"]
        events = await open_events(stack, "sse", front, subject, Role.USER, after=head)

        # Round robin: creates through the balancer land on both instances, alternately.
        before = [await _creates_answered(base) for base in (first, second)]
        balanced = [await _create(through, symbol) for _ in range(10)]
        after = [await _creates_answered(base) for base in (first, second)]
        assert [a - b for a, b in zip(after, before, strict=True)] == [5, 5]

        # Each instance's WebSocket gets what was made through the other.
        made_on_second = await _create(on_second, symbol)
        made_on_first = await _create(on_first, symbol)
        for socket in (socket_first, socket_second, socket_front):
            await until(
                lambda socket=socket: {made_on_first, made_on_second} <= set(_created_ids(socket)),
                f"{socket.name}: the events made through the other instance",
            )
            assert _created_ids(socket) == [*balanced, made_on_second, made_on_first]

        # SSE through the balancer: each event as it happens, not when a buffer fills.
        await until(lambda: len(events.events) >= 12, "the events on SSE")
        streamed = await _create(through, symbol)
        started = time.monotonic()
        await until(lambda: len(events.events) >= 13, "the next event on SSE", timeout=3)
        assert time.monotonic() - started < 1.5
        assert events.events[-1]["data"]["position_id"] == streamed

        # Whose address the audit trail keeps: the client's, never the balancer's; a forged
        # header is the client's own words, through the balancer or straight to an instance.
        forged = {"X-Forwarded-For": "203.0.113.66"}
        forged_through = await _create(through, symbol, **forged)
        forged_direct = await _create(on_first, symbol, **forged)

    connection = await asyncpg.connect(api_database)
    try:
        rows = await connection.fetch(
            "SELECT substr(stream_id, 10) AS id, metadata->>'client_ip' AS ip FROM events "
            "WHERE event_type = 'PositionOpened' AND data->>'symbol' = $1",
            symbol,
        )
    finally:
        await connection.close()
    recorded = {row["id"]: row["ip"] for row in rows}
    every = [*balanced, made_on_first, made_on_second, streamed, forged_through, forged_direct]
    assert recorded == {position_id: CLIENT for position_id in every}


def test_the_adapted_file_differs_from_the_shipped_one_only_in_addresses() -> None:
    shipped = (PROJECT_ROOT / "deploy" / "nginx.conf").read_text()
    config = adapted(shipped, ["127.0.0.1:1001", "127.0.0.1:1002"], 1003)
    changed = [
        (old, new)
        for old, new in zip(shipped.splitlines(), config.splitlines(), strict=True)
        if old != new
    ]
    assert [new.strip() for _, new in changed] == [
        "server 127.0.0.1:1001 max_fails=3 fail_timeout=5s;",
        "server 127.0.0.1:1002 max_fails=3 fail_timeout=5s;",
        "listen 127.0.0.1:1003;",
    ]
