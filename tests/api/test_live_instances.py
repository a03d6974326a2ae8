"""Several instances of the service on one database, through real sockets.

Every live client, on whichever instance, receives every event it may see exactly once and in log
order (`ORDER BY tx_id, global_position`), whether each instance follows the log itself or they
share Redis; through a Redis restart, the loss of the instance that relays into Redis, and a
reconnect to another instance with `after=` or `Last-Event-ID`.

The instances run in threads of their own (`running_service`), or, to be killed outright, in a
process of their own; the test's event loop keeps reading every client while commands go through
the instances in turn.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import redis
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from api.auth import Role
from api.config import PROJECT_ROOT
from live.feed import Link

from .conftest import SECRET, free_port, running_service, token
from .support import fresh_symbol

DELIVERY_SECONDS = 10.0
"""How long the clients may take to receive what was committed (failovers included)."""
QUIET_SECONDS = 0.3
"""After the last expected event: time for a duplicate or a stray event to show up."""


# -- the log as the database has it ----------------------------------------------------------------


@dataclass(frozen=True)
class Logged:
    position: int
    stream_id: str
    event_type: str
    owner: str | None
    """Whose position the event belongs to; None: market prices."""


_LOG = """
SELECT e.global_position, e.stream_id, e.event_type, o.data->>'owner' AS owner
FROM events e
LEFT JOIN events o
       ON o.stream_id = e.stream_id AND o.stream_version = 1 AND e.stream_id LIKE 'position-%'
ORDER BY e.tx_id, e.global_position
"""


async def read_log(database_url: str) -> list[Logged]:
    """Every event, in log order."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(_LOG)
    finally:
        await connection.close()
    return [Logged(*row) for row in rows]


def visible(event: Logged, owner: str | None) -> bool:
    """Whether a reader confined to `owner` (None: everything) is shown the event."""
    return owner is None or event.owner is None or event.owner == owner


def owed(
    log: Sequence[Logged],
    after: int,
    owner: str | None,
    wants: Callable[[Logged], bool] = lambda event: True,
) -> list[int]:
    """The positions a reader that saw up to `after` is owed, in log order."""
    start = 0
    if after:
        start = 1 + next(i for i, event in enumerate(log) if event.position == after)
    return [e.position for e in log[start:] if visible(e, owner) and wants(e)]


# -- live clients ----------------------------------------------------------------------------------


class Reader(abc.ABC):
    """A live client that records what it receives, in a task of its own."""

    name: str
    owner: str | None
    after: int
    wants: Callable[[Logged], bool]
    task: asyncio.Task[None]

    @property
    @abc.abstractmethod
    def positions(self) -> list[int]: ...

    def expected(self, log: Sequence[Logged]) -> list[int]:
        return owed(log, self.after, self.owner, self.wants)

    @property
    def ended(self) -> bool:
        return self.task.done()


class LiveSocket(Reader):
    """`WS /ws/positions`: every message received, in order."""

    def __init__(self, name: str, connection: ClientConnection, owner: str | None) -> None:
        self.name = name
        self.connection = connection
        self.owner = owner
        self.after = 0
        self.wants = lambda event: True
        self.messages: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.connection:
                self.messages.append(json.loads(raw))

    @property
    def events(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] != "initial_data"]

    @property
    def positions(self) -> list[int]:
        return [m["position"] for m in self.events]

    @property
    def close_code(self) -> int | None:
        return self.connection.close_code

    async def close(self) -> None:
        await self.connection.close()
        await self.task


