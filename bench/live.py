"""Live updates benchmark: `WS /ws/positions` with up to 10,000 sockets, beside a bare WS app;
setup, phases and targets: BENCHMARKS.md, "Live updates".

    python -m bench.live [--connections 10000 --users 1000] [--client raw|websockets]
                         [--sustain-seconds 25] [--details FILE.json] [--keep] [--strict]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import random
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import msgspec

from bench import harness
from bench.clients import HttpPool, RawSocket

ADMIN = "bench-admin"
SYMBOLS = ["AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "META", "TSLA", "JPM"]
PER_USER = 10  # sockets per user
MEMORY_TARGET_KIB = 30.0
P99_TARGET_MS = {"small": 100.0, "large": 500.0}
PHASES = ("small", "large", "sustained")
STAGES = ("start", "before", "small", "large", "closed", "peak")  # when the RSS is read
HELD_SECONDS = 0.1  # a command whose event reached no socket within this was held up server-side
BARE_KINDS = {  # the bare app's message type and event type of each command
    "price": ("price_update", "MarketPricesUpdated"),
    "create": ("position_created", "PositionOpened"),
    "update": ("position_updated", "PositionMarked"),
    "close": ("position_closed", "PositionClosed"),
}
LAST_EVENT = "SELECT coalesce(max(global_position), 0) FROM events"
LOG_ORDER = (
    "SELECT global_position FROM events WHERE global_position > $1 ORDER BY tx_id, global_position"
)

Key = int | str  # a message's key: the event position of prices, "<id>/<version>" of a position
Command = tuple[str, str | None, str | None]  # price|create|update|close, user, position id


# -- the bare app (runs in its own uvicorn process) ---------------------------------------------


def create_bare_app() -> Any:
    """The baseline: Starlette, sockets in a dict per user, a publish endpoint that answers, then
    sends the message it is given, numbered, to the owner's sockets (or to all)."""
    import orjson
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.responses import Response
    from starlette.routing import Route, WebSocketRoute

    by_user: dict[str, set[Any]] = defaultdict(set)
    counter = [0]

    async def socket(websocket: Any) -> None:
        await websocket.accept()
        initial = {"type": "initial_data", "positions": [], "position": counter[0]}
        await websocket.send_text(orjson.dumps(initial).decode())
        group = by_user[websocket.query_params.get("user", "")]
        group.add(websocket)
        try:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass
        finally:
            group.discard(websocket)

    async def send_all(targets: list[Any], text: str) -> None:
        for websocket in targets:
            with contextlib.suppress(Exception):  # a client that left: the others still get it
                await websocket.send_text(text)

    async def publish(request: Any) -> Response:
        body = orjson.loads(await request.body())
        counter[0] += 1
        message = {"position": counter[0], "timestamp": datetime.now(UTC).isoformat()}
        message |= body["message"]
        data, owner = message.get("data", {}), body["owner"]
        answer = {"position": counter[0]} | {k: data[k] for k in ("id", "version") if k in data}
        groups = by_user.values() if owner is None else [by_user.get(owner, set())]
        targets = [websocket for group in groups for websocket in group]
        task = BackgroundTask(send_all, targets, orjson.dumps(message).decode())
        return Response(orjson.dumps(answer), media_type="application/json", background=task)

    health = Route("/health", lambda request: Response(b'{"status":"ok"}'))
    publishing = Route("/bare/publish", publish, methods=["POST"])
    return Starlette(routes=[WebSocketRoute("/ws/positions", socket), publishing, health])


# -- the client processes ------------------------------------------------------------------------


class _Data(msgspec.Struct):
    id: str
    version: int


class _Message(msgspec.Struct):
    type: str
    position: int
    data: _Data | None = None


_decode = msgspec.json.Decoder(_Message).decode


def _record(message: _Message, arrived: float) -> tuple[float, int, Key]:
    """(arrival, event position, key) of a message; a socket keeps them in `records`."""
    data, position = message.data, message.position
    return arrived, position, position if data is None else f"{data.id}/{data.version}"


class _RawSocket(RawSocket):
    """A socket of bench.clients' cheap client."""

    def message(self, text: bytes, arrived: float) -> None:
        message = _decode(text)
        if self.opened.done():
            self.records.append(_record(message, arrived))
        else:
            self.initial(message.type, message.position)

    @classmethod
    async def open(cls, user: str, url: str) -> _RawSocket:
        parts = urlsplit(url)
        sock = cls(parts.netloc, f"{parts.path}?{parts.query}")
        sock.user, sock.records = user, []
        try:
            loop = asyncio.get_running_loop()
            await loop.create_connection(lambda: sock, parts.hostname, parts.port)
            await asyncio.wait_for(sock.opened, 120)
        except BaseException:
            sock.abort()
            raise
        return sock


