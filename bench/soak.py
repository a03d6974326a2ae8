"""Soak: one service process under mixed HTTP load and 1,000 live sockets for 10 minutes.

Errors, latency per minute and kind, memory and descriptors over time, every price update on
every socket, and the read models verified afterwards; setup, load and targets: BENCHMARKS.md,
"Soak" (results: RELIABILITY.md).

    python -m bench.soak [--minutes 10] [--warmup-minutes 1] [--rate 200] [--price-rate 2]
                         [--http-users 50] [--ws-users 100] [--sockets-per-user 10]
                         [--ws-clients 2] [--http-clients 1] [--markdown FILE] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter, defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from bench import harness
from bench.clients import HttpConnection, HttpPool, RawSocket

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
SERVICE = "bench-soak-prices"
SYMBOLS = {
    **{"AAPL": 190.0, "MSFT": 410.0, "GOOG": 170.0, "AMZN": 180.0, "NVDA": 120.0},
    **{"META": 500.0, "TSLA": 250.0, "JPM": 200.0, "XOM": 115.0, "KO": 62.0},
}
MIX = {  # percent of the user requests: (weight, label)
    "get": (30, "GET /positions/{id}"),
    "list": (10, "GET /positions?limit=100"),
    "summary": (10, "GET /portfolio/summary"),
    "create": (15, "POST /positions"),
    "update": (15, "PUT /positions/{id}"),
    "close_part": (8, "POST .../close (part)"),
    "close_full": (11, "POST .../close (all)"),
}
KINDS = [*MIX, "prices"]
LABELS = {kind: label for kind, (_, label) in MIX.items()} | {
    "prices": "POST /positions/update-prices"
}
SEED_PER_USER = 10
HTTP_CONNECTIONS = 64  # keep-alive connections per HTTP client process
REQUEST_TIMEOUT = 30.0
SAMPLE_SECONDS = 10.0
GROWTH_TARGET_PCT = 10.0
OPEN_CONCURRENCY = 32
RECONNECT_SECONDS = 1.0
REPORT_DELAY = 3.0  # a minute's figures go to the coordinator this long after it ends


def _minute(when: float, t0: float) -> int:
    return int((when - t0) // 60)


def _minutes(seconds: float) -> int:
    """The minutes of the run, the last one perhaps partial."""
    return int(round(seconds / 60 + 0.4999))


def _body(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _price(rng: random.Random, symbol: str, spread: float) -> float:
    return round(SYMBOLS[symbol] * (1 + rng.uniform(-spread, spread)), 2)


# -- the HTTP load (a process of its own) --------------------------------------------------------


@dataclass
class Held:
    """A position of a user as the client knows it from the answers."""

    id: str
    symbol: str
    side: str
    quantity: int
    entry: float
    version: int
    busy: bool = False


@dataclass
class Book:
    open: dict[str, Held] = field(default_factory=dict)
    known: list[str] = field(default_factory=list)  # every id seen (the last 500), for reads

    def remember(self, position_id: str) -> None:
        self.known.append(position_id)
        if len(self.known) > 500:
            del self.known[:100]

    def idle(self, rng: random.Random, tries: int = 6) -> Held | None:
        if not self.open:
            return None
        ids = list(self.open)
        for _ in range(tries):
            held = self.open[rng.choice(ids)]
            if not held.busy:
                return held
        return next((h for h in self.open.values() if not h.busy), None)


class Bucket:
    """One minute of one kind of request."""

    __slots__ = ("n", "ok", "refused", "statuses", "transport", "due", "sent", "lag")

    def __init__(self) -> None:
        self.n = self.ok = self.refused = 0
        self.statuses: Counter[int] = Counter()  # non-2xx answers
        self.transport: Counter[str] = Counter()
        self.due = array("d")  # seconds from the request's slot to its answer
        self.sent = array("d")  # seconds from writing the request to its answer
        self.lag = 0.0

    def errors(self) -> int:
        """Answers other than 2xx and 409 (a domain refusal), and transport failures."""
        return sum(n for s, n in self.statuses.items() if s != 409) + sum(self.transport.values())

    def export(self) -> dict[str, Any]:
        figures = {name: getattr(self, name) for name in self.__slots__}
        return figures | {"due": self.due.tobytes(), "sent": self.sent.tobytes()}

    def merge(self, exported: dict[str, Any]) -> None:
        """Add another process's bucket of the same minute and kind."""
        self.n += exported["n"]
        self.ok += exported["ok"]
        self.refused += exported["refused"]
        self.statuses.update({int(s): n for s, n in exported["statuses"].items()})
        self.transport.update(exported["transport"])
        self.due.frombytes(exported["due"])
        self.sent.frombytes(exported["sent"])
        self.lag = max(self.lag, exported["lag"])


Request = tuple[str, str, str, bytes, str, Held | None]


