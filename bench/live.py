"""Live updates benchmark: `WS /ws/positions` with up to 10,000 sockets, beside a bare WS app.

Run from the project root with the virtualenv active (about 3 minutes with the defaults; a smoke
run, `--connections 500 --users 50 --sustain-seconds 5`, about 2 minutes):

    python -m bench.live [--connections 10000] [--users 1000] [--small-connections 1000]
                         [--clients 4] [--client raw|websockets] [--latency-commands 30]
                         [--sustain-seconds 25] [--sustain-rate 200] [--sustain-price-rate 10]
                         [--sustain-users 200] [--details FILE.json] [--keep] [--strict]

It drops and creates its own database (`bench_live`, on the server of BENCH_DATABASE_URL, default
postgresql:///postgres, which is used as the admin connection only) and starts two servers on
127.0.0.1, each ONE uvicorn worker in a process of its own, with the WebSocket options of
`api.cli.SERVER_OPTIONS` (websockets-sansio, no compression, 64 KiB frames, pings every 20 s):

  service   `python -m api serve` (DATABASE_URL, JWT_SECRET, PORT, LOG_LEVEL=warning, WORKERS=1;
            the default pool; no Redis: the one instance follows the log itself), which applies
            the migrations;
  bare      `python -m bench.live --serve-bare`: a Starlette app on the same uvicorn with the same
            options and NOTHING of the service: `WS /ws/positions?user=` accepts, sends an
            `initial_data` message with no positions, and holds the socket in a dict per user
            until the client leaves; `POST /bare/publish` takes a message body (a position and
            its owner, or prices for everyone), numbers it, answers `{"position": n, ...}`, and
            after the answer has gone sends the JSON text to the owner's sockets (or all) with
            `await websocket.send_text(...)` in a loop. No token check, no database, no queue
            per socket (so a send that waits on a slow socket lets a later message overtake it
            on other sockets: the bare app does not keep order under backpressure).

Clients: `--clients` processes (multiprocessing, spawn), each holding its share of the sockets.
By default a minimal WebSocket client protocol (bench/clients.py's `RawSocket`: the handshake,
frames in, pongs and close out; a few microseconds per message), so that the clients take as
little as possible of the two cores from the servers; `--client websockets` uses
`websockets.asyncio.client` instead (compression off, no client pings; about ten times the CPU
per message). Each socket's messages are decoded (type, event position, the position's id,
version and owner) and kept with their arrival time (time.monotonic(): CLOCK_MONOTONIC, one
clock for every process of the machine). A driver in this process sends the commands over its
own keep-alive HTTP/1.1 connections and notes when each answer had been read in full.

For each server, in this order:

  seed        the service: `--positions-per-user` positions per user with POST /positions, then
              one update-prices; the bare app: nothing (the driver invents the positions)
  warm-up     10 sockets opened, a command, the sockets closed; then the RSS "before"
              (VmRSS of the server process, /proc/<pid>/status, median of 3 readings 0.5 s apart)
  small       `--small-connections` sockets (10 per user) opened, 2 s idle, RSS; then
              `--latency-commands` commands, one every 0.25 s, alternately an update-prices of 5
              symbols (every socket gets it) and a POST /positions as a random connected user
              (that user's 10 sockets get it)
  large       the other sockets up to `--connections` (all `--users` users, 10 each) opened,
              3 s idle, RSS: memory per connection = (RSS now - RSS before) / connections; then
              the same commands one every 1 s
  sustained   every socket closed; `--sustain-users` users' sockets (10 each) opened afresh, then
              `--sustain-rate` commands per second for `--sustain-seconds`, open loop (each at
              its time whatever the previous ones did): `--sustain-price-rate` of them per second
              update-prices of 5 symbols (to every socket), the rest as a random one of those
              users on its own positions: 35 % POST /positions, 50 % PUT /positions/{id}
              {"current_price": p}, 15 % POST /positions/{id}/close (each one event); a position
              with a command in flight gets no other until the answer

A delivery delay is the arrival time of a message on a socket minus the time the answer of the
command that made its event was read (matched by the event position for update-prices, by the
position's id and version for the rest: each command makes one event). p50/p99/max are over
every (socket, message) pair. After each measured phase the clients check every socket: it got
each price update and each event of its own user's positions exactly once (missing, duplicate),
nothing of another user (foreign), and in log order (out of order: against the order the log
gives, `ORDER BY tx_id, global_position`, which is not always the order of the position numbers
when transactions overlap; for the bare app, the publish numbers), and whether the server closed
it (4408 too slow...). A command is "held" when its event reached no socket within 100 ms of
its answer: the delay arose before the fan-out (the report also gives the figures without the
held commands). Server, database, clients and driver CPU come from /proc. `--details FILE` writes
each command's answer time and first/median/last delivery as JSON.

Targets: memory < 30 KiB per connection; delay p99 < 100 ms at 1,000 sockets and < 500 ms at
10,000. `--strict` exits 1 when one is missed. Everything is stopped and the database dropped at
the end, failures included (`--keep` keeps the database and the servers' logs).
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import random
import resource
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from array import array
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from bench.clients import HttpPool, RawSocket
from bench.common import (
    DISTURBED,
    backend_pids,
    database_dsn,
    drop_database,
    machine_ticks,
    num,
    percentile,
    print_table,
    process_cpu,
    process_memory_kib,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ADMIN_DSN = "postgresql:///postgres"
ADMIN = "bench-admin"
SYMBOLS = ["AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "META", "TSLA", "JPM"]
PER_USER = 10  # sockets per user
MEMORY_TARGET_KIB = 30.0
P99_TARGET_MS = {"small": 100.0, "large": 500.0}
DRIVER_CONNECTIONS = 32
HELD_SECONDS = 0.1  # a command whose event reached no socket within this was held up server-side
OPEN_CONCURRENCY = 32  # handshakes in flight per client process


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
        await websocket.send_text(
            orjson.dumps({"type": "initial_data", "positions": [], "position": counter[0]}).decode()
        )
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

    uvicorn.run(
        "bench.live:create_bare_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        **SERVER_OPTIONS,
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


class _Socket:
    __slots__ = ("sid", "user", "ws", "start", "records", "foreign", "task", "closing", "closed")

    def __init__(self, sid: int, user: str, ws: Any, start: int) -> None:
        self.sid, self.user, self.ws, self.start = sid, user, ws, start
        self.records: list[tuple[float, int, int | str]] = []  # (arrival, event position, key)
        self.foreign = 0  # messages about another user's position
        self.task: asyncio.Task[None] | None = None
        self.closing = False  # we are closing it
        self.closed: int | None = None  # the server closed it, with this code


async def _read(sock: _Socket) -> None:
    from websockets.exceptions import ConnectionClosed

    records, user, clock = sock.records, sock.user, time.monotonic
    try:
        async for raw in sock.ws:
            arrived = clock()
            message = _decode_message(raw)
            data = message.data
            if data is None:
                key: int | str = message.position
            else:
                key = f"{data.id}/{data.version}"
                if data.owner != user:
                    sock.foreign += 1
            records.append((arrived, message.position, key))
    except ConnectionClosed:
        pass
    except Exception as error:  # noqa: BLE001 - an unexpected message: counted as a close
        print(f"client: socket {sock.sid}: {error!r}", file=sys.stderr)
    if not sock.closing:
        sock.closed = sock.ws.close_code if sock.ws.close_code is not None else 1006


class _RawSocket(RawSocket):
    """A socket of bench.clients' cheap client and what it received."""

    def __init__(self, sid: int, user: str, host: str, path: str) -> None:
        super().__init__(host, path)
        self.sid, self.user = sid, user
        self.records: list[tuple[float, int, int | str]] = []
        self.foreign = 0

    def message(self, text: bytes, arrived: float) -> None:
        message = _decode_message(text)
        if not self.opened.done():
            self.initial(message.type, message.position)
            return
        data = message.data
        if data is None:
            key: int | str = message.position
        else:
            key = f"{data.id}/{data.version}"
            if data.owner != self.user:
                self.foreign += 1
        self.records.append((arrived, message.position, key))