class _WsSocket:
    """A socket of websockets' asyncio client (--client websockets), read by a task."""

    closing, closed = False, None  # we are closing it; the server closed it, with this code
    OPTIONS = {"compression": None, "max_queue": 64, "ping_interval": None, "proxy": None}

    @classmethod
    async def open(cls, user: str, url: str) -> _WsSocket:
        from websockets.asyncio.client import connect

        sock = cls()
        sock.user, sock.records = user, []
        sock.ws = await connect(url, open_timeout=120, close_timeout=5, **cls.OPTIONS)
        try:
            if _decode(await asyncio.wait_for(sock.ws.recv(), 120)).type != "initial_data":
                raise RuntimeError("the first message is not the initial data")
        except BaseException:
            sock.abort()
            raise
        sock.task = asyncio.create_task(sock._read())
        return sock

    async def _read(self) -> None:
        with contextlib.suppress(Exception):  # closed (or a message not understood: counted)
            async for raw in self.ws:
                self.records.append(_record(_decode(raw), time.monotonic()))
        if not self.closing:
            self.closed = self.ws.close_code or 1006

    async def close(self) -> None:
        self.closing = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 10)
        self.abort()
        await asyncio.gather(self.task, return_exceptions=True)

    def abort(self) -> None:
        self.closing = True
        self.ws.transport.abort()


class Holder:
    """The sockets of one client process; each method answers one request of the coordinator."""

    def __init__(self, kind: str) -> None:
        self.opener = (_RawSocket if kind == "raw" else _WsSocket).open
        self.sockets: list[Any] = []  # _RawSocket or _WsSocket

    async def open(self, sockets: list[tuple[str, str]]) -> dict[str, Any]:
        async def one(socket: tuple[str, str]) -> str | None:
            try:
                self.sockets.append(await self.opener(*socket))
            except Exception as error:  # noqa: BLE001 - counted
                return repr(error)
            return None

        errors = [e for e in await harness.bounded(32, one, sockets) if e is not None]
        return {"opened": len(sockets) - len(errors), "failed": len(errors), "errors": errors[:3]}

    async def close(self, _: None) -> None:
        await harness.bounded(64, lambda sock: sock.close(), self.sockets)
        self.sockets = []

    async def count(self, _: None) -> tuple[int, int]:
        """(messages received, sockets still open)"""
        socks = self.sockets
        return sum(len(s.records) for s in socks), sum(s.closed is None for s in socks)

    async def collect(self, arg: dict[str, Any]) -> dict[str, Any]:
        """Each socket against what the commands made, the log's order; each delay. Forgotten."""
        times, rank, prices = arg["times"], arg["rank"], frozenset(arg["prices"])
        expected_of = {user: prices | frozenset(keys) for user, keys in arg["own"].items()}
        delays: dict[Key, array] = defaultdict(lambda: array("d"))
        totals: Counter[str] = Counter()
        closed: Counter[int] = Counter()
        for sock in self.sockets:
            expected, seen, previous = expected_of.get(sock.user, prices), set(), -1
            for arrived, position, key in sock.records:
                if key in seen:
                    totals["duplicate"] += 1
                    continue
                seen.add(key)
                order = position if rank is None else rank.get(position)
                if order is not None:
                    totals["out_of_order"] += order <= previous
                    previous = order
                if key in times:
                    delays[key].append(arrived - times[key])
            totals["received"] += len(sock.records)
            totals["foreign"] += len(seen - expected)
            totals["missing" if sock.closed is None else "missing_closed"] += len(expected - seen)
            closed[sock.closed] += sock.closed is not None
        last = max((s.records[-1][0] for s in self.sockets if s.records), default=None)
        result = {"totals": totals, "closed": +closed, "sockets": len(self.sockets), "last": last}
        for sock in self.sockets:
            sock.records = []
        return result | {"delays": {key: values.tobytes() for key, values in delays.items()}}


def client_main(index: int, config: dict[str, Any], commands: Any, out: Any) -> None:
    """A client process: holds sockets, answers the coordinator's requests until "exit"."""

    async def serve() -> None:
        holder = Holder(config["kind"])
        while (request := await harness.receive(commands))[0] != "exit":
            out.put((request[0], "ws", index, await getattr(holder, request[0])(request[1])))
        for sock in holder.sockets:
            sock.abort()

    harness.child_loop(serve)


