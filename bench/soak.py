"""Soak: one service process under mixed HTTP load and 1,000 live sockets for 10 minutes.

Setup, load, figures and targets: BENCHMARKS.md, "Soak" (results: RELIABILITY.md)."""

from __future__ import annotations

import argparse
import asyncio
import operator
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
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as aioredis

from bench import harness
from bench.clients import HttpConnection, HttpPool, RawSocket

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
SERVICE = "bench-soak-prices"
SYMBOLS = {
    **{"AAPL": 190.0, "MSFT": 410.0, "GOOG": 170.0, "AMZN": 180.0, "NVDA": 120.0},
    **{"META": 500.0, "TSLA": 250.0, "JPM": 200.0, "XOM": 115.0, "KO": 62.0},
}
STRATEGIES = ["momentum", "carry", "swing", "pairs"]
MIX = {  # percent of the user requests: (weight, label)
    "get": (30, "GET /positions/{id}"),
    "list": (10, "GET /positions?limit=100"),
    "summary": (10, "GET /portfolio/summary"),
    "create": (15, "POST /positions"),
    "update": (15, "PUT /positions/{id}"),
    "close_part": (8, "POST .../close (part)"),
    "close_full": (11, "POST .../close (all)"),
}
READS = {"list": "/positions?limit=100", "summary": "/portfolio/summary"}
KINDS = [*MIX, "prices"]
LABELS = {k: label for k, (_, label) in MIX.items()} | {"prices": "POST /positions/update-prices"}
SEED_PER_USER, OPEN_CONCURRENCY, HTTP_CONNECTIONS = 10, 32, 64  # a user's; at once; a process's
REQUEST_TIMEOUT, SAMPLE_SECONDS, RECONNECT_SECONDS, GROWTH_TARGET_PCT = 30.0, 10.0, 1.0, 10.0
REPORT_DELAY = 3.0  # a minute's figures go to the coordinator this long after it ends
COLUMNS = "requests|req/s|2xx|409|errors|error rate|p50 ms|p99 ms|max ms|client lag ms|p99 sent ms"
MINUTE_COLUMNS = COLUMNS.rsplit("|", 1)[0]
KIND_COLUMNS = "requests|2xx|409|errors|p50 ms|p99 ms|max ms|p99 sent ms"
VM_FIELDS = ("VmRSS", "VmHWM", "Threads")
SAMPLE = "at rss hwm threads fds socket_fds other_fds server db clients machine load db_connections"
MEMORY_ROWS = (  # label:figure of the memory table
    "VmRSS:rss|VmHWM (peak RSS):hwm|open file descriptors:fds|of which sockets:socket_fds|"
    "other descriptors (files, pipes, epoll...):other_fds|threads:threads|"
    "database connections (service):db_connections"
)
BOOK_SQL = (
    "SELECT (SELECT count(*) FROM events) AS events, (SELECT count(*) FROM positions) AS "
    "positions, (SELECT count(*) FROM positions WHERE status = 'open') AS open"
)


def _minutes(seconds: float) -> int:
    return int(round(seconds / 60 + 0.4999))


def _price(rng: random.Random, symbol: str, spread: float) -> float:
    return round(SYMBOLS[symbol] * (1 + rng.uniform(-spread, spread)), 2)


def _ms(values: Any, q: float) -> str:
    return "-" if not values else f"{harness.percentile(values, q) * 1000:.1f}"


def _mib(kib: int | None, unit: str = "") -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}{unit}"


def _add(parts: Any) -> dict[str, Any]:
    parts = list(parts)
    return {k: sum((p[k] for p in parts), type(v)()) for k, v in parts[0].items()}


# -- the HTTP load (a process of its own) --------------------------------------------------------
class Bucket:
    """Requests of one minute and kind, or of several buckets added up."""

    def __init__(self, parts: Any = ()) -> None:
        self.n = self.ok = self.refused = 0
        self.statuses: Counter[int] = Counter()  # non-2xx answers
        self.transport: Counter[str] = Counter()  # failures without an answer
        self.due = array("d")  # seconds from the request's slot to its answer
        self.sent = array("d")  # seconds from writing the request to its answer
        self.lag = 0.0  # the worst delay of a request's start behind its slot
        for b in parts:
            for name in ("n", "ok", "refused", "statuses", "transport", "due", "sent"):
                setattr(self, name, operator.iadd(getattr(self, name), getattr(b, name)))
            self.lag = max(self.lag, b.lag)

    def errors(self) -> int:
        """Answers other than 2xx and 409 (a domain refusal), and transport failures."""
        return sum(n for s, n in self.statuses.items() if s != 409) + sum(self.transport.values())

    def cells(self, columns: str, span: float = 0.0) -> list[str]:
        n, errors = self.n, self.errors()
        cells = [f"{n:,}", f"{n / span:.1f}" if span else "", f"{self.ok:,}", str(self.refused)]
        cells += [str(errors), f"{(errors / n * 100 if n else 0):.3f} %"]
        cells += [*(_ms(self.due, q) for q in (50, 99, 100)), f"{self.lag * 1000:.1f}"]
        shown = dict(zip(COLUMNS.split("|"), [*cells, _ms(self.sent, 99)], strict=True))
        return [shown[c] for c in columns.split("|")]


