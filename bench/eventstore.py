"""Event store benchmark: appends and log reads through `EventStore` against raw asyncpg.

Run from the project root (the run takes about 2 minutes; --quick about 10 seconds):

    python -m bench.eventstore [--quick] [--rounds 5] [--seconds 5] [--keep] [--strict]

It drops and creates its own database (`bench_eventstore`, on the server of BENCH_DATABASE_URL,
default postgresql:///postgres, which is used as the admin connection only), applies the project's
migrations with `eventstore.migrate`, and measures in ONE run:

  (a)   baseline: raw asyncpg single-row INSERTs into `bench_baseline`, a plain table with the
        columns and column types of `events` (identity primary key, `tx_id xid8 DEFAULT
        pg_current_xact_id()`, jsonb data/metadata, the generated category column) and no other
        constraints, indexes or triggers; 16 dedicated connections, one event per autocommit
        INSERT;
  (ref) a reference, not a target: the same INSERTs into a copy of `events` with all its
        indexes and constraints, which tells the cost of the schema from the cost of the append;
  (b)   `EventStore.append` of one event from 16 concurrent writers through the store's pool, as
        the service appends, each append to a new stream with expected version NO_STREAM (0);
  (b')  the same with a connection held by each writer, as the baseline has;
  (c)   the same from 1 writer;
  (d)   reading the whole log: `store.read_all(batch_size=5000)` against a raw keyset SELECT of the
        same rows and columns on a plain `asyncpg.connect` whose jsonb codec decodes the JSON as
        the store's does (the store returns decoded events; so does the baseline).

Write phases run for a fixed time each, in the order a, ref, b, b', c in odd rounds and the reverse
in even ones; the reads then alternate over the final log. The report gives per-phase medians over
the rounds, the CPU time per event of this client and of the database's backends (read from /proc
when the server is local), the WAL per event, and the ratios (b)/(a), (c)/(a), (d store)/(d raw)
against the targets (b)/(a) >= 0.70 and (d) >= 0.70.

Both writers do the same client work per event: a fresh event id and stream id, a payload taken
from a pre-built set (building test data is not measured) and JSON-encoded with msgspec (the
baseline passes the text to asyncpg's default jsonb codec; the store encodes with its own codec).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import asyncpg
import msgspec

from bench.common import (
    DISTURBED,
    EventsSample,
    backend_pids,
    database_dsn,
    drop_database,
    machine_ticks,
    median,
    num,
    print_table,
    process_seconds,
)
from eventstore import (
    EventStore,
    ExpectedVersion,
    NewEvent,
    create_pool,
    init_connection,
    migrate,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ADMIN_DSN = "postgresql:///postgres"
BATCH = 5000
WRITERS = 16
TARGET = 0.70

BASELINE_TABLE = """
CREATE TABLE bench_baseline (
    global_position bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx_id           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id        uuid        NOT NULL,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL,
    stream_category text        NOT NULL GENERATED ALWAYS AS (split_part(stream_id, '-', 1)) STORED,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL DEFAULT 1,
    data            jsonb       NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}',
    recorded_at     timestamptz NOT NULL DEFAULT now()
)
"""

# A reference, not a target: the same INSERT into a copy of `events` with all its indexes and
# constraints (no function, no streams table), to tell the schema's cost from the append's.
REFERENCE_TABLE = "CREATE TABLE bench_events_copy (LIKE events INCLUDING ALL)"

_INSERT = """
INSERT INTO {table} (event_id, stream_id, stream_version, event_type, schema_version,
                     data, metadata)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""
BASELINE_INSERT = _INSERT.format(table="bench_baseline")
REFERENCE_INSERT = _INSERT.format(table="bench_events_copy")

RAW_READ = f"""
SELECT global_position, tx_id, event_id, stream_id, stream_version, event_type,
       schema_version, data, metadata, recorded_at
FROM events
WHERE global_position > $1
ORDER BY global_position
LIMIT {BATCH}
"""

