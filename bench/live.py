"""Live updates benchmark: `WS /ws/positions` with up to 10,000 sockets, beside a bare WS app.

Server memory per connection, delivery delay at 1,000 and 10,000 sockets and under a sustained
load, and every message checked on every socket; setup, phases and targets: BENCHMARKS.md,
"Live updates".

    python -m bench.live [--connections 10000] [--users 1000] [--small-connections 1000]
                         [--clients 4] [--client raw|websockets] [--latency-commands 30]
                         [--sustain-seconds 25] [--sustain-rate 200] [--sustain-price-rate 10]
                         [--sustain-users 200] [--details FILE.json] [--keep] [--strict]
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import json
import platform
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from bench import harness
from bench.clients import HttpPool, RawSocket

ADMIN = "bench-admin"
SYMBOLS = ["AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "META", "TSLA", "JPM"]
PER_USER = 10  # sockets per user
MEMORY_TARGET_KIB = 30.0
P99_TARGET_MS = {"small": 100.0, "large": 500.0}
DRIVER_CONNECTIONS = 32
HELD_SECONDS = 0.1  # a command whose event reached no socket within this was held up server-side
OPEN_CONCURRENCY = 32  # handshakes in flight per client process

Key = int | str  # a message's key: the event position of prices, "<id>/<version>" of a position


# -- the bare app (runs in its own uvicorn process) ---------------------------------------------


def create_bare_app() -> Any:
    """The baseline: Starlette WebSockets held in a dict, a publish endpoint that sends to them."""
    import orjson
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    by_user: dict[str, set[WebSocket]] = {}
    counter = [0]

    async def socket(websocket: WebSocket) -> None:
        user = websocket.query_params.get("user", "")
        await websocket.accept()
        initial = {"type": "initial_data", "positions": [], "position": counter[0]}
        await websocket.send_text(orjson.dumps(initial).decode())
        group = by_user.setdefault(user, set())
        group.add(websocket)
        try:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass
        finally:
            group.discard(websocket)

    async def send_all(targets: list[WebSocket], text: str) -> None:
        for websocket in targets:
            try:
                await websocket.send_text(text)
            except Exception:  # noqa: BLE001 - a client that left: the others still get it
                pass

    async def publish(request: Request) -> Response:
        body = orjson.loads(await request.body())
        counter[0] += 1
        owner = body.get("owner")
        message: dict[str, Any] = {
            "type": body["type"],
            "position": counter[0],
            "timestamp": datetime.now(UTC).isoformat(),
            "event_type": body["event_type"],
        }
        answer: dict[str, Any] = {"position": counter[0]}
        if "data" in body:
            message["data"] = body["data"]
            answer.update(id=body["data"]["id"], version=body["data"]["version"])
        else:
            message["prices"] = body["prices"]
        if owner is None:
            targets = [w for group in by_user.values() for w in group]
        else:
            targets = list(by_user.get(owner, ()))
        return Response(
            orjson.dumps(answer),
            media_type="application/json",
            background=BackgroundTask(send_all, targets, orjson.dumps(message).decode()),
        )

    async def health(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(
        routes=[
            WebSocketRoute("/ws/positions", socket),
            Route("/bare/publish", publish, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ]
    )


def serve_bare(port: int) -> int:
    import uvicorn

    from api.cli import SERVER_OPTIONS

    app = "bench.live:create_bare_app"
    uvicorn.run(
        app, factory=True, host="127.0.0.1", port=port, log_level="warning", **SERVER_OPTIONS
    )
    return 0


# -- the client processes ------------------------------------------------------------------------


class _Data(msgspec.Struct):
    id: str
    version: int
    owner: str


class _Message(msgspec.Struct):
    type: str
    position: int
    data: _Data | None = None


_decode_message = msgspec.json.Decoder(_Message).decode


class Received:
    """What a socket received: (arrival, event position, key) of each message, and how many
    were about another user's position."""

    def __init__(self, sid: int, user: str) -> None:
        self.sid, self.user = sid, user
        self.records: list[tuple[float, int, Key]] = []
        self.foreign = 0

    def note(self, message: _Message, arrived: float) -> None:
        data = message.data
        key: Key = message.position
        if data is not None:
            key = f"{data.id}/{data.version}"
            if data.owner != self.user:
                self.foreign += 1
        self.records.append((arrived, message.position, key))


class _RawSocket(RawSocket, Received):
    """A socket of bench.clients' cheap client."""

    def __init__(self, sid: int, user: str, host: str, path: str) -> None:
        RawSocket.__init__(self, host, path)
        Received.__init__(self, sid, user)

    def message(self, text: bytes, arrived: float) -> None:
        message = _decode_message(text)
        if not self.opened.done():
            self.initial(message.type, message.position)
        else:
            self.note(message, arrived)


class _WsSocket(Received):
    """A socket of websockets' asyncio client (--client websockets), read by a task."""

    def __init__(self, sid: int, user: str, ws: Any) -> None:
        super().__init__(sid, user)
        self.ws = ws
        self.closing = False  # we are closing it
        self.closed: int | None = None  # the server closed it, with this code
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for raw in self.ws:
                self.note(_decode_message(raw), time.monotonic())
        except ConnectionClosed:
            pass
        except Exception as error:  # noqa: BLE001 - an unexpected message: counted as a close
            print(f"client: socket {self.sid}: {error!r}", file=sys.stderr)
        if not self.closing:
            self.closed = self.ws.close_code if self.ws.close_code is not None else 1006

    async def close(self) -> None:
        self.closing = True
        try:
            await asyncio.wait_for(self.ws.close(), 10)
        except Exception:  # noqa: BLE001
            self.ws.transport.abort()
        await asyncio.gather(self.task, return_exceptions=True)

    def abort(self) -> None:
        self.closing = True
        self.ws.transport.abort()


async def _open_raw(sid: int, user: str, url: str) -> _RawSocket:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    sock = _RawSocket(sid, user, parts.netloc, f"{parts.path}?{parts.query}")
    try:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: sock, parts.hostname, parts.port)
        await asyncio.wait_for(sock.opened, 120)
    except Exception as error:
        sock.abort()
        raise RuntimeError(f"open: {error!r}") from error
    return sock


