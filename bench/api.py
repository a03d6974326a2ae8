"""HTTP API benchmark: the service's endpoints beside a bare Starlette + asyncpg app, over loopback.

Requests/s, wrk's latency and CPU per request of each endpoint against its bare counterpart, the
contention phases and update-prices; setup, phases and targets: BENCHMARKS.md, "HTTP API".

    python -m bench.api [--quick] [--rounds 5] [--seconds 4] [--connections 32] [--keep]
                        [--strict] [--profile [--py-spy PATH]]
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
import statistics
import sys
import tempfile
import time
import uuid
from asyncio.subprocess import DEVNULL, PIPE
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
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

from bench import harness

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
UPDATE_PRICES = "POST /positions/update-prices"


# -- the bare app (runs in its own uvicorn process) ---------------------------------------------

BARE_TABLE = """
CREATE TABLE bench_bare_positions (
    id uuid PRIMARY KEY, owner text NOT NULL, symbol text NOT NULL, side text NOT NULL,
    quantity numeric NOT NULL, entry_price numeric NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""
_BARE_INSERT = """INSERT INTO bench_bare_positions (id, owner, symbol, side, quantity, entry_price)
VALUES ($1, $2, $3, $4, $5, $6)"""
_BARE_SELECT = "SELECT * FROM positions WHERE position_id = $1"
_BARE_LIST = """SELECT * FROM positions WHERE owner = $1
ORDER BY created_at DESC, position_id DESC LIMIT $2"""

_bare_decoder = msgspec.json.Decoder(float_hook=Decimal)
_bare_encoder = msgspec.json.Encoder(decimal_format="number")


async def _no_reset(connection: asyncpg.Connection) -> None:
    """The service's pool skips asyncpg's reset query on release; so does the bare one."""


def _bare_json(content: Any, status: int = 200) -> Response:
    return Response(_bare_encoder.encode(content), status, media_type="application/json")


async def _bare_insert(request: Request) -> Response:
    data = _bare_decoder.decode(await request.body())
    position_id = uuid.uuid4()
    quantity, price = Decimal(data["quantity"]), Decimal(data["entry_price"])
    await request.app.state.pool.execute(
        _BARE_INSERT, position_id, "bare", data["symbol"], data["side"], quantity, price
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


def start_bare(dsn: str, token: str, logs: Path) -> harness.Server:
    port = harness.free_port()
    argv = [sys.executable, "-m", "uvicorn", "bench.api:create_bare_app", "--factory"]
    argv += f"--host 127.0.0.1 --port {port} --log-level warning --workers 1".split()
    env = harness.server_env(BENCH_BARE_DSN=dsn, BENCH_BARE_POOL=str(POOL_SIZE))
    return harness.Server(
        "bare", argv, env, port, (f"/bare/positions?owner={WHALE}&limit=1", token), logs
    )


# -- the load ----------------------------------------------------------------------------------


@dataclass
class Phase:
    key: str
    label: str
    request: str  # method and path; "{id}" in the path cycles over the read ids
    subject: str  # whose token
    body: str | None = None
    connections: int | None = None  # default: --connections

    @property
    def service(self) -> bool:
        return not self.label.startswith("bare:")


# fmt: off
PHASES = [  # a round runs them in this order, the next one in reverse
    Phase("bi", "bare: INSERT, POST /bare/positions", "POST /bare/positions", CREATOR, CREATE_BODY),
    Phase("cr", "POST /positions (create)", "POST /positions", CREATOR, CREATE_BODY),
    Phase("bs", "bare: PK SELECT, GET /bare/positions/{id}", "GET /bare/positions/{id}", WHALE),
    Phase("gi", "GET /positions/{id}", "GET /positions/{id}", WHALE),
    Phase("bl", "bare: 100 rows, GET /bare/positions?owner=",
          f"GET /bare/positions?owner={WHALE}&limit=100", WHALE),
    Phase("li", "GET /positions?limit=100 (of 10,000)", "GET /positions?limit=100", WHALE),
    Phase("su", "GET /portfolio/summary (10,000 positions)", "GET /portfolio/summary", WHALE),
    Phase("s1", "GET /portfolio/summary, 1 connection", "GET /portfolio/summary", WHALE, None, 1),
    Phase("c64", "POST /positions (create), 64 connections", "POST /positions", CREATOR,
          CREATE_BODY, CONTENTION),
    Phase("p64", "POST /positions/update-prices, 3 symbols, 64 connections", UPDATE_PRICES, ADMIN,
          CONTENTION_PRICES, CONTENTION),
]
# fmt: on

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
_LUA_PATHS = """local n, i = #paths, 0
request = function()
  i = i % n + 1
  return wrk.format(nil, paths[i])
end"""


def lua_script(method: str, token: str, body: str | None, paths: list[str] | None) -> str:
    lines = [f'wrk.method = "{method}"', f'wrk.headers["Authorization"] = "Bearer {token}"']
    lines.append('wrk.headers["Content-Type"] = "application/json"')
    if body is not None:
        lines.append(f"wrk.body = [[{body}]]")
    if paths:
        lines += ["local paths = {" + ",".join(f'"{p}"' for p in paths) + "}", _LUA_PATHS]
    return "\n".join(lines) + "\n" + _LUA_DONE


@dataclass
class Requests(harness.Sample):
    """A phase of wrk's load: its latency percentiles and failures too."""

    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0  # socket errors, timeouts and answers other than 2xx/3xx

    def mark(self) -> str:
        return ("!" if self.errors else "") + super().mark()


async def run_wrk(
    url: str, script: Path, connections: int, threads: int, seconds: int
) -> tuple[int, float, float, float, int]:
    """wrk's requests, seconds, p50 and p99 ms, and errors (socket, timeout, non-2xx/3xx)."""
    options = f"-t {min(threads, connections)} -c {connections} -d {seconds}s --timeout 10s"
    process = await asyncio.create_subprocess_exec(
        "wrk", *options.split(), "-s", str(script), url, stdout=PIPE, stderr=PIPE
    )
    out, err = await process.communicate()
    for line in out.decode().splitlines():
        if line.startswith("BENCH "):
            r = json.loads(line[6:])
            errors = sum(r[k] for k in ("connect", "read", "write", "status", "timeout"))
            ms = r["p50_us"] / 1e3, r["p99_us"] / 1e3
            return r["requests"], r["duration_us"] / 1e6, *ms, errors
    raise RuntimeError(f"wrk gave no result:\n{out.decode()}\n{err.decode()}")


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
            below = (entry * Decimal("0.95")).quantize(Decimal("0.01"))
            above = (entry * Decimal("1.10")).quantize(Decimal("0.01"))
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
            NewEvent(uuid.uuid4(), type(e).__name__, e, metadata, schema_version=e.SCHEMA_VERSION)
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
        await harness.bounded(4, store.append_streams, batches)
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


def check_endpoints(bench: Bench, read_id: uuid.UUID) -> None:
    """One request of each kind before any load: the answers are what the phases assume."""
    n, prices, one = bench.count, json.loads(bench.bodies[1]), str(read_id)

    def marked(body: dict) -> bool:
        shown, mark = body.get("current_price"), prices.get(body.get("symbol"))
        return shown is not None and Decimal(str(shown)) == Decimal(str(mark))

    def totals(body: dict) -> tuple:
        return tuple(
            body.get(f) for f in ("total_positions", "open_positions", "unpriced_positions")
        )

    def listed(headers: dict, body: Any) -> bool:
        return len(body) == 100 and headers.get("x-total-count") == str(n)

    service, bare, bare_list = bench.service.port, bench.bare.port, f"owner={WHALE}&limit=100"
    checks: list[tuple[int, str, str, str | None, Callable[[int, dict, Any], bool]]] = [
        (service, "POST /positions", CREATOR, CREATE_BODY, lambda s, h, b: b["owner"] == CREATOR),
        (service, f"GET /positions/{one}", WHALE, None, lambda s, h, b: b["id"] == one),
        (service, "GET /positions?limit=100", WHALE, None, lambda s, h, b: listed(h, b)),
        (service, UPDATE_PRICES, ADMIN, bench.bodies[1], lambda *a: a[2]["positions_updated"] == n),
        (service, f"GET /positions/{one}", WHALE, None, lambda s, h, b: marked(b)),
        (service, "GET /portfolio/summary", WHALE, None, lambda s, h, b: totals(b) == (n, n, 0)),
        (bare, "POST /bare/positions", CREATOR, CREATE_BODY, lambda s, h, b: s == 201),
        (bare, f"GET /bare/positions/{one}", WHALE, None, lambda *a: a[2]["position_id"] == one),
        (bare, f"GET /bare/positions?{bare_list}", WHALE, None, lambda *a: len(a[2]) == 100),
    ]
    problems = []
    for port, request, subject, body, expected in checks:
        method, path = request.split(" ", 1)
        status, headers, answer, _ = harness.http_call(
            port, method, path, bench.tokens[subject], body
        )
        if status not in (200, 201) or not expected(status, headers, answer):
            problems.append(f"{request} answered {status}: {str(answer)[:200]}")
    if problems:
        raise RuntimeError("the endpoints do not answer as expected: " + "; ".join(problems))


# -- the run -----------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return harness.num(value, ".2f" if value is not None and value < 10 else ".1f")


@dataclass
class Bench:
    """One run: the two servers, the phases' scripts, and what the rounds measured."""

    args: argparse.Namespace
    admin: asyncpg.Connection
    setup: asyncpg.Connection
    service: harness.Server
    bare: harness.Server
    tokens: dict[str, str]
    ids: list[uuid.UUID]
    logs: Path
    meter: harness.CpuMeter = field(default_factory=lambda: harness.CpuMeter(children=True))
    scripts: dict[str, Path] = field(default_factory=dict)
    samples: dict[str, list[Requests]] = field(default_factory=dict)
    price_ms: list[float] = field(default_factory=list)
    price_samples: list[Requests] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.count = len(self.ids)
        self.bodies = price_bodies()
        count, conns = f"{self.count:,}", self.args.connections
        self.phases = [
            replace(p, label=p.label.replace("10,000", count), connections=p.connections or conns)
            for p in PHASES
        ]
        read_ids = random.Random(3).sample(self.ids, min(READ_IDS, self.count))
        for phase in self.phases:
            method, path = phase.request.split(" ", 1)
            paths = [path.format(id=i) for i in read_ids] if "{id}" in path else None
            self.scripts[phase.key] = self.logs / f"{phase.key}.lua"
            lua = lua_script(method, self.tokens[phase.subject], phase.body, paths)
            self.scripts[phase.key].write_text(lua)

    def server(self, phase: Phase) -> harness.Server:
        return self.service if phase.service else self.bare

    async def wrk(self, phase: Phase, seconds: int) -> tuple[int, float, float, float, int]:
        path = phase.request.split(" ", 1)[1].replace("{id}", "x")
        url, conns = f"http://127.0.0.1:{self.server(phase).port}{path}", phase.connections
        return await run_wrk(url, self.scripts[phase.key], conns, self.args.threads, seconds)

    async def reading(self, server: harness.Server) -> harness.Reading:
        """The CPU so far of the server (started again if it had exited) and of the backends."""
        server.ensure_running()
        db = await harness.backend_pids(self.admin, self.args.database)
        return self.meter.read(app=[server.pid], db=db)

    async def run_phase(self, phase: Phase, seconds: int) -> Requests:
        server = self.server(phase)
        for attempt in (1, 2):
            # The requests queued in a server when wrk stops are still served after it: let them
            # drain, so that their CPU does not count in the next phase.
            await asyncio.sleep(SETTLE)
            start = await self.reading(server)
            try:
                result = await self.wrk(phase, seconds)
            except RuntimeError:
                if attempt == 2 or server.process.poll() is None:
                    raise
                continue
            if result[-1] and server.process.poll() is not None and attempt == 1:
                continue  # the server died under the load: measure the phase again
            requests, wall, p50_ms, p99_ms, errors = result
            return Requests(requests, wall, self.meter.since(start), p50_ms, p99_ms, errors)
        raise AssertionError("unreachable")

    async def mark_prices(self, i: int) -> float:
        """One update-prices call, with the i-th set of prices: its wall time in ms."""
        status, _, body, elapsed = await asyncio.to_thread(
            harness.http_call,
            *(self.service.port, "POST", UPDATE_PRICES.split()[1], self.tokens[ADMIN]),
            self.bodies[i % 2],
        )
        if status != 200 or body.get("positions_updated") != self.count:
            raise RuntimeError(f"update-prices answered {status}: {body}")
        return elapsed * 1e3

    async def update_prices(self, calls: int) -> list[float]:
        """update-prices, one call at a time: the wall time of each, the CPU over them all."""
        start = await self.reading(self.service)
        times = [await self.mark_prices(i) for i in range(calls)]
        cores = self.meter.since(start)
        self.price_samples.append(Requests(calls, cores.seconds, cores))
        self.price_ms += times
        return times

    async def rounds(self, rounds: int, seconds: int, price_calls: int) -> None:
        # Warm up: connections of both pools, prepared statements, caches of every table.
        for phase in self.phases:
            await self.run_phase(phase, 1)
        self.samples = {phase.key: [] for phase in self.phases}
        print(f"\n{'round':<7}" + "".join(f"{p.key:>9}  " for p in self.phases) + f"{'prices':>9}")
        print(f"{'':<7}" + "".join(f"{'req/s':>9}  " for _ in self.phases) + f"{'ms p50':>9}")
        for r in range(rounds):
            for phase in harness.in_turn(self.phases, r):
                self.samples[phase.key].append(await self.run_phase(phase, seconds))
            calls = await self.update_prices(price_calls)
            await self.setup.execute("VACUUM (ANALYZE) positions")
            latest = [self.samples[p.key][-1] for p in self.phases]
            line = harness.round_line(f"{r + 1}", latest, 9, mark_width=2)
            print(line + f"{statistics.median(calls):>9.1f}", flush=True)
        print(harness.DISTURBED_NOTE[:-1] + "; ! = wrk saw errors)")

    # -- report --------------------------------------------------------------------------------

    def med(self, key: str, figure: Callable[[Requests], float | None]) -> float | None:
        return harness.median(figure(s) for s in self.samples[key])

    def print_phases(self, rounds: int, seconds: int) -> None:
        def cpu(group: str) -> Callable[[Phase], str]:
            return lambda p: harness.num(self.med(p.key, lambda s: s.us_per(s.cores[group])))

        columns: list[tuple[str, Callable[[Phase], str]]] = [
            ("phase", lambda p: ("  " if p.service else "") + p.label),
            ("conns", lambda p: str(p.connections)),
            *harness.rate_columns("req/s", lambda p: self.samples[p.key]),
            ("p50 ms", lambda p: _ms(self.med(p.key, lambda s: s.p50_ms))),
            ("p99 ms", lambda p: _ms(self.med(p.key, lambda s: s.p99_ms))),
            ("app us/req", cpu("app")),
            ("db us/req", cpu("db")),
            ("wrk", lambda p: f"{self.med(p.key, lambda s: s.cores.own):.2f}"),
            ("machine", lambda p: f"{self.med(p.key, lambda s: s.cores.machine):.2f}"),
            ("other", lambda p: harness.num(self.med(p.key, lambda s: s.cores.other), ".2f")),
            ("errors", lambda p: str(sum(s.errors for s in self.samples[p.key]))),
        ]
        harness.print_columns(
            f"Medians of {rounds} round(s) of {seconds} s. Latency from wrk (closed loop). CPU per "
            f"request in microseconds: app = the server process under test, db = the backends of "
            f"{self.args.database};\nwrk = cores used by wrk (and this process); machine = cores "
            f"busy out of {harness.CORES}; other = of which none of these (other people's "
            f"processes, WAL writer, autovacuum). The bare endpoints do no authentication.",
            columns,
            self.phases,
        )

    def print_targets(self, verdicts: harness.Verdicts) -> None:
        rows = []
        for name, top, bottom, target in [
            ("create / bare INSERT", "cr", "bi", CREATE_TARGET),
            ("get by id / bare PK SELECT", "gi", "bs", READ_TARGET),
            ("list 100 / bare 100-row SELECT", "li", "bl", None),
            ("list 100 / bare PK SELECT", "li", "bs", None),
            ("summary / bare PK SELECT", "su", "bs", None),
            ("update-prices / create, 64 connections", "p64", "c64", CONTENTION_TARGET),
        ]:
            row = harness.ratio_row(name, self.samples[top], self.samples[bottom], target, verdicts)
            # by CPU: the throughput ratio when each server's one worker is the bottleneck,
            # whatever else runs on the machine
            t, b = (self.med(k, lambda s: s.us_per(s.cores["app"])) for k in (top, bottom))
            rows.append([*row[:3], "-" if not t or not b else f"{b / t:.2f}", *row[3:]])
        p99s = [s.p99_ms for s in self.samples["s1"] if s.p99_ms is not None]
        p99, spread = statistics.median(p99s), f"{min(p99s):.1f}-{max(p99s):.1f}"
        name, met = f"summary p99 ms, 1 connection, {self.count:,} positions", p99 < SUMMARY_P99_MS
        verdict = verdicts(met, "summary p99")
        rows.append([name, f"{p99:.1f}", spread, "-", f"< {SUMMARY_P99_MS:.0f}", verdict])
        refused = sum(s.errors for key in ("c64", "p64") for s in self.samples[key])
        verdict = verdicts(refused == 0, "no error under contention")
        rows.append(
            ["non-2xx or failed answers, 64 connections", str(refused), "-", "-", "= 0", verdict]
        )
        harness.print_table(
            "Targets (value: of the medians over rounds; range: the value within each round; by "
            "CPU: bare / service CPU of the server process per request,\nthe ratio if each one "
            "worker were the bottleneck and had a core of its own)",
            ["ratio", "value", "range", "by CPU", "target", "verdict"],
            rows,
        )

    def print_prices(self) -> None:
        def ms_per_call(group: str) -> str:
            """Over all the calls: a few calls are below the clock tick of /proc's CPU times."""
            used = [s.cores[group] for s in self.price_samples]
            if any(u is None for u in used) or not self.price_ms:
                return "-"  # a backend ended between two readings: no figure, not a wrong one
            seconds = (u * s.seconds for u, s in zip(used, self.price_samples, strict=True))
            return f"{sum(seconds) / len(self.price_ms) * 1e3:.1f}"

        calls = self.price_ms
        row = [f"POST /positions/update-prices, re-marks {self.count:,}", str(len(calls))]
        row += [f"{v:.1f}" for v in (*(harness.percentile(calls, q) for q in (50, 99)), min(calls))]
        harness.print_table(
            "Re-marking: one call at a time (p99 is the nearest rank: with few calls, the "
            "slowest); CPU in ms per call, over all calls",
            ["call", "calls", "p50 ms", "p99 ms", "min ms", "app ms/call", "db ms/call"],
            [[*row, ms_per_call("app"), ms_per_call("db")]],
        )

    def print_notes(self, source_before: tuple[str, list[str]]) -> None:
        for server in (self.service, self.bare):
            if server.restarts:
                print(f"NOTE: the {server.name} server restarted: {', '.join(server.restarts)}.")
        source_now = harness.source_state()
        if source_now != source_before:  # a server restarted since then ran the new code
            print(
                f"NOTE: the service's source changed during the run, from "
                f"{harness.source_note(source_before)} to {harness.source_note(source_now)}."
            )


async def main(args: argparse.Namespace) -> int:
    from api.auth import Role

    if shutil.which("wrk") is None:
        print("error: wrk is not on the PATH (apt-get install wrk)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    servers: list[harness.Server] = []
    async with harness.scratch_database(args.database, args.keep) as (admin, dsn):
        setup = await harness.migrated(dsn, BARE_TABLE)
        try:
            pg = await harness.postgres(setup, "fsync", "synchronous_commit", "shared_buffers")
            seed_started = time.perf_counter()
            ids = await seed_whale(dsn, args.positions)
            seed_seconds = time.perf_counter() - seed_started
            await setup.execute("VACUUM (ANALYZE) positions")
            await setup.execute("VACUUM (ANALYZE) events")
            secret = secrets.token_urlsafe(48)
            roles = {WHALE: Role.USER, CREATOR: Role.USER, ADMIN: Role.ADMIN}
            tokens = harness.mint_tokens(secret, roles, timedelta(hours=2))
            logs = Path(tempfile.mkdtemp(prefix="bench_api_"))
            source = harness.source_state()  # what the servers are about to load
            settings = {"DB_POOL_SIZE": str(POOL_SIZE), "DB_MAX_OVERFLOW": "0"}
            servers.append(harness.start_service(dsn, secret, tokens[ADMIN], logs, **settings))
            servers.append(start_bare(dsn, tokens[ADMIN], logs))
            for server in servers:
                server.wait_ready()
            bench = Bench(args, admin, setup, *servers, tokens, ids, logs)
            check_endpoints(bench, ids[0])
            code = await measure(bench, pg, seed_seconds, started, source)
            if not (args.keep or args.profile):
                shutil.rmtree(logs, ignore_errors=True)  # kept when something failed
            return code
        finally:
            for server in servers:
                server.stop()
            await setup.close()


async def measure(
    bench: Bench, pg: str, seed_seconds: float, started: float, source: tuple[str, list[str]]
) -> int:
    args, service, bare = bench.args, bench.service, bench.bare
    rounds, seconds = (1, 1) if args.quick else (args.rounds, args.seconds)
    price_calls = 2 if args.quick else args.price_calls
    print(
        f"HTTP API benchmark: {harness.CORES} cores, Python {platform.python_version()}, asyncpg "
        f"{asyncpg.__version__}, {pg}, wrk {args.threads} thread(s), {args.connections} "
        f"connections"
    )
    print(
        f"{'QUICK smoke run: ' if args.quick else ''}{rounds} round(s), {seconds} s per phase, "
        f"{price_calls} update-prices call(s) per round; database {args.database}; "
        f"service pid {service.pid} and bare pid {bare.pid}, 1 uvicorn worker each, "
        f"pools of {POOL_SIZE}; {bench.count:,} positions seeded in {seed_seconds:.1f} s; "
        f"source: {harness.source_note(source)}"
    )
    await bench.rounds(rounds, seconds, price_calls)
    verdicts = harness.Verdicts()
    bench.print_phases(rounds, seconds)
    bench.print_targets(verdicts)
    bench.print_prices()
    bench.print_notes(source)
    total = await bench.setup.fetchval("SELECT count(*) FROM positions")
    print(
        f"\nPositions in the read model at the end: {total:,} (the whale's {bench.count:,}, the "
        f"rest made by the create phases). Run time {time.perf_counter() - started:.0f} s."
    )
    verdicts.report()
    if args.profile:
        await profile(bench, seconds)
    return 1 if verdicts.missed and args.strict else 0


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
        ("api/routes/", "api/bodies.py", "api/idempotency.py", "api/errors.py", "api/services.py"),
    ),
    ("correlation id and event metadata (api/context.py)", ("api/context.py",)),
    ("starlette (routing, middleware, request, response)", ("starlette/",)),
    ("uvicorn (HTTP protocol, Python side)", ("uvicorn/",)),
    ("other Python (typing, uuid, datetime, asyncio...)", ("",)),
]
_PASS_THROUGH = ("api/cli.py", "api/__main__.py", "asyncio/runners.py", "asyncio/base_events.py")
_PASS_THROUGH += ("uvloop/", "<frozen runpy>", "runpy.py")
_IN_LOOP = "C code called from the event loop (uvloop I/O, asyncpg protocol, httptools)"


def summarize_profile(title: str, path: Path, requests: int, top: int = 8) -> None:
    if not path.exists():
        print(f"\n{title}: py-spy wrote nothing")
        return
    # The correlation middleware wraps the whole app: it is a place only as the innermost frame.
    found = harness.Profile.read(path).tally(
        PROFILE_PLACES,
        _PASS_THROUGH,
        _IN_LOOP,
        leaf=lambda frame: f"{frame.partition(' (')[0]} ({harness.frame_file(frame)})",
        innermost_only=("api/context.py",),
    )
    if not found.total:
        print(f"\n{title}: no samples")
        return
    busy_ms = found.total / PROFILE_RATE * 1e3
    print(
        f"\n{title}: {found.total:,} samples holding the GIL, "
        f"{busy_ms / max(requests, 1):.3f} ms per request ({requests:,} requests)"
    )
    found.print_shares(found.places)
    print("  innermost Python frames (self time):")
    found.print_shares(found.leaves, top)


async def profile(bench: Bench, seconds: int) -> None:
    spy = harness.find_py_spy(bench.args.py_spy)
    if not spy:
        return
    service, duration = bench.service, max(3, seconds)
    print(
        f"\nWhere the service's time goes: py-spy record --nonblocking --gil, {PROFILE_RATE} "
        f"samples/s, only while the server's thread holds the GIL (uvloop waits without it), "
        f"{duration} s per endpoint under the same load, after the measurements. Raw stacks: "
        f"{bench.logs}/profile-*.txt"
    )

    async def record(name: str) -> tuple[asyncio.subprocess.Process, Path]:
        await asyncio.sleep(2 * SETTLE)  # nothing left over from the previous load
        service.ensure_running()
        out = bench.logs / f"profile-{name}.txt"
        options = f"-p {service.pid} -d {duration} -r {PROFILE_RATE} --format raw -o {out}"
        argv = f"record --nonblocking --gil {options}".split()
        process = await asyncio.create_subprocess_exec(spy, *argv, stdout=DEVNULL, stderr=DEVNULL)
        await asyncio.sleep(0.2)
        return process, out

    for phase in bench.phases:
        if phase.service and phase.key != "s1":
            process, out = await record(phase.key)
            result = await bench.wrk(phase, duration)
            await process.wait()
            summarize_profile(phase.label, out, result[0])

    process, out = await record("prices")
    calls, deadline = 0, time.perf_counter() + duration
    while time.perf_counter() < deadline:
        await bench.mark_prices(calls)
        calls += 1
    await process.wait()
    summarize_profile("POST /positions/update-prices", out, calls)


OPTIONS = """
--quick        switch     smoke run: 1 round of 1 s phases, 2 update-prices calls
--rounds       5          rounds of every phase (default 5)
--seconds      4          seconds of load per phase, whole seconds (default 4)
--connections  32         wrk connections (default 32)
--threads      1          wrk threads (default 1)
--positions    10_000     positions of the seeded user (default 10000)
--price-calls  3          update-prices calls per round (default 3)
--database     bench_api  database to (re)create
--keep         switch     keep the database afterwards
--strict       switch     exit 1 when a target is missed
--profile      switch     afterwards, profile the service under each load with py-spy
--py-spy       str        the py-spy executable (default: PATH)
"""


def run(argv: list[str] | None = None) -> int:
    args, _ = harness.parse_options("python -m bench.api", __doc__, OPTIONS, argv)
    return harness.run_main(main, args)


if __name__ == "__main__":
    sys.exit(run())