async def _client(index: int, pipe: Any, kind: str) -> None:
    from urllib.parse import urlsplit

    from websockets.asyncio.client import connect

    sockets: dict[int, Any] = {}  # _RawSocket or _Socket
    loop = asyncio.get_running_loop()

    async def open_raw(sid: int, user: str, url: str, errors: list) -> None:
        parts = urlsplit(url)
        sock = _RawSocket(sid, user, parts.netloc, f"{parts.path}?{parts.query}")
        try:
            await loop.create_connection(lambda: sock, parts.hostname, parts.port)
            await asyncio.wait_for(sock.opened, 120)
        except Exception as error:  # noqa: BLE001
            errors.append(f"open: {error!r}")
            sock.abort()
            return
        sockets[sid] = sock

    async def open_one(
        sid: int, user: str, url: str, gate: asyncio.Semaphore, errors: list
    ) -> None:
        async with gate:
            if kind == "raw":
                await open_raw(sid, user, url, errors)
                return
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
            except Exception as error:  # noqa: BLE001
                errors.append(f"connect: {error!r}")
                return
            try:
                first = _decode_message(await asyncio.wait_for(ws.recv(), 120))
                if first.type != "initial_data":
                    raise RuntimeError(f"first message {first.type}")
            except Exception as error:  # noqa: BLE001
                errors.append(f"initial data: {error!r} (close code {ws.close_code})")
                ws.transport.abort()
                return
            sock = _Socket(sid, user, ws, first.position)
            sock.task = asyncio.create_task(_read(sock))
            sockets[sid] = sock

    async def close_one(sock: Any, gate: asyncio.Semaphore) -> None:
        async with gate:
            if isinstance(sock, _RawSocket):
                await sock.close()
                return
            sock.closing = True
            try:
                await asyncio.wait_for(sock.ws.close(), 10)
            except Exception:  # noqa: BLE001
                sock.ws.transport.abort()
            if sock.task is not None:
                await asyncio.gather(sock.task, return_exceptions=True)

    def count() -> dict[str, Any]:
        closed = Counter(s.closed for s in sockets.values() if s.closed is not None)
        return {
            "received": sum(len(s.records) for s in sockets.values()),
            "open": sum(1 for s in sockets.values() if s.closed is None),
            "closed": dict(closed),
        }

    def collect(arg: dict[str, Any]) -> dict[str, Any]:
        times: dict[int | str, float] = arg["times"]
        prices = frozenset(arg["prices"])
        own: dict[str, list[str]] = arg["own"]
        rank: dict[int, int] | None = arg["rank"]
        expected_of: dict[str, frozenset] = {}
        delays: dict[int | str, array] = {}
        totals = Counter()
        closed = Counter()
        last = None
        for sock in sockets.values():
            expected = expected_of.get(sock.user)
            if expected is None:
                expected = expected_of[sock.user] = prices | frozenset(own.get(sock.user, ()))
            seen: set[int | str] = set()
            previous = -1
            unexpected = 0
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
                    per_key = delays.get(key)
                    if per_key is None:
                        per_key = delays[key] = array("d")
                    per_key.append(arrived - answered)
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
            "sockets": len(sockets),
            "last": last,
            "delays": {key: values.tobytes() for key, values in delays.items()},
        }

    while True:
        op, arg = await loop.run_in_executor(None, pipe.recv)
        if op == "open":
            gate, errors = asyncio.Semaphore(arg["concurrency"]), []
            started = time.monotonic()
            await asyncio.gather(
                *(open_one(s, u, url, gate, errors) for s, u, url in arg["sockets"])
            )
            reply: Any = {
                "opened": len(arg["sockets"]) - len(errors),
                "errors": errors[:3],
                "failed": len(errors),
                "seconds": time.monotonic() - started,
            }
        elif op == "close":
            gate = asyncio.Semaphore(64)
            chosen = list(sockets.values()) if arg is None else [sockets[s] for s in arg]
            await asyncio.gather(*(close_one(s, gate) for s in chosen))
            for sock in chosen:
                del sockets[sock.sid]
            reply = len(chosen)
        elif op == "clear":
            for sock in sockets.values():
                sock.records.clear()
                sock.foreign = 0
            reply = len(sockets)
        elif op == "count":
            reply = count()
        elif op == "collect":
            reply = collect(arg)
        elif op == "exit":
            for sock in sockets.values():
                if isinstance(sock, _RawSocket):
                    sock.abort()
                else:
                    sock.closing = True
                    sock.ws.transport.abort()
            pipe.send(None)
            return
        else:
            reply = f"unknown op {op}"
        pipe.send(reply)