async def _open_ws(sid: int, user: str, url: str) -> _WsSocket:
    from websockets.asyncio.client import connect

    try:
        ws = await connect(
            url,
            compression=None,
            max_size=4 * 1024 * 1024,
            max_queue=64,
            ping_interval=None,
            close_timeout=5,
            open_timeout=120,
            proxy=None,
            user_agent_header=None,
        )
    except Exception as error:
        raise RuntimeError(f"connect: {error!r}") from error
    try:
        first = _decode_message(await asyncio.wait_for(ws.recv(), 120))
        if first.type != "initial_data":
            raise RuntimeError(f"first message {first.type}")
    except Exception as error:
        ws.transport.abort()
        raise RuntimeError(f"initial data: {error!r} (close code {ws.close_code})") from error
    return _WsSocket(sid, user, ws)


class Holder:
    """The sockets of one client process; each method answers one request of the coordinator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.sockets: dict[int, Any] = {}  # _RawSocket or _WsSocket

    async def open(self, arg: dict[str, Any]) -> dict[str, Any]:
        gate, errors = asyncio.Semaphore(arg["concurrency"]), []
        opener = _open_raw if self.kind == "raw" else _open_ws

        async def one(sid: int, user: str, url: str) -> None:
            async with gate:
                try:
                    self.sockets[sid] = await opener(sid, user, url)
                except RuntimeError as error:
                    errors.append(str(error))

        started = time.monotonic()
        await asyncio.gather(*(one(*socket) for socket in arg["sockets"]))
        return {
            "opened": len(arg["sockets"]) - len(errors),
            "errors": errors[:3],
            "failed": len(errors),
            "seconds": time.monotonic() - started,
        }

    async def close(self, sids: list[int] | None) -> int:
        gate = asyncio.Semaphore(64)
        chosen = list(self.sockets.values()) if sids is None else [self.sockets[s] for s in sids]

        async def one(sock: Any) -> None:
            async with gate:
                await sock.close()

        await asyncio.gather(*(one(sock) for sock in chosen))
        for sock in chosen:
            del self.sockets[sock.sid]
        return len(chosen)

    async def clear(self, _: None) -> int:
        for sock in self.sockets.values():
            sock.records.clear()
            sock.foreign = 0
        return len(self.sockets)

    async def count(self, _: None) -> dict[str, Any]:
        socks = self.sockets.values()
        return {
            "received": sum(len(s.records) for s in socks),
            "open": sum(1 for s in socks if s.closed is None),
            "closed": dict(Counter(s.closed for s in socks if s.closed is not None)),
        }

    async def collect(self, arg: dict[str, Any]) -> dict[str, Any]:
        """Every socket checked against what the commands made (`prices` for every socket,
        `own` per user), in the log's order (`rank`), and each delivery's delay."""
        times: dict[Key, float] = arg["times"]
        prices = frozenset(arg["prices"])
        own: dict[str, list[str]] = arg["own"]
        rank: dict[int, int] | None = arg["rank"]
        expected_of: dict[str, frozenset] = {}
        delays: dict[Key, array] = {}
        totals: Counter[str] = Counter()
        closed: Counter[int] = Counter()
        last = None
        for sock in self.sockets.values():
            expected = expected_of.get(sock.user)
            if expected is None:
                expected = expected_of[sock.user] = prices | frozenset(own.get(sock.user, ()))
            seen: set[Key] = set()
            previous, unexpected = -1, 0
            for arrived, position, key in sock.records:
                totals["received"] += 1
                last = arrived if last is None or arrived > last else last
                if key in seen:
                    totals["duplicate"] += 1
                    continue
                seen.add(key)
                if key not in expected:
                    unexpected += 1
                order = position if rank is None else rank.get(position)
                if order is not None:
                    if order <= previous:
                        totals["out_of_order"] += 1
                    previous = order
                answered = times.get(key)
                if answered is not None:
                    delays.setdefault(key, array("d")).append(arrived - answered)
            totals["unexpected"] += unexpected
            totals["foreign"] += sock.foreign
            missing = len(expected) - (len(seen) - unexpected)
            if sock.closed is None:
                totals["missing"] += missing
            else:
                totals["missing_closed"] += missing
                closed[sock.closed] += 1
        return {
            "totals": dict(totals),
            "closed": dict(closed),
            "sockets": len(self.sockets),
            "last": last,
            "delays": {key: values.tobytes() for key, values in delays.items()},
        }

    def abort(self) -> None:
        for sock in self.sockets.values():
            sock.abort()


async def _serve(index: int, config: dict[str, Any], commands: Any, out: Any) -> None:
    holder = Holder(config["kind"])
    while True:
        op, arg = await harness.receive(commands)
        if op not in Clients.OPS:  # "exit"
            holder.abort()
            return
        out.put((op, "ws", index, await getattr(holder, op)(arg)))


def client_main(index: int, config: dict[str, Any], commands: Any, out: Any) -> None:
    """A client process: holds sockets, answers the coordinator's requests."""
    harness.child_loop(lambda: _serve(index, config, commands, out))


class Clients(harness.Children):
    """The client processes, asked all at once; each answers for its own sockets."""

    OPS = ("open", "close", "clear", "count", "collect")
    TIMEOUT = 900.0  # opening or checking 10,000 sockets on a busy machine

    def __init__(self, count: int, kind: str) -> None:
        from bench.live import client_main as target  # importable by name from a spawned child

        super().__init__()
        for index in range(count):
            self.start("ws", index, target, {"kind": kind})

    def __len__(self) -> int:
        return len(self.processes)

    async def call(self, op: str, args: list[Any] | None = None) -> list[Any]:
        for index, arg in enumerate(args if args is not None else [None] * len(self)):
            self.send("ws", op, arg, index)
        replies = await self.gather(op, "ws", len(self), self.TIMEOUT)
        return [replies[index] for index in range(len(self))]

    def rss_mib(self) -> float:
        return sum(harness.process_memory_kib(pid) or 0 for pid in self.pids) / 1024


# -- servers under test --------------------------------------------------------------------------


class Book:
    """Positions the driver knows per user (id -> version) and those with a command in flight."""

    def __init__(self) -> None:
        self.open: dict[str, dict[str, int]] = defaultdict(dict)
        self.busy: set[str] = set()

    def idle_positions(self, user: str) -> list[str]:
        return [p for p in self.open.get(user, ()) if p not in self.busy]


@dataclass
class Command:
    kind: str  # price, create, update, close; "pick": a position command chosen at its time
    user: str | None  # whose position (None: prices)
    position_id: str | None = None


def price_body(i: int) -> dict[str, float]:
    """Five of the eight symbols, a new price each time."""
    chosen = [SYMBOLS[(i + k) % len(SYMBOLS)] for k in range(5)]
    return {s: round(100 + (i * 7 + k) % 5000 / 100, 2) for k, s in enumerate(chosen)}