# -- the driver ---------------------------------------------------------------------------------


class Phase:
    """One phase: its commands as the driver sent them, and what the clients saw of them."""

    def __init__(self, commands: int) -> None:
        self.commands, self.begin = commands, time.monotonic() + 0.05  # the first command's slot
        self.times: dict[Key, float] = {}  # when each answer had been read
        self.details: dict[Key, dict[str, Any]] = {}  # --details
        self.prices, self.http_ms, self.own = [], [], defaultdict(list)
        self.answered_last, self.refused, self.late = 0.0, 0, 0  # late: sent > 50 ms after
        self.sockets, self.seconds = 0, 0.0  # seconds: from the first command to the last message
        self.by_command: dict[Key, list[float]] = defaultdict(list)  # every delivery delay (s)
        self.totals, self.closed = Counter(), Counter()
        self.cpu: Any = None  # harness.Cores of server, db, clients; own = the driver
        self.foreign_ms, self.events = 0.0, None  # another database's longest write; log's events

    def answered(self, command: Command, slot: float, key: Key | None, took: float, done: float):
        self.http_ms.append(took * 1e3)
        self.answered_last = max(self.answered_last, done)
        if key is None:
            self.refused += 1
            return
        self.times[key] = done
        answered, ms = round(done - self.begin, 4), round(took * 1e3, 2)
        info = {"kind": command[0], "user": command[1], "slot_s": round(slot, 4)}
        self.details[key] = info | {"answered_s": answered, "http_ms": ms}
        (self.prices if isinstance(key, int) else self.own[command[1] or ""]).append(key)

    def add(self, replies: list[dict[str, Any]]) -> None:
        for reply in replies:
            self.sockets += reply["sockets"]
            self.totals.update(reply["totals"])
            self.closed.update(reply["closed"])
            for key, values in reply["delays"].items():
                self.by_command[key].extend(array("d", values))
        lasts = [reply["last"] for reply in replies if reply["last"] is not None]
        self.seconds = max(lasts) - self.begin if lasts else 0.0

    def detail_rows(self) -> list[dict[str, Any]]:
        """Per command: what it was, when it was answered, how its deliveries went (ms)."""
        rows = []
        for key, info in sorted(self.details.items(), key=lambda item: item[1]["slot_s"]):
            values = sorted(self.by_command.get(key, ()))
            chosen = [values[0], harness.percentile(values, 50), values[-1]] if values else []
            first, p50, last = [round(v * 1e3, 2) for v in chosen] or [None] * 3
            rows.append({"key": key, **info, "deliveries": len(values), "first_ms": first})
            rows[-1] |= {"p50_ms": p50, "last_ms": last}
        return rows

    def delays(self, keep: Callable[[Key], bool] = lambda key: True) -> list[float]:
        return sorted(d for k, v in self.by_command.items() if keep(k) for d in v)

    @property
    def held(self) -> list[Key]:
        """Commands whose event reached no socket within HELD_SECONDS: held before the fan-out."""
        return [k for k, v in self.by_command.items() if v and min(v) > HELD_SECONDS]

    def without_held(self) -> list[float]:
        held = set(self.held)
        return self.delays(lambda key: key not in held)

    def p(self, q: float, values: list[float] | None = None) -> float | None:
        values = self.delays() if values is None else values
        return harness.percentile(values, q) * 1e3 if values else None

    def describe(self) -> str:
        delays = self.delays()
        if not delays:
            return "no message matched"
        held, commands, cores = len(self.held), len(self.by_command), self.cpu["server"]
        return (
            f"{len(delays):,} deliveries, p50 {self.p(50, delays):.1f} ms, p99 "
            f"{self.p(99, delays):.1f} ms, max {delays[-1] * 1e3:.1f} ms; {held} of {commands} "
            f"commands held > {HELD_SECONDS * 1e3:.0f} ms; server {cores:.2f} cores"
        )


def price_body(i: int) -> dict[str, float]:
    chosen = [SYMBOLS[(i + k) % len(SYMBOLS)] for k in range(5)]
    return {s: round(100 + (i * 7 + k) % 5000 / 100, 2) for k, s in enumerate(chosen)}