class HttpLoad:
    """One HTTP client process: its users' books, an open-loop schedule, a bucket per minute
    and kind of request."""

    def __init__(self, index: int, config: dict[str, Any], out: Any) -> None:
        self.index, self.config, self.out = index, config, out
        self.rng = random.Random(config["seed"] * 1000 + index)
        self.tokens: dict[str, str] = config["tokens"]
        self.users: list[str] = config["users"]
        self.books = {user: Book() for user in self.users}
        self.pool = HttpPool(config["port"], HTTP_CONNECTIONS, REQUEST_TIMEOUT, lifo=True)
        self.buckets: dict[tuple[int, str], Bucket] = defaultdict(Bucket)
        self.samples: list[str] = []  # the first error answers, for the report
        self.price_positions: list[int] = []
        self.t0 = 0.0
        self.notes = 0

    async def seed(self) -> int:
        async def seed_user(user: str) -> None:
            for _ in range(SEED_PER_USER):
                status, data, _ = await self._create(user)
                if status != 201:
                    raise RuntimeError(f"seed: POST /positions answered {status}: {data[:300]!r}")

        await asyncio.gather(*(seed_user(user) for user in self.users))
        return sum(len(b.open) for b in self.books.values())

    async def _create(self, user: str) -> tuple[int, bytes, float]:
        rng = self.rng
        symbol = rng.choice(list(SYMBOLS))
        side = "long" if rng.random() < 0.7 else "short"
        entry = _price(rng, symbol, 0.02)
        quantity = rng.randint(10, 100)
        low, high = round(entry * 0.9, 2), round(entry * 1.1, 2)
        body = {
            "symbol": symbol,
            "side": side,
            "quantity": quantity,
            "entry_price": entry,
            "stop_loss": low if side == "long" else high,
            "take_profit": high if side == "long" else low,
            "strategy": rng.choice(["momentum", "carry", "swing", "pairs"]),
        }
        status, data, sent, _ = await self.pool.request(
            "POST", "/positions", self.tokens[user], _body(body)
        )
        if status == 201:
            answer = json.loads(data)
            held = Held(answer["id"], symbol, side, quantity, entry, answer["version"])
            self.books[user].open[held.id] = held
            self.books[user].remember(held.id)
        return status, data, sent

    def _request(self, kind: str, user: str) -> Request | None:
        """kind (a part close of 1 becomes a full one), method, path, body, extra headers, and
        the position it commands (marked busy); None when the user has nothing to act on."""
        rng, book = self.rng, self.books[user]
        if kind == "get":
            if not book.known:
                return None
            return kind, "GET", f"/positions/{rng.choice(book.known)}", b"", "", None
        if kind in ("list", "summary"):
            path = "/positions?limit=100" if kind == "list" else "/portfolio/summary"
            return kind, "GET", path, b"", "", None
        held = book.idle(rng)
        if held is None:
            return None
        if kind == "close_part" and held.quantity < 2:
            kind = "close_full"
        held.busy = True
        exit_price = _price(rng, held.symbol, 0.05)
        if kind == "update":
            self.notes += 1
            body: dict[str, Any] = {}
            choice = rng.random()
            if choice < 0.67:
                body["notes"] = f"soak note {self.index}-{self.notes}"
            if choice >= 0.33:
                factor = rng.uniform(0.85, 0.95) if held.side == "long" else rng.uniform(1.05, 1.15)
                body["stop_loss"] = round(held.entry * factor, 2)
            if_match = f'If-Match: "{held.version}"\r\n'
            return kind, "PUT", f"/positions/{held.id}", _body(body), if_match, held
        path = f"/positions/{held.id}/close?exit_price={exit_price}"
        if kind == "close_part":
            path += f"&quantity={rng.randint(1, held.quantity - 1)}"
        return kind, "POST", path, b"", "", held

    def _settle(self, user: str, held: Held | None, status: int, data: bytes) -> None:
        """Bring the book in line with an answer."""
        if held is None:
            return
        held.busy = False
        book = self.books[user]
        if 200 <= status < 300:
            answer = json.loads(data)
            held.version = answer["version"]
            if answer["status"] != "open":
                book.open.pop(held.id, None)
            else:
                held.quantity = int(float(answer["quantity"]))
        elif status in (404, 409, 412):
            book.open.pop(held.id, None)  # closed, gone or changed: leave it alone from now on

    def _note(self, kind: str, status: int | None, data: bytes | str) -> None:
        if len(self.samples) < 10:
            text = data.decode(errors="replace") if isinstance(data, bytes) else data
            self.samples.append(f"{kind} {status}: {text[:300]}")

    def _prepare(self, kind: str, user: str) -> tuple[str, Awaitable[tuple[int, bytes, float]]]:
        """The kind the request becomes (a create when the user has nothing to act on) and the
        coroutine that sends it: (status, answer, when the request was written)."""
        if kind == "prices":
            return kind, self._prices()
        request = None if kind == "create" else self._request(kind, user)
        if request is None:
            return "create", self._create(user)
        kind, method, path, body, extra, held = request
        return kind, self._command(user, held, method, path, body, extra)

    async def _prices(self) -> tuple[int, bytes, float]:
        symbols = self.rng.sample(list(SYMBOLS), 5)
        body = _body({s: _price(self.rng, s, 0.05) for s in symbols})
        status, data, sent, _ = await self.pool.request(
            "POST", "/positions/update-prices", self.tokens[SERVICE], body
        )
        if status == 200:
            self.price_positions.append(json.loads(data)["position"])
        return status, data, sent

    async def _command(
        self, user: str, held: Held | None, *request: Any
    ) -> tuple[int, bytes, float]:
        method, path, body, extra = request
        try:
            status, data, sent, _ = await self.pool.request(
                method, path, self.tokens[user], body, extra
            )
        except BaseException:
            if held is not None:
                held.busy = False
            raise
        self._settle(user, held, status, data)
        return status, data, sent

    async def one(self, kind: str, user: str, due: float) -> None:
        kind, send = self._prepare(kind, user)
        bucket = self.buckets[(_minute(due, self.t0), kind)]
        try:
            status, data, sent = await send
        except Exception as error:  # noqa: BLE001 - counted, never lost
            bucket.n += 1
            name = "timeout" if isinstance(error, TimeoutError) else type(error).__name__
            if not isinstance(error, (OSError, asyncio.IncompleteReadError, TimeoutError)):
                name = f"client-side {name}"  # a bug of this script's, or an unreadable answer
            bucket.transport[name] += 1
            self._note(kind, None, repr(error))
            return
        done = time.monotonic()
        bucket.n += 1
        bucket.due.append(done - due)
        bucket.sent.append(done - sent)
        bucket.lag = max(bucket.lag, sent - due)
        if 200 <= status < 300:
            bucket.ok += 1
        else:
            bucket.statuses[status] += 1
            if status == 409:
                bucket.refused += 1
            else:
                self._note(kind, status, data)

    def progress(self, minute: int) -> dict[str, Any]:
        buckets = [b for (m, _), b in self.buckets.items() if m == minute]
        due = [v for b in buckets for v in b.due]
        return {
            "n": sum(b.n for b in buckets),
            "errors": sum(b.errors() for b in buckets),
            "refused": sum(b.refused for b in buckets),
            "p99": harness.percentile(due, 99) if due else None,
        }

    def schedule(self, t0: float, seconds: float) -> list[tuple[float, str]]:
        """When each request is due; "" for a user request, whose kind is drawn at its time."""
        rate, price_rate = self.config["user_rate"], self.config["price_rate"]
        slots = [(t0 + i / rate, "") for i in range(int(seconds * rate))] if rate > 0 else []
        if price_rate > 0:
            offset = 0.5 / price_rate
            count = int(seconds * price_rate)
            slots += [(t0 + offset + i / price_rate, "prices") for i in range(count)]
        return sorted(slots)

    async def run(self, t0: float, seconds: float) -> None:
        self.t0 = t0
        kinds, weights = list(MIX), [weight for weight, _ in MIX.values()]
        tasks: set[asyncio.Task[None]] = set()
        reported = 0
        for due, special in self.schedule(t0, seconds):
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            kind = special or self.rng.choices(kinds, weights)[0]
            task = asyncio.create_task(self.one(kind, self.rng.choice(self.users), due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            while due >= t0 + 60 * (reported + 1) + REPORT_DELAY:  # a minute ended: report it
                self.out.put(("progress", "http", self.index, reported, self.progress(reported)))
                reported += 1
        await asyncio.sleep(max(0.0, t0 + seconds - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 5)
        while reported < _minutes(seconds):
            self.out.put(("progress", "http", self.index, reported, self.progress(reported)))
            reported += 1

    def result(self) -> dict[str, Any]:
        return {
            "buckets": {f"{m}|{k}": b.export() for (m, k), b in self.buckets.items()},
            "samples": self.samples,
            "price_positions": self.price_positions,
        }


async def _http_process(index: int, config: dict[str, Any], commands: Any, out: Any) -> None:
    load = HttpLoad(index, config, out)
    try:
        out.put(("seeded", "http", index, await load.seed() if config["seed_users"] else 0))
        op, arg = await harness.receive(commands)
        if op != "go":
            return
        await load.run(arg["t0"], arg["seconds"])
        out.put(("result", "http", index, load.result()))
        await harness.receive(commands)  # "exit"
    except Exception as error:  # noqa: BLE001 - told to the coordinator, which ends the run
        out.put(("failed", "http", index, repr(error)))
    finally:
        load.pool.close()


def http_main(index: int, config: dict[str, Any], commands: Any, out: Any) -> None:
    harness.child_loop(lambda: _http_process(index, config, commands, out))


# -- the live sockets (processes of their own) ---------------------------------------------------


class _Message(msgspec.Struct):
    type: str
    position: int


_decode_message = msgspec.json.Decoder(_Message).decode


class Sockets:
    """The sockets of one client process and what they received, per minute of the run."""

    def __init__(self, index: int, config: dict[str, Any], out: Any) -> None:
        self.index, self.config, self.out = index, config, out
        self.t0: float | None = None
        self.messages: Counter[int] = Counter()  # minute -> messages
        self.closes: list[tuple[int, int]] = []  # (minute, code) of unexpected closes
        self.reconnects = 0
        self.reconnect_failures: Counter[str] = Counter()
        self.malformed = 0
        self.all: list[Socket] = []
        self.stopping = False

    def minute(self, when: float) -> int:
        return -1 if self.t0 is None else _minute(when, self.t0)

    async def open(self, sock: Socket) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: sock, "127.0.0.1", self.config["port"])
        await asyncio.wait_for(sock.opened, 60)

    def lost(self, sock: Socket, code: int) -> None:
        self.closes.append((self.minute(time.monotonic()), code))
        asyncio.get_running_loop().create_task(self.reconnect(sock))

    async def reconnect(self, old: Socket) -> None:
        """A fresh socket in place of one lost, resuming after the last message it got."""
        after = old.last if old.last is not None else old.start
        while not self.stopping:
            await asyncio.sleep(RECONNECT_SECONDS)
            sock = Socket(self, old.user, self.config["tokens"][old.user], after)
            sock.start, sock.last = old.start, old.last
            sock.prices, sock.duplicate_prices = old.prices, old.duplicate_prices
            sock.received = old.received
            try:
                await self.open(sock)
            except Exception as error:  # noqa: BLE001
                self.reconnect_failures[type(error).__name__] += 1
                sock.abort()
                continue
            self.reconnects += 1
            self.all[self.all.index(old)] = sock
            return

    async def open_all(self) -> dict[str, Any]:
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)
        errors: list[str] = []

        async def one(user: str) -> None:
            async with gate:
                sock = Socket(self, user, self.config["tokens"][user], None)
                try:
                    await self.open(sock)
                except Exception as error:  # noqa: BLE001
                    errors.append(repr(error))
                    sock.abort()
                    return
                self.all.append(sock)

        started = time.monotonic()
        users = [u for u in self.config["users"] for _ in range(self.config["per_user"])]
        await asyncio.gather(*(one(user) for user in users))
        return {
            "opened": len(self.all),
            "failed": len(errors),
            "errors": errors[:3],
            "seconds": time.monotonic() - started,
        }

    def progress(self, minute: int) -> dict[str, Any]:
        return {
            "messages": self.messages[minute],
            "closed": sum(1 for m, _ in self.closes if m == minute),
            "open": sum(1 for s in self.all if s.closed is None),
        }

    def check(self, expected: list[int]) -> dict[str, Any]:
        """Every socket against the price updates of the run: each exactly once."""
        want = frozenset(expected)
        missing = [len(want - sock.prices) for sock in self.all]
        return {
            "sockets": len(self.all),
            "open": sum(1 for s in self.all if s.closed is None),
            "received": sum(s.received for s in self.all),
            "messages": {str(m): n for m, n in self.messages.items()},
            "closes": self.closes,
            "reconnects": self.reconnects,
            "reconnect_failures": dict(self.reconnect_failures),
            "missing_prices": sum(missing),
            "sockets_missing_prices": sum(1 for n in missing if n),
            "duplicate_prices": sum(sock.duplicate_prices for sock in self.all),
            "extra_prices": sum(len(sock.prices - want) for sock in self.all),
            "malformed": self.malformed,
        }


class Socket(RawSocket):
    """A socket of one client process (bench.clients.RawSocket) and the price updates it got."""

    def __init__(self, owner: Sockets, user: str, token: str, after: int | None) -> None:
        path = f"/ws/positions?token={token}" + (f"&after={after}" if after is not None else "")
        super().__init__("127.0.0.1", path)
        self.owner, self.user = owner, user
        self._resume = after is not None
        self.last: int | None = None  # the last message's position: where to resume
        self.prices: set[int] = set()
        self.duplicate_prices = 0
        self.received = 0

    def upgraded(self) -> None:
        if self._resume:  # the server sends no initial data to a resumed socket
            self.opened.set_result(None)

    def dropped(self) -> None:
        self.owner.lost(self, self.closed)

    def message(self, text: bytes, arrived: float) -> None:
        try:
            message = _decode_message(text)
        except msgspec.DecodeError:
            self.owner.malformed += 1
            return
        if not self.opened.done():
            self.initial(message.type, message.position)
            return
        owner = self.owner
        minute = owner.minute(arrived)
        owner.messages[minute] += 1
        self.received += 1
        self.last = message.position
        if message.type == "price_update":
            if message.position in self.prices:
                self.duplicate_prices += 1
            else:
                self.prices.add(message.position)


async def _ws_process(index: int, config: dict[str, Any], commands: Any, out: Any) -> None:
    sockets = Sockets(index, config, out)
    try:
        out.put(("opened", "ws", index, await sockets.open_all()))
        op, arg = await harness.receive(commands)
        if op != "go":
            return
        sockets.t0 = t0 = arg["t0"]

        async def report_minutes() -> None:
            for minute in range(_minutes(arg["seconds"])):
                due = t0 + 60 * (minute + 1) + REPORT_DELAY
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                out.put(("progress", "ws", index, minute, sockets.progress(minute)))

        reporter = asyncio.create_task(report_minutes())
        try:
            while True:
                op, arg = await harness.receive(commands)
                if op == "count":
                    out.put(("count", "ws", index, sum(s.received for s in sockets.all)))
                elif op == "check":
                    sockets.stopping = True
                    out.put(("check", "ws", index, sockets.check(arg)))
                else:
                    break
        finally:
            reporter.cancel()
    except Exception as error:  # noqa: BLE001
        out.put(("failed", "ws", index, repr(error)))
    finally:
        sockets.stopping = True
        for sock in sockets.all:
            sock.abort()


def ws_main(index: int, config: dict[str, Any], commands: Any, out: Any) -> None:
    harness.child_loop(lambda: _ws_process(index, config, commands, out))


# -- the coordinator -----------------------------------------------------------------------------


@dataclass
class Sample:
    at: float  # seconds since the load started
    rss: int | None  # KiB
    hwm: int | None
    threads: int | None
    fds: int | None
    socket_fds: int | None  # of which sockets (clients, database, Redis)
    server_cpu: float  # CPU seconds so far
    db_cpu: float
    clients_cpu: float
    machine: tuple[int, int]
    load: tuple[float, float, float] | None
    db_connections: int

    @property
    def other_fds(self) -> int | None:
        if self.fds is None or self.socket_fds is None:
            return None
        return self.fds - self.socket_fds


class Sampler:
    """The server's memory, descriptors and CPU, the database's and the machine's, every 10 s.

    The database's CPU adds up each backend's from when it was first seen, so that the
    connections the pool opens and closes (its overflow) count for the time they lived."""

    def __init__(
        self, admin: asyncpg.Connection, database: str, server_pid: int, client_pids: list[int]
    ) -> None:
        self.admin, self.database = admin, database
        self.server_pid, self.client_pids = server_pid, client_pids
        self.samples: list[Sample] = []
        self._db_seen: dict[int, float] = {}
        self._db_total = 0.0

    async def sample(self, at: float) -> Sample:
        pids = await harness.backend_pids(self.admin, self.database)
        for pid, seconds in harness.process_cpu(pids).items():
            if seconds is not None:
                self._db_total += seconds - self._db_seen.get(pid, seconds)
                self._db_seen[pid] = seconds
        server = harness.process_cpu([self.server_pid])[self.server_pid] or 0.0
        clients = (
            sum(filter(None, harness.process_cpu(self.client_pids).values())) + time.process_time()
        )
        pid = self.server_pid
        sample = Sample(
            at,
            *(harness.process_memory_kib(pid, name) for name in ("VmRSS", "VmHWM", "Threads")),
            *harness.open_fds(pid),
            server,
            self._db_total,
            clients,
            harness.machine_ticks(),
            harness.load_average(),
            len(pids),
        )
        self.samples.append(sample)
        return sample

    async def run(self, t0: float, seconds: float) -> None:
        step = 0
        while True:
            due = t0 + step * SAMPLE_SECONDS
            if due > t0 + seconds + 0.5:
                return
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await self.sample(time.monotonic() - t0)
            step += 1

    def at(self, seconds: float) -> Sample | None:
        """The sample taken nearest to `seconds` into the run."""
        if not self.samples:
            return None
        return min(self.samples, key=lambda s: abs(s.at - seconds))

    def window(self, start: float, end: float) -> dict[str, float | None]:
        """Cores used between the samples nearest to start and end."""
        a, b = self.at(start), self.at(end)
        if a is None or b is None or b.at <= a.at:
            return {}
        span = b.at - a.at
        machine = harness.busy_cores(a.machine, b.machine)
        server = (b.server_cpu - a.server_cpu) / span
        db = (b.db_cpu - a.db_cpu) / span
        clients = (b.clients_cpu - a.clients_cpu) / span
        other = None if machine is None else max(0.0, machine - server - db - clients)
        return {"server": server, "db": db, "clients": clients, "other": other, "machine": machine}


def _metric(text: str, name: str) -> dict[str, float]:
    """The samples of one metric of a Prometheus text page, by their label string."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line.rpartition(" ")
            found[labels[len(name) :] or "{}"] = float(value)
    return found


def _log_levels(path: Path) -> tuple[Counter[str], list[str]]:
    levels: Counter[str] = Counter()
    examples: list[str] = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return levels, examples
    for line in lines:
        try:
            record = json.loads(line)
            level = str(record.get("levelname") or record.get("level") or "?").upper()
        except (ValueError, AttributeError):
            level = "TEXT"
        levels[level] += 1
        if level not in ("INFO", "DEBUG") and len(examples) < 8:
            examples.append(line[:400])
    return levels, examples


async def _http_once(port: int, method: str, path: str, token: str, body: bytes = b"") -> Any:
    connection = HttpConnection(port)
    try:
        status, data, _, _ = await connection.request(method, path, token, body)
    finally:
        connection.close()
    return status, data


async def _redis(url: str, work: Any) -> Any:
    """`work(client)` on a client of `url`; None where redis is not installed."""
    try:
        import redis.asyncio as aioredis
    except ImportError:
        return None
    client = aioredis.from_url(url)
    try:
        return await work(client)
    finally:
        await client.aclose()


async def _clear_redis(url: str, prefix: str) -> int:
    async def clear(client: Any) -> int:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        return len(keys)

    try:
        return await _redis(url, clear) or 0
    except Exception as error:  # noqa: BLE001 - cleanup: say so and go on
        print(f"note: could not clear the Redis keys {prefix}:*: {error!r}", file=sys.stderr)
        return 0


async def _redis_stream_length(url: str, key: str) -> int | None:
    try:
        return await _redis(url, lambda client: client.xlen(key))
    except Exception:  # noqa: BLE001
        return None


async def wait_quiet(limit: float, patience: float) -> None:
    """Wait (up to `patience` seconds) until the 1-minute load average is below `limit`."""
    deadline = time.monotonic() + patience
    while True:
        load = harness.load_average()
        if load is None or load[0] < limit:
            print(f"load average {load}: starting", flush=True)
            return
        if time.monotonic() >= deadline:
            print(f"load average {load}: still above {limit} after waiting; starting anyway")
            return
        print(f"load average {load[0]:.2f} >= {limit}: waiting", flush=True)
        await asyncio.sleep(30)


# -- the run -------------------------------------------------------------------------------------


@dataclass
class Soak:
    """One run: the service, its load processes and what they found."""

    args: argparse.Namespace
    admin: asyncpg.Connection
    dsn: str
    secret: str
    prefix: str
    redis_url: str
    tokens: dict[str, str]
    logs: Path
    service: harness.Server | None = None
    children: harness.Children = field(default_factory=harness.Children)
    sampler: Sampler | None = None
    results: dict[int, Any] = field(default_factory=dict)

    @property
    def port(self) -> int:
        assert self.service is not None
        return self.service.port

    async def start(self, header: str) -> None:
        args = self.args
        self.service = harness.start_service(
            self.dsn,
            self.secret,
            self.tokens[SERVICE],
            self.logs,
            "/health/ready",
            LOG_LEVEL="WARNING",
            DB_POOL_SIZE=str(args.pool_size),
            DB_MAX_OVERFLOW=str(args.max_overflow),
            REDIS_URL=self.redis_url,
            REDIS_KEY_PREFIX=self.prefix,
        )
        self.service.wait_ready()
        import starlette
        import uvicorn

        print(
            f"Soak: {harness.CORES} cores, Python {platform.python_version()}, uvicorn "
            f"{uvicorn.__version__}, starlette {starlette.__version__}, "
            f"{await harness.postgres(self.admin)}; {header}",
            flush=True,
        )

    async def seed(self, http_users: list[str]) -> None:
        """The HTTP clients seed their users' books; then one update-prices."""
        args = self.args
        user_rate = (args.rate - args.price_rate) / args.http_clients
        for index in range(args.http_clients):
            mine = http_users[index :: args.http_clients]
            config = {
                "port": self.port,
                "tokens": {u: self.tokens[u] for u in [*mine, SERVICE]},
                "users": mine,
                "seed_users": True,
                "user_rate": user_rate,
                "price_rate": args.price_rate if index == 0 else 0.0,
                "seed": args.seed,
            }
            self.children.start("http", index, http_main, config)
        seeded = await self.children.gather("seeded", "http", args.http_clients, 300)
        status, data = await _http_once(
            self.port, "POST", "/positions/update-prices", self.tokens[SERVICE], _body(SYMBOLS)
        )
        if status != 200:
            raise RuntimeError(f"update-prices answered {status}: {data[:300]!r}")
        print(f"seeded {sum(seeded.values()):,} positions", flush=True)

    async def open_sockets(self, users: list[str]) -> None:
        """The sockets, once the books are seeded (their initial data has those positions)."""
        args = self.args
        for index in range(args.ws_clients):
            mine = users[index :: args.ws_clients]
            config = {
                "port": self.port,
                "tokens": {u: self.tokens[u] for u in mine},
                "users": mine,
                "per_user": args.sockets_per_user,
            }
            self.children.start("ws", index, ws_main, config)
        opened = await self.children.gather("opened", "ws", args.ws_clients, 300)
        total_open = sum(o["opened"] for o in opened.values())
        failures = [e for o in opened.values() for e in o["errors"]]
        failed = sum(o["failed"] for o in opened.values())
        print(
            f"opened {total_open:,} sockets in {max(o['seconds'] for o in opened.values()):.1f} s"
            + (f"; {failed} failed: {failures}" if failures else ""),
            flush=True,
        )
        if total_open != args.ws_users * args.sockets_per_user:
            raise RuntimeError("not every socket opened")

    async def load(self, seconds: float) -> Sample:
        """The load for `seconds`, a line of progress a minute; the last sample under it."""
        assert self.service is not None
        args, children = self.args, self.children
        self.sampler = Sampler(self.admin, args.database, self.service.pid, children.pids)
        t0 = time.monotonic() + 1.0
        children.send("http", "go", {"t0": t0, "seconds": seconds})
        children.send("ws", "go", {"t0": t0, "seconds": seconds})
        sampling = asyncio.create_task(self.sampler.run(t0, seconds))
        try:
            await self.follow(_minutes(seconds))
            await sampling
        finally:
            if not sampling.done():
                sampling.cancel()
                await asyncio.gather(sampling, return_exceptions=True)
        return self.sampler.samples[-1]

    async def follow(self, minutes: int) -> None:
        """Print each minute's progress once every client has told it; keep the results."""
        assert self.service is not None and self.sampler is not None
        args = self.args
        progress: dict[int, dict[str, dict[int, Any]]] = defaultdict(lambda: defaultdict(dict))
        printed = 0
        while len(self.results) < args.http_clients or printed < minutes:
            message = await self.children.next(5.0)
            if self.service.process.poll() is not None:
                raise RuntimeError(f"the service exited with code {self.service.process.poll()}")
            if message is None:
                continue
            if message[0] == "progress":
                _, kind, index, minute, figures = message
                progress[minute][kind][index] = figures
            elif message[0] == "result":
                self.results[message[2]] = message[3]
            else:
                print(f"note: unexpected message from a client: {message[:3]}", file=sys.stderr)
            while printed < minutes and (
                len(progress[printed]["http"]) == args.http_clients
                and len(progress[printed]["ws"]) == args.ws_clients
            ):
                if not printed:
                    print(
                        "minute  requests  errors  409s  p99 ms  live msgs  closed  open"
                        "  RSS MiB  fds"
                    )
                http, ws = progress[printed]["http"].values(), progress[printed]["ws"].values()
                print(self.progress_line(printed, http, ws), flush=True)
                printed += 1

    def progress_line(self, minute: int, http: Any, ws: Any) -> str:
        assert self.sampler is not None
        p99 = max((f["p99"] for f in http if f["p99"] is not None), default=None)
        sample = self.sampler.at(60 * (minute + 1))
        rss = "-" if sample is None or sample.rss is None else f"{sample.rss / 1024:.1f}"
        return (
            f"{minute + 1:>6}  {sum(f['n'] for f in http):>8,}  "
            f"{sum(f['errors'] for f in http):>6}  {sum(f['refused'] for f in http):>4}"
            f"  {'-' if p99 is None else f'{p99 * 1000:.1f}':>6}"
            f"  {sum(f['messages'] for f in ws):>9,}  {sum(f['closed'] for f in ws):>6}"
            f"  {sum(f['open'] for f in ws):>4}"
            f"  {rss:>7}"
            f"  {'-' if sample is None else sample.fds}"
        )

    async def check_sockets(self) -> dict[int, Any]:
        """Let the last deliveries arrive, then check every socket."""
        count, children = self.args.ws_clients, self.children
        last, stable_since = -1, time.monotonic()
        settle_deadline = time.monotonic() + 30
        while time.monotonic() < settle_deadline:
            children.send("ws", "count")
            total = sum((await children.gather("count", "ws", count, 30)).values())
            if total != last:
                last, stable_since = total, time.monotonic()
            elif time.monotonic() - stable_since >= 2.0:
                break
            await asyncio.sleep(0.5)
        prices = sorted(p for r in self.results.values() for p in r["price_positions"])
        children.send("ws", "check", prices)
        return await children.gather("check", "ws", count, 120)

    async def after_load(self) -> dict[str, Any]:
        """/metrics, /health, Redis, `python -m api verify`, the database and the log."""
        assert self.service is not None
        token = self.tokens[SERVICE]
        status, metrics = await _http_once(self.port, "GET", "/metrics", token)
        health = await _http_once(self.port, "GET", "/health", token)
        stream_length = await _redis_stream_length(self.redis_url, f"{self.prefix}:live")
        verify = subprocess.run(
            [sys.executable, "-m", "api", "verify"],
            cwd=harness.ROOT,
            env=harness.server_env(
                DATABASE_URL=self.dsn, JWT_SECRET=self.secret, LOG_LEVEL="WARNING"
            ),
            capture_output=True,
            text=True,
            timeout=600,
        )
        connections = len(await harness.backend_pids(self.admin, self.args.database))
        setup = await asyncpg.connect(self.dsn)
        try:
            book = await setup.fetchrow(
                "SELECT (SELECT count(*) FROM events) AS events, "
                "(SELECT count(*) FROM positions) AS positions, "
                "(SELECT count(*) FROM positions WHERE status = 'open') AS open"
            )
        finally:
            await setup.close()
        levels, examples = _log_levels(self.service.log)
        return {
            "metrics": metrics.decode(errors="replace") if status == 200 else "",
            "health": health,
            "verify": verify,
            "book": dict(book),
            "db_connections_after": connections,
            "stream_length": stream_length,
            "log_levels": levels,
            "log_examples": examples,
        }

    async def run(self, users: list[str]) -> dict[str, Any]:
        """Seed, open the sockets, load, check: what the report needs."""
        seconds = self.args.minutes * 60
        await self.seed(users[: self.args.http_users])
        await self.open_sockets(users)
        end_sample = await self.load(seconds)
        checks = await self.check_sockets()
        found = await self.after_load()
        return found | {
            "results": self.results,
            "checks": checks,
            "sampler": self.sampler,
            "end_sample": end_sample,
            "warmup": self.args.warmup_minutes * 60,
            "seconds": seconds,
            "minutes": _minutes(seconds),
        }

    def stop(self, failed: bool) -> None:
        self.children.stop()
        if self.service is not None:
            self.service.stop()
            if failed:
                print(f"the service's log: {self.service.log}", file=sys.stderr)


def header_lines(args: argparse.Namespace, prefix: str, idle_cores: float, load_before: Any) -> str:
    """The source, and the load as the options make it."""
    return (
        f"source: {harness.source_note(harness.source_state())}\n{args.minutes:g} min; HTTP "
        f"{args.rate:g} req/s open loop ({args.price_rate:g}/s update-prices) as "
        f"{args.http_users} users over {args.http_clients} process(es); "
        f"{args.ws_users * args.sockets_per_user:,} sockets ({args.ws_users} users x "
        f"{args.sockets_per_user}) over {args.ws_clients} processes; pool "
        f"{args.pool_size}+{args.max_overflow}; Redis prefix {prefix}; machine busy before: "
        f"{idle_cores:.2f} cores, load average {load_before}"
    )


async def main(args: argparse.Namespace) -> int:
    from api.auth import Role

    if args.wait_quiet:
        await wait_quiet(args.wait_quiet, args.wait_patience)
    started = time.monotonic()
    load_before = harness.load_average()
    idle_cores = await harness.machine_busy()
    if args.http_users > args.ws_users:
        raise SystemExit("--http-users must not exceed --ws-users (the sockets' users)")
    redis_url = os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL)
    prefix = f"bench-soak-{secrets.token_hex(4)}"
    users = [f"soak-u{i:03d}" for i in range(args.ws_users)]
    secret = secrets.token_urlsafe(48)
    roles = dict.fromkeys(users, Role.USER) | {SERVICE: Role.SERVICE}
    tokens = harness.mint_tokens(secret, roles, timedelta(minutes=args.minutes + 60))
    logs = Path(tempfile.mkdtemp(prefix="bench_soak_"))
    header = header_lines(args, prefix, idle_cores, load_before)
    failed = True
    try:
        async with harness.scratch_database(args.database, args.keep, DEFAULT_ADMIN_DSN) as (
            admin,
            dsn,
        ):
            soak = Soak(args, admin, dsn, secret, prefix, redis_url, tokens, logs)
            try:
                await soak.start(header)
                found = await soak.run(users)
                code = report(args, load_before=load_before, **found)
                print(f"\nRun time {time.monotonic() - started:.0f} s.")
                failed = False
                return code
            finally:
                soak.stop(failed)
    finally:
        cleared = await _clear_redis(redis_url, prefix)
        if cleared:
            print(f"(deleted {cleared} Redis keys {prefix}:*)")
        if failed or args.keep:
            print(f"logs kept in {logs}", file=sys.stderr)
        else:
            shutil.rmtree(logs, ignore_errors=True)