class Target(abc.ABC):
    """A server under test: how to reach it and how to say each command to it."""

    name = ""
    service = False

    def __init__(self, server: harness.Server, tokens: dict[str, str]) -> None:
        self.server = server
        self.tokens = tokens
        self.http = HttpPool(server.port, DRIVER_CONNECTIONS)
        self.book = Book()

    @property
    def pid(self) -> int:
        return self.server.pid

    @abc.abstractmethod
    def ws_url(self, user: str) -> str: ...

    @abc.abstractmethod
    def request(self, command: Command, i: int) -> tuple[str, str, str, bytes]: ...

    def key_of(self, command: Command, answer: dict[str, Any]) -> Key:
        """The message key of the event the command made, from its answer; updates the book."""
        if command.kind == "price":
            return int(answer["position"])
        position_id, version = str(answer["id"]), int(answer["version"])
        assert command.user is not None
        if command.kind == "close":
            self.book.open[command.user].pop(position_id, None)
        else:
            self.book.open[command.user][position_id] = version
        return f"{position_id}/{version}"

    async def send(self, command: Command, i: int) -> tuple[Key | None, float, float]:
        """(key or None when refused, seconds from writing the request to reading the answer,
        when the answer was read)"""
        method, path, token, body = self.request(command, i)
        if command.position_id is not None:
            self.book.busy.add(command.position_id)
        try:
            status, data, started, done = await self.http.request(method, path, token, body)
        finally:
            if command.position_id is not None:
                self.book.busy.discard(command.position_id)
        if status >= 300:
            print(f"  {self.name}: {method} {path} answered {status}: {data[:200]!r}")
            return None, done - started, done
        return self.key_of(command, json.loads(data)), done - started, done


class ServiceTarget(Target):
    name = "service"
    service = True

    def ws_url(self, user: str) -> str:
        return f"ws://127.0.0.1:{self.server.port}/ws/positions?token={self.tokens[user]}"

    def request(self, command: Command, i: int) -> tuple[str, str, str, bytes]:
        if command.kind == "price":
            body = json.dumps(price_body(i)).encode()
            return "POST", "/positions/update-prices", self.tokens[ADMIN], body
        assert command.user is not None
        token = self.tokens[command.user]
        if command.kind == "create":
            position = {
                "symbol": SYMBOLS[i % len(SYMBOLS)],
                "side": "long" if i % 3 else "short",
                "quantity": 10 + i % 7,
                "entry_price": 100,
                "strategy": "bench",
            }
            return "POST", "/positions", token, json.dumps(position).encode()
        if command.kind == "update":
            body = json.dumps({"current_price": round(100 + (i % 100_000) / 1000, 3)}).encode()
            return "PUT", f"/positions/{command.position_id}", token, body
        exit_price = round(100 + (i % 1000) / 100, 2)
        return "POST", f"/positions/{command.position_id}/close?exit_price={exit_price}", token, b""


# The bare app's position messages carry a position as the service renders it (taken from the
# service's own answers during the run), so that both send messages of the same size.
_FALLBACK_VIEW: dict[str, Any] = json.loads(
    '{"id": "", "owner": "", "symbol": "AAPL", "side": "long", "quantity": 10, "entry_price": 100,'
    ' "current_price": 101.5, "stop_loss": null, "take_profit": null, "strategy": "bench",'
    ' "notes": null, "status": "open", "market_value": 1015, "unrealized_pnl": 15,'
    ' "unrealized_pnl_pct": 1.5, "realized_pnl": 0, "closed_quantity": 0, "exit_price": null,'
    ' "opened_at": "2026-01-01T00:00:00.000000Z", "closed_at": null,'
    ' "created_at": "2026-01-01T00:00:00.000000Z", "updated_at": "2026-01-01T00:00:00.000000Z",'
    ' "version": 1}'
)


class BareTarget(Target):
    name = "bare"
    view: dict[str, Any] = _FALLBACK_VIEW

    def ws_url(self, user: str) -> str:
        port, token = self.server.port, self.tokens[user]
        return f"ws://127.0.0.1:{port}/ws/positions?user={user}&token={token}"

    def request(self, command: Command, i: int) -> tuple[str, str, str, bytes]:
        if command.kind == "price":
            body: dict[str, Any] = {
                "owner": None,
                "type": "price_update",
                "event_type": "MarketPricesUpdated",
                "prices": price_body(i),
            }
            return "POST", "/bare/publish", self.tokens[ADMIN], json.dumps(body).encode()
        assert command.user is not None
        if command.kind == "create":
            position_id, version = str(uuid.uuid4()), 1
            kinds = ("position_created", "PositionOpened")
        else:
            assert command.position_id is not None
            position_id = command.position_id
            version = self.book.open[command.user][position_id] + 1
            kinds = (
                ("position_updated", "PositionMarked")
                if command.kind == "update"
                else ("position_closed", "PositionClosed")
            )
        data = {**self.view, "id": position_id, "owner": command.user, "version": version}
        body = {"owner": command.user, "type": kinds[0], "event_type": kinds[1], "data": data}
        return "POST", "/bare/publish", self.tokens[command.user], json.dumps(body).encode()


# -- measuring ------------------------------------------------------------------------------------


class BarrierWatch:
    """The longest-lived write transaction of OTHER databases of the PostgreSQL server, sampled.

    The event store's readers read only below the oldest open writing transaction of the whole
    server (README, "The barrier is server-wide"): another database's long transaction holds the
    service's live feed back until it ends. The bare app does not care. On a shared machine this
    tells a stall caused by someone else's transaction from the service's own.
    """

    QUERY = (
        "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)), 0) "
        "FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND datname IS DISTINCT FROM $1"
    )

    def __init__(self, admin: asyncpg.Connection, database: str) -> None:
        self._admin, self._database = admin, database
        self.longest = 0.0
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while not self._stopping.is_set():
            age = await self._admin.fetchval(self.QUERY, self._database)
            self.longest = max(self.longest, float(age))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.05)

    async def stop(self) -> None:
        """Lets the query in flight end: cancelled, it would leave the shared connection busy
        ("another operation is in progress") for the next user of it."""
        self._stopping.set()
        await self._task