class Target:
    """The service or the bare app, driven through the same phases; the positions the driver
    knows per user (id -> version); its figures."""

    def __init__(self, args: argparse.Namespace, server: harness.Server, shared: dict) -> None:
        self.args, self.server, self.name = args, server, server.name
        self.tokens, self.clients, self.admin = shared["tokens"], shared["clients"], shared["admin"]
        self.view = shared["view"]  # a position as the service renders it: the bare app sends it
        self.service, self.log = server.name == "service", shared["log"]  # the service's log
        self.http = HttpPool(server.port, 32)
        self.positions: dict[str, dict[str, int]] = defaultdict(dict)
        self.busy: set[str | None] = set()  # positions with a command in flight
        self.meter = harness.CpuMeter(strict=False)
        self.rng = random.Random(f"{args.seed}-{server.name}")
        self.next_sid = self.counter = 0  # sockets opened; distinct command numbers
        self.rss = {"start": harness.process_memory_kib(server.pid)}
        self.small, self.large, self.open_failed, self.large_open_seconds = 0, 0, 0, 1.0
        self.phases: dict[str, Phase] = {}

    def per_connection_kib(self, phase: str = "large") -> float | None:
        rss, before, sockets = self.rss.get(phase), self.rss.get("before"), getattr(self, phase)
        return None if rss is None or before is None or not sockets else (rss - before) / sockets

    async def ask(self, op: str, args: list[Any] | None = None) -> list[Any]:
        count = len(self.clients.processes)  # 900 s: 10,000 sockets on a busy machine
        return await self.clients.ask("ws", op, args or [None] * count, 900.0)

    def request(self, command: Command, i: int) -> tuple[str, str, str, bytes]:
        """(method, path, token, body) of a command; to the bare app: the message to send."""
        kind, user, position_id = command
        method, path, body, token = "POST", "/positions", None, self.tokens[user or ADMIN]
        if not self.service:
            message = dict(zip(("type", "event_type"), BARE_KINDS[kind], strict=True))
            if kind == "price":
                message["prices"] = price_body(i)
            else:
                version = 1 if kind == "create" else self.positions[user][position_id] + 1
                data = {"id": position_id or str(uuid.uuid4()), "owner": user, "version": version}
                message["data"] = self.view | data
            path, body = "/bare/publish", {"owner": user, "message": message}
        elif kind == "price":
            path, body = "/positions/update-prices", price_body(i)
        elif kind == "create":
            body = {"symbol": SYMBOLS[i % len(SYMBOLS)], "side": "long" if i % 3 else "short"}
            body |= {"quantity": 10 + i % 7, "entry_price": 100, "strategy": "bench"}
        elif kind == "update":
            method, path = "PUT", f"/positions/{position_id}"
            body = {"current_price": round(100 + (i % 100_000) / 1000, 3)}
        else:
            path = f"/positions/{position_id}/close?exit_price={round(100 + (i % 1000) / 100, 2)}"
        return method, path, token, b"" if body is None else json.dumps(body).encode()

    async def send(self, command: Command, i: int) -> tuple[Key | None, float, float]:
        """(the key of its event's message, None if refused; answer seconds; answer time)"""
        (kind, user, position_id), (method, path, token, body) = command, self.request(command, i)
        self.busy.add(position_id)
        try:
            status, data, started, done = await self.http.request(method, path, token, body)
        finally:
            self.busy.discard(position_id)
        if status >= 300:
            print(f"  {self.name}: {method} {path} answered {status}: {data[:200]!r}")
            return None, done - started, done
        answer = json.loads(data)
        if kind == "price":
            return int(answer["position"]), done - started, done
        owned, position_id = self.positions[user or ""], str(answer["id"])
        owned[position_id] = int(answer["version"])
        if kind == "close":
            del owned[position_id]
        return f"{position_id}/{answer['version']}", done - started, done

    async def open_sockets(self, users: list[str]) -> tuple[int, float]:
        """PER_USER sockets for each user, spread over the clients: (opened, seconds)."""
        per_client: list[list[tuple[str, str]]] = [[] for _ in self.clients.processes]
        for user in users:
            bare = "" if self.service else f"user={user}&"
            url = f"ws://127.0.0.1:{self.server.port}/ws/positions?{bare}token={self.tokens[user]}"
            for sid in range(self.next_sid, self.next_sid + PER_USER):
                per_client[sid % len(per_client)].append((user, url))
            self.next_sid += PER_USER
        started = time.monotonic()
        replies = await self.ask("open", per_client)
        for reply in (reply for reply in replies if reply["errors"]):
            print(f"  {self.name}: {reply['failed']} socket(s) failed: {reply['errors']}")
        self.open_failed += sum(reply["failed"] for reply in replies)
        return sum(reply["opened"] for reply in replies), time.monotonic() - started

    async def count(self, which: int = 0) -> int:
        """The messages the clients hold (which=1: their sockets still open)."""
        return sum(reply[which] for reply in await self.ask("count"))

    def command(self, kind: str, users: list[str]) -> Command:
        """A price, a create; "pick": a random user's create (35 %), update, close (15 %)."""
        if kind != "pick":
            return kind, self.rng.choice(users) if kind == "create" else None, None
        user = self.rng.choice(users)
        idle = [p for p in self.positions.get(user, ()) if p not in self.busy]
        roll = self.rng.random()
        if not idle or roll < 0.35:
            return "create", user, None
        return "update" if roll < 0.85 else "close", user, self.rng.choice(idle)

    async def issue(self, phase: Phase, kinds: list[str], interval: float, users: list[str]):
        """Each command at its time (open loop), whatever the earlier ones did."""

        async def one(command: Command, number: int, slot: float) -> None:
            phase.answered(command, slot, *await self.send(command, number))

        tasks = []
        for n, kind in enumerate(kinds):
            delay = phase.begin + n * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.05:
                phase.late += 1
            self.counter += 1
            command = self.command(kind, users)
            tasks.append(asyncio.create_task(one(command, self.counter, n * interval)))
        await asyncio.gather(*tasks)
        phase.http_ms.sort()

    async def drive(self, label: str, kinds: list[str], interval: float, users: list[str]):
        """A phase: send the commands, wait for the messages, check every socket."""
        sockets, log = await self.count(1), self.log if self.service else None
        after = await log.fetchval(LAST_EVENT) if log is not None else 0
        backends = await self.backends()
        start = self.meter.read(server=[self.server.pid], db=backends, clients=self.clients.pids)
        stop = asyncio.Event()
        watch = harness.longest_foreign_write(self.admin, self.args.database, stop)
        watch = asyncio.create_task(watch)
        phase = self.phases[label] = Phase(len(kinds))
        await self.issue(phase, kinds, interval, users)
        own = sum(len(keys) for keys in phase.own.values())
        expected = len(phase.prices) * sockets + own * PER_USER
        if (got := await harness.wait_total(self.count, expected)) < expected:
            print(f"  {self.name}: {got:,} of {expected:,} messages arrived")
        stop.set()
        phase.foreign_ms = await watch * 1e3  # before backends(), which asks the same connection
        phase.cpu = self.meter.since(start, db=set(await self.backends()) | set(backends))
        rows = await log.fetch(LOG_ORDER, after) if log is not None else None
        rank = None if rows is None else {row[0]: n for n, row in enumerate(rows)}
        phase.events = None if rows is None else len(rows)
        check = {"times": phase.times, "prices": phase.prices, "own": phase.own, "rank": rank}
        phase.add(await self.ask("collect", [check] * len(self.clients.processes)))
        print(f"  {label}: {phase.describe()}", flush=True)

    async def backends(self) -> list[int]:
        return await harness.backend_pids(self.admin, self.args.database) if self.service else []

    async def seed(self, users: list[str]) -> None:
        """Positions for every user: through the API (the service), invented (the bare app)."""
        owners = [user for user in users for _ in range(self.args.positions_per_user)]
        if not self.service:
            for user in owners:
                self.positions[user][str(uuid.uuid4())] = 1
            return
        started, user = time.monotonic(), users[0]
        create = lambda n: self.send(("create", owners[n], None), n)  # noqa: E731
        await harness.bounded(16, create, range(len(owners)))
        await self.send(("price", None, None), 0)
        path = f"/positions/{next(iter(self.positions[user]))}"
        self.view.update(json.loads((await self.http.request("GET", path, self.tokens[user]))[1]))
        seconds = time.monotonic() - started
        print(f"  seeded {len(owners):,} positions for {len(users):,} users in {seconds:.1f} s")

    async def run(self, users: list[str], small_users: list[str]) -> None:
        """Seed, warm up; small phase, large (more sockets); all closed; sustained (fresh ones)."""
        args, pid = self.args, self.server.pid
        print(f"\n{self.name} (pid {pid}, port {self.server.port})", flush=True)
        await self.seed(users)
        await self.open_sockets(users[:1])  # the warm-up: a socket's and a command's code paths
        await self.send(("price", None, None), 0)
        await asyncio.sleep(0.5)
        await self.ask("close")
        self.rss["before"] = await harness.settled_memory_kib(pid, 1.0)
        latency = ["create" if i % 2 else "price" for i in range(args.latency_commands)]
        self.small, seconds = await self.open_sockets(small_users)
        self.rss["small"] = await harness.settled_memory_kib(pid, 2.0)
        print(f"  {self.small:,} sockets open in {seconds:.1f} s", flush=True)
        await self.drive("small", latency, args.small_interval, small_users)
        more, self.large_open_seconds = await self.open_sockets(users[len(small_users) :])
        self.large, still_open = self.small + more, await self.count(1)
        self.rss["large"] = await harness.settled_memory_kib(pid, 3.0)
        clients = sum(harness.process_memory_kib(p) or 0 for p in self.clients.pids) / 1024
        rss, seconds = (self.rss["large"] or 0) / 1024, self.large_open_seconds
        print(f"  {more:,} more sockets open in {seconds:.1f} s ({still_open:,} open); ", end="")
        print(f"RSS {rss:.0f} MiB, clients {clients:.0f} MiB", flush=True)
        await self.drive("large", latency, args.large_interval, users)
        self.rss["peak"] = harness.process_memory_kib(pid, "VmHWM")
        await self.ask("close")
        self.rss["closed"] = await harness.settled_memory_kib(pid, 2.0)
        rate, prices, count = args.sustain_rate, args.sustain_price_rate, args.sustain_seconds
        every = max(1, round(rate / prices)) if prices else 0
        kinds = ["price" if every and i % every == 0 else "pick" for i in range(int(rate * count))]
        await self.open_sockets(users[: args.sustain_users])
        await asyncio.sleep(1.0)
        await self.drive("sustained", kinds, 1 / rate, users[: args.sustain_users])
        await self.ask("close")