# -- the report ----------------------------------------------------------------------------------


def _ms(values: Any, q: float) -> str:
    return "-" if not values else f"{harness.percentile(values, q) * 1000:.1f}"


def _cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _merge(results: dict[int, Any]) -> dict[tuple[int, str], Bucket]:
    """The buckets of every HTTP process, by (minute, kind)."""
    merged: dict[tuple[int, str], Bucket] = defaultdict(Bucket)
    for result in results.values():
        for key, exported in result["buckets"].items():
            minute, kind = key.split("|")
            merged[(int(minute), kind)].merge(exported)
    return dict(merged)


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


class Report:
    """The tables, printed, and kept as markdown for --markdown."""

    def __init__(self) -> None:
        self.markdown: list[str] = []

    def table(self, title: str, header: list[str], rows: list[list[str]], md: str = "") -> None:
        harness.print_table(title, header, rows)
        self.markdown += [f"### {md or title}", "", _markdown(header, rows), ""]


def minute_row(label: str, buckets: list[Bucket], span: float) -> list[str]:
    """The requests of a minute (or of the run) and their latency."""
    n, errors = sum(b.n for b in buckets), sum(b.errors() for b in buckets)
    due = [v for b in buckets for v in b.due]
    return [
        label,
        f"{n:,}",
        f"{n / span:.1f}",
        f"{sum(b.ok for b in buckets):,}",
        str(sum(b.refused for b in buckets)),
        str(errors),
        f"{(errors / n * 100 if n else 0):.3f} %",
        _ms(due, 50),
        _ms(due, 99),
        _ms(due, 100),
        f"{max((b.lag for b in buckets), default=0) * 1000:.1f}",
    ]


