"""Soak: one service process under mixed HTTP load and 1,000 live sockets for 10 minutes.

Run from the project root with the virtualenv active (about 12 minutes with the defaults; a smoke
run, `--minutes 1 --warmup-minutes 0.5`, about 2 minutes):

    python -m bench.soak [--minutes 10] [--warmup-minutes 1] [--rate 200] [--price-rate 2]
                         [--http-users 50] [--ws-users 100] [--sockets-per-user 10]
                         [--ws-clients 2] [--http-clients 1] [--markdown FILE] [--keep]

It drops and creates its own database (`bench_soak`, on the server of BENCH_DATABASE_URL, default
postgresql://postgres@127.0.0.1:5432/postgres, used as the admin connection only) and starts ONE
service process, `python -m api serve` in development mode (one uvicorn worker): DATABASE_URL,
JWT_SECRET, PORT, LOG_LEVEL=WARNING, DB_POOL_SIZE=10, DB_MAX_OVERFLOW=10, REDIS_URL (default
redis://127.0.0.1:6379/0, BENCH_REDIS_URL) with a REDIS_KEY_PREFIX of its own, rate limiting off
(the default). Its output goes to a file, never a pipe. The service applies the migrations.

Load, from processes of their own (multiprocessing, spawn):

  http clients  `--http-clients` processes sharing `--rate` requests per second, OPEN loop (each
                request is sent at its time whatever the earlier ones did; up to 64 keep-alive
                connections per process). Every request acts as one of `--http-users` users (its
                own token) on that user's own book, which the process tracks from the answers:
                  30 %  GET /positions/{id}            (a position of the user, open or not)
                  10 %  GET /positions?limit=100
                  10 %  GET /portfolio/summary
                  15 %  POST /positions                (long or short, stop loss and target)
                  15 %  PUT /positions/{id}            notes, stop_loss or both, If-Match: the
                                                       version the last answer gave
                   8 %  POST /positions/{id}/close?exit_price=&quantity=  (part of what is open)
                  11 %  POST /positions/{id}/close?exit_price=            (all of it)
                and `--price-rate` per second POST /positions/update-prices (a service token) of 5
                of 10 symbols, counted in `--rate`. A command never targets a position that has
                another command in flight, so a refusal (409 closed, 412 stale) is not expected;
                409 is still classed as a domain refusal, not an error. An error is a 5xx, any
                other 4xx, or a transport failure (refused, reset, no answer within 30 s).
  ws clients    `--ws-clients` processes holding `--ws-users` x `--sockets-per-user` sockets to
                `WS /ws/positions` (the first `--http-users` users are the ones making the
                changes, so their sockets get their own events; every socket gets every price
                update). A minimal client (bench/clients.py: handshake, frames in, pongs out)
                reads every message for the whole run; a socket the server closes (or that is
                lost) is counted and reconnected after 1 s with `after=<last position>`.

Each HTTP latency is from when the request was due (its slot in the schedule) to when its answer
had been read in full: it includes waiting for a client connection, so a stalled server shows.
"lag" is the worst delay of a request's start behind its slot (the client's own lateness).

The run: seed (10 positions per HTTP user, one price update), open the sockets, then the load for
`--minutes`. Every 10 s this process samples the server: VmRSS and VmHWM and threads
(/proc/<pid>/status), open file descriptors (/proc/<pid>/fd), CPU of the server, of the
database's backends, of the clients, and of the whole machine. Memory "start" is the sample after
`--warmup-minutes`, "end" the last one under load; the target is growth < 10 %. After the load:
the sockets are checked (every price update of the run exactly once on every socket), the
`/metrics` gauges read (live connections, pool), `python -m api verify` run (read models agree
with the log), and the server's log scanned for warnings and errors. Everything is stopped, the
database dropped and the Redis keys deleted at the end, failures included (`--keep` keeps the
database and the logs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import queue as queue_module
import random
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from bench.clients import HttpConnection, HttpPool, RawSocket
from bench.common import (
    database_dsn,
    drop_database,
    load_average,
    machine_ticks,
    open_fd_count,
    percentile,
    print_table,
    process_cpu,
    process_memory_kib,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
SERVICE = "bench-soak-prices"
SYMBOLS = {
    "AAPL": 190.0,
    "MSFT": 410.0,
    "GOOG": 170.0,
    "AMZN": 180.0,
    "NVDA": 120.0,
    "META": 500.0,
    "TSLA": 250.0,
    "JPM": 200.0,
    "XOM": 115.0,
    "KO": 62.0,
}
MIX = {  # percent of the user requests
    "get": 30,
    "list": 10,
    "summary": 10,
    "create": 15,
    "update": 15,
    "close_part": 8,
    "close_full": 11,
}
KINDS = [*MIX, "prices"]
LABELS = {
    "get": "GET /positions/{id}",
    "list": "GET /positions?limit=100",
    "summary": "GET /portfolio/summary",
    "create": "POST /positions",
    "update": "PUT /positions/{id}",
    "close_part": "POST .../close (part)",
    "close_full": "POST .../close (all)",
    "prices": "POST /positions/update-prices",
}
SEED_PER_USER = 10
HTTP_CONNECTIONS = 64  # keep-alive connections per HTTP client process
REQUEST_TIMEOUT = 30.0
SAMPLE_SECONDS = 10.0
GROWTH_TARGET_PCT = 10.0
OPEN_CONCURRENCY = 32
RECONNECT_SECONDS = 1.0


def _minute(when: float, t0: float) -> int:
    return int((when - t0) // 60)


def _run_loop(coroutine_factory: Any) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.run(coroutine_factory())
    except ImportError:
        asyncio.run(coroutine_factory())
    except KeyboardInterrupt:
        pass


async def _get(commands: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, commands.get)


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
        return sum(n for s, n in self.statuses.items() if s != 409) + sum(self.transport.values())

    def export(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "ok": self.ok,
            "refused": self.refused,
            "statuses": dict(self.statuses),
            "transport": dict(self.transport),
            "due": self.due.tobytes(),
            "sent": self.sent.tobytes(),
            "lag": self.lag,
        }


def _body(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _price(rng: random.Random, symbol: str, spread: float) -> float:
    return round(SYMBOLS[symbol] * (1 + rng.uniform(-spread, spread)), 2)


class HttpLoad:
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
        self.in_flight = 0

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
            book = self.books[user]
            book.open[answer["id"]] = Held(
                answer["id"], symbol, side, quantity, entry, answer["version"]
            )
            book.remember(answer["id"])
        return status, data, sent

    def _request(
        self, kind: str, user: str
    ) -> tuple[str, str, str, bytes, str, Held | None] | None:
        """kind (a part close of 1 becomes a full one), method, path, body, extra headers, and
        the position it commands (marked busy); None when the user has nothing to act on."""
        rng, book = self.rng, self.books[user]
        if kind == "get":
            if not book.known:
                return None
            return kind, "GET", f"/positions/{rng.choice(book.known)}", b"", "", None
        if kind == "list":
            return kind, "GET", "/positions?limit=100", b"", "", None
        if kind == "summary":
            return kind, "GET", "/portfolio/summary", b"", "", None
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
            return (
                kind,
                "PUT",
                f"/positions/{held.id}",
                _body(body),
                f'If-Match: "{held.version}"\r\n',
                held,
            )
        if kind == "close_part":
            part = rng.randint(1, held.quantity - 1)
            path = f"/positions/{held.id}/close?exit_price={exit_price}&quantity={part}"
            return kind, "POST", path, b"", "", held
        return kind, "POST", f"/positions/{held.id}/close?exit_price={exit_price}", b"", "", held

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

    async def one(self, kind: str, user: str, due: float) -> None:
        bucket = self.buckets[(_minute(due, self.t0), kind)]
        self.in_flight += 1
        held: Held | None = None
        try:
            if kind == "create":
                status, data, sent = await self._create(user)
            elif kind == "prices":
                symbols = self.rng.sample(list(SYMBOLS), 5)
                body = _body({s: _price(self.rng, s, 0.05) for s in symbols})
                status, data, sent, _ = await self.pool.request(
                    "POST", "/positions/update-prices", self.tokens[SERVICE], body
                )
                if status == 200:
                    self.price_positions.append(json.loads(data)["position"])
            else:
                request = self._request(kind, user)
                if request is None:  # nothing to act on: open a position instead
                    kind = "create"
                    bucket = self.buckets[(_minute(due, self.t0), kind)]
                    status, data, sent = await self._create(user)
                else:
                    kind, method, path, body, extra, held = request
                    bucket = self.buckets[(_minute(due, self.t0), kind)]
                    status, data, sent, _ = await self.pool.request(
                        method, path, self.tokens[user], body, extra
                    )
                    self._settle(user, held, status, data)
                    held = None
        except Exception as error:  # noqa: BLE001 - counted, never lost
            if held is not None:
                held.busy = False
            bucket.n += 1
            name = "timeout" if isinstance(error, TimeoutError) else type(error).__name__
            if not isinstance(error, (OSError, asyncio.IncompleteReadError, TimeoutError)):
                name = f"client-side {name}"  # a bug of this script's, or an unreadable answer
            bucket.transport[name] += 1
            self._note(kind, None, repr(error))
            return
        finally:
            self.in_flight -= 1
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
        n = errors = refused = 0
        due: list[float] = []
        for (m, _), bucket in self.buckets.items():
            if m == minute:
                n += bucket.n
                errors += bucket.errors()
                refused += bucket.refused
                due.extend(bucket.due)
        return {
            "n": n,
            "errors": errors,
            "refused": refused,
            "p99": percentile(due, 99) if due else None,
        }

    async def run(self, t0: float, seconds: float) -> None:
        self.t0 = t0
        config, rng = self.config, self.rng
        rate = config["user_rate"]
        price_rate = config["price_rate"]
        kinds, weights = list(MIX), list(MIX.values())
        end = t0 + seconds
        schedule: list[tuple[float, str]] = []
        if rate > 0:
            schedule += [(t0 + i / rate, "") for i in range(int(seconds * rate))]
        if price_rate > 0:
            offset = 0.5 / price_rate
            schedule += [
                (t0 + offset + i / price_rate, "prices") for i in range(int(seconds * price_rate))
            ]
        schedule.sort()
        tasks: set[asyncio.Task[None]] = set()
        reported = 0
        for due, special in schedule:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            kind = special or rng.choices(kinds, weights)[0]
            user = rng.choice(self.users)
            task = asyncio.create_task(self.one(kind, user, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            while due >= t0 + 60 * (reported + 1) + 3:  # a minute ended 3 s ago: report it
                self.out.put(("progress", "http", self.index, reported, self.progress(reported)))
                reported += 1
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 5)
        while reported < int(round(seconds / 60 + 0.4999)):
            self.out.put(("progress", "http", self.index, reported, self.progress(reported)))
            reported += 1

    def result(self) -> dict[str, Any]:
        return {
            "buckets": {f"{m}|{k}": b.export() for (m, k), b in self.buckets.items()},
            "samples": self.samples,
            "price_positions": self.price_positions,
            "open_positions": sum(len(b.open) for b in self.books.values()),
        }


async def _http_process(index: int, config: dict[str, Any], commands: Any, out: Any) -> None:
    load = HttpLoad(index, config, out)
    try:
        if config["seed_users"]:
            out.put(("seeded", "http", index, await load.seed()))
        else:
            out.put(("seeded", "http", index, 0))
        op, arg = await _get(commands)
        if op != "go":
            return
        await load.run(arg["t0"], arg["seconds"])
        out.put(("result", "http", index, load.result()))
        await _get(commands)  # "exit"
    except Exception as error:  # noqa: BLE001 - told to the coordinator, which ends the run
        out.put(("failed", "http", index, repr(error)))
    finally:
        load.pool.close()


def http_main(index: int, config: dict[str, Any], commands: Any, out: Any) -> None:
    _run_loop(lambda: _http_process(index, config, commands, out))


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
        self.price_messages: Counter[int] = Counter()
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
        host, port = "127.0.0.1", self.config["port"]
        await loop.create_connection(lambda: sock, host, port)
        await asyncio.wait_for(sock.opened, 60)

    def lost(self, sock: Socket, code: int) -> None:
        self.closes.append((self.minute(time.monotonic()), code))
        asyncio.get_running_loop().create_task(self.reconnect(sock))

    async def reconnect(self, old: Socket) -> None:
        if self.stopping:
            return
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
        want = frozenset(expected)
        missing = duplicate = extra = short = 0
        for sock in self.all:
            got = sock.prices
            lacking = len(want - got)
            missing += lacking
            short += 1 if lacking else 0
            extra += len(got - want)
            duplicate += sock.duplicate_prices
        return {
            "sockets": len(self.all),
            "open": sum(1 for s in self.all if s.closed is None),
            "received": sum(s.received for s in self.all),
            "messages": {str(m): n for m, n in self.messages.items()},
            "price_messages": {str(m): n for m, n in self.price_messages.items()},
            "closes": self.closes,
            "reconnects": self.reconnects,
            "reconnect_failures": dict(self.reconnect_failures),
            "missing_prices": missing,
            "sockets_missing_prices": short,
            "duplicate_prices": duplicate,
            "extra_prices": extra,
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
            owner.price_messages[minute] += 1
            if message.position in self.prices:
                self.duplicate_prices += 1
            else:
                self.prices.add(message.position)


async def _ws_process(index: int, config: dict[str, Any], commands: Any, out: Any) -> None:
    sockets = Sockets(index, config, out)
    try:
        out.put(("opened", "ws", index, await sockets.open_all()))
        op, arg = await _get(commands)
        if op != "go":
            return
        sockets.t0 = t0 = arg["t0"]
        minutes = int(round(arg["seconds"] / 60 + 0.4999))

        async def report_minutes() -> None:
            for minute in range(minutes):
                await asyncio.sleep(max(0.0, t0 + 60 * (minute + 1) + 3 - time.monotonic()))
                out.put(("progress", "ws", index, minute, sockets.progress(minute)))

        reporter = asyncio.create_task(report_minutes())
        try:
            while True:
                op, arg = await _get(commands)
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
    _run_loop(lambda: _ws_process(index, config, commands, out))


# -- the coordinator -----------------------------------------------------------------------------


class Children:
    """The load processes, a command queue to each, one queue back from all."""

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self.out = self._context.Queue()
        self.processes: list[tuple[str, int, Any, Any]] = []  # (kind, index, process, commands)
        self._pending: list[tuple] = []

    def start(self, kind: str, index: int, target: Any, config: dict[str, Any]) -> None:
        commands = self._context.Queue()
        process = self._context.Process(
            target=target, args=(index, config, commands, self.out), daemon=True
        )
        process.start()
        self.processes.append((kind, index, process, commands))

    @property
    def pids(self) -> list[int]:
        return [p.pid for _, _, p, _ in self.processes if p.pid is not None]

    def send(self, kind: str | None, op: str, arg: Any = None) -> None:
        for k, _, _, commands in self.processes:
            if kind is None or k == kind:
                commands.put((op, arg))

    def check_alive(self) -> None:
        for kind, index, process, _ in self.processes:
            if not process.is_alive() and process.exitcode not in (0, None):
                raise RuntimeError(f"{kind} client {index} died (exit code {process.exitcode})")

    async def next(self, timeout: float) -> tuple | None:
        """The next message from any child, or None after `timeout`."""
        if self._pending:
            return self._pending.pop(0)
        try:
            message = await asyncio.to_thread(self.out.get, True, timeout)
        except queue_module.Empty:
            self.check_alive()
            return None
        if message[0] == "failed":
            raise RuntimeError(f"{message[1]} client {message[2]} failed: {message[3]}")
        return message

    async def gather(self, tag: str, kind: str, count: int, timeout: float) -> dict[int, Any]:
        """Wait for `count` messages `tag` from the children of `kind`; others wait their turn."""
        got: dict[int, Any] = {}
        deferred: list[tuple] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"no {tag!r} from every {kind} client within {timeout:.0f} s")
            message = await self.next(min(left, 5.0))
            if message is None:
                continue
            if message[0] == tag and message[1] == kind:
                got[message[2]] = message[3]
            else:
                deferred.append(message)
        self._pending.extend(deferred)
        return got

    def stop(self) -> None:
        for _, _, _, commands in self.processes:
            try:
                commands.put(("exit", None))
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 10
        for _, _, process, _ in self.processes:
            process.join(max(0.1, deadline - time.monotonic()))
        for _, _, process, _ in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
        self.out.cancel_join_thread()


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


class Sampler:
    """The server's memory, descriptors and CPU, the database's and the machine's, every 10 s."""

    def __init__(
        self, admin: asyncpg.Connection, database: str, server_pid: int, client_pids: list[int]
    ) -> None:
        self.admin, self.database = admin, database
        self.server_pid, self.client_pids = server_pid, client_pids
        self.samples: list[Sample] = []
        self._db_seen: dict[int, float] = {}
        self._db_total = 0.0

    async def sample(self, at: float) -> Sample:
        rows = await self.admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1", self.database
        )
        pids = [row["pid"] for row in rows]
        for pid, seconds in process_cpu(pids).items():
            self._db_total += seconds - self._db_seen.get(pid, seconds)  # from when first seen
            self._db_seen[pid] = seconds
        server = process_cpu([self.server_pid]).get(self.server_pid, 0.0)
        clients = sum(process_cpu(self.client_pids).values()) + time.process_time()
        sample = Sample(
            at=at,
            rss=process_memory_kib(self.server_pid, "VmRSS"),
            hwm=process_memory_kib(self.server_pid, "VmHWM"),
            threads=process_memory_kib(self.server_pid, "Threads"),
            fds=open_fd_count(self.server_pid),
            socket_fds=_socket_fds(self.server_pid),
            server_cpu=server,
            db_cpu=self._db_total,
            clients_cpu=clients,
            machine=machine_ticks(),
            load=load_average(),
            db_connections=len(pids),
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
        busy0, total0 = a.machine
        busy1, total1 = b.machine
        cores = os.cpu_count() or 1
        machine = (busy1 - busy0) / (total1 - total0) * cores if total1 > total0 else None
        server = (b.server_cpu - a.server_cpu) / span
        db = (b.db_cpu - a.db_cpu) / span
        clients = (b.clients_cpu - a.clients_cpu) / span
        other = None if machine is None else max(0.0, machine - server - db - clients)
        return {"server": server, "db": db, "clients": clients, "other": other, "machine": machine}


def _socket_fds(pid: int) -> int | None:
    """How many of a process's open descriptors are sockets."""
    count = 0
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for name in names:
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                count += 1
        except OSError:
            continue
    return count


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


async def _clear_redis(url: str, prefix: str) -> int:
    try:
        import redis.asyncio as aioredis
    except ImportError:
        return 0
    client = aioredis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        return len(keys)
    except Exception as error:  # noqa: BLE001 - cleanup: say so and go on
        print(f"note: could not clear the Redis keys {prefix}:*: {error!r}", file=sys.stderr)
        return 0
    finally:
        await client.aclose()


async def _redis_stream_length(url: str, key: str) -> int | None:
    try:
        import redis.asyncio as aioredis

        client = aioredis.from_url(url)
        try:
            return await client.xlen(key)
        finally:
            await client.aclose()
    except Exception:  # noqa: BLE001
        return None


async def wait_quiet(limit: float, patience: float) -> None:
    """Wait (up to `patience` seconds) until the 1-minute load average is below `limit`."""
    deadline = time.monotonic() + patience
    while True:
        load = load_average()
        if load is None or load[0] < limit:
            print(f"load average {load}: starting", flush=True)
            return
        if time.monotonic() >= deadline:
            print(f"load average {load}: still above {limit} after waiting; starting anyway")
            return
        print(f"load average {load[0]:.2f} >= {limit}: waiting", flush=True)
        await asyncio.sleep(30)


async def main(args: argparse.Namespace) -> int:
    from api.auth import Role, mint_token
    from bench.api import Server, free_port, server_env, source_state

    if args.wait_quiet:
        await wait_quiet(args.wait_quiet, args.wait_patience)
    started = time.monotonic()
    load_before = load_average()
    busy0, total0 = machine_ticks()
    await asyncio.sleep(1.0)
    busy1, total1 = machine_ticks()
    idle_cores = (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1)
    if args.http_users > args.ws_users:
        raise SystemExit("--http-users must not exceed --ws-users (the sockets' users)")
    seconds = args.minutes * 60
    minutes = int(round(args.minutes + 0.4999))
    warmup = args.warmup_minutes * 60

    admin_dsn = os.environ.get("BENCH_DATABASE_URL", DEFAULT_ADMIN_DSN)
    redis_url = os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL)
    prefix = f"bench-soak-{secrets.token_hex(4)}"
    dsn = database_dsn(admin_dsn, args.database)
    admin = await asyncpg.connect(admin_dsn)
    secret = secrets.token_urlsafe(48)
    ttl = timedelta(minutes=args.minutes + 60)
    users = [f"soak-u{i:03d}" for i in range(args.ws_users)]
    http_users = users[: args.http_users]

    def token(subject: str, role: Role) -> str:
        return mint_token(
            secret_or_private_key=secret, algorithm="HS256", subject=subject, role=role, ttl=ttl
        )

    tokens = {user: token(user, Role.USER) for user in users}
    tokens[SERVICE] = token(SERVICE, Role.SERVICE)
    logs = Path(tempfile.mkdtemp(prefix="bench_soak_"))
    source = source_state()
    service = None
    children = Children()
    sampler: Sampler | None = None
    sampling: asyncio.Task[None] | None = None
    failed = True
    try:
        await drop_database(admin, args.database)
        await admin.execute(f'CREATE DATABASE "{args.database}"')
        port = free_port()
        service = Server(
            "service",
            [sys.executable, "-m", "api", "serve"],
            server_env(
                DATABASE_URL=dsn,
                JWT_SECRET=secret,
                PORT=str(port),
                HOST="127.0.0.1",
                LOG_LEVEL="WARNING",
                DB_POOL_SIZE=str(args.pool_size),
                DB_MAX_OVERFLOW=str(args.max_overflow),
                REDIS_URL=redis_url,
                REDIS_KEY_PREFIX=prefix,
                WORKERS="1",
            ),
            port,
            "/health/ready",
            tokens[SERVICE],
            logs,
        )
        service.wait_ready()
        info = await admin.fetchrow(
            "SELECT current_setting('server_version') AS version, "
            "current_setting('max_connections') AS max_connections"
        )
        import starlette
        import uvicorn

        print(
            f"Soak: {os.cpu_count()} cores, Python {platform.python_version()}, uvicorn "
            f"{uvicorn.__version__}, starlette {starlette.__version__}, PostgreSQL "
            f"{info['version'].split()[0]}; source: commit {source[0]}"
            + (f", modified: {', '.join(source[1])}" if source[1] else ", clean")
        )
        print(
            f"{args.minutes:g} min; HTTP {args.rate:g} req/s open loop ({args.price_rate:g}/s "
            f"update-prices) as {args.http_users} users over {args.http_clients} process(es); "
            f"{args.ws_users * args.sockets_per_user:,} sockets ({args.ws_users} users x "
            f"{args.sockets_per_user}) over {args.ws_clients} processes; pool "
            f"{args.pool_size}+{args.max_overflow}; Redis prefix {prefix}; machine busy before: "
            f"{idle_cores:.2f} cores, load average {load_before}",
            flush=True,
        )

        # the HTTP clients seed their users' books; then the sockets open (their initial data
        # has those positions); then the load starts
        user_rate = (args.rate - args.price_rate) / args.http_clients
        for index in range(args.http_clients):
            mine = http_users[index :: args.http_clients]
            children.start(
                "http",
                index,
                http_main,
                {
                    "port": port,
                    "tokens": {u: tokens[u] for u in [*mine, SERVICE]},
                    "users": mine,
                    "seed_users": True,
                    "user_rate": user_rate,
                    "price_rate": args.price_rate if index == 0 else 0.0,
                    "seed": args.seed,
                },
            )
        seeded = await children.gather("seeded", "http", args.http_clients, 300)
        status, data = await _http_once(
            port,
            "POST",
            "/positions/update-prices",
            tokens[SERVICE],
            _body({s: p for s, p in SYMBOLS.items()}),
        )
        if status != 200:
            raise RuntimeError(f"update-prices answered {status}: {data[:300]!r}")
        print(f"seeded {sum(seeded.values()):,} positions", flush=True)

        for index in range(args.ws_clients):
            mine = users[index :: args.ws_clients]
            children.start(
                "ws",
                index,
                ws_main,
                {
                    "port": port,
                    "tokens": {u: tokens[u] for u in mine},
                    "users": mine,
                    "per_user": args.sockets_per_user,
                },
            )
        opened = await children.gather("opened", "ws", args.ws_clients, 300)
        total_open = sum(o["opened"] for o in opened.values())
        failures = [e for o in opened.values() for e in o["errors"]]
        print(
            f"opened {total_open:,} sockets in {max(o['seconds'] for o in opened.values()):.1f} s"
            + (
                f"; {sum(o['failed'] for o in opened.values())} failed: {failures}"
                if failures
                else ""
            ),
            flush=True,
        )
        if total_open != args.ws_users * args.sockets_per_user:
            raise RuntimeError("not every socket opened")

        sampler = Sampler(admin, args.database, service.pid, children.pids)
        t0 = time.monotonic() + 1.0
        children.send("http", "go", {"t0": t0, "seconds": seconds})
        children.send("ws", "go", {"t0": t0, "seconds": seconds})
        sampling = asyncio.create_task(sampler.run(t0, seconds))

        # live progress, one line a minute
        progress: dict[int, dict[str, dict[int, Any]]] = defaultdict(lambda: defaultdict(dict))
        printed = 0
        results: dict[int, Any] = {}
        header_done = False
        while len(results) < args.http_clients or printed < minutes:
            message = await children.next(5.0)
            if service.process.poll() is not None:
                raise RuntimeError(f"the service exited with code {service.process.poll()}")
            if message is None:
                continue
            tag = message[0]
            if tag == "progress":
                _, kind, index, minute, figures = message
                progress[minute][kind][index] = figures
            elif tag == "result":
                results[message[2]] = message[3]
            else:
                print(f"note: unexpected message from a client: {message[:3]}", file=sys.stderr)
            while printed < minutes and (
                len(progress[printed]["http"]) == args.http_clients
                and len(progress[printed]["ws"]) == args.ws_clients
            ):
                http = progress[printed]["http"].values()
                ws = progress[printed]["ws"].values()
                n = sum(f["n"] for f in http)
                errors = sum(f["errors"] for f in http)
                p99 = max((f["p99"] for f in http if f["p99"] is not None), default=None)
                sample = sampler.at(60 * (printed + 1))
                if not header_done:
                    print(
                        "minute  requests  errors  409s  p99 ms  live msgs  closed  open"
                        "  RSS MiB  fds"
                    )
                    header_done = True
                print(
                    f"{printed + 1:>6}  {n:>8,}  {errors:>6}  {sum(f['refused'] for f in http):>4}"
                    f"  {'-' if p99 is None else f'{p99 * 1000:.1f}':>6}"
                    f"  {sum(f['messages'] for f in ws):>9,}  {sum(f['closed'] for f in ws):>6}"
                    f"  {sum(f['open'] for f in ws):>4}"
                    f"  {_mib(None if sample is None else sample.rss):>7}"
                    f"  {'-' if sample is None else sample.fds}",
                    flush=True,
                )
                printed += 1
        await sampling
        end_sample = sampler.samples[-1]

        # let the last deliveries arrive, then check every socket
        last, stable_since = -1, time.monotonic()
        settle_deadline = time.monotonic() + 30
        while time.monotonic() < settle_deadline:
            children.send("ws", "count")
            counts = await children.gather("count", "ws", args.ws_clients, 30)
            total = sum(counts.values())
            if total != last:
                last, stable_since = total, time.monotonic()
            elif time.monotonic() - stable_since >= 2.0:
                break
            await asyncio.sleep(0.5)
        price_positions = sorted(p for r in results.values() for p in r["price_positions"])
        children.send("ws", "check", price_positions)
        checks = await children.gather("check", "ws", args.ws_clients, 120)

        status, metrics_text = await _http_once(port, "GET", "/metrics", tokens[SERVICE])
        metrics = metrics_text.decode(errors="replace") if status == 200 else ""
        status, health = await _http_once(port, "GET", "/health", tokens[SERVICE])
        stream_length = await _redis_stream_length(redis_url, f"{prefix}:live")
        verify = subprocess.run(
            [sys.executable, "-m", "api", "verify"],
            cwd=ROOT,
            env=server_env(DATABASE_URL=dsn, JWT_SECRET=secret, LOG_LEVEL="WARNING"),
            capture_output=True,
            text=True,
            timeout=600,
        )
        counts_row = await admin.fetchrow(
            "SELECT (SELECT count(*) FROM pg_stat_activity WHERE datname = $1) AS connections",
            args.database,
        )
        setup = await asyncpg.connect(dsn)
        try:
            book = await setup.fetchrow(
                "SELECT (SELECT count(*) FROM events) AS events, "
                "(SELECT count(*) FROM positions) AS positions, "
                "(SELECT count(*) FROM positions WHERE status = 'open') AS open"
            )
        finally:
            await setup.close()
        levels, examples = _log_levels(service.log)
        code = report(
            args,
            results=results,
            checks=checks,
            sampler=sampler,
            end_sample=end_sample,
            warmup=warmup,
            seconds=seconds,
            minutes=minutes,
            metrics=metrics,
            health=(status, health),
            verify=verify,
            book=dict(book),
            db_connections_after=counts_row["connections"],
            stream_length=stream_length,
            log_levels=levels,
            log_examples=examples,
            source=source,
            load_before=load_before,
            idle_cores=idle_cores,
            total_open=total_open,
            info=info,
        )
        print(f"\nRun time {time.monotonic() - started:.0f} s.")
        failed = False
        return code
    finally:
        if sampling is not None and not sampling.done():
            sampling.cancel()
            await asyncio.gather(sampling, return_exceptions=True)
        children.stop()
        if service is not None:
            service.stop()
            if failed:
                print(f"the service's log: {service.log}", file=sys.stderr)
        if not args.keep:
            await drop_database(admin, args.database)
        await admin.close()
        cleared = await _clear_redis(redis_url, prefix)
        if cleared:
            print(f"(deleted {cleared} Redis keys {prefix}:*)")
        if failed or args.keep:
            print(f"logs kept in {logs}", file=sys.stderr)
        else:
            shutil.rmtree(logs, ignore_errors=True)