# -- the report, the run --------------------------------------------------------------------------


def _ms(values: list[float], q: float | None = None) -> str:
    """A percentile (q=None: the largest) of sorted delays in seconds, shown in ms."""
    if not values:
        return "-"
    return f"{(values[-1] if q is None else harness.percentile(values, q)) * 1e3:.1f}"


def memory_row(t: Target) -> list[str]:
    mib = [None if t.rss.get(s) is None else t.rss[s] / 1024 for s in STAGES]
    kib = [harness.num(t.per_connection_kib("small"), ".1f"), f"{t.large:,}"]
    kib += [harness.num(t.per_connection_kib(), ".1f")]
    opened = f"{(t.large - t.small) / t.large_open_seconds:,.0f}"
    return [t.name, *(harness.num(v, ".1f") for v in mib), *kib, opened, str(t.open_failed)]


def delivery_rows(label: str, target: Target) -> list[list[str]]:
    """All messages, prices, own positions, all but the held; CPU etc. on the first row."""
    d = target.phases[label]
    held, commands = d.held, len(d.by_command)
    prices = sum(isinstance(k, int) for k in d.by_command)
    own = f"own positions ({PER_USER} sockets)"
    kinds = [
        ("all", d.delays(), commands),
        ("prices (every socket)", d.delays(lambda k: isinstance(k, int)), prices),
        (own, d.delays(lambda k: isinstance(k, str)), commands - prices),
    ]
    if held:
        kinds.append((f"all but the {len(held)} held", d.without_held(), commands - len(held)))
    figures = lambda v: [_ms(v, 50), _ms(v, 99), _ms(v[:1]), _ms(v)]  # noqa: E731
    rows = [["", "", what, str(n), f"{len(v):,}", *figures(v), *[""] * 8] for what, v, n in kinds]
    cpu, http, foreign = d.cpu, d.http_ms, d.foreign_ms
    cores = [*(cpu[group] for group in ("server", "db", "clients")), cpu.machine]
    rows[0][:2] = [f"{label} {target.name}", f"{d.sockets:,}"]
    rows[0][9:] = [str(len(held)), f"{harness.percentile(http, 50):.1f}" if http else ""]
    rows[0] += [f"{c:.2f}" for c in cores] + [f"{cpu.other:.2f}{'*' if cpu.disturbed() else ''}"]
    rows[0] += [f"{foreign:,.0f}{'*' if foreign > 100 else ''}"]
    return rows