@dataclass
class Delivery:
    """What the clients saw of one phase's commands."""

    sockets: int
    commands: int
    refused: int
    by_command: dict[Key, list[float]]
    """Every delivery delay (s) of each command's event, by message key."""
    totals: dict[str, int]
    closed: dict[int, int]
    http_ms: list[float]
    cpu: Any  # harness.Cores: server, db, clients; own = the driver
    foreign_writer_ms: float  # the longest write transaction of another database seen meanwhile
    seconds: float  # from the first command to the last message
    answered_seconds: float  # from the first command's time slot to the last answer
    events: int | None = None  # events the log gained (the service)
    late_slots: int = 0  # commands the driver sent more than 50 ms after their time
    issued: dict[Key, dict[str, Any]] = field(default_factory=dict)

    def details(self) -> list[dict[str, Any]]:
        """Per command: what it was, when it was answered, how its deliveries went (ms)."""
        rows = []
        for key, info in self.issued.items():
            values = sorted(self.by_command.get(key, ()))
            chosen = [values[0], harness.percentile(values, 50), values[-1]] if values else []
            first, p50, last = [round(v * 1e3, 2) for v in chosen] or [None] * 3
            figures = {"first_ms": first, "p50_ms": p50, "last_ms": last}
            rows.append({"key": key, **info, "deliveries": len(values), **figures})
        return sorted(rows, key=lambda row: row["slot_s"])

    def _delays(self, keep: Callable[[Key], bool] = lambda key: True) -> list[float]:
        return sorted(d for k, v in self.by_command.items() if keep(k) for d in v)

    @property
    def delays(self) -> list[float]:
        return self._delays()

    @property
    def price_delays(self) -> list[float]:
        return self._delays(lambda key: isinstance(key, int))

    @property
    def own_delays(self) -> list[float]:
        return self._delays(lambda key: isinstance(key, str))

    @property
    def held(self) -> list[Key]:
        """Commands whose event reached no socket within HELD_SECONDS: held before the fan-out."""
        return [k for k, v in self.by_command.items() if v and min(v) > HELD_SECONDS]

    def delays_without_held(self) -> list[float]:
        held = set(self.held)
        return self._delays(lambda key: key not in held)

    def p(self, q: float, values: list[float] | None = None) -> float | None:
        """A percentile of the delays, in ms."""
        values = self.delays if values is None else values
        return harness.percentile(values, q) * 1e3 if values else None

    def describe(self) -> str:
        delays = self.delays
        if not delays:
            return "no message matched"
        return (
            f"{len(delays):,} deliveries, p50 {self.p(50):.1f} ms, p99 {self.p(99):.1f} ms, max "
            f"{delays[-1] * 1e3:.1f} ms; {len(self.held)} of {len(self.by_command)} commands "
            f"held > {HELD_SECONDS * 1e3:.0f} ms; server {self.cpu['server']:.2f} cores"
        )


@dataclass
class TargetResult:
    name: str
    rss_start_kib: int | None = None
    rss_before_kib: int | None = None
    rss_small_kib: int | None = None
    rss_large_kib: int | None = None
    rss_closed_kib: int | None = None
    hwm_kib: int | None = None
    small: int = 0
    large: int = 0
    open_seconds: dict[str, float] = field(default_factory=dict)
    open_failed: int = 0
    phases: dict[str, Delivery] = field(default_factory=dict)

    def per_connection_kib(self, phase: str = "large") -> float | None:
        """(RSS with the phase's sockets - RSS before) / sockets."""
        rss, sockets = (
            (self.rss_small_kib, self.small)
            if phase == "small"
            else (self.rss_large_kib, self.large)
        )
        if rss is None or self.rss_before_kib is None or not sockets:
            return None
        return (rss - self.rss_before_kib) / sockets


async def settled_rss(pid: int, wait: float) -> int | None:
    """VmRSS after `wait` seconds: the median of 3 readings 0.5 s apart."""
    await asyncio.sleep(wait)
    readings = []
    for i in range(3):
        if i:
            await asyncio.sleep(0.5)
        value = harness.process_memory_kib(pid)
        if value is not None:
            readings.append(value)
    return int(statistics.median(readings)) if readings else None


@dataclass
class Issued:
    """What the driver saw of a phase's commands while it sent them."""

    begin: float
    times: dict[Key, float] = field(default_factory=dict)  # when each answer had been read
    prices: list[int] = field(default_factory=list)
    own: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    http_ms: list[float] = field(default_factory=list)
    details: dict[Key, dict[str, Any]] = field(default_factory=dict)  # for --details
    answered_last: float = 0.0
    refused: int = 0
    late: int = 0