def print_minutes(
    out: Report, r: dict[str, Any], merged: dict, live: Counter, closes: Counter
) -> None:
    sampler: Sampler = r["sampler"]
    minutes, seconds = r["minutes"], r["seconds"]
    rows = []
    for minute in range(minutes):
        span = min(60.0, seconds - 60 * minute)
        sample = sampler.at(60 * minute + span)
        cores = sampler.window(60 * minute, 60 * minute + span)
        buckets = [b for (m, _), b in merged.items() if m == minute]
        rss = "-" if sample is None or sample.rss is None else f"{sample.rss / 1024:.1f}"
        rows.append(
            [
                *minute_row(str(minute + 1), buckets, span),
                f"{live[minute]:,}",
                f"{live[minute] / span:,.0f}",
                str(closes[minute]),
                rss,
                "-" if sample is None else str(sample.fds),
                *(_cores(cores.get(part)) for part in ("server", "db", "other")),
            ]
        )
    cores = sampler.window(0, seconds)
    messages = sum(live[m] for m in range(minutes))
    rows.append(
        [
            *minute_row("all", list(merged.values()), seconds),
            f"{messages:,}",
            f"{messages / seconds:,.0f}",
            str(sum(closes[m] for m in range(minutes))),
            "",
            "",
            *(_cores(cores.get(part)) for part in ("server", "db", "other")),
        ]
    )
    out.table(
        "Per minute (latency: from the request's slot to its answer, all kinds)",
        "minute|requests|req/s|2xx|409|errors|error rate|p50 ms|p99 ms|max ms|client lag ms|"
        "live msgs|msgs/s|closed|RSS MiB|fds|server cores|db cores|other cores".split("|"),
        rows,
        "Per minute",
    )
    rows = []
    for minute in range(minutes):
        cells = [merged.get((minute, kind)) for kind in KINDS]
        shown = ("-" if b is None else f"{_ms(b.due, 50)} / {_ms(b.due, 99)}" for b in cells)
        rows.append([str(minute + 1), *shown])
    out.table(
        "p50 / p99 ms per kind and minute",
        ["minute", *KINDS],
        rows,
        "p50 / p99 ms per request kind and minute",
    )


