"""Event store benchmark: appends and log reads through `EventStore` against raw asyncpg.
Phases (raw INSERTs, appends, log reads) and targets: BENCHMARKS.md, "Event store".

    python -m bench.eventstore [--quick] [--rounds 5] [--seconds 5] [--keep] [--strict]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from dataclasses import dataclass
from decimal import Decimal

import asyncpg
import msgspec

from bench import harness
from eventstore import EventStore, ExpectedVersion, NewEvent, create_pool, init_connection

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

_INSERT = """INSERT INTO {} (event_id, stream_id, stream_version, event_type, schema_version,
data, metadata) VALUES ($1, $2, $3, $4, $5, $6, $7)"""
INSERTS = {"a": _INSERT.format("bench_baseline"), "r": _INSERT.format("bench_events_copy")}
RAW_READ = f"""SELECT {EventStore.COLUMNS} FROM events
WHERE global_position > $1 ORDER BY global_position LIMIT {BATCH}"""
WAL = """SELECT pg_current_wal_lsn(), checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"""

PHASES = {  # key: label; a round runs the writes in order, the next one in reverse
    "a": "(a) raw INSERT, plain table, 16 conns",
    "r": "(ref) raw INSERT, copy of events, 16 conns",
    "b": "(b) store.append, 16 writers, pool",
    "p": "(b') store.append, 16 writers, 16 conns",
    "c": "(c) store.append, 1 writer",
    "ds": "(d) store.read_all, batch 5000",
    "dr": "(d) raw keyset SELECT, batch 5000",
}
WRITES, READS = "arbpc", ("ds", "dr")
RATIOS = [  # the ratio, what it compares, of which phases, its target
    ("(b)/(a)", "store, 16 writers (pool) / raw INSERT", "b", "a", TARGET),
    ("(b')/(a)", "store, 16 writers (16 conns) / raw INSERT", "p", "a", TARGET),
    ("(c)/(a)", "store, 1 writer / raw INSERT", "c", "a", None),
    ("(d)", "store read / raw read", "ds", "dr", TARGET),
    ("(b)/(ref)", "store / raw INSERT into events' schema", "b", "r", None),
    ("(ref)/(a)", "events' schema / plain table", "r", "a", None),
]

_encoder = msgspec.json.Encoder(decimal_format="number")

Payload = tuple[dict, dict]


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


@dataclass
class Events(harness.Sample):
    wal_bytes: int = 0
    checkpoints: int = 0  # checkpoints that started during the phase


class Workloads:
    """The phases, each a coroutine that returns the events it wrote or read."""

    def __init__(self, dsn: str, admin: asyncpg.Connection, database: str) -> None:
        self.dsn, self.admin, self.database = dsn, admin, database
        self.payloads = make_payloads(4096)
        self.meter = harness.CpuMeter()

    async def open(self) -> None:
        self.pool = await create_pool(self.dsn, min_size=WRITERS + 1, max_size=WRITERS + 1)
        self.store = EventStore(self.pool)
        self.baseline = [await asyncpg.connect(self.dsn) for _ in range(WRITERS)]
        # The raw reader decodes event JSON exactly as the store does (msgspec, Decimal
        # numbers): the ratio is the cost of the store's ordering, barrier and records.
        self.raw_reader = await asyncpg.connect(self.dsn)
        await init_connection(self.raw_reader)

    async def close(self) -> None:
        for connection in [self.raw_reader, *self.baseline]:
            await connection.close()
        await self.store.close()
        await self.pool.close()

    async def measure(self, run: Callable[[], Awaitable[int]]) -> Events:
        """The phase's CPU (this process, the database's backends), WAL and checkpoints."""
        lsn0, checkpoints0 = await self.admin.fetchrow(WAL)
        backends = await harness.backend_pids(self.admin, self.database)
        sample = await self.meter.measure(run, Events, server=backends)
        lsn1, checkpoints1 = await self.admin.fetchrow(WAL)
        sample.wal_bytes, sample.checkpoints = lsn1 - lsn0, checkpoints1 - checkpoints0
        return sample

    def write(self, key: str, seconds: float) -> Callable[[], Awaitable[int]]:
        """Phase `key` for `seconds`: raw INSERTs (a, r) or appends (b, p, c)."""

        async def run() -> int:
            deadline = time.perf_counter() + seconds
            if key in INSERTS:
                sql = INSERTS[key]
                writers = [
                    self._inserts(c, sql, deadline, i * 997) for i, c in enumerate(self.baseline)
                ]
            else:
                count = 1 if key == "c" else WRITERS
                writers = [self._appends(deadline, i * 997, key == "p") for i in range(count)]
            return sum(await asyncio.gather(*writers))

        return run

    async def _inserts(
        self, connection: asyncpg.Connection, sql: str, deadline: float, offset: int
    ) -> int:
        """Raw single-row autocommit INSERTs on one connection."""
        payloads, count, encode, n = self.payloads, len(self.payloads), _encoder.encode, 0
        while time.perf_counter() < deadline:
            data, metadata = payloads[(offset + n) % count]
            stream = f"bench-{uuid.uuid4()}"
            args = (encode(data).decode(), encode(metadata).decode())
            await connection.execute(sql, uuid.uuid4(), stream, 1, "PriceMarked", 1, *args)
            n += 1
        return n

    async def _appends(self, deadline: float, offset: int, own_connection: bool) -> int:
        """Appends of one event to a new stream, through the pool or on a connection held by the
        writer (as the raw baseline has)."""
        payloads, count, store, n = self.payloads, len(self.payloads), self.store, 0
        async with self.pool.acquire() if own_connection else nullcontext() as connection:
            while time.perf_counter() < deadline:
                data, metadata = payloads[(offset + n) % count]
                await store.append(
                    f"bench-{uuid.uuid4()}",
                    [NewEvent(uuid.uuid4(), "PriceMarked", data, metadata)],
                    expected_version=ExpectedVersion.NO_STREAM,
                    connection=connection,
                )
                n += 1
        return n

    def read(self, key: str) -> Callable[[], Awaitable[int]]:
        return self.read_store if key == "ds" else self.read_raw

    async def read_store(self) -> int:
        return sum([len(batch) async for batch in self.store.read_all(batch_size=BATCH)])

    async def read_raw(self) -> int:
        n, last = 0, 0
        while True:
            rows = await self.raw_reader.fetch(RAW_READ, last)
            n += len(rows)
            if len(rows) < BATCH:
                return n
            last = rows[-1]["global_position"]


def _us(value: float | None) -> str:
    return harness.num(value, ".1f" if value is not None and value < 10 else ",.0f")


async def main(args: argparse.Namespace) -> int:
    rounds, seconds, warmup = (1, 1.0, 0.3) if args.quick else (args.rounds, args.seconds, 1.0)
    started = time.perf_counter()
    async with harness.scratch_database(args.database, args.keep) as (admin, dsn):
        setup = await harness.migrated(dsn, BASELINE_TABLE, REFERENCE_TABLE)
        pg = await harness.postgres(setup, "fsync", "synchronous_commit", "shared_buffers")
        await setup.close()
        await harness.checkpoint(admin)
        work = Workloads(dsn, admin, args.database)
        await work.open()
        try:
            print(
                f"Event store benchmark: {harness.CORES} cores, Python {platform.python_version()} "
                f"({args.loop}), asyncpg {asyncpg.__version__}, {pg}"
            )
            print(
                f"{'QUICK smoke run: ' if args.quick else ''}{rounds} round(s), {seconds:g} s per "
                f"write phase, database {args.database}; (b) and (c) append one event to a new "
                f"stream each, expected version NO_STREAM"
            )
            samples = await measure(work, rounds, seconds, warmup)
        finally:
            await work.close()
    return report(args, samples, rounds, started)


async def measure(
    work: Workloads, rounds: int, seconds: float, warmup: float
) -> tuple[dict[str, list[Events]], int]:
    # Warm up: connections, prepared statements, plan caches, the first pages of every table.
    for key in WRITES:
        await work.write(key, warmup)()

    async def show(r: int, samples: dict[str, list[Events]]) -> None:
        print(harness.round_line(f"{r + 1}", (samples[k][-1] for k in WRITES), 10), flush=True)

    print(f"\n{'round':<7}" + "".join(f"{k:>10} " for k in WRITES) + "  (events/s)")
    samples = await harness.alternate(
        rounds, WRITES, lambda key, _: work.measure(work.write(key, seconds)), show
    )
    # Reads: the whole log as it is now, after all the writes above; alternating, after a
    # warm-up pass of each (which also sets the hint bits of the freshly written rows).
    async with work.pool.acquire() as connection:
        await connection.execute("VACUUM (ANALYZE) events")
    log_size = await work.read_raw()
    await work.read_store()

    reads = await harness.alternate(rounds, READS, lambda key, _: work.measure(work.read(key)))
    for key in READS:
        print(harness.round_line("d " + ("store" if key == "ds" else "raw"), reads[key], 10))
    print(harness.DISTURBED_NOTE)
    wrong = sorted({s.handled for k in READS for s in reads[k]} - {log_size})
    if wrong:
        print(f"WARNING: some reads saw {wrong} events, not {log_size} (an open transaction?)")
    return samples | reads, log_size


def report(args: argparse.Namespace, measured: tuple, rounds: int, started: float) -> int:
    samples, log_size = measured

    def med(key: str, figure: Callable[[Events], float | None]) -> float | None:
        return harness.median(figure(s) for s in samples[key])

    def wal(key: str) -> str:
        per_event = med(key, lambda s: s.handled and s.wal_bytes / s.handled)
        return "-" if key in READS else f"{per_event:,.0f}"

    harness.print_columns(
        f"Medians of {rounds} round(s). CPU per event in microseconds: client = this Python "
        f"process, server = the backends of {args.database};\nmachine = cores busy out of "
        f"{harness.CORES}, other = of which neither (WAL writer, checkpointer, other processes); "
        f"WAL = whole server, bytes per event",
        [
            ("phase", lambda k: PHASES[k]),
            *harness.rate_columns("events/s", lambda k: samples[k]),
            ("client us/ev", lambda k: _us(med(k, lambda s: s.us_per(s.cores.own)))),
            ("server us/ev", lambda k: _us(med(k, lambda s: s.us_per(s.cores["server"])))),
            ("machine", lambda k: f"{med(k, lambda s: s.cores.machine):.2f}"),
            ("other", lambda k: harness.num(med(k, lambda s: s.cores.other), ".2f")),
            ("WAL B/ev", wal),
        ],
        PHASES,
    )
    verdicts, rows = harness.Verdicts(), []
    for short, description, top, bottom, target in RATIOS:
        name = f"{short:<8} {description}"
        rows.append(harness.ratio_row(name, samples[top], samples[bottom], target, verdicts, short))
    harness.print_table(
        "Ratios of the medians (range: the ratios within each round)",
        ["ratio", "value", "range", "target", "verdict"],
        rows,
    )
    checkpoints = sum(s.checkpoints for k in WRITES for s in samples[k])
    print(
        f"\nLog read in (d): {log_size:,} events. Checkpoints during write phases: {checkpoints}. "
        f"Run time {time.perf_counter() - started:.0f} s."
    )
    verdicts.report(f" below {TARGET:.2f}")
    return 1 if verdicts.missed and args.strict else 0


OPTIONS = """
--quick     switch            smoke run: 1 round of 1 s phases
--rounds    5                 rounds of every phase (default 5)
--seconds   5.0               seconds of load per write phase (default 5)
--database  bench_eventstore  database to (re)create
--keep      switch            keep the database afterwards
--loop      uvloop|asyncio    event loop (default uvloop, as under uvicorn[standard])
--strict    switch            exit 1 when a target is missed
"""


def run(argv: list[str] | None = None) -> int:
    args, _ = harness.parse_options("python -m bench.eventstore", __doc__, OPTIONS, argv)
    return harness.run_main(main, args)


if __name__ == "__main__":
    sys.exit(run())