def client_main(index: int, pipe: Any, kind: str = "raw") -> None:
    """A client process: holds sockets, answers the coordinator's requests on `pipe`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.run(_client(index, pipe, kind))
    except ImportError:
        asyncio.run(_client(index, pipe, kind))
    except KeyboardInterrupt:
        pass


class Clients:
    """The client processes, each with a pipe to this one."""

    def __init__(self, count: int, kind: str) -> None:
        from bench.live import client_main as target  # importable by name from a spawned child

        context = multiprocessing.get_context("spawn")
        self._pipes, self.processes = [], []
        for index in range(count):
            parent, child = context.Pipe()
            process = context.Process(target=target, args=(index, child, kind), daemon=True)
            process.start()
            self._pipes.append(parent)
            self.processes.append(process)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def __len__(self) -> int:
        return len(self._pipes)

    async def call(self, op: str, args: list[Any] | None = None) -> list[Any]:
        args = args if args is not None else [None] * len(self._pipes)
        for pipe, arg in zip(self._pipes, args, strict=True):
            pipe.send((op, arg))
        replies = await asyncio.gather(*(asyncio.to_thread(pipe.recv) for pipe in self._pipes))
        for process in self.processes:
            if not process.is_alive():
                raise RuntimeError(f"client process {process.pid} died")
        return list(replies)

    def stop(self) -> None:
        for pipe in self._pipes:
            try:
                pipe.send(("exit", None))
            except OSError:
                pass
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join(5)
            if process.is_alive():
                process.kill()
                process.join()

    def rss_mib(self) -> float:
        return sum(process_memory_kib(pid) or 0 for pid in self.pids) / 1024


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
    kind: str  # price, create, update, close
    user: str | None  # whose position (None: prices)
    position_id: str | None = None


class Target(abc.ABC):
    """A server under test: how to reach it and how to say each command to it."""

    name = ""
    service = False

    def __init__(self, server: Any, tokens: dict[str, str]) -> None:
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

    def key_of(self, command: Command, answer: dict[str, Any]) -> int | str:
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

    async def send(self, command: Command, i: int) -> tuple[int | str | None, float, float]:
        """(key or None when refused, seconds from writing the request to reading the answer, when
        the answer was read)"""
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


def price_body(i: int) -> dict[str, float]:
    """Five of the eight symbols, a new price each time."""
    chosen = [SYMBOLS[(i + k) % len(SYMBOLS)] for k in range(5)]
    return {s: round(100 + (i * 7 + k) % 5000 / 100, 2) for k, s in enumerate(chosen)}


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
            body = json.dumps(
                {
                    "symbol": SYMBOLS[i % len(SYMBOLS)],
                    "side": "long" if i % 3 else "short",
                    "quantity": 10 + i % 7,
                    "entry_price": 100,
                    "strategy": "bench",
                }
            ).encode()
            return "POST", "/positions", token, body
        if command.kind == "update":
            body = json.dumps({"current_price": round(100 + (i % 100_000) / 1000, 3)}).encode()
            return "PUT", f"/positions/{command.position_id}", token, body
        exit_price = round(100 + (i % 1000) / 100, 2)
        return "POST", f"/positions/{command.position_id}/close?exit_price={exit_price}", token, b""


# The bare app's position messages carry a position as the service renders it (taken from the
# service's own answers during the run), so that both send messages of the same size.
_FALLBACK_VIEW: dict[str, Any] = {
    "id": "",
    "owner": "",
    "symbol": "AAPL",
    "side": "long",
    "quantity": 10,
    "entry_price": 100,
    "current_price": 101.5,
    "stop_loss": None,
    "take_profit": None,
    "strategy": "bench",
    "notes": None,
    "status": "open",
    "market_value": 1015,
    "unrealized_pnl": 15,
    "unrealized_pnl_pct": 1.5,
    "realized_pnl": 0,
    "closed_quantity": 0,
    "exit_price": None,
    "opened_at": "2026-01-01T00:00:00.000000Z",
    "closed_at": None,
    "created_at": "2026-01-01T00:00:00.000000Z",
    "updated_at": "2026-01-01T00:00:00.000000Z",
    "version": 1,
}


class BareTarget(Target):
    name = "bare"
    view: dict[str, Any] = _FALLBACK_VIEW

    def ws_url(self, user: str) -> str:
        return (
            f"ws://127.0.0.1:{self.server.port}/ws/positions?user={user}&token={self.tokens[user]}"
        )

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


class Meter:
    """Cores used over a stretch of time: the server, its database backends, clients, driver."""

    def __init__(self, target: Target, clients: Clients, admin: asyncpg.Connection, db: str):
        self._target, self._clients, self._admin, self._db = target, clients, admin, db
        self.cores = os.cpu_count() or 1

    async def _backends(self) -> list[int]:
        return await backend_pids(self._admin, self._db) if self._target.service else []

    async def start(self) -> dict[str, Any]:
        backends = await self._backends()
        return {
            "server": process_cpu([self._target.pid]),
            "db": process_cpu(backends),
            "clients": process_cpu(self._clients.pids),
            "driver": time.process_time(),
            "machine": machine_ticks(),
            "wall": time.monotonic(),
        }

    async def stop(self, start: dict[str, Any]) -> dict[str, float]:
        wall = time.monotonic() - start["wall"]
        backends = await self._backends()

        def used(key: str, now: dict[int, float]) -> float:
            before = start[key]
            return sum(seconds - before.get(pid, 0.0) for pid, seconds in now.items()) / wall

        busy0, total0 = start["machine"]
        busy1, total1 = machine_ticks()
        machine = (busy1 - busy0) / (total1 - total0) * self.cores if total1 > total0 else 0.0
        server = used("server", process_cpu([self._target.pid]))
        db = used("db", process_cpu(list(set(backends) | set(start["db"]))))
        clients = used("clients", process_cpu(self._clients.pids))
        driver = (time.process_time() - start["driver"]) / wall
        return {
            "seconds": wall,
            "server": server,
            "db": db,
            "clients": clients,
            "driver": driver,
            "machine": machine,
            "other": max(0.0, machine - server - db - clients - driver),
        }


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
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def start(self) -> None:
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
        if self._task is not None:
            await self._task


@dataclass
class Delivery:
    """What the clients saw of one phase's commands."""

    label: str
    sockets: int
    commands: int
    refused: int
    by_command: dict[int | str, list[float]]
    """Every delivery delay (s) of each command's event, by message key."""
    totals: dict[str, int]
    closed: dict[int, int]
    http_ms: list[float]
    cpu: dict[str, float]
    foreign_writer_ms: float  # the longest write transaction of another database seen meanwhile
    seconds: float  # from the first command to the last message
    command_seconds: float  # from the first command's time slot to the last one's
    answered_seconds: float  # from the first command's time slot to the last answer
    events: int | None = None  # events the log gained (the service)
    late_slots: int = 0  # commands the driver sent more than 50 ms after their time
    issued: dict[int | str, dict[str, Any]] = field(default_factory=dict)

    def details(self) -> list[dict[str, Any]]:
        """Per command: what it was, when it was answered, how its deliveries went (ms)."""
        rows = []
        for key, info in self.issued.items():
            values = sorted(self.by_command.get(key, ()))
            rows.append(
                {
                    "key": key,
                    **info,
                    "deliveries": len(values),
                    "first_ms": round(values[0] * 1e3, 2) if values else None,
                    "p50_ms": round(percentile(values, 50) * 1e3, 2) if values else None,
                    "last_ms": round(values[-1] * 1e3, 2) if values else None,
                }
            )
        return sorted(rows, key=lambda row: row["slot_s"])

    @property
    def delays(self) -> list[float]:
        return sorted(d for values in self.by_command.values() for d in values)

    @property
    def price_delays(self) -> list[float]:
        return sorted(d for k, v in self.by_command.items() if isinstance(k, int) for d in v)

    @property
    def own_delays(self) -> list[float]:
        return sorted(d for k, v in self.by_command.items() if isinstance(k, str) for d in v)

    @property
    def held(self) -> list[int | str]:
        """Commands whose event reached no socket within HELD_SECONDS: held before the fan-out."""
        return [k for k, v in self.by_command.items() if v and min(v) > HELD_SECONDS]

    def delays_without_held(self) -> list[float]:
        held = set(self.held)
        return sorted(d for k, v in self.by_command.items() if k not in held for d in v)


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

    def per_connection_kib(self) -> float | None:
        if self.rss_large_kib is None or self.rss_before_kib is None or not self.large:
            return None
        return (self.rss_large_kib - self.rss_before_kib) / self.large