class Run:
    """One server's phases, driven from this process."""

    def __init__(
        self,
        args: argparse.Namespace,
        target: Target,
        clients: Clients,
        admin: asyncpg.Connection,
        setup: asyncpg.Connection | None,
    ) -> None:
        self.args, self.target, self.clients = args, target, clients
        self.admin, self.setup = admin, setup
        self.meter = harness.CpuMeter(strict=False)
        self.rng = random.Random(f"{args.seed}-{target.name}")
        self.next_sid = 0
        self.counter = 0  # distinct command numbers (prices, entry prices)

    # -- sockets ---------------------------------------------------------------------------

    async def open_sockets(self, users: list[str]) -> tuple[int, int, float]:
        """PER_USER sockets for each user, spread over the clients; (opened, failed, seconds)."""
        per_client: list[list[tuple[int, str, str]]] = [[] for _ in range(len(self.clients))]
        for user in users:
            url = self.target.ws_url(user)
            for _ in range(PER_USER):
                sid = self.next_sid
                self.next_sid += 1
                per_client[sid % len(per_client)].append((sid, user, url))
        started = time.monotonic()
        replies = await self.clients.call(
            "open", [{"sockets": s, "concurrency": OPEN_CONCURRENCY} for s in per_client]
        )
        seconds = time.monotonic() - started
        for reply in replies:
            if reply["errors"]:
                name, failed, errors = self.target.name, reply["failed"], reply["errors"]
                print(f"  {name}: {failed} socket(s) failed: {errors}")
        return sum(r["opened"] for r in replies), sum(r["failed"] for r in replies), seconds

    async def close_all(self) -> None:
        await self.clients.call("close")
        self.check_alive("after closing the sockets")

    def check_alive(self, when: str) -> None:
        code = self.target.server.process.poll()
        if code is not None:
            raise RuntimeError(f"the {self.target.name} server exited with code {code} {when}")

    async def received(self) -> tuple[int, int]:
        replies = await self.clients.call("count")
        return sum(r["received"] for r in replies), sum(r["open"] for r in replies)

    async def wait_delivered(self, expected: int, quiet: float = 5.0, limit: float = 120.0) -> None:
        """Until the clients hold `expected` messages, or none came for `quiet` seconds."""
        started = last_change = time.monotonic()
        previous = -1
        while time.monotonic() - started < limit:
            got, _ = await self.received()
            if got >= expected:
                return
            if got != previous:
                previous, last_change = got, time.monotonic()
            elif time.monotonic() - last_change > quiet:
                print(f"  {self.target.name}: {got:,} of {expected:,} messages arrived")
                return
            await asyncio.sleep(0.1)

    # -- commands --------------------------------------------------------------------------

    def pick(self, users: list[str]) -> Command:
        user = self.rng.choice(users)
        idle = self.target.book.idle_positions(user)
        roll = self.rng.random()
        if not idle or roll < 0.35:
            return Command("create", user)
        return Command("update" if roll < 0.85 else "close", user, self.rng.choice(idle))

    async def log_position(self) -> int:
        if self.setup is None:
            return 0
        return await self.setup.fetchval("SELECT coalesce(max(global_position), 0) FROM events")

    async def log_order(self, after: int) -> dict[int, int] | None:
        """Rank of each event after `after` in the log's order (None: the bare app's numbers)."""
        if self.setup is None:
            return None
        rows = await self.setup.fetch(
            "SELECT global_position FROM events WHERE global_position > $1 "
            "ORDER BY tx_id, global_position",
            after,
        )
        return {row[0]: rank for rank, row in enumerate(rows)}

    async def issue(self, schedule: list[tuple[float, Command]], users: list[str]) -> Issued:
        """Send each command at its time (open loop), whatever the earlier ones did."""
        issued = Issued(time.monotonic() + 0.05)

        async def one(command: Command, number: int, slot: float) -> None:
            key, seconds, done = await self.target.send(command, number)
            issued.http_ms.append(seconds * 1e3)
            issued.answered_last = max(issued.answered_last, done)
            if key is None:
                issued.refused += 1
                return
            issued.times[key] = done
            issued.details[key] = {
                "kind": command.kind,
                "user": command.user,
                "slot_s": round(slot, 4),
                "answered_s": round(done - issued.begin, 4),
                "http_ms": round(seconds * 1e3, 2),
            }
            if isinstance(key, int):
                issued.prices.append(key)
            else:
                assert command.user is not None
                issued.own[command.user].append(key)

        tasks = []
        for at, command in schedule:
            delay = issued.begin + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.05:
                issued.late += 1
            if command.kind == "pick":
                command = self.pick(users)  # chosen at its time, from the positions idle then
            self.counter += 1
            tasks.append(asyncio.create_task(one(command, self.counter, at)))
        await asyncio.gather(*tasks)
        return issued

    async def drive(
        self, label: str, schedule: list[tuple[float, Command]], users: list[str], sockets: int
    ) -> Delivery:
        """Send the commands, wait for the messages, check every socket."""
        self.check_alive(f"before the {label} phase")
        await self.clients.call("clear")
        start_position = await self.log_position()
        backends = await self._backends()
        start = self.meter.read(server=[self.target.pid], db=backends, clients=self.clients.pids)
        barrier = BarrierWatch(self.admin, self.args.database)
        issued = await self.issue(schedule, users)
        own_keys = sum(len(keys) for keys in issued.own.values())
        await self.wait_delivered(len(issued.prices) * sockets + own_keys * PER_USER)
        await barrier.stop()  # before the meter, which asks the same connection
        cpu = self.meter.since(start, db=set(await self._backends()) | set(backends))
        rank = await self.log_order(start_position)
        events = None
        if self.setup is not None:
            events = await self.setup.fetchval(
                "SELECT count(*) FROM events WHERE global_position > $1", start_position
            )
        self.check_alive(f"during the {label} phase")
        check = {"times": issued.times, "prices": issued.prices, "own": dict(issued.own)}
        replies = await self.clients.call("collect", [check | {"rank": rank}] * len(self.clients))
        totals: Counter[str] = Counter()
        closed: Counter[int] = Counter()
        by_command: dict[Key, list[float]] = defaultdict(list)
        for reply in replies:
            totals.update(reply["totals"])
            closed.update(reply["closed"])
            for key, values in reply["delays"].items():
                by_command[key].extend(array("d", values))
        lasts = [reply["last"] for reply in replies if reply["last"] is not None]
        await self.clients.call("clear")
        return Delivery(
            sockets=sum(r["sockets"] for r in replies),
            commands=len(schedule),
            refused=issued.refused,
            by_command=dict(by_command),
            totals=dict(totals),
            closed=dict(closed),
            http_ms=sorted(issued.http_ms),
            cpu=cpu,
            foreign_writer_ms=barrier.longest * 1e3,
            seconds=(max(lasts) - issued.begin) if lasts else 0.0,
            answered_seconds=issued.answered_last - issued.begin,
            events=events,
            late_slots=issued.late,
            issued=issued.details,
        )

    async def _backends(self) -> list[int]:
        if not self.target.service:
            return []
        return await harness.backend_pids(self.admin, self.args.database)

    def latency_schedule(self, users: list[str], interval: float) -> list[tuple[float, Command]]:
        """Update-prices and creates by a random user, alternately, `interval` apart."""
        schedule = []
        for i in range(self.args.latency_commands):
            command = Command("create", self.rng.choice(users)) if i % 2 else Command("price", None)
            schedule.append((i * interval, command))
        return schedule

    def sustained_schedule(self) -> list[tuple[float, Command]]:
        """`--sustain-rate` commands a second, `--sustain-price-rate` of them update-prices."""
        rate, prices = self.args.sustain_rate, self.args.sustain_price_rate
        every = max(1, round(rate / prices)) if prices else 0
        kinds = [
            "price" if every and i % every == 0 else "pick"
            for i in range(int(rate * self.args.sustain_seconds))
        ]
        return [(i / rate, Command(kind, None)) for i, kind in enumerate(kinds)]

    # -- the phases ------------------------------------------------------------------------

    async def seed(self, users: list[str]) -> None:
        """The service: positions for every user, through the API; the bare app: invented."""
        per_user = self.args.positions_per_user
        if not self.target.service:
            for user in users:
                for _ in range(per_user):
                    self.target.book.open[user][str(uuid.uuid4())] = 1
            return
        gate = asyncio.Semaphore(16)

        async def create(user: str, n: int) -> None:
            async with gate:
                key, _, _ = await self.target.send(Command("create", user), n)
                if key is None:
                    raise RuntimeError(f"could not seed a position for {user}")

        started = time.monotonic()
        owners = [user for user in users for _ in range(per_user)]
        await asyncio.gather(*(create(user, n) for n, user in enumerate(owners)))
        key, _, _ = await self.target.send(Command("price", None), 0)
        if key is None:
            raise RuntimeError("could not post the first prices")
        # A position as the service renders it, for the bare app's messages to have its size.
        user = users[0]
        position_id = next(iter(self.target.book.open[user]))
        status, data, _, _ = await self.target.http.request(
            "GET", f"/positions/{position_id}", self.target.tokens[user]
        )
        if status == 200:
            BareTarget.view = json.loads(data)
        print(
            f"  seeded {len(users) * per_user:,} positions for {len(users):,} users in "
            f"{time.monotonic() - started:.1f} s",
            flush=True,
        )

    async def warm_up(self, users: list[str], result: TargetResult) -> None:
        """The code paths of a socket and of a command have run once; then the RSS before."""
        opened, failed, _ = await self.open_sockets(users[:1])
        key, _, _ = await self.target.send(Command("price", None), 0)
        await asyncio.sleep(0.5)
        await self.close_all()
        if failed or key is None:
            raise RuntimeError(f"{self.target.name}: the warm-up failed")
        result.rss_before_kib = await settled_rss(self.target.pid, 1.0)

    async def phase(self, result: TargetResult, label: str, *drive: Any) -> None:
        result.phases[label] = await self.drive(label, *drive)
        print(f"  {label}: {result.phases[label].describe()}", flush=True)

    async def run(self, users: list[str], small_users: list[str]) -> TargetResult:
        args, target, pid = self.args, self.target, self.target.pid
        result = TargetResult(target.name, rss_start_kib=harness.process_memory_kib(pid))
        print(f"\n{target.name} (pid {pid}, port {target.server.port})", flush=True)
        await self.seed(users)
        await self.warm_up(users, result)

        # Small: 1,000 sockets.
        opened, failed, seconds = await self.open_sockets(small_users)
        result.small, result.open_failed = opened, result.open_failed + failed
        result.open_seconds["small"] = seconds
        result.rss_small_kib = await settled_rss(pid, 2.0)
        print(f"  {opened:,} sockets open in {seconds:.1f} s", flush=True)
        schedule = self.latency_schedule(small_users, args.small_interval)
        await self.phase(result, "small", schedule, small_users, opened)

        # Large: 10,000 sockets.
        more, failed, seconds = await self.open_sockets(users[len(small_users) :])
        result.large = opened + more
        result.open_failed += failed
        result.open_seconds["large"] = seconds
        _, still_open = await self.received()
        result.rss_large_kib = await settled_rss(pid, 3.0)
        print(
            f"  {more:,} more sockets open in {seconds:.1f} s ({still_open:,} open); RSS "
            f"{(result.rss_large_kib or 0) / 1024:.0f} MiB, clients "
            f"{self.clients.rss_mib():.0f} MiB",
            flush=True,
        )
        schedule = self.latency_schedule(users, args.large_interval)
        await self.phase(result, "large", schedule, users, result.large)
        result.hwm_kib = harness.process_memory_kib(pid, "VmHWM")
        await self.close_all()
        result.rss_closed_kib = await settled_rss(pid, 2.0)

        # Sustained: 2,000 sockets, 200 commands a second.
        sustain_users = users[: args.sustain_users]
        opened, failed, seconds = await self.open_sockets(sustain_users)
        result.open_failed += failed
        await asyncio.sleep(1.0)
        await self.phase(result, "sustained", self.sustained_schedule(), sustain_users, opened)
        await self.close_all()
        return result