def print_kinds(out: Report, merged: dict[tuple[int, str], Bucket]) -> None:
    rows = []
    for kind in KINDS:
        buckets = [b for (_, k), b in merged.items() if k == kind]
        due, sent = ([v for b in buckets for v in getattr(b, f)] for f in ("due", "sent"))
        rows.append(
            [
                LABELS[kind],
                f"{sum(b.n for b in buckets):,}",
                f"{sum(b.ok for b in buckets):,}",
                str(sum(b.refused for b in buckets)),
                str(sum(b.errors() for b in buckets)),
                _ms(due, 50),
                _ms(due, 99),
                _ms(due, 100),
                _ms(sent, 99),
            ]
        )
    header = "request|count|2xx|409|errors|p50 ms|p99 ms|max ms|p99 sent ms".split("|")
    out.table("Per request kind, whole run", header, rows)


def print_memory(out: Report, sampler: Sampler, start: Sample, end: Sample) -> None:
    first = sampler.samples[0]

    def mib(v: int | None) -> str:
        return "-" if v is None else f"{v / 1024:.1f} MiB"

    def change(a: int | None, b: int | None, unit: str = "") -> str:
        if a is None or b is None:
            return "-"
        pct = f" ({(b - a) / a * 100:+.1f} %)" if a else ""
        return f"{b - a:+,}{unit}{pct}" if not unit else f"{(b - a) / 1024:+.1f} MiB{pct}"

    rows = []
    for label, figure, shown in [
        ("VmRSS", "rss", mib),
        ("VmHWM (peak RSS)", "hwm", mib),
        ("open file descriptors", "fds", str),
        ("of which sockets", "socket_fds", str),
        ("other descriptors (files, pipes, epoll...)", "other_fds", str),
        ("threads", "threads", str),
        ("database connections (service)", "db_connections", str),
    ]:
        values = [getattr(s, figure) for s in (first, start, end)]
        rows.append(
            [label, *map(shown, values), change(*values[1:], "MiB" if shown is mib else "")]
        )
    out.table(
        "Memory and descriptors",
        [
            "server process",
            "load start (0 s)",
            f"start ({start.at:.0f} s)",
            f"end ({end.at:.0f} s)",
            "change start -> end",
        ],
        rows,
    )
    series = ", ".join(
        f"{s.at:.0f}s {s.rss / 1024:.1f}" for s in sampler.samples if s.rss is not None
    )
    print(f"\nVmRSS every {SAMPLE_SECONDS:.0f} s (MiB): {series}")
    fd_series = ", ".join(f"{s.fds} ({s.other_fds})" for s in sampler.samples)
    print(f"open descriptors every {SAMPLE_SECONDS:.0f} s (in brackets: not sockets): {fd_series}")
    out.markdown += [
        f"VmRSS every {SAMPLE_SECONDS:.0f} s (MiB): {series}",
        "",
        f"Open descriptors every {SAMPLE_SECONDS:.0f} s (in brackets: not sockets): {fd_series}",
        "",
    ]


