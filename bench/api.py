"""HTTP API benchmark: the service's endpoints beside a bare Starlette + asyncpg app, over loopback.

Run from the project root with the virtualenv active (the run takes about 3.5 minutes, --quick
about 25 seconds, --profile adds about 30 seconds). It needs `wrk` on the PATH (`apt-get install
wrk`), and --profile needs py-spy (`pip install py-spy`):

    python -m bench.api [--quick] [--rounds 5] [--seconds 4] [--connections 32] [--keep]
                        [--strict] [--profile [--py-spy PATH]]

It drops and creates its own database (`bench_api`, on the server of BENCH_DATABASE_URL, default
postgresql:///postgres, which is used as the admin connection only), applies the project's
migrations with `eventstore.migrate`, seeds one user ("bench-whale") with 10,000 open positions
(20 symbols, 500 each, some with stop loss and take profit, five strategies) by appending their
`PositionOpened` events through `EventStore.append_streams` with the service's inline projector,
and starts two servers, each ONE uvicorn worker in a process of its own on 127.0.0.1:

  service   `python -m api serve` (DATABASE_URL, JWT_SECRET, PORT, LOG_LEVEL=warning,
            DB_POOL_SIZE=10, DB_MAX_OVERFLOW=0: a pool of exactly 10 connections);
  bare      `python -m uvicorn bench.api:create_bare_app --factory` (uvicorn's defaults as the
            service has them: uvloop and httptools), a pool of the same 10 connections with the
            same no-op reset, and three endpoints that do NO authentication and no validation:
              POST /bare/positions       decode the JSON body, one INSERT into a plain table
                                         (uuid primary key and the five fields), 201 with JSON;
              GET  /bare/positions/{id}  one primary-key SELECT * FROM positions, the row as JSON;
              GET  /bare/positions?owner=&limit=100  (information only) one SELECT of the
                                         owner's newest 100 rows (index on owner, created_at),
                                         the rows as JSON; no count, no price join.

Load comes from `wrk` (C, one thread, 32 keep-alive connections by default; a second process
on loopback, which competes with the servers and PostgreSQL for the 2 cores: its CPU is reported).
Every request carries `Authorization: Bearer <HS256 token>`, the bare ones too (they ignore it).
The phases, each `--seconds` long, run in the order below in odd rounds and in reverse in even
ones, so each service endpoint runs next to its bare counterpart:

  bare INSERT     POST /bare/positions
  create          POST /positions {"symbol":"AAPL","side":"long","quantity":10,"entry_price":100}
                  as user "bench-creator" (its own positions, never the whale's symbols)
  bare SELECT     GET /bare/positions/{id} over 2,000 of the whale's position ids
  get             GET /positions/{id} over the same ids, as the whale
  bare list       GET /bare/positions?owner=bench-whale&limit=100
  list            GET /positions?limit=100 as the whale (10,000 positions, X-Total-Count)
  summary         GET /portfolio/summary as the whale, 32 connections (throughput)
  summary c1      the same on ONE connection: the latency the 25 ms target is about
  create c64      POST /positions as "create", from 64 connections
  prices c64      POST /positions/update-prices of 3 symbols of their own (admin token), from 64
                  connections: contention on the one market stream. Targets: no non-2xx answer
                  in either, and update-prices at >= 0.5 of the rate of creates at 64

After the phases of each round: `--price-calls` calls of POST /positions/update-prices (admin
token) for the whale's 20 symbols, which re-mark exactly its 10,000 open positions (the answer's
`positions_updated` is checked, and before the run a read shows the new price), one at a time
from this process, alternating two sets of prices so every call changes every position's price;
then `VACUUM (ANALYZE) positions`, outside the measurements, so that the rows the create phases
add are visible to the planner and the rounds start alike.

The report gives, per phase, the median over the rounds of requests/s and of wrk's p50 and p99
latency (closed loop: wrk waits for each answer, so latency at 32 connections includes queueing
in the one worker), the CPU time per request of the server process and of the database's
backends (from /proc), and the ratios create / bare INSERT (target >= 0.5) and get / bare SELECT
(target >= 0.7), with the range of the ratios within each round; the summary's p99 on one
connection against 25 ms; update-prices' p50/p99 over all its calls. `*` marks a phase during
which other processes (other people's tests on this machine) used more than 0.35 cores. A
server found dead before a phase (or during one, which is then measured again) is restarted and
the report says so; it also says when the service's source differed from the commit.

With --profile, each service endpoint then runs once more under py-spy (`record --nonblocking
--gil`, which samples only while the server's thread holds the GIL, i.e. is not waiting in the
event loop) and the report lists where the server process spends its time.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import random
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.common import (
    DISTURBED,
    PhaseSample,
    backend_pids,
    database_dsn,
    drop_database,
    machine_ticks,
    median,
    num,
    print_table,
    process_seconds,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ADMIN_DSN = "postgresql:///postgres"
POOL_SIZE = 10
WHALE, CREATOR, ADMIN = "bench-whale", "bench-creator", "bench-admin"
SYMBOLS = [f"W{i:02d}" for i in range(20)]
STRATEGIES = ["momentum", "carry", "mean-revert", "pairs", None]
CREATE_BODY = '{"symbol":"AAPL","side":"long","quantity":10,"entry_price":100}'
CONTENTION = 64  # connections of the contention phases
CONTENTION_PRICES = '{"CTN.A":101.25,"CTN.B":55.5,"CTN.C":12.125}'
CONTENTION_TARGET = 0.5  # update-prices / create, both at 64 connections
READ_IDS = 2000  # whale position ids the single reads cycle over
CREATE_TARGET, READ_TARGET, SUMMARY_P99_MS = 0.5, 0.7, 25.0
SETTLE = 0.5  # seconds of rest before each phase


# -- the bare app (runs in its own uvicorn process) ---------------------------------------------

BARE_TABLE = """
CREATE TABLE bench_bare_positions (
    id          uuid        PRIMARY KEY,
    owner       text        NOT NULL,
    symbol      text        NOT NULL,
    side        text        NOT NULL,
    quantity    numeric     NOT NULL,
    entry_price numeric     NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
)
"""
_BARE_INSERT = """
INSERT INTO bench_bare_positions (id, owner, symbol, side, quantity, entry_price)
VALUES ($1, $2, $3, $4, $5, $6)
"""
_BARE_SELECT = "SELECT * FROM positions WHERE position_id = $1"
_BARE_LIST = """
SELECT * FROM positions WHERE owner = $1
ORDER BY created_at DESC, position_id DESC LIMIT $2
"""

_bare_decoder = msgspec.json.Decoder(float_hook=Decimal)
_bare_encoder = msgspec.json.Encoder(decimal_format="number")


async def _no_reset(connection: asyncpg.Connection) -> None:
    """The service's pool skips asyncpg's reset query on release; so does the bare one."""


def _bare_json(content: Any, status: int = 200) -> Response:
    return Response(_bare_encoder.encode(content), status, media_type="application/json")


async def _bare_insert(request: Request) -> Response:
    data = _bare_decoder.decode(await request.body())
    position_id = uuid.uuid4()
    await request.app.state.pool.execute(
        _BARE_INSERT,
        position_id,
        "bare",
        data["symbol"],
        data["side"],
        Decimal(data["quantity"]),
        Decimal(data["entry_price"]),
    )
    return _bare_json({"id": position_id, **data}, 201)


async def _bare_select(request: Request) -> Response:
    try:
        position_id = uuid.UUID(request.path_params["position_id"])
    except ValueError:
        return _bare_json({"detail": "not found"}, 404)
    row = await request.app.state.pool.fetchrow(_BARE_SELECT, position_id)
    return _bare_json(dict(row)) if row else _bare_json({"detail": "not found"}, 404)


async def _bare_list(request: Request) -> Response:
    params = request.query_params
    rows = await request.app.state.pool.fetch(
        _BARE_LIST, params.get("owner", ""), int(params.get("limit", "100"))
    )
    return _bare_json([dict(row) for row in rows])


def create_bare_app() -> Starlette:
    """The baseline: Starlette, an asyncpg pool, one statement per request, no auth."""
    dsn = os.environ["BENCH_BARE_DSN"]
    size = int(os.environ.get("BENCH_BARE_POOL", str(POOL_SIZE)))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.pool = await asyncpg.create_pool(
            dsn, min_size=size, max_size=size, reset=_no_reset
        )
        try:
            yield
        finally:
            await app.state.pool.close()

    return Starlette(
        routes=[
            Route("/bare/positions", _bare_insert, methods=["POST"]),
            Route("/bare/positions", _bare_list, methods=["GET"]),
            Route("/bare/positions/{position_id}", _bare_select, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


# -- measuring ---------------------------------------------------------------------------------


def _children_seconds() -> float:
    """CPU seconds of this process's reaped children (wrk, py-spy)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Sample(PhaseSample):
    requests: int
    seconds: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int  # socket errors, timeouts and answers other than 2xx/3xx
    app_cpu: float | None  # cores used by the server process under test
    server_cpu: float | None  # cores used by the PostgreSQL backends of the bench database
    load_cpu: float  # cores used by the load generator (wrk) and this process
    machine_cpu: float

    def handled(self) -> int:
        return self.requests

    def measured_cpu(self) -> tuple[float | None, ...]:
        return self.app_cpu, self.server_cpu, self.load_cpu

    def mark(self) -> str:
        return ("!" if self.errors else "") + ("*" if self.disturbed() else " ")