# -- the report -----------------------------------------------------------------------------------


def _ms(values: list[float], q: float | None) -> str:
    if not values:
        return "-"
    value = values[-1] if q is None else harness.percentile(values, q)
    return f"{value * 1e3:.1f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def print_memory(service: TargetResult, bare: TargetResult, small: int) -> None:
    harness.print_columns(
        "Server memory (VmRSS, MiB): at start; before = after a warm-up, no socket; with the small "
        "and the large number of sockets open and idle; after closing them all; peak (VmHWM).\n"
        "KiB per connection = (RSS with the sockets - RSS before) / sockets; opened/s over the "
        "second batch (the handshake and, for the service, the initial data query).",
        [
            ("server", lambda r: r.name),
            ("start", lambda r: _mib(r.rss_start_kib)),
            ("before", lambda r: _mib(r.rss_before_kib)),
            (f"{small:,} open", lambda r: _mib(r.rss_small_kib)),
            (f"{service.large:,} open", lambda r: _mib(r.rss_large_kib)),
            ("closed", lambda r: _mib(r.rss_closed_kib)),
            ("peak", lambda r: _mib(r.hwm_kib)),
            (f"KiB/conn @{small:,}", lambda r: harness.num(r.per_connection_kib("small"), ".1f")),
            ("sockets", lambda r: f"{r.large:,}"),
            ("KiB/conn", lambda r: harness.num(r.per_connection_kib(), ".1f")),
            ("opened/s", lambda r: f"{(r.large - r.small) / r.open_seconds.get('large', 1):,.0f}"),
            ("failed", lambda r: str(r.open_failed)),
        ],
        [service, bare],
    )


def delivery_rows(phase: str, r: TargetResult) -> list[list[str]]:
    """The delays of all messages, of prices, of the users' own positions, and without the held
    commands (when some were held); the CPU and foreign transactions on the first row."""
    d = r.phases[phase]
    held, commands = d.held, len(d.by_command)
    prices = sum(isinstance(k, int) for k in d.by_command)
    kinds = [
        ("all", d.delays, commands),
        ("prices (every socket)", d.price_delays, prices),
        ("own positions (10 sockets)", d.own_delays, commands - prices),
    ]
    if held:
        kinds.append(
            (f"all but the {len(held)} held", d.delays_without_held(), commands - len(held))
        )
    rows = []
    for what, values, count in kinds:
        figures = [_ms(values, 50), _ms(values, 99), _ms(values[:1], None), _ms(values, None)]
        rows.append(["", "", what, str(count), f"{len(values):,}", *figures, *[""] * 8])
    rows[0][:2] = [f"{phase} {r.name}", f"{d.sockets:,}"]
    rows[0][9:] = [
        str(len(held)),
        f"{harness.percentile(d.http_ms, 50):.1f}" if d.http_ms else "",
        f"{d.cpu['server']:.2f}",
        f"{d.cpu['db']:.2f}",
        f"{d.cpu['clients']:.2f}",
        f"{d.cpu.machine:.2f}",
        f"{d.cpu.other:.2f}{'*' if d.cpu.other > harness.DISTURBED else ''}",
        f"{d.foreign_writer_ms:,.0f}{'*' if d.foreign_writer_ms > 100 else ''}",
    ]
    return rows


