"""Replay and rebuild benchmark: the whole log through the positions projector, beside a raw read.
The generated log, phases, checks and targets: BENCHMARKS.md, "Replay and rebuild".

    python -m bench.replay [--events 1000000] [--rounds 3] [--keep] [--strict] [--reuse-pool]
                           [--profile [--py-spy PATH] [--profile-dir DIR]]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from itertools import accumulate
from pathlib import Path
from random import Random
from uuid import UUID

import asyncpg

from bench import harness
from domain import commands
from domain.errors import DomainError
from domain.events import Event
from domain.position import Position, decide, decide_market_prices, evolve
from domain.streams import MARKET_STREAM, position_stream
from eventstore import EventStore, ExpectedVersion, NewEvent, StreamAppend, opened_store
from eventstore.checkpoints import reset_checkpoint
from eventstore.codec import init_connection
from eventstore.connections import create_pool
from projections.runner import differing_rows, rebuild, rebuild_into

BATCH = 1000  # the raw read's batch (catch_up's default)
WRITE_BATCH = 5000  # events per atomic append while generating
POOL = {"min_size": 3, "max_size": 3}  # the runner holds one connection, reads the log on another
REPLAY_TARGET = 0.5
REBUILD_SECONDS = 60.0  # for 1,000,000 events
SCRATCH = "bench_replay"  # the schema a replay builds into
NO_SYNC = {"synchronous_commit": "off"}  # for writing the log

RAW_READ = f"""SELECT {EventStore.COLUMNS} FROM events
WHERE (tx_id, global_position) > ($1::xid8, $2::bigint) ORDER BY tx_id, global_position LIMIT $3"""
EXPECTED_SQL = """SELECT status, count(*), sum(version), sum(realized_pnl) FROM positions
GROUP BY status ORDER BY status"""

# The projector reads the rows a batch changes by primary key; a sequential scan per batch
# instead means its statement was planned without statistics (see BENCHMARKS.md).
SEQ_SCANS = """SELECT seq_scan FROM pg_stat_user_tables
WHERE schemaname = $1 AND relname = 'positions'"""

PHASES = {
    "raw": f"raw keyset SELECT + JSON decode, batch {BATCH}",
    "read": f"store.read_all, batch {BATCH} (information)",
    "replay": "replay: rebuild_into (fold in memory, COPY)",
    "rebuild": "rebuild: rebuild_into + swap, end to end",
}


STRATEGIES = ["swing", "momentum", "carry", "mean-reversion", "breakout", "pairs", "earnings"]
NOTES = [
    *("scaling in on weakness", "earnings next week", "hedge for the tech book"),
    *("watch the 200-day average", "reduce before the Fed", "client order", None),
]
USER_AGENTS = ["desk-client/4.2.1", "python-httpx/0.28.1", "okhttp/4.12.0", "Mozilla/5.0"]
FEED = dict(actor="price-feed", role="service", client_ip="10.0.0.7", user_agent="price-feed/1.8")
# An open position's next event, when it is not its last: (what, weight).
AMENDMENTS = dict(mark=30, stop=20, notes=12, target=6, strategy=4, increase=8, reduce=10)
CENT, MILLI = Decimal("0.01"), Decimal("0.001")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # of the symbols


@dataclass
class Live:  # a position: its state, how many events it has left, its index in `alive`
    position_id: UUID
    state: Position | None
    left: int
    slot: int


def expected_rows(states: Iterable[Position]) -> list[tuple[str, int, int, Decimal]]:
    """What the read model must hold: per status, positions, versions, realized P&L."""
    rows: dict[str, tuple[int, int, Decimal]] = {}
    for state in states:
        if not state.deleted:
            n, versions, pnl = rows.get(state.status, (0, 0, Decimal(0)))
            rows[state.status] = (n + 1, versions + state.version, pnl + state.realized_pnl)
    return [(status, *row) for status, row in sorted(rows.items())]


class LogGenerator:
    """A realistic, valid log: commands decided by the domain on each position's folded state."""

    def __init__(
        self, events: int, positions: int, owners: int, symbols: int, active: int, market_every: int
    ) -> None:
        self.rng = rng = Random(20261124)
        self.total, self.positions, self.market_every = events, positions, market_every
        self.active_target = max(1, active)
        position_events = events - (events // market_every if market_every else 0)
        self.mean_life = max(2.0, position_events / max(1, positions))
        names: set[str] = set()
        while len(names) < symbols:
            names.add("".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 5))))
        self.symbols = sorted(names)
        # Zipf-like popularity: a few symbols and owners carry most of the activity.
        self.symbol_weights = list(accumulate(1 / (i + 1) ** 0.8 for i in range(symbols)))
        self.cents = {s: rng.randint(500, 60_000) for s in self.symbols}  # price in cents
        self.owners = [f"trader-{i:05d}" for i in range(owners)]
        self.owner_weights = list(accumulate(1 / (i + 1) ** 0.6 for i in range(owners)))
        self.owner_meta = {}
        for owner in self.owners:
            ip = "10." + ".".join(str(rng.randint(1, 254)) for _ in range(3))
            agent = rng.choice(USER_AGENTS)
            self.owner_meta[owner] = dict(actor=owner, role="user", client_ip=ip, user_agent=agent)
        self.amendment_weights = list(accumulate(AMENDMENTS.values()))
        self.made: list[Live] = []  # every position, in the order opened
        self.alive: list[Live] = []  # those still getting events
        self.types: Counter[str] = Counter()
        self.emitted = self.refused = self.market_version = 0
        self.clock = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)

    def _uuid(self) -> UUID:
        return UUID(int=self.rng.getrandbits(128), version=4)

    def _price(self, symbol: str) -> Decimal:
        return Decimal(self.cents[symbol]).scaleb(-2)

    def _metadata(self, base: dict) -> dict:
        return {**base, "correlation_id": str(self._uuid()), "causation_id": str(self._uuid())}

    def _level(self, price: Decimal, fraction: float) -> Decimal:
        return max(CENT, (price * Decimal(fraction)).quantize(CENT))

    def _quantity(self) -> Decimal:
        rng = self.rng
        if rng.random() < 0.2:  # fractional (crypto-like) sizes
            return Decimal(rng.randint(1, 50_000)).scaleb(-3)
        return Decimal(rng.choice([1, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000]))

    def _open(self) -> commands.OpenPosition:
        rng, level = self.rng, self._level
        position_id = self._uuid()
        symbol = rng.choices(self.symbols, cum_weights=self.symbol_weights)[0]
        owner = rng.choices(self.owners, cum_weights=self.owner_weights)[0]
        side = "long" if rng.random() < 0.7 else "short"
        sign = 1 if side == "long" else -1
        entry = price = self._price(symbol)
        pending = rng.random() < 0.1
        if pending:
            fraction = rng.uniform(0.97, 1.0) if side == "long" else rng.uniform(1.0, 1.03)
            entry = level(price, fraction)
        stop = level(entry, 1 - sign * rng.uniform(0.02, 0.1)) if rng.random() < 0.4 else None
        target = level(entry, 1 + sign * rng.uniform(0.03, 0.2)) if rng.random() < 0.3 else None
        return commands.OpenPosition(
            at=self.clock,
            position_id=position_id,
            owner=owner,
            symbol=symbol,
            side=side,
            quantity=self._quantity(),
            entry_price=entry,
            stop_loss=stop,
            take_profit=target,
            strategy=rng.choice(STRATEGIES) if rng.random() < 0.6 else None,
            notes=rng.choice(NOTES) if rng.random() < 0.2 else None,
            pending=pending,
        )

    def _next_command(self, live: Live, state: Position) -> commands.Command:
        rng, at, amend = self.rng, self.clock, commands.AmendPosition
        price = self._price(state.symbol)
        if state.status == "pending":
            if rng.random() < 0.15:
                live.left = 1
                return commands.ClosePosition(at=at, exit_price=None)  # a cancelled order
            return commands.FillPosition(at=at, entry_price=None if rng.random() < 0.5 else price)
        if live.left == 1:  # its last event in this log
            roll = rng.random()
            if roll < 0.70:
                return commands.ClosePosition(at=at, exit_price=price)
            if roll < 0.72:
                return commands.DeletePosition(at=at)
            return amend(at=at, current_price=price)  # still open at the end
        sign = 1 if state.side == "long" else -1
        what = rng.choices(list(AMENDMENTS), cum_weights=self.amendment_weights)[0]
        if what == "stop":
            stop = self._level(state.entry_price, 1 - sign * rng.uniform(0.01, 0.1))
            return amend(at=at, stop_loss=None if rng.random() < 0.05 else stop)
        if what == "target":
            target = self._level(state.entry_price, 1 + sign * rng.uniform(0.02, 0.2))
            return amend(at=at, take_profit=target)
        if what in ("notes", "strategy"):
            return amend(at=at, **{what: rng.choice(NOTES if what == "notes" else STRATEGIES)})
        if what == "increase":
            return commands.IncreasePosition(at=at, quantity=self._quantity(), price=price)
        if what == "reduce":
            part = (state.quantity * Decimal(rng.randint(1, 5)) / 10).quantize(MILLI, ROUND_DOWN)
            if 0 < part < state.quantity:
                return commands.ClosePosition(at=at, exit_price=price, quantity=part)
        return amend(at=at, current_price=price)

    def _market(self) -> tuple[str, Event, dict, int]:
        rng = self.rng
        prices = {}
        for symbol in rng.sample(self.symbols, min(len(self.symbols), rng.randint(20, 100))):
            cents = self.cents[symbol]
            self.cents[symbol] = max(100, cents + round(cents * rng.gauss(0, 0.004)))
            prices[symbol] = self._price(symbol)
        [event] = decide_market_prices(commands.UpdateMarketPrices(at=self.clock, prices=prices))
        self.market_version += 1
        return MARKET_STREAM, event, self._metadata(FEED), self.market_version - 1

    def _position_event(self) -> tuple[str, Event, dict, int]:
        """The next event of some position: (stream, event, metadata, version before it)."""
        rng, alive = self.rng, self.alive
        opening = len(self.made) < self.positions and (
            len(alive) < self.active_target and rng.random() < 0.5 or not alive
        )
        if opening or not alive:
            command = self._open()
            life = max(2, round(rng.uniform(0.3, 1.7) * self.mean_life))
            live = Live(command.position_id, None, life, len(alive))
            alive.append(live)
            self.made.append(live)
        else:
            live = alive[rng.randrange(len(alive))]
            assert live.state is not None
            command = self._next_command(live, live.state)
        before = live.state
        try:
            events = decide(command, before)
        except DomainError:
            self.refused, events = self.refused + 1, []
        if len(events) != 1:  # refused, or a change to the value it has: a mark instead
            assert before is not None
            mark = commands.AmendPosition(at=self.clock, current_price=self._price(before.symbol))
            events = decide(mark, before)
        [event] = events
        live.state = state = evolve(before, event)
        live.left -= 1
        if live.left <= 0 or state.status == "closed" or state.deleted:
            last = alive.pop()  # the last one takes its place in the list
            if last is not live:
                alive[live.slot], last.slot = last, live.slot
        metadata = self._metadata(self.owner_meta[state.owner])
        return position_stream(live.position_id), event, metadata, before.version if before else 0

    def batches(self, size: int) -> Iterator[list[StreamAppend]]:
        """The log in atomic appends of `size` events (each stream once per append)."""
        while self.emitted < self.total:
            streams: dict[str, tuple[int, list[NewEvent]]] = {}
            for _ in range(min(size, self.total - self.emitted)):
                self.clock += timedelta(microseconds=self.rng.randint(1_000, 400_000))
                self.emitted += 1
                market = self.market_every and self.emitted % self.market_every == 0
                make = self._market if market else self._position_event
                stream, event, metadata, before = make()
                name = type(event).__name__
                self.types[name] += 1
                new = NewEvent(self._uuid(), name, event, metadata, event.SCHEMA_VERSION)
                streams.setdefault(stream, (before, []))[1].append(new)
            yield [
                StreamAppend(stream, events, before or ExpectedVersion.NO_STREAM)
                for stream, (before, events) in streams.items()
            ]