def findings(
    r: dict[str, Any], checks: list[dict], merged: dict, closes: Counter, codes: Counter
) -> list[str]:
    """The lines after the tables: errors, sockets, gauges, health, verify, book, log, cores."""

    def total(key: str) -> int:
        return sum(x[key] for x in checks)

    statuses: Counter[int] = Counter()
    transport: Counter[str] = Counter()
    for b in merged.values():
        statuses.update(b.statuses)
        transport.update(b.transport)
    price_updates = sum(len(res["price_positions"]) for res in r["results"].values())
    failures = sum((Counter(x["reconnect_failures"]) for x in checks), Counter())
    verify, (hstatus, hbody), book = r["verify"], r["health"], r["book"]
    cores = r["sampler"].window(0, r["seconds"])
    return [
        f"non-2xx answers: {dict(statuses) or 'none'}; transport failures: "
        f"{dict(transport) or 'none'}",
        f"sockets at the end: {total('open'):,} open of {total('sockets'):,}; closed by the "
        f"server or lost: {sum(closes.values())} (codes {dict(codes) or 'none'}), reconnected "
        f"{total('reconnects')} (failed attempts: {failures or 'none'}); messages "
        f"received {total('received'):,}; price updates of the run {price_updates:,}: missing "
        f"{total('missing_prices'):,} (on {total('sockets_missing_prices')} sockets), duplicate "
        f"{total('duplicate_prices')}, unknown {total('extra_prices')}; undecodable messages "
        f"{total('malformed')}",
        f"/metrics after the load: live_connections {_metric(r['metrics'], 'live_connections')}, "
        f"db_pool_connections {_metric(r['metrics'], 'db_pool_connections')}, "
        f"live_feed_lag_events {_metric(r['metrics'], 'live_feed_lag_events')}",
        f"/health after the load: {hstatus} {hbody.decode(errors='replace')[:400]}",
        f"python -m api verify: exit {verify.returncode}; "
        + (verify.stdout.strip().splitlines() or ["(no output)"])[-1][:300]
        + (f"; stderr: {verify.stderr.strip()[-300:]}" if verify.returncode else ""),
        f"log and book at the end: {book['events']:,} events, {book['positions']:,} positions "
        f"({book['open']:,} open); Redis stream length {r['stream_length']}; database "
        f"connections of the service after the load {r['db_connections_after']}",
        f"service log lines by level: {dict(r['log_levels']) or 'none'}",
        f"cores over the run: server {_cores(cores.get('server'))}, "
        f"database {_cores(cores.get('db'))}, "
        f"clients {_cores(cores.get('clients'))}, other processes {_cores(cores.get('other'))}, "
        f"machine {_cores(cores.get('machine'))}; load average before {r['load_before']}, "
        f"at the end {r['end_sample'].load}",
    ]