# -- the report ----------------------------------------------------------------------------------


def _ms(values: list[float], q: float) -> str:
    return "-" if not values else f"{percentile(values, q) * 1000:.1f}"


def _merge(results: dict[int, Any]) -> dict[tuple[int, str], dict[str, Any]]:
    merged: dict[tuple[int, str], dict[str, Any]] = {}
    for result in results.values():
        for key, b in result["buckets"].items():
            minute, kind = key.split("|")
            m = merged.setdefault(
                (int(minute), kind),
                {
                    "n": 0,
                    "ok": 0,
                    "refused": 0,
                    "statuses": Counter(),
                    "transport": Counter(),
                    "due": [],
                    "sent": [],
                    "lag": 0.0,
                },
            )
            m["n"] += b["n"]
            m["ok"] += b["ok"]
            m["refused"] += b["refused"]
            m["statuses"].update({int(s): n for s, n in b["statuses"].items()})
            m["transport"].update(b["transport"])
            m["due"].extend(array("d", b["due"]))
            m["sent"].extend(array("d", b["sent"]))
            m["lag"] = max(m["lag"], b["lag"])
    return merged


def _errors(b: dict[str, Any]) -> int:
    return sum(n for s, n in b["statuses"].items() if s != 409) + sum(b["transport"].values())


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def report(args: argparse.Namespace, **r: Any) -> int:
    merged = _merge(r["results"])
    sampler: Sampler = r["sampler"]
    checks: dict[int, Any] = r["checks"]
    minutes: int = r["minutes"]
    seconds: float = r["seconds"]
    out: list[str] = []  # markdown

    live_minute: Counter[int] = Counter()
    closes_minute: Counter[int] = Counter()
    close_codes: Counter[int] = Counter()
    for check in checks.values():
        for m, n in check["messages"].items():
            live_minute[int(m)] += n
        for m, code in check["closes"]:
            closes_minute[m] += 1
            close_codes[code] += 1

    # per minute
    header = [
        "minute",
        "requests",
        "req/s",
        "2xx",
        "409",
        "errors",
        "error rate",
        "p50 ms",
        "p99 ms",
        "max ms",
        "client lag ms",
        "live msgs",
        "msgs/s",
        "closed",
        "RSS MiB",
        "fds",
        "server cores",
        "db cores",
        "other cores",
    ]
    rows = []
    for minute in range(minutes):
        bs = [b for (m, _), b in merged.items() if m == minute]
        n = sum(b["n"] for b in bs)
        errors = sum(_errors(b) for b in bs)
        due = [v for b in bs for v in b["due"]]
        span = min(60.0, seconds - 60 * minute)
        sample = sampler.at(60 * minute + span)
        cores = sampler.window(60 * minute, 60 * minute + span)
        rows.append(
            [
                str(minute + 1),
                f"{n:,}",
                f"{n / span:.1f}",
                f"{sum(b['ok'] for b in bs):,}",
                str(sum(b["refused"] for b in bs)),
                str(errors),
                f"{(errors / n * 100 if n else 0):.3f} %",
                _ms(due, 50),
                _ms(due, 99),
                _ms(due, 100),
                f"{max((b['lag'] for b in bs), default=0) * 1000:.1f}",
                f"{live_minute[minute]:,}",
                f"{live_minute[minute] / span:,.0f}",
                str(closes_minute[minute]),
                "-" if sample is None or sample.rss is None else f"{sample.rss / 1024:.1f}",
                "-" if sample is None else str(sample.fds),
                _cores(cores.get("server")),
                _cores(cores.get("db")),
                _cores(cores.get("other")),
            ]
        )
    all_b = list(merged.values())
    total_n = sum(b["n"] for b in all_b)
    total_err = sum(_errors(b) for b in all_b)
    all_due = [v for b in all_b for v in b["due"]]
    cores = sampler.window(0, seconds)
    rows.append(
        [
            "all",
            f"{total_n:,}",
            f"{total_n / seconds:.1f}",
            f"{sum(b['ok'] for b in all_b):,}",
            str(sum(b["refused"] for b in all_b)),
            str(total_err),
            f"{(total_err / total_n * 100 if total_n else 0):.3f} %",
            _ms(all_due, 50),
            _ms(all_due, 99),
            _ms(all_due, 100),
            f"{max((b['lag'] for b in all_b), default=0) * 1000:.1f}",
            f"{sum(live_minute[m] for m in range(minutes)):,}",
            f"{sum(live_minute[m] for m in range(minutes)) / seconds:,.0f}",
            str(sum(closes_minute[m] for m in range(minutes))),
            "",
            "",
            _cores(cores.get("server")),
            _cores(cores.get("db")),
            _cores(cores.get("other")),
        ]
    )
    print_table(
        "Per minute (latency: from the request's slot to its answer, all kinds)", header, rows
    )
    out += ["### Per minute", "", _markdown(header, rows), ""]

    # p99 per kind per minute
    kheader = ["minute", *KINDS]
    krows = []
    for minute in range(minutes):
        row = [str(minute + 1)]
        for kind in KINDS:
            b = merged.get((minute, kind))
            row.append("-" if b is None else f"{_ms(b['due'], 50)} / {_ms(b['due'], 99)}")
        krows.append(row)
    print_table("p50 / p99 ms per kind and minute", kheader, krows)
    out += ["### p50 / p99 ms per request kind and minute", "", _markdown(kheader, krows), ""]

    # per kind, whole run
    theader = [
        "request",
        "count",
        "2xx",
        "409",
        "errors",
        "p50 ms",
        "p99 ms",
        "max ms",
        "p99 sent ms",
    ]
    trows = []
    for kind in KINDS:
        bs = [b for (m, k), b in merged.items() if k == kind]
        due = [v for b in bs for v in b["due"]]
        sent = [v for b in bs for v in b["sent"]]
        trows.append(
            [
                LABELS[kind],
                f"{sum(b['n'] for b in bs):,}",
                f"{sum(b['ok'] for b in bs):,}",
                str(sum(b["refused"] for b in bs)),
                str(sum(_errors(b) for b in bs)),
                _ms(due, 50),
                _ms(due, 99),
                _ms(due, 100),
                _ms(sent, 99),
            ]
        )
    print_table("Per request kind, whole run", theader, trows)
    out += ["### Per request kind, whole run", "", _markdown(theader, trows), ""]

    statuses: Counter[int] = Counter()
    transport: Counter[str] = Counter()
    for b in all_b:
        statuses.update(b["statuses"])
        transport.update(b["transport"])
    samples = [s for res in r["results"].values() for s in res["samples"]]
    error_line = (
        f"non-2xx answers: {dict(statuses) or 'none'}; transport failures: "
        f"{dict(transport) or 'none'}"
    )
    print("\n" + error_line)
    for s in samples[:5]:
        print("  e.g.", s)

    # memory and descriptors
    start = sampler.at(r["warmup"])
    end: Sample = r["end_sample"]
    first = sampler.samples[0]
    growth = None
    if start is not None and start.rss and end.rss:
        growth = (end.rss - start.rss) / start.rss * 100
    mheader = [
        "server process",
        "load start (0 s)",
        f"start ({start.at:.0f} s)",
        f"end ({end.at:.0f} s)",
        "change start -> end",
    ]

    def mib(v: int | None) -> str:
        return "-" if v is None else f"{v / 1024:.1f} MiB"

    def change(a: int | None, b: int | None, unit: str = "") -> str:
        if a is None or b is None:
            return "-"
        pct = f" ({(b - a) / a * 100:+.1f} %)" if a else ""
        return f"{b - a:+,}{unit}{pct}" if not unit else f"{(b - a) / 1024:+.1f} MiB{pct}"

    mrows = [
        ["VmRSS", mib(first.rss), mib(start.rss), mib(end.rss), change(start.rss, end.rss, "MiB")],
        [
            "VmHWM (peak RSS)",
            mib(first.hwm),
            mib(start.hwm),
            mib(end.hwm),
            change(start.hwm, end.hwm, "MiB"),
        ],
        [
            "open file descriptors",
            str(first.fds),
            str(start.fds),
            str(end.fds),
            change(start.fds, end.fds),
        ],
        [
            "of which sockets",
            str(first.socket_fds),
            str(start.socket_fds),
            str(end.socket_fds),
            change(start.socket_fds, end.socket_fds),
        ],
        [
            "other descriptors (files, pipes, epoll...)",
            str(_other_fds(first)),
            str(_other_fds(start)),
            str(_other_fds(end)),
            change(_other_fds(start), _other_fds(end)),
        ],
        [
            "threads",
            str(first.threads),
            str(start.threads),
            str(end.threads),
            change(start.threads, end.threads),
        ],
        [
            "database connections (service)",
            str(first.db_connections),
            str(start.db_connections),
            str(end.db_connections),
            change(start.db_connections, end.db_connections),
        ],
    ]
    print_table("Memory and descriptors", mheader, mrows)
    out += ["### Memory and descriptors", "", _markdown(mheader, mrows), ""]
    series = ", ".join(
        f"{s.at:.0f}s {s.rss / 1024:.1f}" for s in sampler.samples if s.rss is not None
    )
    print(f"\nVmRSS every {SAMPLE_SECONDS:.0f} s (MiB): {series}")
    fd_series = ", ".join(f"{s.fds} ({_other_fds(s)})" for s in sampler.samples)
    print(f"open descriptors every {SAMPLE_SECONDS:.0f} s (in brackets: not sockets): {fd_series}")
    out += [
        f"VmRSS every {SAMPLE_SECONDS:.0f} s (MiB): {series}",
        "",
        f"Open descriptors every {SAMPLE_SECONDS:.0f} s (in brackets: not sockets): {fd_series}",
        "",
    ]

    # sockets
    c = list(checks.values())

    def total(key: str) -> int:
        return sum(x[key] for x in c)

    price_updates = sum(len(res["price_positions"]) for res in r["results"].values())
    closed_total = sum(closes_minute.values())
    socket_line = (
        f"sockets at the end: {total('open'):,} open of {total('sockets'):,}; closed by the "
        f"server or lost: {closed_total} (codes {dict(close_codes) or 'none'}), reconnected "
        f"{total('reconnects')} (failed attempts: "
        f"{sum((Counter(x['reconnect_failures']) for x in c), Counter()) or 'none'}); messages "
        f"received {total('received'):,}; price updates of the run {price_updates:,}: missing "
        f"{total('missing_prices'):,} (on {total('sockets_missing_prices')} sockets), duplicate "
        f"{total('duplicate_prices')}, unknown {total('extra_prices')}; undecodable messages "
        f"{total('malformed')}"
    )
    print("\n" + socket_line)
    gauges = _metric(r["metrics"], "live_connections")
    pool = _metric(r["metrics"], "db_pool_connections")
    lag = _metric(r["metrics"], "live_feed_lag_events")
    metric_line = (
        f"/metrics after the load: live_connections {gauges}, db_pool_connections {pool}, "
        f"live_feed_lag_events {lag}"
    )
    print(metric_line)
    hstatus, hbody = r["health"]
    health_line = f"/health after the load: {hstatus} {hbody.decode(errors='replace')[:400]}"
    print(health_line)
    verify = r["verify"]
    verify_line = (
        f"python -m api verify: exit {verify.returncode}; "
        + (verify.stdout.strip().splitlines() or ["(no output)"])[-1][:300]
        + (f"; stderr: {verify.stderr.strip()[-300:]}" if verify.returncode else "")
    )
    print(verify_line)
    book = r["book"]
    book_line = (
        f"log and book at the end: {book['events']:,} events, {book['positions']:,} positions "
        f"({book['open']:,} open); Redis stream length {r['stream_length']}; database "
        f"connections of the service after the load {r['db_connections_after']}"
    )
    print(book_line)
    log_line = f"service log lines by level: {dict(r['log_levels']) or 'none'}"
    print(log_line)
    for example in r["log_examples"][:5]:
        print("  e.g.", example)
    cores_line = (
        f"cores over the run: server {_cores(cores.get('server'))}, "
        f"database {_cores(cores.get('db'))}, "
        f"clients {_cores(cores.get('clients'))}, other processes {_cores(cores.get('other'))}, "
        f"machine {_cores(cores.get('machine'))}; load average before {r['load_before']}, "
        f"at the end {end.load}"
    )
    print(cores_line)

    met = {
        "errors": total_err == 0,
        "growth": growth is not None and growth < GROWTH_TARGET_PCT,
        "sockets": sum(closes_minute.values()) == 0
        and sum(x["missing_prices"] + x["duplicate_prices"] for x in c) == 0,
        "verify": verify.returncode == 0,
    }
    target_header = ["target", "value", "", ""]
    target_rows = [
        [
            "error rate",
            f"{(total_err / total_n * 100 if total_n else 0):.3f} % ({total_err} of {total_n:,})",
            "0",
            "met" if met["errors"] else "**missed**",
        ],
        [
            "RSS growth, start -> end",
            "-" if growth is None else f"{growth:+.1f} %",
            f"< {GROWTH_TARGET_PCT:.0f} %",
            "met" if met["growth"] else "**missed**",
        ],
        [
            "sockets closed; price updates missing or doubled",
            f"{closed_total}; {total('missing_prices') + total('duplicate_prices')}",
            "0; 0",
            "met" if met["sockets"] else "**missed**",
        ],
        [
            "read models agree with the log (verify)",
            f"exit {verify.returncode}",
            "0",
            "met" if met["verify"] else "**missed**",
        ],
    ]
    print_table("Targets", target_header, target_rows)
    out += ["### Targets", "", _markdown(["target", "value", "target", ""], target_rows), ""]
    out += [
        "### Other findings",
        "",
        *(
            f"- {line}"
            for line in (
                error_line,
                socket_line,
                metric_line,
                health_line,
                verify_line,
                book_line,
                log_line,
                cores_line,
            )
        ),
        "",
    ]
    if args.markdown is not None:
        args.markdown.write_text("\n".join(out))
        print(f"\nMarkdown tables: {args.markdown}")
    return 0 if all(met.values()) or not args.strict else 1