class LiveEvents(Reader):
    """`GET /events/stream`: every event received (id, event, data), in order."""

    def __init__(
        self,
        name: str,
        client: httpx.AsyncClient,
        url: str,
        owner: str | None,
        after: int,
        headers: dict[str, str] | None = None,
        wants: Callable[[Logged], bool] = lambda event: True,
    ) -> None:
        self.name = name
        self.owner = owner
        self.after = after
        self.wants = wants
        self.events: list[dict[str, Any]] = []
        self.opened = asyncio.Event()
        self.status: int | None = None
        self.task = asyncio.create_task(self._read(client, url, headers or {}))

    async def _read(self, client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> None:
        with contextlib.suppress(httpx.HTTPError):
            async with client.stream("GET", url, headers=headers) as response:
                self.status = response.status_code
                self.opened.set()
                fields: dict[str, str] = {}
                async for line in response.aiter_lines():
                    if line.startswith(":"):
                        continue
                    if line:
                        name, _, value = line.partition(":")
                        fields[name] = value.removeprefix(" ")
                        continue
                    if "id" in fields:
                        self.events.append(
                            {
                                "id": int(fields["id"]),
                                "event": fields["event"],
                                "data": json.loads(fields["data"]),
                            }
                        )
                    fields = {}
        self.opened.set()

    @property
    def positions(self) -> list[int]:
        return [e["id"] for e in self.events]

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def ws_url(base: str, subject: str, role: Role, after: int | None = None) -> str:
    url = base.replace("http://", "ws://") + f"/ws/positions?token={token(subject, role)}"
    return url if after is None else f"{url}&after={after}"


async def open_socket(
    stack: AsyncExitStack,
    name: str,
    base: str,
    subject: str,
    role: Role,
    after: int | None = None,
) -> LiveSocket:
    """A socket on the instance at `base`; without `after`, once its initial data came."""
    connection = await connect(ws_url(base, subject, role, after), max_size=None)
    owner = None if role in (Role.ADMIN, Role.SERVICE) else subject
    socket = LiveSocket(name, connection, owner)
    stack.push_async_callback(socket.close)
    if after is None:
        await until(lambda: bool(socket.messages) or socket.ended, f"{name}: initial data")
        first = socket.messages[0]
        assert first["type"] == "initial_data", first
        socket.after = first["position"]
    else:
        socket.after = after
    return socket


async def open_events(
    stack: AsyncExitStack,
    name: str,
    base: str,
    subject: str,
    role: Role,
    *,
    after: int,
    resume_header: bool = False,
    query: str = "",
    wants: Callable[[Logged], bool] = lambda event: True,
) -> LiveEvents:
    """The event stream from `after`, as `?after=` or (resume_header) as `Last-Event-ID`."""
    client = httpx.AsyncClient(
        base_url=base,
        timeout=httpx.Timeout(10, read=None),
        headers={"Authorization": f"Bearer {token(subject, role)}"},
    )
    stack.push_async_callback(client.aclose)
    headers = {"Last-Event-ID": str(after)} if resume_header else {}
    url = "/events/stream?" + "&".join(
        part for part in (query, "" if resume_header else f"after={after}") if part
    )
    owner = None if role in (Role.ADMIN, Role.SERVICE) else subject
    events = LiveEvents(name, client, url, owner, after, headers, wants)
    stack.push_async_callback(events.close)
    await asyncio.wait_for(events.opened.wait(), 10)
    assert events.status == 200, f"{name}: {events.status}"
    return events


# -- waiting ---------------------------------------------------------------------------------------


async def until(
    condition: Callable[[], bool], what: str, timeout: float = 10.0, fail: bool = True
) -> None:
    """Until `condition` holds; after `timeout` seconds the test fails (or, fail=False, goes on)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            if fail:
                pytest.fail(f"timed out after {timeout} s waiting for {what}")
            return
        await asyncio.sleep(0.02)


async def delivered(
    readers: Sequence[Reader], log: Sequence[Logged], timeout: float = DELIVERY_SECONDS
) -> None:
    """Until every reader has as many events as it is owed (or the time is up), and a moment more.

    Returns either way: the caller compares the exact sequences, which says what went wrong.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline and any(len(r.positions) < len(r.expected(log)) for r in readers):
        await asyncio.sleep(0.02)
    await asyncio.sleep(QUIET_SECONDS)


def assert_exactly_owed(readers: Sequence[Reader], log: Sequence[Logged]) -> None:
    for reader in readers:
        expected = reader.expected(log)
        got = reader.positions
        assert got == expected, (
            f"{reader.name}: {len(got)} events received, {len(expected)} owed; "
            f"missing {sorted(set(expected) - set(got))}, "
            f"repeated {sorted({p for p in got if got.count(p) > 1})}, "
            f"unexpected {sorted(set(got) - set(expected))}"
        )


# -- instances -------------------------------------------------------------------------------------


def instance_env(
    database_url: str, redis_url: str | None = None, prefix: str | None = None
) -> dict[str, str]:
    env = {"DATABASE_URL": database_url}
    if redis_url is not None:
        assert prefix is not None
        env |= {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": prefix}
    return env


STOP_SECONDS = 5.0
"""How long an instance may take to stop before the test goes on without waiting for it."""


@asynccontextmanager
async def instance(env: dict[str, str]) -> AsyncIterator[str]:
    """`running_service`, started and stopped in a thread: the test's clients go on meanwhile.

    An instance that does not stop within STOP_SECONDS is left to finish (or hang) on its own.
    """
    service = running_service(env)
    base = await asyncio.to_thread(service.__enter__)
    try:
        yield base
    finally:
        stopping = threading.Thread(target=service.__exit__, args=(None, None, None), daemon=True)
        stopping.start()
        await until(lambda: not stopping.is_alive(), "", STOP_SECONDS, fail=False)


@contextmanager
def instance_process(env: dict[str, str], folder: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """The service in a process of its own (`python -m api serve`), so it can be killed outright."""
    port = free_port()
    full = {name: value for name, value in os.environ.items() if not name.startswith("JWT_")}
    full |= {
        **env,
        "JWT_SECRET": SECRET,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "DATA_DIR": str(folder),
        "DB_POOL_SIZE": "4",
    }
    with (folder / f"service-{port}.log").open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "api", "serve"],
            cwd=PROJECT_ROOT,
            env=full,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the service process did not start: see {folder}")
            time.sleep(0.05)
        yield base, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


class RedisProcess:
    """A redis-server of our own on a fixed port, that can be killed and started again there."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("no redis-server to start", pytrace=False)
        self.process = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port)]
            + ["--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("redis-server did not start", pytrace=False)
            time.sleep(0.02)

    def answers(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """Keys of this test's own in the machine's Redis; deleted at the end."""
    prefix = f"test-{uuid.uuid4().hex}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(f"{prefix}:live", f"{prefix}:live:relay")
    finally:
        client.close()


async def relay_lease(redis_url: str, prefix: str) -> bytes | None:
    """The token of whoever holds the relay lease; None when nobody does."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        return await client.get(f"{prefix}:live:relay")
    finally:
        await client.aclose()


async def until_relayed_by_new_holder(
    redis_url: str, prefix: str, former: bytes | None = None, timeout: float = 10.0
) -> bytes:
    """Until an instance (other than the holder of `former`) holds the relay lease: its token."""
    holder: bytes | None = None

    async def probe() -> None:
        nonlocal holder
        holder = await relay_lease(redis_url, prefix)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    await probe()
    while holder is None or holder == former:
        if loop.time() > deadline:
            pytest.fail(f"no new relay after {timeout} s (lease: {holder!r})")
        await asyncio.sleep(0.05)
        await probe()
    return holder


async def until_relay_reaches(
    redis_url: str, prefix: str, position: int, timeout: float = 15.0
) -> None:
    """Until the relay says, in the Redis stream, that it has relayed the log up to `position`."""
    client = aioredis.Redis.from_url(redis_url)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            newest = await client.xrevrange(f"{prefix}:live", count=1)
            if newest:
                link = msgspec.msgpack.decode(newest[0][1][b"link"], type=Link)
                at = link.prev if link.change is None else link.change.cursor
                if at.global_position == position:
                    return
            if loop.time() > deadline:
                pytest.fail(f"the relay did not reach position {position} in {timeout} s")
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def relayed(redis_url: str, prefix: str) -> list[int]:
    """The positions of the changes in the Redis stream, in stream order (heartbeats left out)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        entries = await client.xrange(f"{prefix}:live")
    finally:
        await client.aclose()
    links = [msgspec.msgpack.decode(fields[b"link"], type=Link) for _, fields in entries]
    return [link.change.global_position for link in links if link.change is not None]


# -- what the callers do ---------------------------------------------------------------------------


class Workload:
    """Commands of every kind, by two users, an admin and a price feed, through given instances.

    Command i is, by i % 5: the first user opens a position; the admin opens one for the second
    user; the price feed sets both symbols' prices; the first user amends all its positions in one
    atomic bulk update (one transaction, several events); the second user closes half a position.
    """

    def __init__(self, stack: AsyncExitStack) -> None:
        self._stack = stack
        self.users = [f"user-{uuid.uuid4().hex[:10]}" for _ in range(2)]
        self.admin = f"admin-{uuid.uuid4().hex[:10]}"
        self.service = f"service-{uuid.uuid4().hex[:10]}"
        self.symbols = [fresh_symbol(), fresh_symbol()]
        self.done = 0
        self._count = 0
        self._clients: dict[tuple[str, str], httpx.AsyncClient] = {}
        self._left: dict[str, int] = {}
        """The quantity still open of each of the second user's positions."""
        self.position_ids: dict[str, list[str]] = {user: [] for user in self.users}
        """Each user's positions, in the order they were opened."""

    def _http(self, base: str, subject: str, role: Role) -> httpx.AsyncClient:
        client = self._clients.get((base, subject))
        if client is None:
            client = httpx.AsyncClient(
                base_url=base,
                timeout=30,
                headers={"Authorization": f"Bearer {token(subject, role)}"},
            )
            self._stack.push_async_callback(client.aclose)
            self._clients[base, subject] = client
        return client

    async def run(self, count: int, through: Sequence[str], pause: float = 0.0) -> None:
        """`count` commands, two at a time (concurrently), through the instances in turn."""
        left = count
        while left > 0:
            pair = [self._next() for _ in range(min(2, left))]
            left -= len(pair)
            await asyncio.gather(*(self._command(i, through[i % len(through)]) for i in pair))
            if pause:
                await asyncio.sleep(pause)

    def _next(self) -> int:
        self._count += 1
        return self._count - 1

    async def _command(self, i: int, base: str) -> None:
        kind = i % 5
        first, second = self.users
        if kind == 0:
            http = self._http(base, first, Role.USER)
            response = await http.post("/positions", json=self._opening(self.symbols[0]))
            assert response.status_code == 201, response.text
            self.position_ids[first].append(response.json()["id"])
        elif kind == 1:
            http = self._http(base, self.admin, Role.ADMIN)
            body = {**self._opening(self.symbols[1]), "owner": second}
            response = await http.post("/positions", json=body)
            assert response.status_code == 201, response.text
            self._left[response.json()["id"]] = 10
            self.position_ids[second].append(response.json()["id"])
        elif kind == 2:
            http = self._http(base, self.service, Role.SERVICE)
            prices = {self.symbols[0]: 100 + i, self.symbols[1]: 50 + i}
            response = await http.post("/positions/update-prices", json=prices)
            assert response.status_code == 200, response.text
        elif kind == 3:
            http = self._http(base, first, Role.USER)
            mine = list(self.position_ids[first])
            body = {"position_ids": mine, "updates": {"notes": f"n{i}"}, "atomic": True}
            response = await http.post("/positions/bulk-update", json=body)
            assert response.status_code == 200, response.text
            assert len(response.json()["updated"]) == len(mine), response.text
        else:
            http = self._http(base, second, Role.USER)
            position_id = next(p for p, left in self._left.items() if left > 0)
            self._left[position_id] -= 5
            response = await http.post(
                f"/positions/{position_id}/close", params={"quantity": 5, "exit_price": 60 + i}
            )
            assert response.status_code == 200, response.text
        self.done += 1

    @staticmethod
    def _opening(symbol: str) -> dict[str, Any]:
        return {"symbol": symbol, "side": "long", "quantity": 10, "entry_price": 100}


def is_market(event: Logged) -> bool:
    return event.owner is None


# -- the tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("through_redis", [False, True], ids=["each-follows-the-log", "redis"])
async def test_clients_on_both_instances_get_every_event_once_in_log_order(
    database_url: str, redis_url: str, redis_prefix: str, through_redis: bool
) -> None:
    env = instance_env(database_url, redis_url if through_redis else None, redis_prefix)
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(instance(env))
        b = await stack.enter_async_context(instance(env))
        if through_redis:
            await until_relayed_by_new_holder(redis_url, redis_prefix)
        work = Workload(stack)
        first, second = work.users
        admin_a = await open_socket(stack, "admin@A", a, work.admin, Role.ADMIN)
        admin_b = await open_socket(stack, "admin@B", b, work.admin, Role.ADMIN)
        readers: list[Reader] = [
            admin_a,
            admin_b,
            await open_socket(stack, "first@A", a, first, Role.USER),
            await open_socket(stack, "first@B", b, first, Role.USER),
            await open_socket(stack, "second@B", b, second, Role.USER),
            await open_events(stack, "service-sse@A", a, work.service, Role.SERVICE, after=0),
            await open_events(stack, "service-sse@B", b, work.service, Role.SERVICE, after=0),
            await open_events(
                stack,
                "prices-sse@B",
                b,
                work.admin,
                Role.ADMIN,
                after=0,
                query="type=MarketPricesUpdated",
                wants=is_market,
            ),
            await open_events(stack, "first-sse@A", a, first, Role.USER, after=0),
        ]
        assert [admin_a.after, admin_b.after] == [0, 0]

        await work.run(50, [a, b])

        log = await read_log(database_url)
        assert len(log) > 50
        await delivered(readers, log)
        assert_exactly_owed(readers, log)
        # The same story on both instances, message for message.
        assert admin_a.events == admin_b.events
        if through_redis:  # the changes did go through Redis, each relayed once, in log order
            assert await relayed(redis_url, redis_prefix) == [e.position for e in log]

        # And a replay from the start on either instance tells it again.
        replays = [
            await open_socket(stack, "replay@A", a, work.admin, Role.ADMIN, after=0),
            await open_socket(stack, "replay@B", b, work.admin, Role.ADMIN, after=0),
        ]
        await delivered(replays, log)
        assert_exactly_owed(replays, log)
        assert replays[0].events == admin_a.events
        assert replays[1].events == admin_a.events


async def test_a_redis_restart_mid_stream_loses_no_event_and_repeats_none(
    database_url: str, redis_prefix: str
) -> None:
    server = RedisProcess()
    server.start()
    try:
        env = instance_env(database_url, server.url, redis_prefix)
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(instance(env))
            b = await stack.enter_async_context(instance(env))
            await until_relayed_by_new_holder(server.url, redis_prefix)
            work = Workload(stack)
            first, second = work.users
            readers: list[Reader] = [
                await open_socket(stack, "admin@A", a, work.admin, Role.ADMIN),
                await open_socket(stack, "admin@B", b, work.admin, Role.ADMIN),
                await open_socket(stack, "first@B", b, first, Role.USER),
                await open_socket(stack, "second@A", a, second, Role.USER),
                await open_events(stack, "service-sse@B", b, work.service, Role.SERVICE, after=0),
                await open_events(stack, "second-sse@A", a, second, Role.USER, after=0),
            ]

            # Redis goes away in the middle of a burst of commands through both instances.
            burst = asyncio.create_task(work.run(20, [a, b], pause=0.05))
            await until(lambda: work.done >= 8, "the first commands of the burst")
            server.kill()
            await burst
            # Without Redis, each instance follows the log itself: nothing waits for Redis.
            log = await read_log(database_url)
            await delivered(readers, log)
            assert_exactly_owed(readers, log)

            # Redis comes back, empty, on the same port in the middle of another burst.
            burst = asyncio.create_task(work.run(20, [a, b], pause=0.05))
            await until(lambda: work.done >= 28, "the first commands of the second burst")
            await asyncio.to_thread(server.start)
            await burst
            log = await read_log(database_url)
            await until_relay_reaches(server.url, redis_prefix, log[-1].position)
            await work.run(10, [a, b])

            before = len(log)
            log = await read_log(database_url)
            await delivered(readers, log, timeout=5)  # the relay is there: no failover to wait for
            assert_exactly_owed(readers, log)
            # The instances went back to Redis: the last changes came through it.
            last = [e.position for e in log[before:]]
            assert [p for p in await relayed(server.url, redis_prefix) if p in last] == last
    finally:
        server.stop()


@pytest.mark.parametrize("how", ["stopped", "killed-and-its-stream-lost"])
async def test_when_the_relaying_instance_goes_away_another_relays_and_nothing_is_lost(
    database_url: str, redis_url: str, redis_prefix: str, how: str, tmp_path: Path
) -> None:
    env = instance_env(database_url, redis_url, redis_prefix)
    async with AsyncExitStack() as stack:
        # A starts alone, so the lease is A's: A is the relay.
        relay = AsyncExitStack()
        stack.push_async_callback(relay.aclose)
        if how == "stopped":
            a = await relay.enter_async_context(instance(env))
            go_away = relay.aclose
        else:
            a, process = relay.enter_context(instance_process(env, tmp_path))

            async def go_away() -> None:
                process.kill()
                await asyncio.to_thread(process.wait, 10)

        former = await until_relayed_by_new_holder(redis_url, redis_prefix)
        b = await stack.enter_async_context(instance(env))
        work = Workload(stack)
        first, second = work.users
        on_a = await open_socket(stack, "admin@A", a, work.admin, Role.ADMIN)
        readers: list[Reader] = [
            await open_socket(stack, "admin@B", b, work.admin, Role.ADMIN),
            await open_socket(stack, "first@B", b, first, Role.USER),
            await open_socket(stack, "second@B", b, second, Role.USER),
            await open_events(stack, "service-sse@B", b, work.service, Role.SERVICE, after=0),
        ]
        await work.run(10, [a, b])

        # A goes away in the middle of a burst through B, that goes on through the failover.
        burst = asyncio.create_task(work.run(30, [b], pause=0.1))
        await until(lambda: work.done >= 16, "the first commands of the burst")
        await go_away()
        if how == "killed-and-its-stream-lost":
            # Redis loses what A relayed, too (a failover to a replica that lagged): the next
            # relay starts at the log's head, and every instance reads what it missed from the log.
            client = aioredis.Redis.from_url(redis_url)
            try:
                await client.delete(f"{redis_prefix}:live")
            finally:
                await client.aclose()
        await until_relayed_by_new_holder(redis_url, redis_prefix, former)
        await burst
        await work.run(10, [b])

        log = await read_log(database_url)
        await delivered(readers, log)
        assert_exactly_owed(readers, log)
        # The socket on A got, until A went away, what it was owed, once each and in order.
        await until(lambda: on_a.ended, "the socket on A to close")
        assert on_a.positions == on_a.expected(log)[: len(on_a.positions)]


@pytest.mark.parametrize("through_redis", [False, True], ids=["each-follows-the-log", "redis"])
async def test_a_client_resumes_on_the_other_instance_exactly_where_it_left_off(
    database_url: str, redis_url: str, redis_prefix: str, through_redis: bool
) -> None:
    env = instance_env(database_url, redis_url if through_redis else None, redis_prefix)
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(instance(env))
        b = await stack.enter_async_context(instance(env))
        if through_redis:
            await until_relayed_by_new_holder(redis_url, redis_prefix)
        work = Workload(stack)
        first = work.users[0]
        # On A: clients that read a while, then leave.
        admin_a = await open_socket(stack, "admin@A", a, work.admin, Role.ADMIN)
        first_a = await open_socket(stack, "first@A", a, first, Role.USER)
        service_a = await open_events(
            stack, "service-sse@A", a, work.service, Role.SERVICE, after=0
        )
        await work.run(20, [a, b])
        log = await read_log(database_url)
        await delivered([admin_a, first_a, service_a], log)
        assert_exactly_owed([admin_a, first_a, service_a], log)
        for reader in (admin_a, first_a, service_a):
            await reader.close()
        # Where each left off: the last event it had, or, as if it had read no further, one from
        # the middle of what it had.
        admin_seen = admin_a.positions[-1]
        first_cut = len(first_a.positions) // 2
        first_seen = first_a.positions[first_cut]
        header_cut = len(service_a.positions) // 3
        header_seen = service_a.positions[header_cut]
        query_seen = service_a.positions[-1]

        await work.run(10, [a, b])  # while they are away
        readers: list[Reader] = [
            await open_socket(stack, "admin@B", b, work.admin, Role.ADMIN, after=admin_seen),
            await open_socket(stack, "first@B", b, first, Role.USER, after=first_seen),
            await open_events(
                stack,
                "service-sse@B (Last-Event-ID)",
                b,
                work.service,
                Role.SERVICE,
                after=header_seen,
                resume_header=True,
            ),
            await open_events(
                stack, "service-sse@B (after)", b, work.service, Role.SERVICE, after=query_seen
            ),
        ]
        await work.run(10, [a, b])  # and once they are back

        log = await read_log(database_url)
        await delivered(readers, log)
        assert_exactly_owed(readers, log)
        # What A had sent after the resume point, B sends again, message for message.
        _, first_b, header_b, _ = readers
        assert isinstance(first_b, LiveSocket) and isinstance(header_b, LiveEvents)
        again = first_a.events[first_cut + 1 :]
        assert again and first_b.events[: len(again)] == again
        again_events = service_a.events[header_cut + 1 :]
        assert again_events and header_b.events[: len(again_events)] == again_events


@pytest.mark.parametrize("through_redis", [False, True], ids=["each-follows-the-log", "redis"])
async def test_a_user_on_one_instance_sees_only_its_own_positions_made_through_the_other(
    database_url: str, redis_url: str, redis_prefix: str, through_redis: bool
) -> None:
    env = instance_env(database_url, redis_url if through_redis else None, redis_prefix)
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(instance(env))
        b = await stack.enter_async_context(instance(env))
        if through_redis:
            await until_relayed_by_new_holder(redis_url, redis_prefix)
        work = Workload(stack)
        first, second = work.users
        first_ws = await open_socket(stack, "first@B", b, first, Role.USER)
        second_ws = await open_socket(stack, "second@B", b, second, Role.USER)
        first_sse = await open_events(stack, "first-sse@B", b, first, Role.USER, after=0)
        admin_sse = await open_events(stack, "admin-sse@B", b, work.admin, Role.ADMIN, after=0)
        readers: list[Reader] = [first_ws, second_ws, first_sse, admin_sse]

        await work.run(25, [a])  # every command through A

        log = await read_log(database_url)
        await delivered(readers, log)
        assert_exactly_owed(readers, log)
        # Each user got its own positions and every price update, nothing of the other's.
        mine = set(work.position_ids[first])
        theirs = set(work.position_ids[second])
        assert mine and theirs
        prices = [e.position for e in log if is_market(e)]
        assert prices
        for socket, own, other in ((first_ws, mine, theirs), (second_ws, theirs, mine)):
            assert [m["position"] for m in socket.events if m["type"] == "price_update"] == prices
            shown = {m["data"]["id"] for m in socket.events if "data" in m}
            assert shown == own
            assert not any(position_id in json.dumps(socket.messages) for position_id in other)
        assert {e["data"]["position_id"] for e in first_sse.events} - {None} == mine