async def settled_rss(pid: int, wait: float) -> int | None:
    await asyncio.sleep(wait)
    readings = []
    for i in range(3):
        if i:
            await asyncio.sleep(0.5)
        value = process_memory_kib(pid)
        if value is not None:
            readings.append(value)
    return int(statistics.median(readings)) if readings else None


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
        self.meter = Meter(target, clients, admin, args.database)
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
                print(
                    f"  {self.target.name}: {reply['failed']} socket(s) failed: {reply['errors']}"
                )
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

    async def drive(
        self, label: str, schedule: list[tuple[float, Command]], users: list[str], sockets: int
    ) -> Delivery:
        """Send each command at its time (open loop), wait for the messages, check every socket."""
        self.check_alive(f"before the {label} phase")
        await self.clients.call("clear")
        start_position = await self.log_position()
        times: dict[int | str, float] = {}
        prices: list[int] = []
        own: dict[str, list[str]] = defaultdict(list)
        http_ms: list[float] = []
        issued: dict[int | str, dict[str, Any]] = {}  # per command, for --details
        answered_last = 0.0
        refused = late = 0
        meter = await self.meter.start()
        barrier = BarrierWatch(self.admin, self.args.database)
        barrier.start()
        begin = time.monotonic() + 0.05

        async def one(command: Command, number: int, slot: float) -> None:
            nonlocal refused, answered_last
            key, seconds, done = await self.target.send(command, number)
            http_ms.append(seconds * 1e3)
            answered_last = max(answered_last, done)
            if key is None:
                refused += 1
                return
            times[key] = done
            issued[key] = {
                "kind": command.kind,
                "user": command.user,
                "slot_s": round(slot, 4),
                "answered_s": round(done - begin, 4),
                "http_ms": round(seconds * 1e3, 2),
            }
            if isinstance(key, int):
                prices.append(key)
            else:
                assert command.user is not None
                own[command.user].append(key)

        tasks = []
        for at, command in schedule:
            delay = begin + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.05:
                late += 1
            if command.kind == "pick":
                command = self.pick(users)  # chosen at its time, from the positions idle then
            self.counter += 1
            tasks.append(asyncio.create_task(one(command, self.counter, at)))
        command_seconds = time.monotonic() - begin
        await asyncio.gather(*tasks)
        expected = len(prices) * sockets + sum(len(keys) for keys in own.values()) * PER_USER
        await self.wait_delivered(expected)
        await barrier.stop()  # before the meter, which asks the same connection
        cpu = await self.meter.stop(meter)
        rank = await self.log_order(start_position)
        events = None
        if self.setup is not None:
            events = await self.setup.fetchval(
                "SELECT count(*) FROM events WHERE global_position > $1", start_position
            )
        self.check_alive(f"during the {label} phase")
        replies = await self.clients.call(
            "collect",
            [{"times": times, "prices": prices, "own": dict(own), "rank": rank}]
            * len(self.clients),
        )
        totals: Counter[str] = Counter()
        closed: Counter[int] = Counter()
        by_command: dict[int | str, list[float]] = defaultdict(list)
        lasts = []
        for reply in replies:
            totals.update(reply["totals"])
            closed.update(reply["closed"])
            for key, values in reply["delays"].items():
                by_command[key].extend(array("d", values))
            if reply["last"] is not None:
                lasts.append(reply["last"])
        await self.clients.call("clear")
        return Delivery(
            label=label,
            sockets=sum(r["sockets"] for r in replies),
            commands=len(schedule),
            refused=refused,
            by_command=dict(by_command),
            totals=dict(totals),
            closed=dict(closed),
            http_ms=sorted(http_ms),
            cpu=cpu,
            foreign_writer_ms=barrier.longest * 1e3,
            seconds=(max(lasts) - begin) if lasts else 0.0,
            command_seconds=command_seconds,
            answered_seconds=answered_last - begin,
            events=events,
            late_slots=late,
            issued=issued,
        )

    def latency_schedule(self, users: list[str], interval: float) -> list[tuple[float, Command]]:
        schedule = []
        for i in range(self.args.latency_commands):
            command = (
                Command("price", None) if i % 2 == 0 else Command("create", self.rng.choice(users))
            )
            schedule.append((i * interval, command))
        return schedule

    def sustained_schedule(self, users: list[str]) -> list[tuple[float, Command]]:
        rate, seconds = self.args.sustain_rate, self.args.sustain_seconds
        every = (
            max(1, round(rate / self.args.sustain_price_rate))
            if self.args.sustain_price_rate
            else 0
        )
        schedule = []
        for i in range(int(rate * seconds)):
            if every and i % every == 0:
                command = Command("price", None)
            else:
                command = Command("pick", None)  # a position command, chosen at its time
            schedule.append((i / rate, command))
        return schedule

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
        await asyncio.gather(
            *(create(user, n) for n, user in enumerate(u for u in users for _ in range(per_user)))
        )
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

    async def run(self, users: list[str], small_users: list[str]) -> TargetResult:
        args, target = self.args, self.target
        result = TargetResult(target.name)
        result.rss_start_kib = process_memory_kib(target.pid)
        print(f"\n{target.name} (pid {target.pid}, port {target.server.port})", flush=True)
        await self.seed(users)

        # Warm-up: the code paths of a socket and of a command have run once.
        opened, failed, _ = await self.open_sockets(users[:1])
        key, _, _ = await target.send(Command("price", None), 0)
        await asyncio.sleep(0.5)
        await self.close_all()
        if failed or key is None:
            raise RuntimeError(f"{target.name}: the warm-up failed")
        result.rss_before_kib = await settled_rss(target.pid, 1.0)

        # Small: 1,000 sockets.
        opened, failed, seconds = await self.open_sockets(small_users)
        result.small, result.open_failed = opened, result.open_failed + failed
        result.open_seconds["small"] = seconds
        result.rss_small_kib = await settled_rss(target.pid, 2.0)
        print(f"  {opened:,} sockets open in {seconds:.1f} s", flush=True)
        result.phases["small"] = await self.drive(
            "small",
            self.latency_schedule(small_users, args.small_interval),
            small_users,
            opened,
        )
        print(f"  small: {describe(result.phases['small'])}", flush=True)

        # Large: 10,000 sockets.
        more, failed, seconds = await self.open_sockets(users[len(small_users) :])
        result.large = opened + more
        result.open_failed += failed
        result.open_seconds["large"] = seconds
        _, still_open = await self.received()
        result.rss_large_kib = await settled_rss(target.pid, 3.0)
        print(
            f"  {more:,} more sockets open in {seconds:.1f} s ({still_open:,} open); RSS "
            f"{(result.rss_large_kib or 0) / 1024:.0f} MiB, clients "
            f"{self.clients.rss_mib():.0f} MiB",
            flush=True,
        )
        result.phases["large"] = await self.drive(
            "large", self.latency_schedule(users, args.large_interval), users, result.large
        )
        print(f"  large: {describe(result.phases['large'])}", flush=True)
        result.hwm_kib = process_memory_kib(target.pid, "VmHWM")
        await self.close_all()
        result.rss_closed_kib = await settled_rss(target.pid, 2.0)

        # Sustained: 2,000 sockets, 200 commands a second.
        sustain_users = users[: args.sustain_users]
        opened, failed, seconds = await self.open_sockets(sustain_users)
        result.open_failed += failed
        await asyncio.sleep(1.0)
        result.phases["sustained"] = await self.drive(
            "sustained", self.sustained_schedule(sustain_users), sustain_users, opened
        )
        print(f"  sustained: {describe(result.phases['sustained'])}", flush=True)
        await self.close_all()
        return result