_encoder = msgspec.json.Encoder(decimal_format="number")

Payload = tuple[dict, dict]


# -- test data ---------------------------------------------------------------------------------


def make_payloads(count: int, seed: int = 20251124) -> list[Payload]:
    """Realistic `PriceMarked` data (Decimal prices) and metadata, built before measuring."""
    rng = random.Random(seed)

    def uid() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    payloads = []
    for _ in range(count):
        price = Decimal(rng.randint(900_000, 1_100_000)).scaleb(-4)
        previous = price + Decimal(rng.randint(-500, 500)).scaleb(-4)
        quantity = Decimal(rng.choice([250_000, 1_000_000, 1_500_000, 5_000_000]))
        data = {
            "position_id": uid(),
            "book": f"RATES-{rng.randint(1, 40):02d}",
            "instrument_id": f"XS{rng.randint(10**9, 10**10 - 1)}",
            "price": price,
            "previous_price": previous,
            "quantity": quantity,
            "unrealised_pnl": ((price - previous) * quantity / 100).quantize(Decimal("0.01")),
            "currency": rng.choice(["EUR", "USD", "GBP", "CHF"]),
            "price_source": rng.choice(["BLOOMBERG", "REFINITIV", "ICE", "MANUAL"]),
            "marked_at": f"2025-11-24T{rng.randint(7, 18):02d}:{rng.randint(0, 59):02d}:"
            f"{rng.randint(0, 59):02d}.{rng.randint(0, 999_999):06d}Z",
        }
        metadata = {
            "actor": f"user-{rng.randint(1, 200)}",
            "role": rng.choice(["trader", "risk", "ops"]),
            "correlation_id": uid(),
            "causation_id": uid(),
        }
        payloads.append((data, metadata))
    return payloads


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Sample(EventsSample):
    wal_bytes: int  # WAL written by the whole server during the phase
    checkpoints: int  # checkpoints that started during the phase

    @property
    def wal_per_event(self) -> float:
        return self.wal_bytes / self.events if self.events else 0.0


class Meter:
    """Wall time, events, CPU (client, bench database backends, machine), WAL, checkpoints."""

    def __init__(self, admin: asyncpg.Connection, database: str) -> None:
        self._admin = admin
        self._database = database
        self.cores = os.cpu_count() or 1

    async def _server(self) -> tuple[int, int]:
        row = await self._admin.fetchrow(
            "SELECT pg_current_wal_lsn() AS lsn, "
            "checkpoints_timed + checkpoints_req AS checkpoints FROM pg_stat_bgwriter"
        )
        return row["lsn"], row["checkpoints"]

    async def measure(self, run: Callable[[], Awaitable[int]]) -> Sample:
        backends = await backend_pids(self._admin, self._database)
        lsn0, cp0 = await self._server()
        server0 = process_seconds(backends)
        busy0, total0 = machine_ticks()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        events = await run()
        wall1, cpu1 = time.perf_counter(), time.process_time()
        busy1, total1 = machine_ticks()
        server1 = process_seconds(backends)
        lsn1, cp1 = await self._server()
        seconds = wall1 - wall0
        machine = (busy1 - busy0) / (total1 - total0) * self.cores if total1 > total0 else 0.0
        server = None if server0 is None or server1 is None else (server1 - server0) / seconds
        return Sample(
            events, seconds, (cpu1 - cpu0) / seconds, server, machine, lsn1 - lsn0, cp1 - cp0
        )


# -- the workloads -----------------------------------------------------------------------------