def sustained_row(target: Target) -> list[str]:
    d = target.phases["sustained"]
    t, answered, delays = d.totals, d.answered_last - d.begin, d.delays()
    events = "-" if d.events is None else f"{d.events / answered:,.0f}"
    messages = t["received"] / d.seconds if d.seconds else 0
    rates = [f"{(d.commands - d.refused) / answered:,.0f}", events, f"{messages:,.0f}"]
    http = [f"{harness.percentile(d.http_ms, q):.1f}" if d.http_ms else "-" for q in (50, 99)]
    counts = [d.refused, d.late, *(t[k] for k in ("missing", "duplicate", "out_of_order"))]
    counts.append(t["foreign"])
    closed = ", ".join(f"{n} x {code}" for code, n in sorted(d.closed.items())) or "0"
    ms = [_ms(delays, q) for q in (50, 99, None)]
    row = [target.name, f"{d.sockets:,}", *rates, *ms, *http, *map(str, counts), closed]
    return [*row, f"{d.cpu['server']:.2f}"]


def target_rows(service: Target, bare: Target, small: int, verdicts: harness.Verdicts):

    def row(label: str, s: Any, b: Any, spec=".1f", target="-", met=None, name="") -> list[str]:
        ratio = "-" if s is None or not b else f"{s / b:.2f}"
        return [label, *(harness.num(v, spec) for v in (s, b)), ratio, target, verdicts(met, name)]

    kib, limit = service.per_connection_kib(), f"< {MEMORY_TARGET_KIB:.0f}"
    met = kib is not None and kib < MEMORY_TARGET_KIB
    label = f"memory per connection, {service.large:,} sockets (KiB)"
    rows = [row(label, kib, bare.per_connection_kib(), ".1f", limit, met, "memory per connection")]
    sizes = {"small": small, "large": service.large}
    for phase, n in sizes.items():
        s, b = service.phases[phase], bare.phases[phase]
        rows.append(row(f"delivery p50, {n:,} sockets (ms)", s.p(50), b.p(50)))
        p99, ms = s.p(99), P99_TARGET_MS[phase]
        label, met = f"delivery p99, {n:,} sockets (ms)", p99 is not None and p99 < ms
        rows.append(row(label, p99, b.p(99), ".1f", f"< {ms:.0f}", met, f"p99 at {n:,}"))
    for phase, n in sizes.items():
        s, b = service.phases[phase], bare.phases[phase]
        if s.held or b.held:
            label = f"delivery p99, {n:,}, without held commands (ms)"
            rows.append(row(label, *(d.p(99, d.without_held()) for d in (s, b))))
            rows[-1][1:3] = [f"{rows[-1][i]} ({len(d.held)} held)" for i, d in ((1, s), (2, b))]
    s, b = service.phases["sustained"], bare.phases["sustained"]
    rates = [d.totals["received"] / d.seconds if d.seconds else None for d in (s, b)]
    lost = [sum(d.totals[k] for k in ("missing", "duplicate", "foreign")) for d in (s, b)]
    closed = [sum(d.closed.values()) for d in (s, b)]
    met, name = not lost[0] and not closed[0], "every message exactly once, no socket closed"
    last = ["sustained: messages lost, doubled or foreign; sockets closed"]
    last += [f"{lost[i]} ; {closed[i]}" for i in (0, 1)] + ["-", "0 ; 0", verdicts(met, name)]
    rows += [row("sustained delivery p99 (ms)", s.p(99), b.p(99), ",.1f")]
    return rows + [row("sustained messages/s", *rates, ",.1f"), last]