def _other_fds(sample: Sample) -> int | None:
    if sample.fds is None or sample.socket_fds is None:
        return None
    return sample.fds - sample.socket_fds


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def _cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=10, help="minutes of load (default 10)")
    parser.add_argument(
        "--warmup-minutes",
        type=float,
        default=1,
        help="memory 'start' is sampled after this many minutes of load (default 1)",
    )
    parser.add_argument("--rate", type=float, default=200, help="HTTP requests/s in all (200)")
    parser.add_argument(
        "--price-rate", type=float, default=2, help="of which update-prices/s (default 2)"
    )
    parser.add_argument("--http-users", type=int, default=50, help="users making requests (50)")
    parser.add_argument("--ws-users", type=int, default=100, help="users holding sockets (100)")
    parser.add_argument("--sockets-per-user", type=int, default=10, help="default 10")
    parser.add_argument("--ws-clients", type=int, default=2, help="socket processes (default 2)")
    parser.add_argument("--http-clients", type=int, default=1, help="HTTP processes (default 1)")
    parser.add_argument("--pool-size", type=int, default=10, help="the service's DB_POOL_SIZE (10)")
    parser.add_argument("--max-overflow", type=int, default=10, help="DB_MAX_OVERFLOW (10)")
    parser.add_argument("--seed", type=int, default=20261124, help="random seed")
    parser.add_argument("--database", default="bench_soak", help="database to (re)create")
    parser.add_argument("--keep", action="store_true", help="keep the database and the logs")
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables here too")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="first wait until the 1-minute load average is below this (checked every 30 s)",
    )
    parser.add_argument(
        "--wait-patience", type=float, default=900, help="... for at most this many seconds (900)"
    )
    args = parser.parse_args(argv)
    if args.warmup_minutes >= args.minutes:
        parser.error("--warmup-minutes must be less than --minutes")
    return args


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