class Workloads:
    def __init__(
        self,
        store: EventStore,
        store_pool: asyncpg.Pool,
        baseline_connections: list[asyncpg.Connection],
        raw_reader: asyncpg.Connection,
        payloads: list[Payload],
    ) -> None:
        self.store = store
        self.store_pool = store_pool
        self.baseline_connections = baseline_connections
        self.raw_reader = raw_reader
        self.payloads = payloads

    def inserts(self, sql: str, duration: float) -> Callable[[], Awaitable[int]]:
        """Raw single-row autocommit INSERTs, one connection per writer."""

        async def run() -> int:
            deadline = time.perf_counter() + duration
            counts = await asyncio.gather(
                *(
                    self._insert_writer(connection, sql, deadline, offset=i * 997)
                    for i, connection in enumerate(self.baseline_connections)
                )
            )
            return sum(counts)

        return run

    async def _insert_writer(
        self, connection: asyncpg.Connection, sql: str, deadline: float, offset: int
    ) -> int:
        payloads, count, encode, n = self.payloads, len(self.payloads), _encoder.encode, 0
        while time.perf_counter() < deadline:
            data, metadata = payloads[(offset + n) % count]
            await connection.execute(
                sql,
                uuid.uuid4(),
                f"bench-{uuid.uuid4()}",
                1,
                "PriceMarked",
                1,
                encode(data).decode(),
                encode(metadata).decode(),
            )
            n += 1
        return n

    def appends(
        self, writers: int, duration: float, *, own_connections: bool = False
    ) -> Callable[[], Awaitable[int]]:
        """`EventStore.append` of one event to a new stream (NO_STREAM), `writers` at once,
        through the pool or with a connection held by each writer (as the raw baseline has)."""

        async def run() -> int:
            deadline = time.perf_counter() + duration
            counts = await asyncio.gather(
                *(self._store_writer(deadline, i * 997, own_connections) for i in range(writers))
            )
            return sum(counts)

        return run

    async def _store_writer(self, deadline: float, offset: int, own_connection: bool) -> int:
        if not own_connection:
            return await self._store_appends(deadline, offset, None)
        async with self.store_pool.acquire() as connection:
            return await self._store_appends(deadline, offset, connection)

    async def _store_appends(
        self, deadline: float, offset: int, connection: asyncpg.Connection | None
    ) -> int:
        payloads, count, store, n = self.payloads, len(self.payloads), self.store, 0
        while time.perf_counter() < deadline:
            data, metadata = payloads[(offset + n) % count]
            await store.append(
                f"bench-{uuid.uuid4()}",
                [
                    NewEvent(
                        event_id=uuid.uuid4(),
                        event_type="PriceMarked",
                        data=data,
                        metadata=metadata,
                    )
                ],
                expected_version=ExpectedVersion.NO_STREAM,
                connection=connection,
            )
            n += 1
        return n

    async def read_store(self) -> int:
        n = 0
        async for batch in self.store.read_all(batch_size=BATCH):
            n += len(batch)
        return n

    async def read_raw(self) -> int:
        n, last = 0, 0
        while True:
            rows = await self.raw_reader.fetch(RAW_READ, last)
            n += len(rows)
            if len(rows) < BATCH:
                return n
            last = rows[-1]["global_position"]


# -- the run -----------------------------------------------------------------------------------


async def recreate_database(admin: asyncpg.Connection, name: str) -> None:
    await drop_database(admin, name)
    await admin.execute(f'CREATE DATABASE "{name}"')


def _us(value: float | None) -> str:
    return num(value, ".1f" if value is not None and value < 10 else ",.0f")


PHASES = {  # key: label; a round runs the writes in order, the next one in reverse
    "a": "(a) raw INSERT, plain table, 16 conns",
    "r": "(ref) raw INSERT, copy of events, 16 conns",
    "b": "(b) store.append, 16 writers, pool",
    "p": "(b') store.append, 16 writers, 16 conns",
    "c": "(c) store.append, 1 writer",
    "ds": "(d) store.read_all, batch 5000",
    "dr": "(d) raw keyset SELECT, batch 5000",
}