class Meter:
    """CPU of the server under test, of the bench database's backends, of wrk, of the machine."""

    def __init__(self, admin: asyncpg.Connection, database: str) -> None:
        self._admin = admin
        self._database = database
        self.cores = os.cpu_count() or 1

    async def start(self, app_pid: int) -> dict[str, Any]:
        backends = await backend_pids(self._admin, self._database)
        return {
            "app_pid": app_pid,
            "backends": backends,
            "app": process_seconds([app_pid]),
            "server": process_seconds(backends),
            "load": _children_seconds() + time.process_time(),
            "machine": machine_ticks(),
            "wall": time.perf_counter(),
        }

    async def stop(
        self,
        start: dict[str, Any],
        requests: int,
        p50_ms: float | None,
        p99_ms: float | None,
        errors: int,
        seconds: float | None = None,
    ) -> Sample:
        wall = time.perf_counter()
        busy1, total1 = machine_ticks()
        app1 = process_seconds([start["app_pid"]])
        server1 = process_seconds(start["backends"])
        load1 = _children_seconds() + time.process_time()
        elapsed = wall - start["wall"]
        busy0, total0 = start["machine"]
        machine = (busy1 - busy0) / (total1 - total0) * self.cores if total1 > total0 else 0.0

        def cores(before: float | None, after: float | None) -> float | None:
            return None if before is None or after is None else (after - before) / elapsed

        return Sample(
            requests=requests,
            seconds=seconds or elapsed,
            p50_ms=p50_ms,
            p99_ms=p99_ms,
            errors=errors,
            app_cpu=cores(start["app"], app1),
            server_cpu=cores(start["server"], server1),
            load_cpu=(load1 - start["load"]) / elapsed,
            machine_cpu=machine,
        )