def print_delivery(service: TargetResult, bare: TargetResult) -> None:
    phases = ("small", "large", "sustained")
    rows = [row for p in phases for r in (service, bare) for row in delivery_rows(p, r)]
    harness.print_table(
        "Delivery delay, ms: a message's arrival on a socket - the arrival of the answer of the "
        "command that made it; over every (socket, message) pair. held = commands whose event\n"
        f"reached no socket within {HELD_SECONDS * 1e3:.0f} ms (held up before the fan-out). "
        "HTTP ms: the commands' own answer times (p50). Cores used from the first command to the "
        "last message:\nserver process, its database backends, the client processes, the whole "
        f"machine, and of that anything else (* = more than {harness.DISTURBED} cores: other "
        "people's processes).\nforeign tx ms = the longest write transaction of another "
        "database of the PostgreSQL server seen during the phase (* = over 100 ms): the "
        "service's feed reads nothing newer until it ends.",
        "phase|sockets|messages|commands|pairs|p50|p99|min|max|held|HTTP ms|server|db|clients|"
        "machine|other|foreign tx ms".split("|"),
        rows,
    )


def sustained_row(r: TargetResult) -> list[str]:
    d, t = r.phases["sustained"], r.phases["sustained"].totals
    http = [f"{harness.percentile(d.http_ms, q):.1f}" if d.http_ms else "-" for q in (50, 99)]
    return [
        r.name,
        f"{d.sockets:,}",
        f"{(d.commands - d.refused) / d.answered_seconds:,.0f}",
        "-" if d.events is None else f"{d.events / d.answered_seconds:,.0f}",
        f"{t.get('received', 0) / d.seconds if d.seconds else 0:,.0f}",
        _ms(d.delays, 50),
        _ms(d.delays, 99),
        _ms(d.delays, None),
        *http,
        str(d.refused),
        str(d.late_slots),
        str(t.get("missing", 0)),
        str(t.get("duplicate", 0)),
        str(t.get("out_of_order", 0)),
        str(t.get("foreign", 0) + t.get("unexpected", 0)),
        ", ".join(f"{n} x {code}" for code, n in sorted(d.closed.items())) or "0",
        f"{d.cpu['server']:.2f}",
    ]


def print_sustained(args: argparse.Namespace, service: TargetResult, bare: TargetResult) -> None:
    harness.print_table(
        f"Sustained: {args.sustain_rate} commands/s for {args.sustain_seconds} s "
        f"({args.sustain_price_rate}/s update-prices to every socket, the rest on the users' own "
        f"positions). commands/s = 2xx answers / (first command's time to last answer); events/s: "
        f"events the log gained, same time; messages/s = messages received / (first command to "
        f"last message);\nHTTP = the commands' answer times (from writing the request to "
        f"reading the answer); late = commands sent > 50 ms "
        f"after their time; missing, duplicate, out of order (against the log's order), foreign "
        f"(another user's or not sent) are counted over every socket; closed = closed by the "
        f"server, with its code.",
        "server|sockets|commands/s|events/s|messages/s|p50 ms|p99 ms|max ms|HTTP p50|HTTP p99|"
        "refused|late|missing|dup|order|foreign|closed|server cores".split("|"),
        [sustained_row(service), sustained_row(bare)],
    )


def _figure_row(label: str, s: float | None, b: float | None, spec: str = ".1f") -> list[str]:
    """A targets row of information only: the service's figure, the bare app's, their ratio."""
    return [label, harness.num(s, spec), harness.num(b, spec), _ratio(s, b), "-", "info"]


def latency_rows(
    service: TargetResult, bare: TargetResult, small: int, verdicts: harness.Verdicts
) -> list[list[str]]:
    """Delivery p50 and p99 at the small and the large number of sockets, against the p99
    targets; then, where commands were held, p99 without them."""
    rows, phases = [], (("small", small), ("large", service.large))
    for phase, sockets in phases:
        for q in (50, 99):
            s, b = service.phases[phase].p(q), bare.phases[phase].p(q)
            row = _figure_row(f"delivery p{q}, {sockets:,} sockets (ms)", s, b)
            if q == 99:
                target = P99_TARGET_MS[phase]
                met = s is not None and s < target
                row[4:] = [f"< {target:.0f}", verdicts(met, f"p99 at {sockets:,}")]
            rows.append(row)
    for phase, sockets in phases:
        sd, bd = service.phases[phase], bare.phases[phase]
        if sd.held or bd.held:
            s, b = (d.p(99, d.delays_without_held()) for d in (sd, bd))
            row = _figure_row(f"delivery p99, {sockets:,}, without held commands (ms)", s, b)
            row[1:3] = [f"{row[1]} ({len(sd.held)} held)", f"{row[2]} ({len(bd.held)} held)"]
            rows.append(row)
    return rows


def sustained_rows(
    service: TargetResult, bare: TargetResult, verdicts: harness.Verdicts
) -> list[list[str]]:
    """The sustained phase's p99 and messages/s; every message exactly once, no socket closed."""
    s, b = service.phases["sustained"], bare.phases["sustained"]
    rates = [d.totals.get("received", 0) / d.seconds if d.seconds else None for d in (s, b)]
    bad = ("missing", "duplicate", "foreign", "unexpected")
    lost = [sum(d.totals.get(k, 0) for k in bad) for d in (s, b)]
    closed = [sum(d.closed.values()) for d in (s, b)]
    met = not lost[0] and not closed[0]
    return [
        _figure_row("sustained delivery p99 (ms)", s.p(99), b.p(99), ",.1f"),
        _figure_row("sustained messages/s", *rates, ",.1f"),
        [
            "sustained: messages lost, doubled or foreign; sockets closed",
            f"{lost[0]} ; {closed[0]}",
            f"{lost[1]} ; {closed[1]}",
            "-",
            "0 ; 0",
            verdicts(met, "every message exactly once, no socket closed"),
        ],
    ]


def print_targets(
    service: TargetResult, bare: TargetResult, small: int, verdicts: harness.Verdicts
) -> None:
    kib, bare_kib = service.per_connection_kib(), bare.per_connection_kib()
    memory = _figure_row(f"memory per connection, {service.large:,} sockets (KiB)", kib, bare_kib)
    memory[4:] = [
        f"< {MEMORY_TARGET_KIB:.0f}",
        verdicts(kib is not None and kib < MEMORY_TARGET_KIB, "memory per connection"),
    ]
    rows = [memory, *latency_rows(service, bare, small, verdicts)]
    harness.print_table(
        "Targets (ratio = service / bare)",
        ["figure", "service", "bare", "ratio", "target", "verdict"],
        rows + sustained_rows(service, bare, verdicts),
    )