def target_rows(
    merged: dict, checks: list[dict], closes: Counter, growth: float | None, verify: int
) -> tuple[list[list[str]], harness.Verdicts]:
    """No error, RSS growth < 10 %, no socket closed and no price update lost, verify exits 0."""
    n = sum(b.n for b in merged.values())
    errors = sum(b.errors() for b in merged.values())
    lost = sum(x["missing_prices"] + x["duplicate_prices"] for x in checks)
    closed = sum(closes.values())
    verdicts = harness.Verdicts()

    def verdict(met: bool, name: str) -> str:
        return verdicts(met, name, "**missed**")

    rows = [
        [
            "error rate",
            f"{(errors / n * 100 if n else 0):.3f} % ({errors} of {n:,})",
            "0",
            verdict(errors == 0, "errors"),
        ],
        [
            "RSS growth, start -> end",
            "-" if growth is None else f"{growth:+.1f} %",
            f"< {GROWTH_TARGET_PCT:.0f} %",
            verdict(growth is not None and growth < GROWTH_TARGET_PCT, "growth"),
        ],
        [
            "sockets closed; price updates missing or doubled",
            f"{closed}; {lost}",
            "0; 0",
            verdict(closed == 0 and lost == 0, "sockets"),
        ],
        [
            "read models agree with the log (verify)",
            f"exit {verify}",
            "0",
            verdict(verify == 0, "verify"),
        ],
    ]
    return rows, verdicts