def report(args: argparse.Namespace, service: Target, bare: Target, small: int) -> int:
    stages = ["start", "before", f"{small:,} open", f"{service.large:,} open", "closed", "peak"]
    header = ["server", *stages, f"KiB/conn @{small:,}", "sockets", "KiB/conn", "opened/s"]
    harness.print_table(
        "Server memory (VmRSS, MiB): at start; before = after a warm-up, no socket; with the small "
        "and the large number of sockets open and idle; after closing them all; peak (VmHWM).\n"
        "KiB per connection = (RSS with the sockets - RSS before) / sockets; opened/s over the "
        "second batch (the handshake and, for the service, the initial data query).",
        [*header, "failed"],
        [memory_row(service), memory_row(bare)],
    )
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
        [row for p in PHASES for t in (service, bare) for row in delivery_rows(p, t)],
    )
    harness.print_table(
        f"Sustained: {args.sustain_rate} commands/s for {args.sustain_seconds} s "
        f"({args.sustain_price_rate}/s update-prices to every socket, the rest on the users' own "
        f"positions). commands/s = 2xx answers / (first command's time to last answer); events/s: "
        f"events the log gained, same time; messages/s = messages received / (first command to "
        f"last message);\nHTTP = the commands' answer times (from writing the request to "
        f"reading the answer); late = commands sent > 50 ms after their time; missing, duplicate, "
        f"out of order (against the log's order), foreign (another user's or not sent) are "
        f"counted over every socket; closed = closed by the server, with its code.",
        "server|sockets|commands/s|events/s|messages/s|p50 ms|p99 ms|max ms|HTTP p50|HTTP p99|"
        "refused|late|missing|dup|order|foreign|closed|server cores".split("|"),
        [sustained_row(service), sustained_row(bare)],
    )
    verdicts = harness.Verdicts()
    header = ["figure", "service", "bare", "ratio", "target", "verdict"]
    rows = target_rows(service, bare, small, verdicts)
    harness.print_table("Targets (ratio = service / bare)", header, rows)
    verdicts.report()
    return 1 if verdicts.missed and args.strict else 0