def describe(d: Delivery) -> str:
    delays = d.delays
    if not delays:
        return "no message matched"
    return (
        f"{len(delays):,} deliveries, p50 {percentile(delays, 50) * 1e3:.1f} ms, p99 "
        f"{percentile(delays, 99) * 1e3:.1f} ms, max {delays[-1] * 1e3:.1f} ms; "
        f"{len(d.held)} of {len(d.by_command)} commands held > {HELD_SECONDS * 1e3:.0f} ms; server "
        f"{d.cpu['server']:.2f} cores"
    )


# -- the run --------------------------------------------------------------------------------------


def _ms(values: list[float], q: float | None) -> str:
    if not values:
        return "-"
    value = values[-1] if q is None else percentile(values, q)
    return f"{value * 1e3:.1f}"


async def main(args: argparse.Namespace) -> int:
    from api.auth import Role, mint_token
    from bench.api import Server, free_port, server_env, source_state

    started = time.monotonic()
    busy0, total0 = machine_ticks()
    await asyncio.sleep(1.0)
    busy1, total1 = machine_ticks()
    idle_load = (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1)
    users = [f"bench-u{i:04d}" for i in range(args.connections // PER_USER)]
    if len(users) != args.users:
        raise SystemExit(
            f"--connections must be --users x {PER_USER} ({args.users * PER_USER:,}), "
            f"not {args.connections:,}"
        )
    small_users = users[: max(1, min(args.small_connections // PER_USER, len(users) // 2))]
    if len(small_users) * PER_USER != args.small_connections:
        print(f"note: small phase at {len(small_users) * PER_USER:,} sockets")
    args.sustain_users = min(args.sustain_users, len(users))

    admin_dsn = os.environ.get("BENCH_DATABASE_URL", DEFAULT_ADMIN_DSN)
    dsn = database_dsn(admin_dsn, args.database)
    admin = await asyncpg.connect(admin_dsn)
    await drop_database(admin, args.database)
    await admin.execute(f'CREATE DATABASE "{args.database}"')
    secret = secrets.token_urlsafe(48)
    tokens = {
        user: mint_token(
            secret_or_private_key=secret,
            algorithm="HS256",
            subject=user,
            role=Role.USER,
            ttl=timedelta(hours=3),
        )
        for user in users
    }
    tokens[ADMIN] = mint_token(
        secret_or_private_key=secret,
        algorithm="HS256",
        subject=ADMIN,
        role=Role.ADMIN,
        ttl=timedelta(hours=3),
    )
    logs = Path(tempfile.mkdtemp(prefix="bench_live_"))
    source = source_state()
    servers: list[Any] = []
    clients: Clients | None = None
    setup: asyncpg.Connection | None = None
    targets: list[Target] = []
    try:
        service_port, bare_port = free_port(), free_port()
        service = Server(
            "service",
            [sys.executable, "-m", "api", "serve"],
            server_env(
                DATABASE_URL=dsn,
                JWT_SECRET=secret,
                PORT=str(service_port),
                HOST="127.0.0.1",
                LOG_LEVEL="warning",
                WORKERS="1",
            ),
            service_port,
            "/health",
            tokens[ADMIN],
            logs,
        )
        servers.append(service)
        bare = Server(
            "bare",
            [sys.executable, "-m", "bench.live", "--serve-bare", "--port", str(bare_port)],
            server_env(),
            bare_port,
            "/health",
            tokens[ADMIN],
            logs,
        )
        servers.append(bare)
        clients = Clients(args.clients, args.client)
        service.wait_ready()
        bare.wait_ready()
        setup = await asyncpg.connect(dsn)
        info = await setup.fetchrow(
            "SELECT current_setting('server_version') AS version, "
            "current_setting('synchronous_commit') AS sync, current_setting('fsync') AS fsync"
        )
        import starlette
        import uvicorn
        import websockets

        print(
            f"Live updates benchmark: {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"uvicorn {uvicorn.__version__}, starlette {starlette.__version__}, websockets "
            f"{websockets.__version__}, PostgreSQL {info['version'].split()[0]} (fsync="
            f"{info['fsync']}, synchronous_commit={info['sync']}); source: commit {source[0]}"
            + (f", modified: {', '.join(source[1])}" if source[1] else ", clean")
        )
        print(
            f"{args.connections:,} sockets ({len(users):,} users x {PER_USER}) over {args.clients} "
            f"client processes; small phase {len(small_users) * PER_USER:,}; sustained "
            f"{args.sustain_rate}/s ({args.sustain_price_rate}/s prices) for "
            f"{args.sustain_seconds} s to {args.sustain_users * PER_USER:,} sockets; machine busy "
            f"before the run: {idle_load:.2f} cores",
            flush=True,
        )

        service_target = ServiceTarget(service, tokens)
        bare_target = BareTarget(bare, tokens)
        targets = [service_target, bare_target]
        results = {}
        for target, connection in ((service_target, setup), (bare_target, None)):
            results[target.name] = await Run(args, target, clients, admin, connection).run(
                users, small_users
            )
        code = report(args, results, len(small_users) * PER_USER)
        if args.details is not None:
            args.details.write_text(
                json.dumps(
                    {
                        name: {phase: d.details() for phase, d in result.phases.items()}
                        for name, result in results.items()
                    },
                    indent=1,
                )
            )
            print(f"Every command's deliveries: {args.details}")
        for server in servers:
            if server.restarts:
                print(f"NOTE: the {server.name} server restarted during the run: {server.restarts}")
        print(f"\nRun time {time.monotonic() - started:.0f} s.")
        if not args.keep:
            shutil.rmtree(logs, ignore_errors=True)
        else:
            print(f"Logs in {logs}")
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
        if setup is not None:
            await setup.close()
        if not args.keep:
            await drop_database(admin, args.database)
        await admin.close()


def report(args: argparse.Namespace, results: dict[str, TargetResult], small: int) -> int:
    service, bare = results["service"], results["bare"]
    missed: list[str] = []

    def mib(kib: int | None) -> str:
        return "-" if kib is None else f"{kib / 1024:.1f}"

    rows = []
    for r in (service, bare):
        per_small = (
            None
            if r.rss_small_kib is None or r.rss_before_kib is None or not r.small
            else (r.rss_small_kib - r.rss_before_kib) / r.small
        )
        rows.append(
            [
                r.name,
                mib(r.rss_start_kib),
                mib(r.rss_before_kib),
                mib(r.rss_small_kib),
                mib(r.rss_large_kib),
                mib(r.rss_closed_kib),
                mib(r.hwm_kib),
                num(per_small, ".1f"),
                f"{r.large:,}",
                num(r.per_connection_kib(), ".1f"),
                f"{(r.large - r.small) / r.open_seconds.get('large', 1):,.0f}",
                str(r.open_failed),
            ]
        )
    print_table(
        "Server memory (VmRSS, MiB): at start; before = after a warm-up, no socket; with the small "
        "and the large number of sockets open and idle; after closing them all; peak (VmHWM).\n"
        "KiB per connection = (RSS with the sockets - RSS before) / sockets; opened/s over the "
        "second batch (the handshake and, for the service, the initial data query).",
        [
            "server",
            "start",
            "before",
            f"{small:,} open",
            f"{service.large:,} open",
            "closed",
            "peak",
            f"KiB/conn @{small:,}",
            "sockets",
            "KiB/conn",
            "opened/s",
            "failed",
        ],
        rows,
    )

    rows = []
    for phase in ("small", "large", "sustained"):
        for r in (service, bare):
            d = r.phases[phase]
            held = d.held
            kinds = [
                ("all", d.delays, len(d.by_command)),
                (
                    "prices (every socket)",
                    d.price_delays,
                    sum(isinstance(k, int) for k in d.by_command),
                ),
                (
                    "own positions (10 sockets)",
                    d.own_delays,
                    sum(isinstance(k, str) for k in d.by_command),
                ),
            ]
            if held:
                kinds.append(
                    (
                        f"all but the {len(held)} held",
                        d.delays_without_held(),
                        len(d.by_command) - len(held),
                    )
                )
            for what, values, commands in kinds:
                first = what == "all"
                rows.append(
                    [
                        f"{phase} {r.name}" if first else "",
                        f"{d.sockets:,}" if first else "",
                        what,
                        str(commands),
                        f"{len(values):,}",
                        _ms(values, 50),
                        _ms(values, 99),
                        _ms(values[:1], None) if values else "-",
                        _ms(values, None),
                        str(len(held)) if first else "",
                        f"{percentile(d.http_ms, 50):.1f}" if first and d.http_ms else "",
                        f"{d.cpu['server']:.2f}" if first else "",
                        f"{d.cpu['db']:.2f}" if first else "",
                        f"{d.cpu['clients']:.2f}" if first else "",
                        f"{d.cpu['machine']:.2f}" if first else "",
                        f"{d.cpu['other']:.2f}{'*' if d.cpu['other'] > DISTURBED else ''}"
                        if first
                        else "",
                        f"{d.foreign_writer_ms:,.0f}{'*' if d.foreign_writer_ms > 100 else ''}"
                        if first
                        else "",
                    ]
                )
    print_table(
        "Delivery delay, ms: a message's arrival on a socket - the arrival of the answer of the "
        "command that made it; over every (socket, message) pair. held = commands whose event\n"
        f"reached no socket within {HELD_SECONDS * 1e3:.0f} ms (held up before the fan-out). "
        "HTTP ms: the commands' own answer times (p50). Cores used from the first command to the "
        "last message:\nserver process, its database backends, the client processes, the whole "
        f"machine, and of that anything else (* = more than {DISTURBED} cores: other people's "
        "processes).\nforeign tx ms = the longest write transaction of another database of the "
        "PostgreSQL server seen during the phase (* = over 100 ms): the service's feed reads "
        "nothing newer until it ends.",
        [
            "phase",
            "sockets",
            "messages",
            "commands",
            "pairs",
            "p50",
            "p99",
            "min",
            "max",
            "held",
            "HTTP ms",
            "server",
            "db",
            "clients",
            "machine",
            "other",
            "foreign tx ms",
        ],
        rows,
    )

    rows = []
    for r in (service, bare):
        d = r.phases["sustained"]
        t = d.totals
        rows.append(
            [
                r.name,
                f"{d.sockets:,}",
                f"{(d.commands - d.refused) / d.answered_seconds:,.0f}",
                "-" if d.events is None else f"{d.events / d.answered_seconds:,.0f}",
                f"{t.get('received', 0) / d.seconds if d.seconds else 0:,.0f}",
                _ms(d.delays, 50),
                _ms(d.delays, 99),
                _ms(d.delays, None),
                f"{percentile(d.http_ms, 50):.1f}" if d.http_ms else "-",
                f"{percentile(d.http_ms, 99):.1f}" if d.http_ms else "-",
                str(d.refused),
                str(d.late_slots),
                str(t.get("missing", 0)),
                str(t.get("duplicate", 0)),
                str(t.get("out_of_order", 0)),
                str(t.get("foreign", 0) + t.get("unexpected", 0)),
                ", ".join(f"{n} x {code}" for code, n in sorted(d.closed.items())) or "0",
                f"{d.cpu['server']:.2f}",
            ]
        )
    print_table(
        f"Sustained: {args.sustain_rate} commands/s for {args.sustain_seconds} s "
        f"({args.sustain_price_rate}/s update-prices to every socket, the rest on the users' own "
        f"positions). commands/s = 2xx answers / (first command's time to last answer); events/s: "
        f"events the log gained, same time; messages/s = messages received / (first command to "
        f"last message);\nHTTP = the commands' answer times (from writing the request to "
        f"reading the answer); late = commands sent > 50 ms "
        f"after their time; missing, duplicate, out of order (against the log's order), foreign "
        f"(another user's or not sent) are counted over every socket; closed = closed by the "
        f"server, with its code.",
        [
            "server",
            "sockets",
            "commands/s",
            "events/s",
            "messages/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "HTTP p50",
            "HTTP p99",
            "refused",
            "late",
            "missing",
            "dup",
            "order",
            "foreign",
            "closed",
            "server cores",
        ],
        rows,
    )

    def ratio(a: float | None, b: float | None) -> str:
        return "-" if a is None or not b else f"{a / b:.2f}"

    def p(d: Delivery, q: float) -> float | None:
        values = d.delays
        return percentile(values, q) * 1e3 if values else None

    rows = []
    kib = service.per_connection_kib()
    verdict = "met" if kib is not None and kib < MEMORY_TARGET_KIB else "MISSED"
    if verdict == "MISSED":
        missed.append("memory per connection")
    rows.append(
        [
            f"memory per connection, {service.large:,} sockets (KiB)",
            num(kib, ".1f"),
            num(bare.per_connection_kib(), ".1f"),
            ratio(kib, bare.per_connection_kib()),
            f"< {MEMORY_TARGET_KIB:.0f}",
            verdict,
        ]
    )
    for phase, sockets in (("small", small), ("large", service.large)):
        for q in (50, 99):
            s, b = p(service.phases[phase], q), p(bare.phases[phase], q)
            target = P99_TARGET_MS[phase] if q == 99 else None
            verdict = (
                "info" if target is None else ("met" if s is not None and s < target else "MISSED")
            )
            if verdict == "MISSED":
                missed.append(f"p99 at {sockets:,}")
            rows.append(
                [
                    f"delivery p{q}, {sockets:,} sockets (ms)",
                    num(s, ".1f"),
                    num(b, ".1f"),
                    ratio(s, b),
                    "-" if target is None else f"< {target:.0f}",
                    verdict,
                ]
            )
    for phase, sockets in (("small", small), ("large", service.large)):
        sd, bd = service.phases[phase], bare.phases[phase]
        if sd.held or bd.held:
            sv, bv = sd.delays_without_held(), bd.delays_without_held()
            s = percentile(sv, 99) * 1e3 if sv else None
            b = percentile(bv, 99) * 1e3 if bv else None
            rows.append(
                [
                    f"delivery p99, {sockets:,}, without held commands (ms)",
                    f"{num(s, '.1f')} ({len(sd.held)} held)",
                    f"{num(b, '.1f')} ({len(bd.held)} held)",
                    ratio(s, b),
                    "-",
                    "info",
                ]
            )
    s, b = service.phases["sustained"], bare.phases["sustained"]
    for label, sv, bv in (
        ("sustained delivery p99 (ms)", p(s, 99), p(b, 99)),
        (
            "sustained messages/s",
            s.totals.get("received", 0) / s.seconds if s.seconds else None,
            b.totals.get("received", 0) / b.seconds if b.seconds else None,
        ),
    ):
        rows.append([label, num(sv, ",.1f"), num(bv, ",.1f"), ratio(sv, bv), "-", "info"])
    lost = sum(s.totals.get(k, 0) for k in ("missing", "duplicate", "foreign", "unexpected"))
    closed = sum(s.closed.values())
    verdict = "met" if not lost and not closed else "MISSED"
    if verdict == "MISSED":
        missed.append("every message exactly once, no socket closed")
    rows.append(
        [
            "sustained: messages lost, doubled or foreign; sockets closed",
            f"{lost} ; {closed}",
            f"{sum(b.totals.get(k, 0) for k in ('missing', 'duplicate', 'foreign', 'unexpected'))}"
            f" ; {sum(b.closed.values())}",
            "-",
            "0 ; 0",
            verdict,
        ]
    )
    print_table(
        "Targets (ratio = service / bare)",
        ["figure", "service", "bare", "ratio", "target", "verdict"],
        rows,
    )
    if missed:
        print(f"TARGET MISSED: {', '.join(missed)}.")
    return 1 if missed and args.strict else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.live", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--connections", type=int, default=10_000, help="sockets (default 10000)")
    parser.add_argument("--users", type=int, default=1_000, help="users, 10 sockets each (1000)")
    parser.add_argument(
        "--small-connections", type=int, default=1_000, help="sockets of the small phase (1000)"
    )
    parser.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    parser.add_argument(
        "--client",
        choices=["raw", "websockets"],
        default="raw",
        help="client sockets: a minimal protocol of this script's (default), or websockets' "
        "asyncio client",
    )
    parser.add_argument(
        "--positions-per-user", type=int, default=2, help="positions seeded per user (default 2)"
    )
    parser.add_argument(
        "--latency-commands",
        type=int,
        default=30,
        help="commands of each latency phase, prices and creates alternately (default 30)",
    )
    parser.add_argument(
        "--small-interval", type=float, default=0.25, help="seconds between them, small (0.25)"
    )
    parser.add_argument(
        "--large-interval", type=float, default=1.0, help="seconds between them, large (1.0)"
    )
    parser.add_argument("--sustain-seconds", type=float, default=25, help="default 25")
    parser.add_argument("--sustain-rate", type=float, default=200, help="commands/s (default 200)")
    parser.add_argument(
        "--sustain-price-rate", type=float, default=10, help="of which update-prices/s (default 10)"
    )
    parser.add_argument(
        "--sustain-users", type=int, default=200, help="users of the sustained phase (200)"
    )
    parser.add_argument("--seed", type=int, default=20261124, help="random seed")
    parser.add_argument("--database", default="bench_live", help="database to (re)create")
    parser.add_argument("--keep", action="store_true", help="keep the database and the logs")
    parser.add_argument(
        "--details", type=Path, default=None, help="write every command's deliveries (JSON) here"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.connections % PER_USER or args.connections // PER_USER != args.users:
        if not args.serve_bare:
            parser.error(f"--connections must be --users x {PER_USER}")
    return args


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_bare:
        return serve_bare(args.port)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main(args))
    return uvloop.run(main(args))


if __name__ == "__main__":
    sys.exit(run())