def report(args: argparse.Namespace, **r: Any) -> int:
    merged = _merge(r["results"])
    sampler: Sampler = r["sampler"]
    checks = list(r["checks"].values())
    live: Counter[int] = Counter()  # messages per minute, over every socket
    closes: Counter[int] = Counter()  # sockets closed per minute
    codes: Counter[int] = Counter()
    for check in checks:
        for m, n in check["messages"].items():
            live[int(m)] += n
        for m, code in check["closes"]:
            closes[m] += 1
            codes[code] += 1
    out = Report()
    print_minutes(out, r, merged, live, closes)
    print_kinds(out, merged)
    lines = findings(r, checks, merged, closes, codes)
    print("\n" + lines[0])
    for sample in [s for res in r["results"].values() for s in res["samples"]][:5]:
        print("  e.g.", sample)
    start, end = sampler.at(r["warmup"]), r["end_sample"]
    assert start is not None
    print_memory(out, sampler, start, end)
    print("\n" + lines[1])
    print("\n".join(lines[2:7]))
    for example in r["log_examples"][:5]:
        print("  e.g.", example)
    print(lines[7])
    growth = (end.rss - start.rss) / start.rss * 100 if start.rss and end.rss else None
    rows, verdicts = target_rows(merged, checks, closes, growth, r["verify"].returncode)
    harness.print_table("Targets", ["target", "value", "", ""], rows)
    out.markdown += ["### Targets", "", _markdown(["target", "value", "target", ""], rows), ""]
    out.markdown += ["### Other findings", "", *(f"- {line}" for line in lines), ""]
    if args.markdown is not None:
        args.markdown.write_text("\n".join(out.markdown))
        print(f"\nMarkdown tables: {args.markdown}")
    return 0 if not verdicts.missed or not args.strict else 1


OPTIONS = """
--minutes           float=10    minutes of load (default 10)
--warmup-minutes    float=1     memory 'start' is sampled after this many minutes of load
                                (default 1)
--rate              float=200   HTTP requests/s in all (200)
--price-rate        float=2     of which update-prices/s (default 2)
--http-users        50          users making requests (50)
--ws-users          100         users holding sockets (100)
--sockets-per-user  10          default 10
--ws-clients        2           socket processes (default 2)
--http-clients      1           HTTP processes (default 1)
--pool-size         10          the service's DB_POOL_SIZE (10)
--max-overflow      10          DB_MAX_OVERFLOW (10)
--seed              20261124    random seed
--database          bench_soak  database to (re)create
--keep              switch      keep the database and the logs
--markdown          path        write the tables here too
--strict            switch      exit 1 when a target is missed
--wait-quiet        0.0         first wait until the 1-minute load average is below this
                                (checked every 30 s)
--wait-patience     float=900   ... for at most this many seconds (900)
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args, parser = harness.parse_options("python -m bench.soak", __doc__, OPTIONS, argv)
    if args.warmup_minutes >= args.minutes:
        parser.error("--warmup-minutes must be less than --minutes")
    return args


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.raise_fd_limit()
    return harness.run_main(main, args)


if __name__ == "__main__":
    sys.exit(run())