class HttpLoad:
    """One HTTP client process: its users' books, an open-loop schedule, its buckets."""

    def __init__(self, index: int, config: dict[str, Any]) -> None:
        self.index, self.config = index, config
        self.rng = random.Random(config["seed"] * 1000 + index)
        self.tokens, self.users = config["tokens"], config["users"]
        self.books: dict[str, dict[str, Any]] = {u: {} for u in self.users}  # open positions
        self.known: dict[str, list[str]] = {u: [] for u in self.users}  # the last 500 ids seen
        self.pool = HttpPool(config["port"], HTTP_CONNECTIONS, REQUEST_TIMEOUT, lifo=True)
        self.buckets: dict[tuple[int, str], Bucket] = defaultdict(Bucket)
        self.samples, self.price_positions = [], []  # the first error answers; update-prices
        self.t0, self.notes = 0.0, 0

    async def prepare(self) -> int:
        for _ in range(SEED_PER_USER):
            answers = await asyncio.gather(*(self.send(u, self._create()) for u in self.users))
            for status, data, _ in answers:
                if status != 201:
                    raise RuntimeError(f"seed: POST /positions answered {status}: {data[:300]!r}")
        return sum(map(len, self.books.values()))

    def _create(self) -> tuple:  # kind, method, path, body, headers, the position
        rng = self.rng
        symbol, side = rng.choice(list(SYMBOLS)), "long" if rng.random() < 0.7 else "short"
        entry, quantity = _price(rng, symbol, 0.02), rng.randint(10, 100)
        low, high = round(entry * 0.9, 2), round(entry * 1.1, 2)
        stop, take = (low, high) if side == "long" else (high, low)
        body = {"symbol": symbol, "side": side, "quantity": quantity, "entry_price": entry}
        body |= {"stop_loss": stop, "take_profit": take, "strategy": rng.choice(STRATEGIES)}
        held = SimpleNamespace(id="", symbol=symbol, side=side, quantity=quantity, entry=entry)
        return "create", "POST", "/positions", msgspec.json.encode(body), "", held

    def _request(self, kind: str, user: str) -> tuple:
        """A create when the user has nothing to act on; the position commanded marked busy."""
        rng, known = self.rng, self.known[user]
        if kind == "prices":
            prices = {s: _price(rng, s, 0.05) for s in rng.sample(list(SYMBOLS), 5)}
            return kind, "POST", "/positions/update-prices", msgspec.json.encode(prices), "", None
        if kind == "get" and known:
            return kind, "GET", f"/positions/{rng.choice(known)}", b"", "", None
        if kind in READS:
            return kind, "GET", READS[kind], b"", "", None
        idle = [] if kind in ("get", "create") else [h for h in self.books[user].values()]
        if not (idle := [h for h in idle if not h.busy]):
            return self._create()
        held = rng.choice(idle)
        held.busy = True
        if kind == "close_part" and held.quantity < 2:
            kind = "close_full"
        if kind == "update":
            self.notes += 1
            choice, body = rng.random(), {}
            if choice < 0.67:
                body["notes"] = f"soak note {self.index}-{self.notes}"
            if choice >= 0.33:
                factor = rng.uniform(0.85, 0.95) if held.side == "long" else rng.uniform(1.05, 1.15)
                body["stop_loss"] = round(held.entry * factor, 2)
            if_match = f'If-Match: "{held.version}"\r\n'
            return kind, "PUT", f"/positions/{held.id}", msgspec.json.encode(body), if_match, held
        path = f"/positions/{held.id}/close?exit_price={_price(rng, held.symbol, 0.05)}"
        if kind == "close_part":
            path += f"&quantity={rng.randint(1, held.quantity - 1)}"
        return kind, "POST", path, b"", "", held

    async def send(self, user: str, request: tuple) -> tuple[int, bytes, float]:
        """(status, answer, when the request was written); the book brought in line with it."""
        kind, method, path, body, extra, held = request
        token = self.tokens[SERVICE if kind == "prices" else user]
        try:
            status, data, sent, _ = await self.pool.request(method, path, token, body, extra)
        finally:
            if held is not None:
                held.busy = False
        book = self.books.get(user, {})
        if held is not None and status in (404, 409, 412):
            book.pop(held.id, None)  # closed, gone or changed: leave it alone from now on
        if not 200 <= status < 300 or (held is None and kind != "prices"):
            return status, data, sent
        answer = msgspec.json.decode(data)
        if held is None:
            self.price_positions.append(answer["position"])
        elif kind == "create":
            held.id, held.version = answer["id"], answer["version"]
            book[held.id] = held
            self.known[user].append(held.id)
            if len(self.known[user]) > 500:
                del self.known[user][:100]
        elif answer["status"] != "open":
            book.pop(held.id, None)
        else:
            held.version, held.quantity = answer["version"], int(float(answer["quantity"]))
        return status, data, sent

    async def one(self, kind: str, user: str, due: float) -> None:
        request = self._request(kind, user)
        bucket = self.buckets[(int((due - self.t0) // 60), request[0])]
        try:
            status, data, sent = await self.send(user, request)
        except Exception as error:  # noqa: BLE001 - counted, never lost
            name = "timeout" if isinstance(error, TimeoutError) else type(error).__name__
            if not isinstance(error, (OSError, asyncio.IncompleteReadError, TimeoutError)):
                name = f"client-side {name}"  # a bug of this script's, or an unreadable answer
            bucket.transport[name] += 1
            status, data = None, repr(error).encode()
        else:
            done = time.monotonic()
            bucket.due.append(done - due)
            bucket.sent.append(done - sent)
            bucket.lag = max(bucket.lag, sent - due)
            bucket.ok += 200 <= status < 300
            if not 200 <= status < 300:
                bucket.statuses[status] += 1
            bucket.refused += status == 409
        bucket.n += 1
        if not (status and 200 <= status < 300) and status != 409 and len(self.samples) < 10:
            self.samples.append(f"{request[0]} {status}: {data.decode(errors='replace')[:300]}")

    def result(self) -> tuple:
        return dict(self.buckets), self.samples, self.price_positions

    def close(self) -> None:
        self.pool.close()

    def progress(self, minute: int) -> Bucket:
        return Bucket(b for (m, _), b in self.buckets.items() if m == minute)

    async def run(self, t0: float, seconds: float) -> None:
        self.t0, rate = t0, self.config["user_rate"]
        prices = self.config["price_rate"] if self.index == 0 else 0.0
        slots = [(t0 + i / rate, "") for i in range(int(seconds * rate))]
        slots += [(t0 + (i + 0.5) / prices, "prices") for i in range(int(seconds * prices))]
        kinds, weights = list(MIX), [weight for weight, _ in MIX.values()]
        tasks: set[asyncio.Task[None]] = set()
        for due, special in sorted(slots):
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            kind = special or self.rng.choices(kinds, weights)[0]
            task = asyncio.create_task(self.one(kind, self.rng.choice(self.users), due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(max(0.0, t0 + seconds - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 5)


async def report_minutes(out: Any, kind: str, index: int, progress: Any, go: dict) -> None:
    for minute in range(_minutes(go["seconds"])):
        await asyncio.sleep(max(0.0, go["t0"] + 60 * minute + 60 + REPORT_DELAY - time.monotonic()))
        out.put(("progress", kind, index, minute, progress(minute)))


# -- the live sockets (processes of their own) ---------------------------------------------------
class _Message(msgspec.Struct):
    type: str
    position: int


_decode_message = msgspec.json.Decoder(_Message).decode


class Sockets:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config, self.t0 = config, time.monotonic() + 1e9  # t0: far ahead until the load
        self.messages: Counter[int] = Counter()  # minute -> messages
        self.closes: list[tuple[int, int]] = []  # (minute, code) of unexpected closes
        self.reconnects, self.reconnect_failures = 0, Counter()
        self.all: list[Socket] = []
        self.stopping, self.malformed = False, 0

    async def open(self, user: str, old: Socket | None = None) -> Socket:
        sock = Socket(self, user, old)
        try:
            port = self.config["port"]
            await asyncio.get_running_loop().create_connection(lambda: sock, "127.0.0.1", port)
            await asyncio.wait_for(sock.opened, 60)
        except BaseException:
            sock.abort()
            raise
        return sock

    def lost(self, sock: Socket, code: int) -> None:
        self.closes.append((int((time.monotonic() - self.t0) // 60), code))
        asyncio.get_running_loop().create_task(self.reconnect(sock))

    async def reconnect(self, old: Socket) -> None:
        while not self.stopping:
            await asyncio.sleep(RECONNECT_SECONDS)
            try:
                sock = await self.open(old.user, old)
            except Exception as error:  # noqa: BLE001
                self.reconnect_failures[type(error).__name__] += 1
                continue
            self.reconnects += 1
            self.all[self.all.index(old)] = sock
            return

    def close(self) -> None:
        self.stopping = True
        for sock in self.all:
            sock.abort()

    async def prepare(self) -> dict[str, Any]:
        errors: list[str] = []

        async def one(user: str) -> None:
            try:
                self.all.append(await self.open(user))
            except Exception as error:  # noqa: BLE001
                errors.append(repr(error))

        started = time.monotonic()
        users = [u for u in self.config["users"] for _ in range(self.config["per_user"])]
        await harness.bounded(OPEN_CONCURRENCY, one, users)
        return {"opened": len(self.all), "errors": errors, "seconds": time.monotonic() - started}

    def progress(self, minute: int) -> dict[str, Any]:
        closed = sum(1 for m, _ in self.closes if m == minute)
        live = sum(1 for s in self.all if s.closed is None)
        return {"messages": self.messages[minute], "closed": closed, "open": live}

    async def check(self, expected: list[int]) -> dict[str, Any]:
        """Once no message has come for 2 s: every price update on every socket exactly once?"""
        deadline, last = time.monotonic() + 30, -1
        while (count := sum(s.received for s in self.all)) != last and time.monotonic() < deadline:
            last = count
            await asyncio.sleep(2.0)
        self.stopping = True
        socks, want = self.all, frozenset(expected)
        missing = [len(want - s.prices) for s in socks]
        figures = {"sockets": len(socks), "received": count, "malformed": self.malformed}
        figures |= {"messages": self.messages, "closes": self.closes, "reconnects": self.reconnects}
        figures |= {"reconnect_failures": self.reconnect_failures, "missing_prices": sum(missing)}
        figures["sockets_missing_prices"] = sum(1 for n in missing if n)
        figures["duplicate_prices"] = sum(s.duplicates for s in socks)
        figures["extra_prices"] = sum(len(s.prices - want) for s in socks)
        return figures | {"open": sum(1 for s in socks if s.closed is None)}


class Socket(RawSocket):
    """A socket and the price updates it got; in place of `old`, it resumes after its last."""

    def __init__(self, owner: Sockets, user: str, old: Socket | None = None) -> None:
        after = None if old is None else old.start if old.last is None else old.last
        token = owner.config["tokens"][user]
        path = f"/ws/positions?token={token}" + f"&after={after}" * bool(old)
        super().__init__("127.0.0.1", path)
        self.owner, self.user, self.resume = owner, user, old is not None
        self.last: int | None = None if old is None else old.last  # where to resume
        self.start = None if old is None else old.start
        self.prices: set[int] = set() if old is None else old.prices
        self.duplicates, self.received = (0, 0) if old is None else (old.duplicates, old.received)

    def upgraded(self) -> None:
        if self.resume:  # the server sends no initial data to a resumed socket
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
            return self.initial(message.type, message.position)
        self.owner.messages[int((arrived - self.owner.t0) // 60)] += 1
        self.received += 1
        self.last = message.position
        if message.type == "price_update":
            self.duplicates += message.position in self.prices
            self.prices.add(message.position)


async def _child(index: int, config: dict[str, Any], commands: Any, out: Any) -> None:
    """A load process: ready (books seeded, sockets open), load, figures, check."""
    kind = config["kind"]
    load = HttpLoad(index, config) if kind == "http" else Sockets(config)
    try:
        out.put(("ready", kind, index, await load.prepare()))
        op, go = await harness.receive(commands)
        if op == "go":
            load.t0 = go["t0"]
            reporter = asyncio.create_task(report_minutes(out, kind, index, load.progress, go))
            if kind == "http":
                await load.run(go["t0"], go["seconds"])
                out.put(("result", kind, index, load.result()))
            await reporter
            op, arg = await harness.receive(commands)
            if op == "check":
                out.put(("check", kind, index, await load.check(arg)))
                await harness.receive(commands)  # "exit"
    except Exception as error:  # noqa: BLE001 - told to the coordinator, which ends the run
        out.put(("failed", kind, index, repr(error)))
    finally:
        load.close()


def child_main(index: int, config: dict[str, Any], commands: Any, out: Any) -> None:
    harness.child_loop(lambda: _child(index, config, commands, out))


async def _redis(url: str, work: Any) -> Any:
    client = aioredis.from_url(url)
    try:
        return await work(client)
    except Exception as error:  # noqa: BLE001 - a figure or a cleanup: say so and go on
        print(f"note: Redis at {url}: {error!r}", file=sys.stderr)
    finally:
        await client.aclose()


async def _clear_redis(client: Any, prefix: str) -> int:
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
    return await client.delete(*keys) if keys else 0


# -- the run -------------------------------------------------------------------------------------
class Soak:
    def __init__(self, args: argparse.Namespace, admin: asyncpg.Connection, dsn: str) -> None:
        from api.auth import Role

        self.args, self.admin, self.dsn, self.service, self.results = args, admin, dsn, None, {}
        self.redis_url = os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL)
        self.prefix = f"bench-soak-{secrets.token_hex(4)}"
        self.users = [f"soak-u{i:03d}" for i in range(args.ws_users)]
        self.secret = secrets.token_urlsafe(48)
        roles = dict.fromkeys(self.users, Role.USER) | {SERVICE: Role.SERVICE}
        ttl = timedelta(minutes=args.minutes + 60)
        self.tokens = harness.mint_tokens(self.secret, roles, ttl)
        self.logs = Path(tempfile.mkdtemp(prefix="bench_soak_"))
        self.seconds, self.children = args.minutes * 60, harness.Children()
        self.samples: list[Any] = []  # SimpleNamespace(SAMPLE): KiB, counts, CPU seconds so far
        self.db_seen, self.db_cpu = {}, 0.0  # each backend's CPU when last seen; their sum
        self.minutes = _minutes(self.seconds)

    async def start(self, idle_cores: float) -> None:
        import starlette
        import uvicorn

        args, token = self.args, self.tokens[SERVICE]
        pool = {"DB_POOL_SIZE": str(args.pool_size), "DB_MAX_OVERFLOW": str(args.max_overflow)}
        env = {"REDIS_URL": self.redis_url, "REDIS_KEY_PREFIX": self.prefix, "LOG_LEVEL": "WARNING"}
        where = (self.dsn, self.secret, token, self.logs, "/health/ready")
        self.service = harness.start_service(*where, **pool, **env)
        self.service.wait_ready()
        self.port = self.service.port
        self.http = HttpConnection(self.port)
        print(
            f"Soak: {harness.CORES} cores, Python {platform.python_version()}, uvicorn "
            f"{uvicorn.__version__}, starlette {starlette.__version__}, "
            f"{await harness.postgres(self.admin)}; source: "
            f"{harness.source_note(harness.source_state())}\n{args.minutes:g} min; HTTP "
            f"{args.rate:g} req/s open loop ({args.price_rate:g}/s update-prices) as "
            f"{args.http_users} users over {args.http_clients} process(es); "
            f"{args.ws_users * args.sockets_per_user:,} sockets ({args.ws_users} users x "
            f"{args.sockets_per_user}) over {args.ws_clients} processes; pool {args.pool_size}+"
            f"{args.max_overflow}; Redis prefix {self.prefix}; machine busy before: "
            f"{idle_cores:.2f} cores, load average {args.load_before}",
            flush=True,
        )

    def spawn(self, kind: str, users: list[str], count: int, **config: Any) -> None:
        for index in range(count):
            mine = users[index::count]
            tokens = {u: self.tokens[u] for u in [*mine, SERVICE]}
            more = {"kind": kind, "port": self.port, "users": mine, "tokens": tokens}
            self.children.start(kind, index, child_main, config | more)

    async def seed(self) -> None:
        args, n = self.args, self.args.http_clients
        rates = {"user_rate": (args.rate - args.price_rate) / n, "price_rate": args.price_rate}
        self.spawn("http", self.users[: args.http_users], n, seed=args.seed, **rates)
        seeded = await self.children.gather("ready", "http", n, 300)
        path, token = "/positions/update-prices", self.tokens[SERVICE]
        body = msgspec.json.encode(SYMBOLS)
        status, data, _, _ = await self.http.request("POST", path, token, body)
        if status != 200:
            raise RuntimeError(f"update-prices answered {status}: {data[:300]!r}")
        print(f"seeded {sum(seeded.values()):,} positions", flush=True)

    async def open_sockets(self) -> None:
        args = self.args
        self.spawn("ws", self.users, args.ws_clients, per_user=args.sockets_per_user)
        opened = (await self.children.gather("ready", "ws", args.ws_clients, 300)).values()
        total, errors = sum(o["opened"] for o in opened), [e for o in opened for e in o["errors"]]
        failed = f"; {len(errors)} failed: {errors[:3]}" if errors else ""
        seconds = max(o["seconds"] for o in opened)
        print(f"opened {total:,} sockets in {seconds:.1f} s{failed}", flush=True)
        if total != args.ws_users * args.sockets_per_user:
            raise RuntimeError("not every socket opened")

    async def load(self) -> None:
        t0 = time.monotonic() + 1.0
        self.children.send(None, "go", {"t0": t0, "seconds": self.seconds})
        await asyncio.gather(self.follow(), self.sampling(t0, self.seconds))
        self.end = self.samples[-1]  # the last sample under load
        self.prices = sorted(p for r in self.results.values() for p in r[2])
        self.children.send("ws", "check", self.prices)
        checks = await self.children.gather("check", "ws", self.args.ws_clients, 120)
        self.checks = _add(checks.values())

    async def follow(self) -> None:
        args, printed = self.args, 0
        progress: dict[int, Any] = defaultdict(lambda: {"http": {}, "ws": {}})
        print("minute  requests  errors  409s  p99 ms  live msgs  closed  open  RSS MiB  fds")
        while len(self.results) < args.http_clients or printed < self.minutes:
            message = await self.children.next(5.0)
            if (code := self.service.process.poll()) is not None:
                raise RuntimeError(f"the service exited with code {code}")
            if message and message[0] == "progress":
                progress[message[3]][message[1]][message[2]] = message[4]
            elif message and message[0] == "result":
                self.results[message[2]] = message[3]
            clients = [args.http_clients, args.ws_clients]
            while printed < self.minutes and list(map(len, progress[printed].values())) == clients:
                figures = progress[printed]
                b, w = Bucket(figures["http"].values()), _add(figures["ws"].values())
                printed, sample = printed + 1, self.at(60 * printed + 60)
                print(
                    f"{printed:>6}  {b.n:>8,}  {b.errors():>6}  {b.refused:>4}  {_ms(b.due, 99):>6}"
                    f"  {w['messages']:>9,}  {w['closed']:>6}  {w['open']:>4}"
                    f"  {_mib(sample.rss):>7}  {sample.fds}",
                    flush=True,
                )

    async def after_load(self) -> None:
        token = self.tokens[SERVICE]
        status, metrics, _, _ = await self.http.request("GET", "/metrics", token)
        self.metrics = metrics.decode(errors="replace") if status == 200 else ""
        self.health = (await self.http.request("GET", "/health", token))[:2]
        self.stream_length = await _redis(self.redis_url, lambda r: r.xlen(f"{self.prefix}:live"))
        env = harness.server_env(DATABASE_URL=self.dsn, JWT_SECRET=self.secret, LOG_LEVEL="WARNING")
        argv, kw = [sys.executable, "-m", "api", "verify"], {"capture_output": True, "text": True}
        self.verify = subprocess.run(argv, cwd=harness.ROOT, env=env, timeout=600, **kw)
        self.db_after = len(await harness.backend_pids(self.admin, self.args.database))
        connection = await asyncpg.connect(self.dsn)
        self.book = await connection.fetchrow(BOOK_SQL)
        await connection.close()
        self.log_levels, self.log_examples = harness.log_levels(self.service.log)

    async def sampling(self, t0: float, seconds: float) -> None:
        """The server's memory, descriptors and CPU, the database's, the machine's, every 10 s."""
        server_pid, clients_pids = self.service.pid, self.children.pids
        for step in range(int((seconds + 0.5) // SAMPLE_SECONDS) + 1):
            await asyncio.sleep(max(0.0, t0 + step * SAMPLE_SECONDS - time.monotonic()))
            pids = await harness.backend_pids(self.admin, self.args.database)
            for pid, used in harness.process_cpu(pids).items():  # each backend since first seen
                if used is not None:
                    self.db_cpu += used - self.db_seen.get(pid, used)
                    self.db_seen[pid] = used
            cpu = harness.process_cpu([server_pid, *clients_pids])
            server, clients = cpu.pop(server_pid) or 0.0, sum(filter(None, cpu.values()))
            memory = [harness.process_memory_kib(server_pid, n) for n in VM_FIELDS]
            fds, sockets = harness.open_fds(server_pid)
            figures = [time.monotonic() - t0, *memory, fds, sockets, fds and fds - sockets]
            figures += [server, self.db_cpu, clients + time.process_time(), harness.machine_ticks()]
            figures += [harness.load_average(), len(pids)]
            self.samples.append(SimpleNamespace(**dict(zip(SAMPLE.split(), figures, strict=True))))

    def at(self, seconds: float) -> Any:
        return min(self.samples, key=lambda s: abs(s.at - seconds))

    def window(self, start: float, end: float) -> dict[str, float | None]:
        a, b = self.at(start), self.at(end)
        if b.at <= a.at:
            return {}
        span = b.at - a.at
        used = {k: (getattr(b, k) - getattr(a, k)) / span for k in ("server", "db", "clients")}
        machine = harness.busy_cores(a.machine, b.machine)
        other = None if machine is None else max(0.0, machine - sum(used.values()))
        return used | {"other": other, "machine": machine}

    async def stop(self, failed: bool) -> None:
        self.children.stop()
        if self.service is not None:
            self.http.close()
            self.service.stop()
        cleared = await _redis(self.redis_url, lambda r: _clear_redis(r, self.prefix))
        if cleared:
            print(f"(deleted {cleared} Redis keys {self.prefix}:*)")
        if failed or self.args.keep:
            print(f"logs kept in {self.logs}", file=sys.stderr)
        else:
            shutil.rmtree(self.logs, ignore_errors=True)


async def main(args: argparse.Namespace) -> int:
    if args.wait_quiet:
        await harness.wait_quiet(args.wait_quiet, args.wait_patience)
    started, args.load_before = time.monotonic(), harness.load_average()
    idle_cores = await harness.machine_busy()
    failed = True
    async with harness.scratch_database(args.database, args.keep, DEFAULT_ADMIN_DSN) as db:
        soak = Soak(args, *db)
        try:
            await soak.start(idle_cores)
            for step in (soak.seed, soak.open_sockets, soak.load, soak.after_load):
                await step()
            code = report(soak)
            print(f"\nRun time {time.monotonic() - started:.0f} s.")
            failed = False
            return code
        finally:
            await soak.stop(failed)


# -- the report ----------------------------------------------------------------------------------
def table(md: list[str], title: str, header: list[str], rows: list[list[str]], name: str = ""):
    harness.print_table(title, header, rows)
    md += [f"### {name or title}", "", harness.markdown_table(header, rows), ""]


def request_tables(md: list[str], s: Soak, merged: dict[tuple[int, str], Bucket]) -> None:
    live, closes = s.checks["messages"], Counter(m for m, _ in s.checks["closes"])
    rows = []
    for minute in [*range(s.minutes), None]:
        start = 0 if minute is None else 60 * minute
        span = s.seconds if minute is None else min(60.0, s.seconds - start)
        ms = range(s.minutes) if minute is None else [minute]
        messages, sample = sum(live[m] for m in ms), s.at(start + span)
        cores = s.window(start, start + span)
        row = ["all" if minute is None else str(minute + 1)]
        row += Bucket(b for (m, _), b in merged.items() if m in ms).cells(MINUTE_COLUMNS, span)
        row += [f"{messages:,}", f"{messages / span:,.0f}", str(sum(closes[m] for m in ms))]
        row += ["", ""] if minute is None else [_mib(sample.rss), str(sample.fds)]
        rows.append(row + [harness.num(cores.get(p), ".2f") for p in ("server", "db", "other")])
    header = ["minute", *MINUTE_COLUMNS.split("|"), "live msgs", "msgs/s", "closed", "RSS MiB"]
    header += ["fds", *(f"{part} cores" for part in ("server", "db", "other"))]
    title = "Per minute (latency: from the request's slot to its answer, all kinds)"
    table(md, title, header, rows, "Per minute")
    pairs = {k: f"{_ms(b.due, 50)} / {_ms(b.due, 99)}" for k, b in merged.items()}
    rows = [[str(m + 1), *(pairs.get((m, kind), "-") for kind in KINDS)] for m in range(s.minutes)]
    title = "p50 / p99 ms per kind and minute"
    table(md, title, ["minute", *KINDS], rows, "p50 / p99 ms per request kind and minute")
    kinds = {kind: Bucket(b for (_, k), b in merged.items() if k == kind) for kind in KINDS}
    rows = [[LABELS[kind], *bucket.cells(KIND_COLUMNS)] for kind, bucket in kinds.items()]
    header = ["request", "count", *KIND_COLUMNS.split("|")[1:]]
    table(md, "Per request kind, whole run", header, rows)


def memory_table(md: list[str], s: Soak, start: Any, end: Any) -> None:
    rows = []
    for label, name in (row.split(":") for row in MEMORY_ROWS.split("|")):
        first, a, b = (getattr(x, name) for x in (s.samples[0], start, end))
        in_mib = name in ("rss", "hwm")
        rows.append([label, *(_mib(v, " MiB") if in_mib else str(v) for v in (first, a, b))])
        if a is None or b is None:
            rows[-1].append("-")
        else:
            change = f"{(b - a) / 1024:+.1f} MiB" if in_mib else f"{b - a:+,}"
            rows[-1].append(change + (f" ({(b - a) / a * 100:+.1f} %)" if a else ""))
    header = ["server process", "load start (0 s)", f"start ({start.at:.0f} s)"]
    header += [f"end ({end.at:.0f} s)", "change start -> end"]
    table(md, "Memory and descriptors", header, rows)
    series = ", ".join(f"{x.at:.0f}s {_mib(x.rss)}" for x in s.samples if x.rss is not None)
    fd_series = ", ".join(f"{x.fds} ({x.other_fds})" for x in s.samples)
    rss = f"VmRSS every {SAMPLE_SECONDS:.0f} s (MiB): {series}"
    fds = f"descriptors every {SAMPLE_SECONDS:.0f} s (in brackets: not sockets): {fd_series}"
    print(f"\n{rss}\nopen {fds}")
    md += [rss, "", "Open " + fds, ""]


def findings(s: Soak, merged: Bucket) -> list[str]:
    c, (verify, book) = s.checks, (s.verify, s.book)
    codes = Counter(code for _, code in c["closes"])
    cores = {k: harness.num(v, ".2f") for k, v in s.window(0, s.seconds).items()}
    gauges = ("live_connections", "db_pool_connections", "live_feed_lag_events")
    return [
        f"non-2xx answers: {dict(merged.statuses) or 'none'}; transport failures: "
        f"{dict(merged.transport) or 'none'}",
        f"sockets at the end: {c['open']:,} open of {c['sockets']:,}; closed by the server or "
        f"lost: {len(c['closes'])} (codes {dict(codes) or 'none'}), reconnected "
        f"{c['reconnects']} (failed attempts: {c['reconnect_failures'] or 'none'}); messages "
        f"received {c['received']:,}; price updates of the run {len(s.prices):,}: missing "
        f"{c['missing_prices']:,} (on {c['sockets_missing_prices']} sockets), duplicate "
        f"{c['duplicate_prices']}, unknown {c['extra_prices']}; undecodable messages "
        f"{c['malformed']}",
        "/metrics after the load: "
        + ", ".join(f"{name} {harness.prometheus_metric(s.metrics, name)}" for name in gauges),
        f"/health after the load: {s.health[0]} {s.health[1].decode(errors='replace')[:400]}",
        f"python -m api verify: exit {verify.returncode}; "
        + (verify.stdout.strip().splitlines() or ["(no output)"])[-1][:300]
        + (f"; stderr: {verify.stderr.strip()[-300:]}" if verify.returncode else ""),
        f"log and book at the end: {book['events']:,} events, {book['positions']:,} positions "
        f"({book['open']:,} open); Redis stream length {s.stream_length}; database "
        f"connections of the service after the load {s.db_after}",
        f"service log lines by level: {dict(s.log_levels) or 'none'}",
        f"cores over the run: server {cores.get('server', '-')}, database "
        f"{cores.get('db', '-')}, clients {cores.get('clients', '-')}, other processes "
        f"{cores.get('other', '-')}, machine {cores.get('machine', '-')}; load average before "
        f"{s.args.load_before}, at the end {s.end.load}",
    ]


def targets(md: list[str], s: Soak, merged: Bucket, growth: float | None) -> harness.Verdicts:
    """No error, RSS growth < 10 %, no socket closed and no price update lost, verify exits 0."""
    n, errors, verify = merged.n, merged.errors(), s.verify.returncode
    lost = s.checks["missing_prices"] + s.checks["duplicate_prices"]
    closed = len(s.checks["closes"])
    rate = f"{(errors / n * 100 if n else 0):.3f} % ({errors} of {n:,})"
    grown = growth is not None and growth < GROWTH_TARGET_PCT
    rows = [
        ["error rate", rate, "0", errors == 0, "errors"],
        ["RSS growth, start -> end", harness.num(growth, "+.1f") + " %" * (growth is not None)],
        ["sockets closed; price updates missing or doubled", f"{closed}; {lost}", "0; 0"],
        ["read models agree with the log (verify)", f"exit {verify}", "0", verify == 0, "verify"],
    ]
    rows[1] += [f"< {GROWTH_TARGET_PCT:.0f} %", grown, "growth"]
    rows[2] += [closed == 0 and lost == 0, "sockets"]
    verdicts = harness.Verdicts()
    for row in rows:
        row[3:] = [verdicts(row[3], row[4], "**missed**")]
    harness.print_table("Targets", ["target", "value", "", ""], rows)
    md += ["### Targets", "", harness.markdown_table(["target", "value", "target", ""], rows), ""]
    return verdicts


def report(s: Soak) -> int:
    keys = {key for buckets, _, _ in s.results.values() for key in buckets}
    merged = {k: Bucket(r[0][k] for r in s.results.values() if k in r[0]) for k in keys}
    every, md = Bucket(merged.values()), []
    request_tables(md, s, merged)
    lines = findings(s, every)
    print("\n" + lines[0])
    samples = [x for r in s.results.values() for x in r[1]]
    print("".join(f"  e.g. {x}\n" for x in samples[:5]), end="")
    start, end = s.at(s.args.warmup_minutes * 60), s.end
    memory_table(md, s, start, end)
    print("\n" + "\n".join(lines[1:7]))
    print("".join(f"  e.g. {x}\n" for x in s.log_examples[:5]), end="")
    print(lines[7])
    growth = (end.rss - start.rss) / start.rss * 100 if start.rss and end.rss else None
    verdicts = targets(md, s, every, growth)
    md += ["### Other findings", "", *(f"- {line}" for line in lines), ""]
    if s.args.markdown is not None:
        s.args.markdown.write_text("\n".join(md))
        print(f"\nMarkdown tables: {s.args.markdown}")
    return 0 if not verdicts.missed or not s.args.strict else 1


OPTIONS = """
--minutes           float=10    minutes of load (default 10)
--warmup-minutes    float=1     memory 'start' is sampled after this many minutes (1)
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
--wait-patience     float=900   ... for at most this many seconds (900)
"""


def run(argv: list[str] | None = None) -> int:
    args, parser = harness.parse_options("python -m bench.soak", __doc__, OPTIONS, argv)
    if args.warmup_minutes >= args.minutes:
        parser.error("--warmup-minutes must be less than --minutes")
    if args.http_users > args.ws_users:
        parser.error("--http-users must not exceed --ws-users (the sockets' users)")
    harness.raise_fd_limit()
    return harness.run_main(main, args)


if __name__ == "__main__":
    sys.exit(run())