@dataclass
class Replayed(harness.Sample):
    seq_scans: int | None = None  # of the positions table the projector wrote


async def raw_read(connection: asyncpg.Connection) -> int:
    """Every row in log order, batch by batch, its JSON decoded by the codec: nothing else."""
    count, cursor = 0, (0, 0)
    while len(rows := await connection.fetch(RAW_READ, *cursor, BATCH)) == BATCH:
        count, cursor = count + BATCH, (rows[-1]["tx_id"], rows[-1]["global_position"])
    return count + len(rows)


async def store_read(store: EventStore) -> int:
    return sum([len(batch) async for batch in store.read_all(batch_size=BATCH)])


async def drop_scratch(pool: asyncpg.Pool, schema: str) -> None:
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await reset_checkpoint(connection, f"rebuild:{schema}")


class Phases:
    """The measured phases over one log, and what went wrong in them."""

    def __init__(self, args: argparse.Namespace, admin: asyncpg.Connection, dsn: str) -> None:
        self.args, self.admin, self.dsn = args, admin, dsn
        self.meter = harness.CpuMeter()
        self.errors: list[str] = []

    async def open(self, log_size: int) -> None:
        self.log_size = log_size
        self.pool = await create_pool(self.dsn, **POOL)
        self.store = EventStore(self.pool)
        self.raw = await asyncpg.connect(self.dsn)
        await init_connection(self.raw)  # the store's jsonb codec: msgspec, exact decimals

    async def close(self) -> None:
        await self.raw.close()
        await self.store.close()
        await self.pool.close()

    async def phase(self, key: str, round_index: int = 0) -> Replayed:
        """From a CHECKPOINT, the same clean state each time; the CPU of the backends there at the
        start (fixed-size pools). A replay or rebuild gets a pool of its own, as `api rebuild`."""
        projector = key in ("replay", "rebuild")
        own_pool = projector and not self.args.reuse_pool
        pools = opened_store(self.dsn, **POOL) if own_pool else nullcontext((self.pool, self.store))
        async with pools as (pool, store):
            run = {
                "raw": lambda: raw_read(self.raw),
                "read": lambda: store_read(self.store),
                "replay": lambda: rebuild_into(pool, store, SCRATCH),
                "rebuild": lambda: rebuild(pool, store),
            }[key]
            await harness.checkpoint(self.admin)
            backends = await harness.backend_pids(self.admin, self.args.database)
            sample = await self.meter.measure(run, Replayed, server=backends)
        if sample.handled != self.log_size:
            self.errors.append(f"{key} saw {sample.handled:,} events, not {self.log_size:,}")
        if projector:
            await asyncio.sleep(1.0)  # the backends' statistics are flushed every second
            schema = SCRATCH if key == "replay" else "public"
            sample.seq_scans = await self.pool.fetchval(SEQ_SCANS, schema)
        if key == "replay" and round_index < self.args.rounds - 1:
            await drop_scratch(self.pool, SCRATCH)  # the last one is compared, below
        return sample

    async def run(self) -> dict[str, list[Replayed]]:
        # The live read model, once, unmeasured: the measured rebuilds then replace real tables.
        print("\nBuilding the live read model once (rebuild, not measured)...", flush=True)
        first = await self.phase("rebuild")
        print(f"  {first.handled:,} events in {first.seconds:.1f} s, {first.seq_scans} seq scans")
        await raw_read(self.raw)  # warm-up of the readers: statements prepared, pages cached
        await store_read(self.store)
        keys = ["raw", "read", "replay"]

        async def show(r: int, samples: dict[str, list[Replayed]]) -> None:
            if "rebuild" in samples:
                s = samples["rebuild"][-1]
                line = f"rebuild {r + 1}: {s.seconds:.1f} s ({s.rate:,.0f} events/s, "
                line += f"{s.seq_scans} seq scans of positions){s.mark()}"
            else:
                line = harness.round_line(f"{r + 1}", (samples[k][-1] for k in keys), 12)
                line += f"  ({samples['replay'][-1].seq_scans} seq scans in the replay)"
            print(line, flush=True)

        print(f"\n{'round':<7}" + "".join(f"{key:>12} " for key in keys) + "  (events/s)")
        samples = await harness.alternate(self.args.rounds, keys, self.phase, show)
        # The last replay's tables must equal the live ones, which a rebuild made.
        for table, rows in (await differing_rows(self.pool, SCRATCH)).items():
            if rows:
                self.errors.append(
                    f"replay and live {table} differ in {len(rows)} rows, e.g. {rows[:3]}"
                )
        await drop_scratch(self.pool, SCRATCH)
        samples |= await harness.alternate(self.args.rounds, ["rebuild"], self.phase, show)
        print(harness.DISTURBED_NOTE)
        return samples