async def main(args: argparse.Namespace) -> int:
    admin_dsn = os.environ.get("BENCH_DATABASE_URL", DEFAULT_ADMIN_DSN)
    dsn = database_dsn(admin_dsn, args.database)
    rounds, seconds, warmup = (1, 1.0, 0.3) if args.quick else (args.rounds, args.seconds, 1.0)
    started = time.perf_counter()

    admin = await asyncpg.connect(admin_dsn)
    await recreate_database(admin, args.database)
    setup = await asyncpg.connect(dsn)
    await migrate(setup, ROOT / "migrations")
    await setup.execute(BASELINE_TABLE)
    await setup.execute(REFERENCE_TABLE)
    server = await setup.fetchrow(
        "SELECT current_setting('server_version') AS version, "
        "current_setting('synchronous_commit') AS sync, current_setting('fsync') AS fsync, "
        "current_setting('shared_buffers') AS shared_buffers"
    )
    await setup.close()
    try:
        await admin.execute("CHECKPOINT")  # start from a clean slate (needs a superuser)
    except asyncpg.PostgresError:
        pass

    pool = await create_pool(dsn, min_size=WRITERS + 1, max_size=WRITERS + 1)
    store = EventStore(pool)
    baseline_connections = [await asyncpg.connect(dsn) for _ in range(WRITERS)]
    # The raw reader decodes event JSON exactly as the store does (msgspec, Decimal numbers): the
    # ratio is the cost of the store's ordering, barrier and records, not of parsing JSON.
    raw_reader = await asyncpg.connect(dsn)
    await init_connection(raw_reader)
    work = Workloads(store, pool, baseline_connections, raw_reader, make_payloads(4096))
    meter = Meter(admin, args.database)

    print(
        f"Event store benchmark: {meter.cores} cores, Python {platform.python_version()} "
        f"({args.loop}), asyncpg {asyncpg.__version__}, PostgreSQL {server['version'].split()[0]} "
        f"(fsync={server['fsync']}, synchronous_commit={server['sync']}, "
        f"shared_buffers={server['shared_buffers']})"
    )
    print(
        f"{'QUICK smoke run: ' if args.quick else ''}{rounds} round(s), {seconds:g} s per write "
        f"phase, database {args.database}; (b) and (c) append one event to a new stream each, "
        f"expected version NO_STREAM"
    )

    writes = "arbpc"
    # Warm up: connections, prepared statements, plan caches, the first pages of every table.
    for key in writes:
        await write_phase(work, key, warmup)()

    samples: dict[str, list[Sample]] = {key: [] for key in PHASES}
    print(f"\n{'round':<7}" + "".join(f"{k:>10} " for k in writes) + "  (events/s)")
    for r in range(rounds):
        order = writes if r % 2 == 0 else writes[::-1]
        for key in order:
            samples[key].append(await meter.measure(write_phase(work, key, seconds)))
        print(
            f"{r + 1:<7}"
            + "".join(f"{samples[k][-1].rate:>10,.0f}{samples[k][-1].mark()}" for k in writes),
            flush=True,
        )

    # Reads: the whole log as it is now, after all the writes above; alternating, after a warm-up
    # pass of each (which also sets the hint bits of the freshly written rows).
    async with pool.acquire() as connection:
        await connection.execute("VACUUM (ANALYZE) events")
    log_size = await work.read_raw()
    await work.read_store()
    for r in range(rounds):
        for key in ("ds", "dr") if r % 2 == 0 else ("dr", "ds"):
            samples[key].append(
                await meter.measure(work.read_store if key == "ds" else work.read_raw)
            )
    for key in ("ds", "dr"):
        print(
            f"{'d ' + ('store' if key == 'ds' else 'raw'):<7}"
            + "".join(f"{s.rate:>10,.0f}{s.mark()}" for s in samples[key])
        )
    print(f"(* = other processes used more than {DISTURBED} cores during that phase)")
    wrong = sorted({s.events for k in ("ds", "dr") for s in samples[k]} - {log_size})
    if wrong:
        print(f"WARNING: some reads saw {wrong} events, not {log_size} (an open transaction?)")

    # -- report ------------------------------------------------------------------------------
    rows = []
    for key, label in PHASES.items():
        phase = samples[key]
        rates = [s.rate for s in phase]
        rows.append(
            [
                label,
                f"{statistics.median(rates):,.0f}",
                f"{min(rates):,.0f}",
                f"{max(rates):,.0f}",
                _us(median([s.us_per(s.client_cpu) for s in phase])),
                _us(median([s.us_per(s.server_cpu) for s in phase])),
                f"{median([s.machine_cpu for s in phase]):.2f}",
                num(median([s.other_cpu for s in phase]), ".2f"),
                "-" if key.startswith("d") else f"{median([s.wal_per_event for s in phase]):,.0f}",
            ]
        )
    print_table(
        f"Medians of {rounds} round(s). CPU per event in microseconds: client = this Python "
        f"process, server = the backends of {args.database};\nmachine = cores busy out of "
        f"{meter.cores}, other = of which neither (WAL writer, checkpointer, other processes); "
        f"WAL = whole server, bytes per event",
        [
            "phase",
            "events/s",
            "min",
            "max",
            "client us/ev",
            "server us/ev",
            "machine",
            "other",
            "WAL B/ev",
        ],
        rows,
    )

    def ratio(top: str, bottom: str) -> tuple[float, float, float]:
        paired = [t.rate / b.rate for t, b in zip(samples[top], samples[bottom], strict=True)]
        value = statistics.median(s.rate for s in samples[top]) / statistics.median(
            s.rate for s in samples[bottom]
        )
        return value, min(paired), max(paired)

    ratio_rows, missed = [], []
    for name, top, bottom, target in [
        ("(b)/(a)  store, 16 writers (pool) / raw INSERT", "b", "a", TARGET),
        ("(b')/(a) store, 16 writers (16 conns) / raw INSERT", "p", "a", TARGET),
        ("(c)/(a)  store, 1 writer / raw INSERT", "c", "a", None),
        ("(d)      store read / raw read", "ds", "dr", TARGET),
        ("(b)/(ref) store / raw INSERT into events' schema", "b", "r", None),
        ("(ref)/(a) events' schema / plain table", "r", "a", None),
    ]:
        value, low, high = ratio(top, bottom)
        verdict = "info" if target is None else ("met" if value >= target else "MISSED")
        if verdict == "MISSED":
            missed.append(name.split()[0])
        ratio_rows.append(
            [
                name,
                f"{value:.2f}",
                f"{low:.2f}-{high:.2f}",
                "-" if target is None else f">= {target:.2f}",
                verdict,
            ]
        )
    print_table(
        "Ratios of the medians (range: the ratios within each round)",
        ["ratio", "value", "range", "target", "verdict"],
        ratio_rows,
    )

    checkpoints = sum(s.checkpoints for k in writes for s in samples[k])
    print(
        f"\nLog read in (d): {log_size:,} events. Checkpoints during write phases: {checkpoints}. "
        f"Run time {time.perf_counter() - started:.0f} s."
    )
    if missed:
        print(f"TARGET MISSED: {', '.join(missed)} below {TARGET:.2f}.")

    await raw_reader.close()
    for connection in baseline_connections:
        await connection.close()
    await store.close()
    await pool.close()
    if not args.keep:
        await drop_database(admin, args.database)
    await admin.close()
    return 1 if missed and args.strict else 0


def write_phase(work: Workloads, key: str, seconds: float) -> Callable[[], Awaitable[int]]:
    if key == "a":
        return work.inserts(BASELINE_INSERT, seconds)
    if key == "r":
        return work.inserts(REFERENCE_INSERT, seconds)
    if key == "p":
        return work.appends(WRITERS, seconds, own_connections=True)
    return work.appends(WRITERS if key == "b" else 1, seconds)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.eventstore", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 1 s phases")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every phase (default 5)")
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="seconds of load per write phase (default 5)"
    )
    parser.add_argument("--database", default="bench_eventstore", help="database to (re)create")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="event loop (default uvloop, as under uvicorn[standard])",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            args.loop = "asyncio"
        else:
            return uvloop.run(main(args))
    return asyncio.run(main(args))


if __name__ == "__main__":
    sys.exit(run())