async def main(args: argparse.Namespace) -> int:
    from api.auth import Role

    started, idle_load = time.monotonic(), await harness.machine_busy()
    users = [f"bench-u{i:04d}" for i in range(args.users)]
    small_users = users[: max(1, min(args.small_connections // PER_USER, len(users) // 2))]
    small = len(small_users) * PER_USER
    if small != args.small_connections:
        print(f"note: small phase at {small:,} sockets")
    args.sustain_users = min(args.sustain_users, len(users))
    secret = secrets.token_urlsafe(48)
    roles = dict.fromkeys(users, Role.USER) | {ADMIN: Role.ADMIN}
    tokens = harness.mint_tokens(secret, roles, timedelta(hours=3))
    logs, source = Path(tempfile.mkdtemp(prefix="bench_live_")), harness.source_state()
    clients, servers, targets = harness.Children(), [], []
    for index in range(args.clients):
        clients.start("ws", index, client_main, {"kind": args.client})
    async with harness.scratch_database(args.database, args.keep) as (admin, dsn):
        try:
            servers.append(harness.start_service(dsn, secret, tokens[ADMIN], logs))
            port = harness.free_port()
            argv = [sys.executable, "-m", "bench.live", "--serve-bare", "--port", str(port)]
            ready = ("/health", tokens[ADMIN])
            servers.append(harness.Server("bare", argv, harness.server_env(), port, ready, logs))
            for server in servers:
                server.wait_ready()
            log = await asyncpg.connect(dsn)
            pg = await harness.postgres(log, "fsync", "synchronous_commit")
            python = f"{harness.CORES} cores, Python {platform.python_version()}"
            stack = ", ".join(f"{n} {version(n)}" for n in ("uvicorn", "starlette", "websockets"))
            note = harness.source_note(source)
            print(f"Live updates benchmark: {python}, {stack}, {pg}; source: {note}")
            print(
                f"{args.connections:,} sockets ({len(users):,} users x {PER_USER}) over "
                f"{args.clients} client processes; small phase {small:,}; sustained "
                f"{args.sustain_rate}/s ({args.sustain_price_rate}/s prices) for "
                f"{args.sustain_seconds} s to {args.sustain_users * PER_USER:,} sockets; machine "
                f"busy before the run: {idle_load:.2f} cores",
                flush=True,
            )
            shared = {"tokens": tokens, "clients": clients, "admin": admin, "log": log, "view": {}}
            for server in servers:
                targets.append(Target(args, server, shared))
                await targets[-1].run(users, small_users)
            await log.close()
        except BaseException:
            print(f"(servers' logs kept in {logs})", file=sys.stderr)
            raise
        finally:
            for target in targets:
                target.http.close()
            clients.stop()
            for server in servers:
                server.stop()
    code = report(args, *targets, small)
    if args.details is not None:
        details = {t.name: {p: d.detail_rows() for p, d in t.phases.items()} for t in targets}
        args.details.write_text(json.dumps(details, indent=1))
        print(f"Every command's deliveries: {args.details}")
    print(f"\nRun time {time.monotonic() - started:.0f} s.")
    if args.keep:
        print(f"Logs in {logs}")
    else:
        shutil.rmtree(logs, ignore_errors=True)
    return code


OPTIONS = """
--connections         10_000          sockets (default 10000)
--users               1_000           users, 10 sockets each (1000)
--small-connections   1_000           sockets of the small phase (1000)
--clients             4               client processes (default 4)
--client              raw|websockets  a minimal client (default), or websockets' asyncio client
--positions-per-user  2               positions seeded per user (default 2)
--latency-commands    30              commands of each latency phase, prices and creates (30)
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


def run(argv: list[str] | None = None) -> int:
    args, parser = harness.parse_options("python -m bench.live", __doc__, OPTIONS, argv)
    if args.serve_bare:  # the bare app's process
        import uvicorn

        from api.cli import SERVER_OPTIONS

        options = {"host": "127.0.0.1", "port": args.port, "log_level": "warning"}
        options |= SERVER_OPTIONS
        return uvicorn.run("bench.live:create_bare_app", factory=True, **options) or 0
    if args.connections != args.users * PER_USER:
        parser.error(f"--connections must be --users x {PER_USER}")
    harness.raise_fd_limit()
    return harness.run_main(main, args)


if __name__ == "__main__":
    sys.exit(run())