PROFILE_RATE = 200
_PLACES = """
domain/position.py domain/rules.py | projector: fold (domain/position.py evolve, msgspec replace)
domain/events.py | projector: event decoding (domain/events.py event_from, msgspec.convert)
domain/streams.py | projector: streams (domain/streams.py position_id_of, UUID)
projections/positions.py | projector: the rest of projections/positions.py (batch, load, flush)
projections/runner.py | runner (projections/runner.py)
eventstore/ | event store: reading, RecordedEvent (eventstore/)
asyncpg/ | asyncpg, Python side
 | other Python (uuid, decimal, datetime, asyncio...)
"""
PROFILE_PLACES = [  # (label, files); the last, of no file, takes the other Python frames
    (label, tuple(files.split()) or ("",))
    for files, label in (row.split(" | ") for row in _PLACES.strip("\n").splitlines())
]
_PASS_THROUGH = ("asyncio/", "uvloop/", "bench/replay.py", "<frozen runpy>", "runpy.py")
_IN_LOOP = "C code called from the event loop (uvloop I/O, asyncpg protocol: rows, codecs)"
_OWN_CODE = ("projections/", "domain/", "eventstore/")


async def profile_replay(args: argparse.Namespace, dsn: str, logs: Path, top: int = 12) -> None:
    """One more replay, this process sampled by py-spy: where it spends its time."""
    if (spy := harness.find_py_spy(args.py_spy)) is None:
        return
    out = logs / "profile-replay.txt"
    options = f"record --pid {os.getpid()} --rate {PROFILE_RATE} --nonblocking --format raw"
    argv = [spy, *options.split(), "--output", str(out)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    async with opened_store(dsn, **POOL) as (pool, store):  # as the replays
        await asyncio.sleep(1.0)  # attached
        started = time.perf_counter()
        events = await rebuild_into(pool, store, "bench_profile")
        seconds = time.perf_counter() - started
        process.send_signal(signal.SIGINT)  # py-spy writes its output and exits
        _, err = process.communicate(timeout=60)
        await drop_scratch(pool, "bench_profile")
    found = None
    if out.exists() and out.stat().st_size:
        found = harness.Profile.read(out).tally(PROFILE_PLACES, _PASS_THROUGH, _IN_LOOP)
    if found is None or not found.total:
        failed = f"py-spy failed: {err.decode(errors='replace')[-500:]}"
        why = "no samples" if found else "py-spy wrote nothing" if out.exists() else failed
        print(f"\nprofile: {why}")
        return
    # The innermost frame of the project's own code: which of its lines costs the most.
    lines: Counter[str] = Counter()
    for frames, n in found.stacks:
        own = [frame for frame in frames if any(p in frame for p in _OWN_CODE)]
        if own:
            lines[own[-1]] += n
    busy = found.total / PROFILE_RATE
    print(
        f"\nWhere this process spends a replay ({events:,} events in {seconds:.1f} s): py-spy "
        f"record --nonblocking, {PROFILE_RATE}/s, {found.total:,} samples = {busy:.1f} s "
        f"= {busy / events * 1e6:.1f} us/event of this process's time"
    )
    found.print_shares(
        found.places, cost=lambda n: f"{n / PROFILE_RATE / events * 1e6:5.1f} us/ev  "
    )
    print("  innermost frames (self time):")
    found.print_shares(found.leaves, top)
    print("  innermost lines of projections/, domain/, eventstore/ (inclusive time):")
    found.print_shares(lines, top)
    print(f"  (raw profile: {out})")


async def write_log(args: argparse.Namespace, dsn: str) -> tuple[list[tuple], int]:
    """The log, not measured: generated, appended, VACUUM (ANALYZE)d; (expected rows, size)."""
    positions = args.positions or max(1, args.events // 10)
    owners = args.owners or max(1, positions // 100)
    active = args.active or max(1, positions // 10)
    print(
        f"\nGenerating {args.events:,} events: {positions:,} positions of {owners:,} owners on "
        f"{args.symbols} symbols, {active:,} alive at once, market prices every "
        f"{args.market_every} events; appends of {WRITE_BATCH} events",
        flush=True,
    )
    log = LogGenerator(args.events, positions, owners, args.symbols, active, args.market_every)
    started = shown = time.perf_counter()
    async with opened_store(dsn, min_size=1, max_size=1, server_settings=NO_SYNC) as (pool, store):
        pending = asyncio.create_task(asyncio.sleep(0))  # in flight while the next batch is made
        for appends in log.batches(WRITE_BATCH):
            await pending
            pending = asyncio.create_task(store.append_streams(appends))
            await asyncio.sleep(0)  # let it send its statement before the next batch is made
            if time.perf_counter() - shown > 10:
                shown = time.perf_counter()
                rate = log.emitted / (shown - started)
                print(f"  ... {log.emitted:,} events ({rate:,.0f}/s)", flush=True)
        await pending
        took = time.perf_counter() - started
        await pool.execute("VACUUM (ANALYZE) events")
        vacuumed = time.perf_counter() - started - took
        log_size, table_bytes, transactions = await pool.fetchrow(
            "SELECT count(*), pg_total_relation_size('events'), count(DISTINCT tx_id) FROM events"
        )
    states = [live.state for live in log.made if live.state is not None]
    deleted = sum(s.deleted for s in states)
    print(
        f"Generated {log_size:,} events in {took:.0f} s ({log_size / took:,.0f}/s) and "
        f"{transactions:,} transactions, VACUUM (ANALYZE) {vacuumed:.0f} s; events table with its "
        f"indexes {table_bytes / 2**20:,.0f} MiB; {len(states):,} positions ({deleted:,} deleted), "
        f"{log.refused:,} commands refused (a mark instead)"
    )
    print("Event types: " + ", ".join(f"{name} {n:,}" for name, n in log.types.most_common()))
    return expected_rows(states), log_size


async def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    load = harness.load_average()
    async with harness.scratch_database(args.database, args.keep) as (admin, dsn):
        setup = await harness.migrated(dsn)
        settings = ("fsync", "synchronous_commit", "shared_buffers", "max_wal_size", "autovacuum")
        pg = await harness.postgres(setup, *settings)
        await setup.close()
        print(
            f"Replay benchmark: {harness.CORES} cores, Python {platform.python_version()} "
            f"({args.loop}), asyncpg {asyncpg.__version__}, {pg}"
        )
        if load:
            print("Load average at the start: " + " ".join(f"{x:.2f}" for x in load))
        expected, log_size = await write_log(args, dsn)
        if log_size != args.events:
            print(f"ERROR: the log holds {log_size:,} events, not {args.events:,}")
            return 2
        phases = Phases(args, admin, dsn)
        await phases.open(log_size)
        try:
            samples = await phases.run()
            # What the generator folded must be what the rebuilt live read model holds.
            found = [tuple(row) for row in await phases.pool.fetch(EXPECTED_SQL)]
            if found != expected:
                phases.errors.append(
                    f"the read model holds {found}, the generator folded {expected}"
                )
            market_rows = await phases.pool.fetchval("SELECT count(*) FROM market_prices")
            if args.profile:
                with tempfile.TemporaryDirectory(prefix="bench-replay-") as scratch:
                    logs = Path(args.profile_dir or scratch)
                    logs.mkdir(parents=True, exist_ok=True)
                    await profile_replay(args, dsn, logs)
        finally:
            await phases.close()
    verdicts = report(args, samples, log_size)
    shown = ", ".join(f"{status} {n:,}" for status, n, _, _ in found)
    print(f"\nRead model after the rebuilds: {shown} positions, {market_rows} market prices.")
    load = " ".join(f"{x:.2f}" for x in harness.load_average())
    end = f"; load average at the end {load}" if load else ""
    print(f"Run time {time.perf_counter() - started:.0f} s{end}.")
    for error in phases.errors:
        print(f"ERROR: {error}")
    verdicts.report()
    return 2 if phases.errors else 1 if verdicts.missed and args.strict else 0


def report(
    args: argparse.Namespace, samples: dict[str, list[Replayed]], log_size: int
) -> harness.Verdicts:
    def column(header: str, figure: Callable[[Replayed], float | None], spec: str) -> tuple:
        return header, lambda k: harness.num(harness.median(map(figure, samples[k])), spec)

    harness.print_columns(
        f"Medians of {args.rounds} round(s) over {log_size:,} events. CPU per event in "
        f"microseconds: client = this Python process, server = the backends of {args.database}; "
        "\nother = cores busy with anything else (WAL writer, checkpointer, autovacuum, other "
        "processes); seq scans = sequential scans of the positions table written, against "
        f"{-(-log_size // BATCH):,} batches",
        [
            ("phase", lambda k: PHASES[k]),
            column("seconds", lambda s: s.seconds, ".1f"),
            *harness.rate_columns("events/s", lambda k: samples[k]),
            column("client us/ev", lambda s: s.us_per(s.cores.own), ".1f"),
            column("server us/ev", lambda s: s.us_per(s.cores["server"]), ".1f"),
            column("other", lambda s: s.cores.other, ".2f"),
            column("seq scans", lambda s: s.seq_scans, ",.0f"),
        ],
        [key for key in PHASES if samples[key]],
    )
    verdicts, raw = harness.Verdicts(), samples["raw"]
    rebuilds = [s.seconds for s in samples["rebuild"]]
    target, value = REBUILD_SECONDS * log_size / 1e6, harness.median(rebuilds)
    harness.print_table(
        "Against the targets (range: within each round)",
        ["figure", "value", "range", "target", "verdict"],
        [
            harness.ratio_row(
                "replay / raw read", samples["replay"], raw, REPLAY_TARGET, verdicts, "replay/raw"
            ),
            [
                f"rebuild of {log_size:,} events, seconds",
                *(f"{value:.1f}", f"{min(rebuilds):.1f}-{max(rebuilds):.1f}", f"< {target:.0f}"),
                verdicts(value < target, "rebuild time"),
            ],
            harness.ratio_row("store.read_all / raw read", samples["read"], raw, None, verdicts),
        ],
    )
    return verdicts


OPTIONS = """
--events        1_000_000       events in the log (1,000,000)
--positions     int             positions (default events/10)
--owners        int             owners (default positions/100)
--symbols       200             symbols (default 200)
--active        int             positions alive at once (default positions/10)
--market-every  200             a market price update every N events (200)
--rounds        3               rounds of every phase (default 3)
--database      bench_replay    database to (re)create
--keep          switch          keep the database afterwards
--loop          uvloop|asyncio  event loop (uvloop)
--strict        switch          exit 1 when a target is missed
--reuse-pool    switch          replay and rebuild on the run's one pool, not a fresh pool each
                                (see BENCHMARKS.md)
--profile       switch          afterwards, one more replay under py-spy
--py-spy        str             the py-spy executable (default: PATH)
--profile-dir   str             keep the raw profile in this folder
"""


def run(argv: list[str] | None = None) -> int:
    args, parser = harness.parse_options("python -m bench.replay", __doc__, OPTIONS, argv)
    if args.events < 1 or args.rounds < 1:
        parser.error("--events and --rounds must be at least 1")
    return harness.run_main(main, args)


if __name__ == "__main__":
    sys.exit(run())