# -- the load ----------------------------------------------------------------------------------

_LUA_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH {\"requests\":%d,\"duration_us\":%d,\"connect\":%d,\"read\":%d,\"write\":%d," ..
    "\"status\":%d,\"timeout\":%d,\"p50_us\":%d,\"p99_us\":%d,\"max_us\":%d}\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def lua_script(method: str, token: str, body: str | None, paths: list[str] | None) -> str:
    lines = [
        f'wrk.method = "{method}"',
        f'wrk.headers["Authorization"] = "Bearer {token}"',
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    if body is not None:
        lines.append(f"wrk.body = [[{body}]]")
    if paths:
        lines.append("local paths = {" + ",".join(f'"{p}"' for p in paths) + "}")
        lines.append("local n, i = #paths, 0")
        lines.append(
            "request = function()\n  i = i % n + 1\n  return wrk.format(nil, paths[i])\nend"
        )
    return "\n".join(lines) + "\n" + _LUA_DONE


@dataclass
class Phase:
    key: str
    label: str
    service: bool  # the service (True) or the bare app
    url_path: str
    script: Path
    connections: int


@dataclass
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int


async def run_wrk(
    url: str, script: Path, connections: int, threads: int, seconds: int
) -> WrkResult:
    process = await asyncio.create_subprocess_exec(
        "wrk",
        "-t",
        str(min(threads, connections)),
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    for line in out.decode().splitlines():
        if line.startswith("BENCH "):
            r = json.loads(line[6:])
            errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
            return WrkResult(
                r["requests"], r["duration_us"] / 1e6, r["p50_us"] / 1e3, r["p99_us"] / 1e3, errors
            )
    raise RuntimeError(f"wrk gave no result:\n{out.decode()}\n{err.decode()}")


def http_call(
    port: int, method: str, path: str, token: str, body: str | None = None
) -> tuple[int, dict[str, str], Any, float]:
    """One request on a fresh connection: (status, headers, decoded JSON, seconds)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    try:
        connection.connect()
        started = time.perf_counter()
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        elapsed = time.perf_counter() - started
        return (
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            json.loads(raw) if raw else None,
            elapsed,
        )
    finally:
        connection.close()


# -- servers -----------------------------------------------------------------------------------


def source_state() -> tuple[str, list[str]]:
    """The commit, and the files of the service's code that differ from it (git, if any)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--",
                "api",
                "commands",
                "domain",
                "eventstore",
                "projections",
                "migrations",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown", []
    return head, sorted(line[3:] for line in status.splitlines())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A server in a process of its own, its output kept in a file for when it fails."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        port: int,
        ready_path: str,
        token: str,
        logs: Path,
    ) -> None:
        self.name, self.port = name, port
        self.log = logs / f"{name}.log"
        self._argv, self._env = argv, env
        self._ready_path, self._token = ready_path, token
        self.restarts: list[str] = []  # why each restart was needed
        self._log_file = open(self.log, "ab")
        self.process = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self._argv, cwd=ROOT, env=self._env, stdout=self._log_file, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                status, _, _, _ = http_call(self.port, "GET", self._ready_path, self._token)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the {self.name} server did not start:\n{self.log.read_text()[-3000:]}")

    def ensure_running(self) -> bool:
        """Start the server again if it has exited, so that one lost process (this machine is
        shared) does not end the run; True when it had to."""
        code = self.process.poll()
        if code is None:
            return False
        self.restarts.append(f"exit code {code}")
        print(
            f"NOTE: the {self.name} server (pid {self.pid}) had exited with code {code} "
            f"(log: {self.log}); restarting it",
            flush=True,
        )
        self.process = self._spawn()
        self.wait_ready()
        return True

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()


def server_env(**values: str) -> dict[str, str]:
    """This environment less what could change the servers' behaviour, plus `values`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JWT_", "DB_", "REDIS_", "SQL_", "WORKERS", "DATABASE_URL"))
    }
    env.update(values)
    return env


# -- test data ---------------------------------------------------------------------------------


async def seed_whale(dsn: str, count: int, seed: int = 20251124) -> list[uuid.UUID]:
    """`count` open positions of WHALE, appended as events with the service's inline projector."""
    from domain.commands import OpenPosition
    from domain.position import decide
    from domain.streams import position_stream
    from eventstore import EventStore, ExpectedVersion, NewEvent, StreamAppend, create_pool
    from projections.positions import project_positions

    rng = random.Random(seed)
    now = datetime.now(UTC)
    metadata = {"actor": "bench-seed", "role": "admin", "correlation_id": str(uuid.uuid4())}
    appends, ids = [], []
    for i in range(count):
        position_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        side = rng.choice(["long", "short"])
        entry = Decimal(rng.randint(5_000, 50_000)).scaleb(-2)
        stop = take = None
        if i % 3 == 0:  # a third with protective levels on the right side of the entry
            below, above = (
                (entry * Decimal("0.95")).quantize(Decimal("0.01")),
                (entry * Decimal("1.10")).quantize(Decimal("0.01")),
            )
            stop, take = (below, above) if side == "long" else (above, below)
        command = OpenPosition(
            at=now - timedelta(seconds=count - i),
            position_id=position_id,
            owner=WHALE,
            symbol=SYMBOLS[i % len(SYMBOLS)],
            side=side,
            quantity=Decimal(rng.randint(1, 500)),
            entry_price=entry,
            stop_loss=stop,
            take_profit=take,
            strategy=STRATEGIES[i % len(STRATEGIES)],
        )
        events = [
            NewEvent(
                event_id=uuid.uuid4(),
                event_type=type(e).__name__,
                data=e,
                metadata=metadata,
                schema_version=e.SCHEMA_VERSION,
            )
            for e in decide(command, None)
        ]
        appends.append(
            StreamAppend(position_stream(position_id), events, ExpectedVersion.NO_STREAM)
        )
        ids.append(position_id)

    pool = await create_pool(dsn, min_size=4, max_size=4)
    store = EventStore(pool, inline_projectors=[project_positions])
    try:
        batches = [appends[i : i + 500] for i in range(0, len(appends), 500)]
        gate = asyncio.Semaphore(4)

        async def one(batch: list[StreamAppend]) -> None:
            async with gate:
                await store.append_streams(batch)

        await asyncio.gather(*(one(batch) for batch in batches))
    finally:
        await store.close()
        await pool.close()
    return ids


def price_bodies() -> list[str]:
    """Two sets of prices for the whale's symbols: alternating them changes every row."""
    rng = random.Random(7)
    return [
        json.dumps({s: float(Decimal(rng.randint(5_000, 50_000)).scaleb(-2)) for s in SYMBOLS})
        for _ in range(2)
    ]


# -- the run -----------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return num(value, ".2f" if value is not None and value < 10 else ".1f")


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (with few values, p99 is the largest)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(-(-q * len(ordered) // 100)) - 1))]


@dataclass
class Check:
    problems: list[str] = field(default_factory=list)

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.problems.append(what)


def check_endpoints(
    service: int, bare: int, tokens: dict[str, str], read_id: uuid.UUID, count: int, prices: str
) -> None:
    """One request of each kind before any load: the answers are what the phases assume."""
    c = Check()
    status, headers, body, _ = http_call(
        service, "POST", "/positions", tokens[CREATOR], CREATE_BODY
    )
    c.expect(status == 201 and body.get("owner") == CREATOR, f"create answered {status}")
    status, _, body, _ = http_call(service, "GET", f"/positions/{read_id}", tokens[WHALE])
    c.expect(status == 200 and body.get("id") == str(read_id), f"get answered {status}")
    status, headers, body, _ = http_call(service, "GET", "/positions?limit=100", tokens[WHALE])
    c.expect(
        status == 200 and len(body) == 100 and headers.get("x-total-count") == str(count),
        f"list answered {status}, total {headers.get('x-total-count')}",
    )
    status, _, body, _ = http_call(
        service, "POST", "/positions/update-prices", tokens[ADMIN], prices
    )
    c.expect(
        status == 200 and body.get("positions_updated") == count,
        f"update-prices answered {status}: {body}",
    )
    status, _, body, _ = http_call(service, "GET", f"/positions/{read_id}", tokens[WHALE])
    marked = json.loads(prices).get(body.get("symbol")) if status == 200 else None
    c.expect(
        marked is not None
        and body.get("current_price") is not None
        and Decimal(str(body["current_price"])) == Decimal(str(marked)),
        f"after update-prices the position shows {body.get('current_price')}, not {marked}",
    )
    status, _, body, _ = http_call(service, "GET", "/portfolio/summary", tokens[WHALE])
    c.expect(
        status == 200
        and body.get("total_positions") == count
        and body.get("open_positions") == count
        and body.get("unpriced_positions") == 0,
        f"summary answered {status}",
    )
    status, _, body, _ = http_call(bare, "POST", "/bare/positions", tokens[CREATOR], CREATE_BODY)
    c.expect(status == 201, f"bare insert answered {status}")
    status, _, body, _ = http_call(bare, "GET", f"/bare/positions/{read_id}", tokens[WHALE])
    c.expect(
        status == 200 and body.get("position_id") == str(read_id), f"bare select answered {status}"
    )
    status, _, body, _ = http_call(
        bare, "GET", f"/bare/positions?owner={WHALE}&limit=100", tokens[WHALE]
    )
    c.expect(status == 200 and len(body) == 100, f"bare list answered {status}")
    if c.problems:
        raise RuntimeError("the endpoints do not answer as expected: " + "; ".join(c.problems))


async def main(args: argparse.Namespace) -> int:
    from api.auth import Role, mint_token

    if shutil.which("wrk") is None:
        print("error: wrk is not on the PATH (apt-get install wrk)", file=sys.stderr)
        return 2
    admin_dsn = os.environ.get("BENCH_DATABASE_URL", DEFAULT_ADMIN_DSN)
    dsn = database_dsn(admin_dsn, args.database)
    rounds, seconds = (1, 1) if args.quick else (args.rounds, args.seconds)
    price_calls = 2 if args.quick else args.price_calls
    started = time.perf_counter()

    admin = await asyncpg.connect(admin_dsn)
    await drop_database(admin, args.database)
    await admin.execute(f'CREATE DATABASE "{args.database}"')
    setup: asyncpg.Connection | None = None
    servers: list[Server] = []
    try:
        setup = await asyncpg.connect(dsn)
        from eventstore import migrate

        await migrate(setup, ROOT / "migrations")
        await setup.execute(BARE_TABLE)
        server_info = await setup.fetchrow(
            "SELECT current_setting('server_version') AS version, "
            "current_setting('synchronous_commit') AS sync, current_setting('fsync') AS fsync, "
            "current_setting('shared_buffers') AS shared_buffers"
        )
        seed_started = time.perf_counter()
        ids = await seed_whale(dsn, args.positions)
        seed_seconds = time.perf_counter() - seed_started
        await setup.execute("VACUUM (ANALYZE) positions")
        await setup.execute("VACUUM (ANALYZE) events")

        secret = secrets.token_urlsafe(48)
        tokens = {
            subject: mint_token(
                secret_or_private_key=secret,
                algorithm="HS256",
                subject=subject,
                role=role,
                ttl=timedelta(hours=2),
            )
            for subject, role in ((WHALE, Role.USER), (CREATOR, Role.USER), (ADMIN, Role.ADMIN))
        }
        logs = Path(tempfile.mkdtemp(prefix="bench_api_"))
        source_before = source_state()  # what the servers are about to load
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
                DB_POOL_SIZE=str(POOL_SIZE),
                DB_MAX_OVERFLOW="0",
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
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.api:create_bare_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(bare_port),
                "--log-level",
                "warning",
                "--workers",
                "1",
            ],
            server_env(BENCH_BARE_DSN=dsn, BENCH_BARE_POOL=str(POOL_SIZE)),
            bare_port,
            f"/bare/positions?owner={WHALE}&limit=1",
            tokens[ADMIN],
            logs,
        )
        servers.append(bare)
        service.wait_ready()
        bare.wait_ready()
        code = await measure(
            args,
            admin,
            setup,
            service,
            bare,
            tokens,
            ids,
            rounds,
            seconds,
            price_calls,
            server_info,
            seed_seconds,
            logs,
            started,
            source_before,
        )
        if not (args.keep or args.profile):
            shutil.rmtree(logs, ignore_errors=True)  # kept when something failed
        return code
    finally:
        for server in servers:
            server.stop()
        if setup is not None:
            await setup.close()
        if not args.keep:
            await drop_database(admin, args.database)
        await admin.close()


async def measure(
    args: argparse.Namespace,
    admin: asyncpg.Connection,
    setup: asyncpg.Connection,
    service: Server,
    bare: Server,
    tokens: dict[str, str],
    ids: list[uuid.UUID],
    rounds: int,
    seconds: int,
    price_calls: int,
    server_info: asyncpg.Record,
    seed_seconds: float,
    logs: Path,
    started: float,
    source_before: tuple[str, list[str]],
) -> int:
    count = len(ids)
    bodies = price_bodies()
    check_endpoints(service.port, bare.port, tokens, ids[0], count, bodies[1])

    read_ids = random.Random(3).sample(ids, min(READ_IDS, count))
    conns = args.connections

    def script(
        name: str, method: str, token: str, body: str | None = None, paths: list[str] | None = None
    ) -> Path:
        path = logs / f"{name}.lua"
        path.write_text(lua_script(method, token, body, paths))
        return path

    phases = [
        Phase(
            "bi",
            "bare: INSERT, POST /bare/positions",
            False,
            "/bare/positions",
            script("bi", "POST", tokens[CREATOR], CREATE_BODY),
            conns,
        ),
        Phase(
            "cr",
            "POST /positions (create)",
            True,
            "/positions",
            script("cr", "POST", tokens[CREATOR], CREATE_BODY),
            conns,
        ),
        Phase(
            "bs",
            "bare: PK SELECT, GET /bare/positions/{id}",
            False,
            "/bare/positions/x",
            script("bs", "GET", tokens[WHALE], None, [f"/bare/positions/{i}" for i in read_ids]),
            conns,
        ),
        Phase(
            "gi",
            "GET /positions/{id}",
            True,
            "/positions/x",
            script("gi", "GET", tokens[WHALE], None, [f"/positions/{i}" for i in read_ids]),
            conns,
        ),
        Phase(
            "bl",
            "bare: 100 rows, GET /bare/positions?owner=",
            False,
            f"/bare/positions?owner={WHALE}&limit=100",
            script("bl", "GET", tokens[WHALE]),
            conns,
        ),
        Phase(
            "li",
            "GET /positions?limit=100 (of 10,000)",
            True,
            "/positions?limit=100",
            script("li", "GET", tokens[WHALE]),
            conns,
        ),
        Phase(
            "su",
            "GET /portfolio/summary (10,000 positions)",
            True,
            "/portfolio/summary",
            script("su", "GET", tokens[WHALE]),
            conns,
        ),
        Phase(
            "s1",
            "GET /portfolio/summary, 1 connection",
            True,
            "/portfolio/summary",
            script("s1", "GET", tokens[WHALE]),
            1,
        ),
        Phase(
            "c64",
            "POST /positions (create), 64 connections",
            True,
            "/positions",
            script("c64", "POST", tokens[CREATOR], CREATE_BODY),
            CONTENTION,
        ),
        Phase(
            "p64",
            "POST /positions/update-prices, 3 symbols, 64 connections",
            True,
            "/positions/update-prices",
            script("p64", "POST", tokens[ADMIN], CONTENTION_PRICES),
            CONTENTION,
        ),
    ]
    if count != 10_000:
        for phase in phases:
            phase.label = phase.label.replace("10,000", f"{count:,}")
    meter = Meter(admin, args.database)

    def url(phase: Phase) -> str:
        return f"http://127.0.0.1:{(service if phase.service else bare).port}{phase.url_path}"

    async def run_phase(phase: Phase, duration: int) -> Sample:
        server = service if phase.service else bare
        for attempt in (1, 2):
            # The requests queued in a server when wrk stops are still served after it: let them
            # drain, so that their CPU does not count in the next phase.
            await asyncio.sleep(SETTLE)
            server.ensure_running()
            start = await meter.start(server.pid)
            try:
                result = await run_wrk(
                    url(phase), phase.script, phase.connections, args.threads, duration
                )
            except RuntimeError:
                if attempt == 2 or server.process.poll() is None:
                    raise
                continue
            if result.errors and server.process.poll() is not None and attempt == 1:
                continue  # the server died under the load: measure the phase again
            return await meter.stop(
                start, result.requests, result.p50_ms, result.p99_ms, result.errors, result.seconds
            )
        raise AssertionError("unreachable")

    print(
        f"HTTP API benchmark: {meter.cores} cores, Python {platform.python_version()}, asyncpg "
        f"{asyncpg.__version__}, PostgreSQL {server_info['version'].split()[0]} "
        f"(fsync={server_info['fsync']}, synchronous_commit={server_info['sync']}, "
        f"shared_buffers={server_info['shared_buffers']}), wrk "
        f"{args.threads} thread(s), {conns} connections"
    )
    print(
        f"{'QUICK smoke run: ' if args.quick else ''}{rounds} round(s), {seconds} s per phase, "
        f"{price_calls} update-prices call(s) per round; database {args.database}; "
        f"service pid {service.pid} and bare pid {bare.pid}, 1 uvicorn worker each, "
        f"pools of {POOL_SIZE}; {count:,} positions seeded in {seed_seconds:.1f} s; source: "
        f"commit {source_before[0]}"
        + (f", modified: {', '.join(source_before[1])}" if source_before[1] else ", clean")
    )

    # Warm up: connections of both pools, prepared statements, caches of every table.
    for phase in phases:
        await run_phase(phase, 1)

    samples: dict[str, list[Sample]] = {phase.key: [] for phase in phases}
    price_ms: list[float] = []
    price_samples: list[Sample] = []
    print(f"\n{'round':<7}" + "".join(f"{p.key:>9}  " for p in phases) + f"{'prices':>9}")
    print(f"{'':<7}" + "".join(f"{'req/s':>9}  " for _ in phases) + f"{'ms p50':>9}")
    for r in range(rounds):
        order = phases if r % 2 == 0 else phases[::-1]
        for phase in order:
            samples[phase.key].append(await run_phase(phase, seconds))
        # update-prices, one call at a time: wall time of each, CPU over the calls.
        service.ensure_running()
        start = await meter.start(service.pid)
        calls = []
        for i in range(price_calls):
            status, _, body, elapsed = await asyncio.to_thread(
                http_call,
                service.port,
                "POST",
                "/positions/update-prices",
                tokens[ADMIN],
                bodies[i % 2],
            )
            if status != 200 or body.get("positions_updated") != count:
                raise RuntimeError(f"update-prices answered {status}: {body}")
            calls.append(elapsed * 1e3)
        price_samples.append(await meter.stop(start, price_calls, None, None, 0))
        price_ms += calls
        await setup.execute("VACUUM (ANALYZE) positions")
        print(
            f"{r + 1:<7}"
            + "".join(
                f"{samples[p.key][-1].rate:>9,.0f}{samples[p.key][-1].mark():<2}" for p in phases
            )
            + f"{statistics.median(calls):>9.1f}",
            flush=True,
        )
    print(
        f"(* = other processes used more than {DISTURBED} cores during that phase; "
        f"! = wrk saw errors)"
    )

    # -- report ------------------------------------------------------------------------------
    rows = []
    for phase in phases:
        runs = samples[phase.key]
        rates = [s.rate for s in runs]
        rows.append(
            [
                ("  " if phase.service else "") + phase.label,
                str(phase.connections),
                f"{statistics.median(rates):,.0f}",
                f"{min(rates):,.0f}",
                f"{max(rates):,.0f}",
                _ms(median([s.p50_ms for s in runs])),
                _ms(median([s.p99_ms for s in runs])),
                num(median([s.us_per(s.app_cpu) for s in runs])),
                num(median([s.us_per(s.server_cpu) for s in runs])),
                f"{median([s.load_cpu for s in runs]):.2f}",
                f"{median([s.machine_cpu for s in runs]):.2f}",
                num(median([s.other_cpu for s in runs]), ".2f"),
                str(sum(s.errors for s in runs)),
            ]
        )
    print_table(
        f"Medians of {rounds} round(s) of {seconds} s. Latency from wrk (closed loop). CPU per "
        f"request in microseconds: app = the server process under test, db = the backends of "
        f"{args.database};\nwrk = cores used by wrk (and this process); machine = cores busy "
        f"out of {meter.cores}; other = of which none of these (other people's processes, WAL "
        f"writer, autovacuum). The bare endpoints do no authentication.",
        [
            "phase",
            "conns",
            "req/s",
            "min",
            "max",
            "p50 ms",
            "p99 ms",
            "app us/req",
            "db us/req",
            "wrk",
            "machine",
            "other",
            "errors",
        ],
        rows,
    )

    def ratio(top: str, bottom: str) -> tuple[float, float, float]:
        paired = [t.rate / b.rate for t, b in zip(samples[top], samples[bottom], strict=True)]
        value = statistics.median(s.rate for s in samples[top]) / statistics.median(
            s.rate for s in samples[bottom]
        )
        return value, min(paired), max(paired)

    def worker_ratio(top: str, bottom: str) -> str:
        """bare / service server-process CPU per request: the throughput ratio when each
        server's one worker is the bottleneck, whatever else runs on the machine."""
        t = median([s.us_per(s.app_cpu) for s in samples[top]])
        b = median([s.us_per(s.app_cpu) for s in samples[bottom]])
        return "-" if not t or not b else f"{b / t:.2f}"

    ratio_rows, missed = [], []
    for name, top, bottom, target in [
        ("create / bare INSERT", "cr", "bi", CREATE_TARGET),
        ("get by id / bare PK SELECT", "gi", "bs", READ_TARGET),
        ("list 100 / bare 100-row SELECT", "li", "bl", None),
        ("list 100 / bare PK SELECT", "li", "bs", None),
        ("summary / bare PK SELECT", "su", "bs", None),
        ("update-prices / create, 64 connections", "p64", "c64", CONTENTION_TARGET),
    ]:
        value, low, high = ratio(top, bottom)
        verdict = "info" if target is None else ("met" if value >= target else "MISSED")
        if verdict == "MISSED":
            missed.append(name)
        ratio_rows.append(
            [
                name,
                f"{value:.2f}",
                f"{low:.2f}-{high:.2f}",
                worker_ratio(top, bottom),
                "-" if target is None else f">= {target:.2f}",
                verdict,
            ]
        )

    summary_p99 = [s.p99_ms for s in samples["s1"] if s.p99_ms is not None]
    p99 = statistics.median(summary_p99)
    verdict = "met" if p99 < SUMMARY_P99_MS else "MISSED"
    if verdict == "MISSED":
        missed.append("summary p99")
    ratio_rows.append(
        [
            f"summary p99 ms, 1 connection, {count:,} positions",
            f"{p99:.1f}",
            f"{min(summary_p99):.1f}-{max(summary_p99):.1f}",
            "-",
            f"< {SUMMARY_P99_MS:.0f}",
            verdict,
        ]
    )
    refused = sum(s.errors for key in ("c64", "p64") for s in samples[key])
    verdict = "met" if refused == 0 else "MISSED"
    if verdict == "MISSED":
        missed.append("no error under contention")
    ratio_rows.append(
        ["non-2xx or failed answers, 64 connections", str(refused), "-", "-", "= 0", verdict]
    )
    print_table(
        "Targets (value: of the medians over rounds; range: the value within each round; by "
        "CPU: bare / service CPU of the server process per request,\nthe ratio if each one "
        "worker were the bottleneck and had a core of its own)",
        ["ratio", "value", "range", "by CPU", "target", "verdict"],
        ratio_rows,
    )

    def ms_per_call(cpu: str) -> float | None:
        """Over all the calls: a few calls are below the clock tick of /proc's CPU times."""
        used = [getattr(s, cpu) for s in price_samples]
        if any(u is None for u in used) or not price_ms:
            return None  # a backend ended between two readings: no figure rather than a wrong one
        seconds = (u * s.seconds for u, s in zip(used, price_samples, strict=True))
        return sum(seconds) / len(price_ms) * 1e3

    price_rows = [
        [
            f"POST /positions/update-prices, re-marks {count:,}",
            str(len(price_ms)),
            f"{_percentile(price_ms, 50):.1f}",
            f"{_percentile(price_ms, 99):.1f}",
            f"{min(price_ms):.1f}",
            num(ms_per_call("app_cpu"), ".1f"),
            num(ms_per_call("server_cpu"), ".1f"),
        ],
    ]
    print_table(
        "Re-marking: one call at a time (p99 is the nearest rank: with few calls, the slowest); "
        "CPU in ms per call, over all calls",
        ["call", "calls", "p50 ms", "p99 ms", "min ms", "app ms/call", "db ms/call"],
        price_rows,
    )

    for server in (service, bare):
        if server.restarts:
            print(
                f"NOTE: the {server.name} server was restarted {len(server.restarts)} time(s) "
                f"during the run ({', '.join(server.restarts)})."
            )
    source_now = source_state()
    restarted = bool(service.restarts or bare.restarts)
    if source_before[1] or (source_now != source_before and restarted):
        print(
            f"NOTE: the service's source differed from commit {source_before[0]} when a "
            f"server (re)started (before the run: {', '.join(source_before[1]) or 'clean'}; "
            f"after: {', '.join(source_now[1]) or 'clean'})."
        )
    elif source_now != source_before:
        print(
            f"NOTE: other people edited {', '.join(source_now[1]) or 'the code'} during the "
            f"run; the servers, started before, ran commit {source_before[0]} as it was."
        )
    total = await setup.fetchval("SELECT count(*) FROM positions")
    print(
        f"\nPositions in the read model at the end: {total:,} (the whale's {count:,}, the "
        f"rest made by the create phases). Run time {time.perf_counter() - started:.0f} s."
    )
    if missed:
        print(f"TARGET MISSED: {', '.join(missed)}.")

    if args.profile:
        await profile(args, service, phases, url, tokens, bodies, seconds, logs)
    return 1 if missed and args.strict else 0


# -- profile (optional) ------------------------------------------------------------------------

PROFILE_RATE = 250  # samples per second

# A sample goes to the innermost frame of one of these files. Frames that only pass control on
# (the CLI, the correlation middleware, asyncio's runner) are not places of their own: a sample
# with nothing else inside them is time in C called from the event loop: uvloop's I/O, asyncpg's
# Cython protocol (reading rows), httptools' parser, or msgspec/C work of a frame not listed.
PROFILE_PLACES = [
    ("JWT check (pyjwt, api/auth.py, api/security.py)", ("jwt/", "api/auth.py", "api/security.py")),
    ("JSON out (api/json.py: Decimal -> number, msgspec)", ("api/json.py",)),
    ("asyncpg, Python side (pool, connection, transaction)", ("asyncpg/",)),
    ("read-model queries and views (projections/)", ("projections/",)),
    ("event store (eventstore/)", ("eventstore/",)),
    ("domain and command handlers (domain/, commands/)", ("domain/", "commands/")),
    (
        "route code, bodies, idempotency, errors (api/)",
        ("api/routes/", "api/bodies.py", "api/idempotency.py", "api/errors.py"),
    ),
    ("correlation id and event metadata (api/context.py)", ("api/context.py",)),
    ("starlette (routing, middleware, request, response)", ("starlette/",)),
    ("uvicorn (HTTP protocol, Python side)", ("uvicorn/",)),
    ("other Python (typing, uuid, datetime, asyncio...)", ("",)),
]
_PASS_THROUGH = (
    "api/cli.py",
    "api/__main__.py",
    "asyncio/runners.py",
    "asyncio/base_events.py",
    "uvloop/",
    "<frozen runpy>",
    "runpy.py",
)
_IN_LOOP = "C code called from the event loop (uvloop I/O, asyncpg protocol, httptools)"


def _frames(line: str) -> tuple[list[tuple[str, str]], int]:
    stack, _, n = line.rpartition(" ")
    frames = []
    for frame in stack.split(";"):
        name, _, where = frame.partition(" (")
        frames.append((name, where.rstrip(")").rsplit(":", 1)[0]))
    return frames, int(n)


def _place(frames: list[tuple[str, str]]) -> str:
    # The correlation middleware wraps the whole app: it is a place only as the innermost frame.
    for depth, (_, where) in enumerate(reversed(frames)):
        if any(p in where for p in _PASS_THROUGH) or where.endswith("api/context.py") and depth:
            continue
        for label, patterns in PROFILE_PLACES:
            if any(p in where for p in patterns):
                if label.startswith("other") and depth:
                    break  # an unlisted frame inside a listed one: look further out
                return label
    return _IN_LOOP


def summarize_profile(title: str, path: Path, requests: int, top: int = 8) -> None:
    if not path.exists():
        print(f"\n{title}: py-spy wrote nothing")
        return
    places: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        frames, n = _frames(line)
        total += n
        name, where = frames[-1]
        leaves[f"{name} ({where})"] += n
        places[_place(frames)] += n
    if not total:
        print(f"\n{title}: no samples")
        return
    busy_ms = total / PROFILE_RATE * 1e3
    print(
        f"\n{title}: {total:,} samples holding the GIL, {busy_ms / max(requests, 1):.3f} ms "
        f"per request ({requests:,} requests)"
    )
    for label, n in places.most_common():
        print(f"  {n / total:6.1%}  {label}")
    print("  innermost Python frames (self time):")
    for key, n in leaves.most_common(top):
        print(f"  {n / total:6.1%}  {key}")


async def profile(
    args: argparse.Namespace,
    service: Server,
    phases: list[Phase],
    url: Any,
    tokens: dict[str, str],
    bodies: list[str],
    seconds: int,
    logs: Path,
) -> None:
    spy = args.py_spy or shutil.which("py-spy")
    if not spy:
        print("\n--profile: py-spy is not on the PATH (pip install py-spy, or --py-spy PATH)")
        return
    duration = max(3, seconds)
    print(
        f"\nWhere the service's time goes: py-spy record --nonblocking --gil, {PROFILE_RATE} "
        f"samples/s, only while the server's thread holds the GIL (uvloop waits without it), "
        f"{duration} s per endpoint under the same load, after the measurements. Raw stacks: "
        f"{logs}/profile-*.txt"
    )

    async def record(name: str) -> tuple[asyncio.subprocess.Process, Path]:
        await asyncio.sleep(2 * SETTLE)  # nothing left over from the previous load
        service.ensure_running()
        out = logs / f"profile-{name}.txt"
        process = await asyncio.create_subprocess_exec(
            spy,
            "record",
            "--nonblocking",
            "--gil",
            "-p",
            str(service.pid),
            "-d",
            str(duration),
            "-r",
            str(PROFILE_RATE),
            "--format",
            "raw",
            "-o",
            str(out),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.sleep(0.2)
        return process, out

    for phase in phases:
        if not phase.service or phase.key == "s1":
            continue
        process, out = await record(phase.key)
        result = await run_wrk(url(phase), phase.script, phase.connections, args.threads, duration)
        await process.wait()
        summarize_profile(phase.label, out, result.requests)

    process, out = await record("prices")
    calls, deadline = 0, time.perf_counter() + duration
    while time.perf_counter() < deadline:
        await asyncio.to_thread(
            http_call,
            service.port,
            "POST",
            "/positions/update-prices",
            tokens[ADMIN],
            bodies[calls % 2],
        )
        calls += 1
    await process.wait()
    summarize_profile("POST /positions/update-prices", out, calls)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 round of 1 s phases, 2 update-prices calls",
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every phase (default 5)")
    parser.add_argument(
        "--seconds",
        type=int,
        default=4,
        help="seconds of load per phase, whole seconds (default 4)",
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--positions", type=int, default=10_000, help="positions of the seeded user (default 10000)"
    )
    parser.add_argument(
        "--price-calls", type=int, default=3, help="update-prices calls per round (default 3)"
    )
    parser.add_argument("--database", default="bench_api", help="database to (re)create")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="afterwards, profile the service under each load with py-spy",
    )
    parser.add_argument("--py-spy", default=None, help="the py-spy executable (default: PATH)")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main(args))
    return uvloop.run(main(args))


if __name__ == "__main__":
    sys.exit(run())