def report(args: argparse.Namespace, results: dict[str, TargetResult], small: int) -> int:
    service, bare = results["service"], results["bare"]
    verdicts = harness.Verdicts()
    print_memory(service, bare, small)
    print_delivery(service, bare)
    print_sustained(args, service, bare)
    print_targets(service, bare, small, verdicts)
    verdicts.report()
    return 1 if verdicts.missed and args.strict else 0


# -- the run --------------------------------------------------------------------------------------


def start_servers(dsn: str, secret: str, token: str, logs: Path) -> list[harness.Server]:
    """The service (the default pool, no Redis: it follows the log itself) and the bare app."""
    service = harness.start_service(dsn, secret, token, logs)
    port = harness.free_port()
    argv = [sys.executable, "-m", "bench.live", "--serve-bare", "--port", str(port)]
    return [
        service,
        harness.Server("bare", argv, harness.server_env(), port, ("/health", token), logs),
    ]


def plan(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The users (PER_USER sockets each), and those of the small phase."""
    users = [f"bench-u{i:04d}" for i in range(args.connections // PER_USER)]
    small_users = users[: max(1, min(args.small_connections // PER_USER, len(users) // 2))]
    if len(small_users) * PER_USER != args.small_connections:
        print(f"note: small phase at {len(small_users) * PER_USER:,} sockets")
    args.sustain_users = min(args.sustain_users, len(users))
    return users, small_users


async def main(args: argparse.Namespace) -> int:
    from api.auth import Role

    started = time.monotonic()
    idle_load = await harness.machine_busy()
    users, small_users = plan(args)
    secret = secrets.token_urlsafe(48)
    roles = dict.fromkeys(users, Role.USER) | {ADMIN: Role.ADMIN}
    tokens = harness.mint_tokens(secret, roles, timedelta(hours=3))
    logs = Path(tempfile.mkdtemp(prefix="bench_live_"))
    source = harness.source_state()
    servers: list[harness.Server] = []
    clients: Clients | None = None
    targets: list[Target] = []
    async with harness.scratch_database(args.database, args.keep) as (admin, dsn):
        try:
            servers = start_servers(dsn, secret, tokens[ADMIN], logs)
            clients = Clients(args.clients, args.client)
            for server in servers:
                server.wait_ready()
            setup = await asyncpg.connect(dsn)
            try:
                await print_header(args, setup, source, len(users), len(small_users), idle_load)
                targets = [ServiceTarget(servers[0], tokens), BareTarget(servers[1], tokens)]
                results = {}
                for target, connection in zip(targets, (setup, None), strict=True):
                    run = Run(args, target, clients, admin, connection)
                    results[target.name] = await run.run(users, small_users)
            finally:
                await setup.close()
            code = report(args, results, len(small_users) * PER_USER)
            finish(args, results, servers, logs, started)
            return code
        except BaseException:
            for server in servers:
                code = server.process.poll()
                if code is not None:
                    print(f"the {server.name} server had exited with code {code}", file=sys.stderr)
            print(f"(servers' logs kept in {logs})", file=sys.stderr)
            raise
        finally:
            for target in targets:
                target.http.close()
            if clients is not None:
                clients.stop()
            for server in servers:
                server.stop()


def finish(
    args: argparse.Namespace,
    results: dict[str, TargetResult],
    servers: list[harness.Server],
    logs: Path,
    started: float,
) -> None:
    """--details, the servers' restarts, the run time; the logs kept only with --keep."""
    if args.details is not None:
        details = {
            name: {phase: d.details() for phase, d in result.phases.items()}
            for name, result in results.items()
        }
        args.details.write_text(json.dumps(details, indent=1))
        print(f"Every command's deliveries: {args.details}")
    for server in servers:
        if server.restarts:
            print(f"NOTE: the {server.name} server restarted during the run: {server.restarts}")
    print(f"\nRun time {time.monotonic() - started:.0f} s.")
    if not args.keep:
        shutil.rmtree(logs, ignore_errors=True)
    else:
        print(f"Logs in {logs}")


async def print_header(
    args: argparse.Namespace,
    setup: asyncpg.Connection,
    source: tuple[str, list[str]],
    users: int,
    small_users: int,
    idle_load: float,
) -> None:
    import starlette
    import uvicorn
    import websockets

    pg = await harness.postgres(setup, "fsync", "synchronous_commit")
    print(
        f"Live updates benchmark: {harness.CORES} cores, Python {platform.python_version()}, "
        f"uvicorn {uvicorn.__version__}, starlette {starlette.__version__}, websockets "
        f"{websockets.__version__}, {pg}; source: {harness.source_note(source)}"
    )
    print(
        f"{args.connections:,} sockets ({users:,} users x {PER_USER}) over {args.clients} "
        f"client processes; small phase {small_users * PER_USER:,}; sustained "
        f"{args.sustain_rate}/s ({args.sustain_price_rate}/s prices) for "
        f"{args.sustain_seconds} s to {args.sustain_users * PER_USER:,} sockets; machine busy "
        f"before the run: {idle_load:.2f} cores",
        flush=True,
    )


OPTIONS = """
--connections         10_000          sockets (default 10000)
--users               1_000           users, 10 sockets each (1000)
--small-connections   1_000           sockets of the small phase (1000)
--clients             4               client processes (default 4)
--client              raw|websockets  client sockets: a minimal protocol of this script's
                                      (default), or websockets' asyncio client
--positions-per-user  2               positions seeded per user (default 2)
--latency-commands    30              commands of each latency phase, prices and creates
                                      alternately (default 30)
--small-interval      0.25            seconds between them, small (0.25)
--large-interval      1.0             seconds between them, large (1.0)
--sustain-seconds     float=25        default 25
--sustain-rate        float=200       commands/s (default 200)
--sustain-price-rate  float=10        of which update-prices/s (default 10)
--sustain-users       200             users of the sustained phase (200)
--seed                20261124        random seed
--database            bench_live      database to (re)create
--keep                switch          keep the database and the logs
--details             path            write every command's deliveries (JSON) here
--strict              switch          exit 1 when a target is missed
--serve-bare          switch          -
--port                0               -
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args, parser = harness.parse_options("python -m bench.live", __doc__, OPTIONS, argv)
    wrong = args.connections % PER_USER or args.connections // PER_USER != args.users
    if wrong and not args.serve_bare:
        parser.error(f"--connections must be --users x {PER_USER}")
    return args


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_bare:
        return serve_bare(args.port)
    harness.raise_fd_limit()
    return harness.run_main(main, args)


if __name__ == "__main__":
    sys.exit(run())
