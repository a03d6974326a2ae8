"""Replay and rebuild benchmark: the whole log through the positions projector, beside a raw read.

Events/s and CPU per event of a raw read, `store.read_all`, a replay (`rebuild_into`) and a
rebuild of a generated log; the log, phases, checks and targets: BENCHMARKS.md, "Replay and
rebuild".

    python -m bench.replay [--events 1000000] [--rounds 3] [--keep] [--strict] [--reuse-pool]
                           [--profile [--py-spy PATH] [--profile-dir DIR]]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from itertools import accumulate
from pathlib import Path
from random import Random
from uuid import UUID

import asyncpg

from bench import harness
from domain.commands import (
    AmendPosition,
    ClosePosition,
    Command,
    DeletePosition,
    FillPosition,
    IncreasePosition,
    OpenPosition,
    UpdateMarketPrices,
)
from domain.errors import DomainError
from domain.events import Event
from domain.position import Position, decide, decide_market_prices, evolve
from domain.streams import MARKET_STREAM, position_stream
from eventstore import (
    EventStore,
    ExpectedVersion,
    NewEvent,
    StreamAppend,
    create_pool,
    init_connection,
    reset_checkpoint,
)
from projections.runner import differing_rows, rebuild, rebuild_into

BATCH = 1000  # the raw read's batch (catch_up's default)
WRITE_BATCH = 5000  # events per atomic append while generating
POOL_SIZE = 3  # the runner holds one connection and reads the log through another
REPLAY_TARGET = 0.5
REBUILD_SECONDS = 60.0  # for 1,000,000 events

RAW_READ = f"""
SELECT {EventStore.COLUMNS}
FROM events
WHERE (tx_id, global_position) > ($1::xid8, $2::bigint)
ORDER BY tx_id, global_position
LIMIT $3
"""

EXPECTED_SQL = """
SELECT status, count(*) AS positions, sum(version) AS versions, sum(realized_pnl) AS pnl
FROM positions GROUP BY status ORDER BY status
"""

PHASES = {
    "raw": f"raw keyset SELECT + JSON decode, batch {BATCH}",
    "read": f"store.read_all, batch {BATCH} (information)",
    "replay": "replay: rebuild_into (fold in memory, COPY)",
    "rebuild": "rebuild: rebuild_into + swap, end to end",
}
SCRATCH = "bench_replay"  # the schema a replay builds into


# -- the log ---------------------------------------------------------------------------------

STRATEGIES = ["swing", "momentum", "carry", "mean-reversion", "breakout", "pairs", "earnings"]
NOTES = [
    "scaling in on weakness",
    "earnings next week",
    "hedge for the tech book",
    "watch the 200-day average",
    "reduce before the Fed",
    "client order",
    None,
]
USER_AGENTS = ["desk-client/4.2.1", "python-httpx/0.28.1", "okhttp/4.12.0", "Mozilla/5.0"]
# An open position's next event, when it is not its last: (what, weight).
AMENDMENTS = dict(mark=30, stop=20, notes=12, target=6, strategy=4, increase=8, reduce=10)
CENT = Decimal("0.01")
MILLI = Decimal("0.001")


@dataclass
class Live:
    """A position still getting events: its state and how many events it has left."""

    state: Position
    left: int
    slot: int


@dataclass
class Tally:
    """What the read model must hold at the end: per status, positions, versions, realized P&L."""

    positions: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    pnl: dict[str, Decimal] = field(default_factory=dict)
    deleted: int = 0

    def add(self, state: Position) -> None:
        if state.deleted:
            self.deleted += 1
            return
        self.positions[state.status] += 1
        self.versions[state.status] += state.version
        self.pnl[state.status] = self.pnl.get(state.status, Decimal(0)) + state.realized_pnl

    def rows(self) -> list[tuple[str, int, int, Decimal]]:
        return [
            (s, self.positions[s], self.versions[s], self.pnl[s]) for s in sorted(self.positions)
        ]


class LogGenerator:
    """A realistic, valid log: commands decided by the domain on each position's folded state."""

    def __init__(
        self,
        events: int,
        positions: int,
        owners: int,
        symbols: int,
        active: int,
        market_every: int,
        seed: int = 20261124,
    ) -> None:
        self.rng = rng = Random(seed)
        self.total = events
        self.positions = positions
        self.active_target = max(1, active)
        self.market_every = market_every
        position_events = events - (events // market_every if market_every else 0)
        self.mean_life = max(2.0, position_events / max(1, positions))
        names: set[str] = set()
        while len(names) < symbols:
            names.add(
                "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.randint(2, 5)))
            )
        self.symbols = sorted(names)
        # Zipf-like popularity: a few symbols and owners carry most of the activity.
        self.symbol_weights = list(accumulate(1 / (i + 1) ** 0.8 for i in range(symbols)))
        self.cents = {s: rng.randint(500, 60_000) for s in self.symbols}  # price in cents
        self.owners = [f"trader-{i:05d}" for i in range(owners)]
        self.owner_weights = list(accumulate(1 / (i + 1) ** 0.6 for i in range(owners)))
        self.owner_meta = {
            owner: {
                "actor": owner,
                "role": "user",
                "client_ip": "10." + ".".join(str(rng.randint(1, 254)) for _ in range(3)),
                "user_agent": rng.choice(USER_AGENTS),
            }
            for owner in self.owners
        }
        self.feed_meta = {
            "actor": "price-feed",
            "role": "service",
            "client_ip": "10.0.0.7",
            "user_agent": "price-feed/1.8",
        }
        self.amendments = list(AMENDMENTS)
        self.amendment_weights = list(accumulate(AMENDMENTS.values()))
        self.live: dict[UUID, Live] = {}
        self.slots: list[UUID] = []
        self.tally = Tally()
        self.types: Counter[str] = Counter()
        self.emitted = 0
        self.opened = 0
        self.clock = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
        self.refused = 0

    # -- helpers -------------------------------------------------------------------------------

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

    # -- commands ------------------------------------------------------------------------------

    def _open(self) -> tuple[UUID, Command]:
        rng = self.rng
        position_id = self._uuid()
        symbol = rng.choices(self.symbols, cum_weights=self.symbol_weights)[0]
        owner = rng.choices(self.owners, cum_weights=self.owner_weights)[0]
        side = "long" if rng.random() < 0.7 else "short"
        price = self._price(symbol)
        pending = rng.random() < 0.1
        entry = (
            self._level(price, rng.uniform(0.97, 1.0) if side == "long" else rng.uniform(1.0, 1.03))
            if pending
            else price
        )
        sign = 1 if side == "long" else -1
        stop = target = None
        if rng.random() < 0.4:
            stop = self._level(entry, 1 - sign * rng.uniform(0.02, 0.1))
        if rng.random() < 0.3:
            target = self._level(entry, 1 + sign * rng.uniform(0.03, 0.2))
        return position_id, OpenPosition(
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

    def _next_command(self, live: Live) -> Command:
        rng, state, at = self.rng, live.state, self.clock
        price = self._price(state.symbol)
        if state.status == "pending":
            if rng.random() < 0.15:
                live.left = 1
                return ClosePosition(at=at, exit_price=None)  # a cancelled order
            return FillPosition(at=at, entry_price=None if rng.random() < 0.5 else price)
        if live.left == 1:  # its last event in this log
            roll = rng.random()
            if roll < 0.70:
                return ClosePosition(at=at, exit_price=price)
            if roll < 0.72:
                return DeletePosition(at=at)
            return AmendPosition(at=at, current_price=price)  # still open at the end
        sign = 1 if state.side == "long" else -1
        what = rng.choices(self.amendments, cum_weights=self.amendment_weights)[0]
        if what == "stop":
            stop = self._level(state.entry_price, 1 - sign * rng.uniform(0.01, 0.1))
            return AmendPosition(at=at, stop_loss=None if rng.random() < 0.05 else stop)
        if what == "target":
            return AmendPosition(
                at=at, take_profit=self._level(state.entry_price, 1 + sign * rng.uniform(0.02, 0.2))
            )
        if what == "notes":
            return AmendPosition(at=at, notes=rng.choice(NOTES))
        if what == "strategy":
            return AmendPosition(at=at, strategy=rng.choice(STRATEGIES))
        if what == "increase":
            return IncreasePosition(at=at, quantity=self._quantity(), price=price)
        if what == "reduce":
            part = (state.quantity * Decimal(rng.randint(1, 5)) / 10).quantize(MILLI, ROUND_DOWN)
            if 0 < part < state.quantity:
                return ClosePosition(at=at, exit_price=price, quantity=part)
        return AmendPosition(at=at, current_price=price)

    def _decide(self, command: Command, state: Position | None, live: Live | None) -> list[Event]:
        try:
            events = decide(command, state)
        except DomainError:
            self.refused += 1
            events = []
        if len(events) != 1:  # refused, or a change to the value it has: a mark instead
            assert live is not None and state is not None
            events = decide(
                AmendPosition(at=command.at, current_price=self._price(state.symbol)), state
            )
        return events

    def _market(self) -> tuple[str, Event, dict]:
        rng = self.rng
        prices = {}
        for symbol in rng.sample(self.symbols, min(len(self.symbols), rng.randint(20, 100))):
            cents = self.cents[symbol]
            cents = max(100, cents + round(cents * rng.gauss(0, 0.004)))
            self.cents[symbol] = cents
            prices[symbol] = Decimal(cents).scaleb(-2)
        [event] = decide_market_prices(UpdateMarketPrices(at=self.clock, prices=prices))
        return MARKET_STREAM, event, self._metadata(self.feed_meta)

    def _position_event(self) -> tuple[str, Event, dict, int]:
        """The next event of some position: (stream, event, metadata, version before it)."""
        rng = self.rng
        want_open = self.opened < self.positions and (
            len(self.slots) < self.active_target and rng.random() < 0.5 or not self.slots
        )
        if want_open or not self.slots:
            position_id, command = self._open()
            [event] = decide(command, None)
            state = evolve(None, event)
            life = max(2, round(rng.uniform(0.3, 1.7) * self.mean_life))
            live = Live(state, life - 1, len(self.slots))
            self.live[position_id] = live
            self.slots.append(position_id)
            self.opened += 1
            return (
                position_stream(position_id),
                event,
                self._metadata(self.owner_meta[state.owner]),
                0,
            )
        position_id = self.slots[rng.randrange(len(self.slots))]
        live = self.live[position_id]
        before = live.state
        [event] = self._decide(self._next_command(live), before, live)
        live.state = evolve(before, event)
        live.left -= 1
        if live.left <= 0 or live.state.status == "closed" or live.state.deleted:
            self._retire(position_id, live)
        metadata = self._metadata(self.owner_meta[before.owner])
        return position_stream(position_id), event, metadata, before.version

    def _retire(self, position_id: UUID, live: Live) -> None:
        last = self.slots.pop()
        if last != position_id:
            self.slots[live.slot] = last
            self.live[last].slot = live.slot
        del self.live[position_id]
        self.tally.add(live.state)

    # -- batches -------------------------------------------------------------------------------

    def batches(self, size: int) -> Iterator[list[StreamAppend]]:
        """The log in atomic appends of `size` events (each stream once per append)."""
        market_version = 0
        while self.emitted < self.total:
            streams: dict[str, tuple[int, list[NewEvent]]] = {}
            for _ in range(min(size, self.total - self.emitted)):
                self.clock += timedelta(microseconds=self.rng.randint(1_000, 400_000))
                self.emitted += 1
                if self.market_every and self.emitted % self.market_every == 0:
                    stream, event, metadata = self._market()
                    before = market_version
                    market_version += 1
                else:
                    stream, event, metadata, before = self._position_event()
                name = type(event).__name__
                self.types[name] += 1
                new = NewEvent(
                    event_id=self._uuid(),
                    event_type=name,
                    data=event,
                    metadata=metadata,
                    schema_version=event.SCHEMA_VERSION,
                )
                if stream in streams:
                    streams[stream][1].append(new)
                else:
                    streams[stream] = (before, [new])
            yield [
                StreamAppend(stream, events, before if before else ExpectedVersion.NO_STREAM)
                for stream, (before, events) in streams.items()
            ]

    def finish(self) -> Tally:
        """The tally of every position, once the log is written."""
        for live in self.live.values():
            self.tally.add(live.state)
        self.live.clear()
        self.slots.clear()
        return self.tally


async def generate(store: EventStore, generator: LogGenerator) -> float:
    """Append the generator's log; one append in flight while the next batch is being made."""
    started = time.perf_counter()
    pending: asyncio.Task | None = None
    shown = started
    for appends in generator.batches(WRITE_BATCH):
        if pending is not None:
            await pending
        pending = asyncio.create_task(store.append_streams(appends))
        await asyncio.sleep(0)  # let it send its statement before the next batch is made
        if time.perf_counter() - shown > 10:
            shown = time.perf_counter()
            print(
                f"  ... {generator.emitted:,} events "
                f"({generator.emitted / (shown - started):,.0f}/s)",
                flush=True,
            )
    if pending is not None:
        await pending
    return time.perf_counter() - started


# -- measuring -------------------------------------------------------------------------------


@dataclass
class Replayed(harness.Sample):
    seq_scans: int | None = None  # of the positions table the projector wrote


async def raw_read(connection: asyncpg.Connection) -> int:
    """Every row in log order, batch by batch, its JSON decoded by the codec: nothing else."""
    count, tx_id, global_position = 0, 0, 0
    while True:
        rows = await connection.fetch(RAW_READ, tx_id, global_position, BATCH)
        count += len(rows)
        if len(rows) < BATCH:
            return count
        last = rows[-1]
        tx_id, global_position = last["tx_id"], last["global_position"]


async def store_read(store: EventStore) -> int:
    count = 0
    async for batch in store.read_all(batch_size=BATCH):
        count += len(batch)
    return count


async def seq_scans(pool: asyncpg.Pool, schema: str) -> int | None:
    """Sequential scans of `schema`.positions so far (the statistics lag by up to a second).

    The projector reads the rows a batch changes by primary key; a sequential scan per batch
    instead means its statement was planned without statistics (see BENCHMARKS.md).
    """
    return await pool.fetchval(
        "SELECT seq_scan FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'positions'",
        schema,
    )


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
        self.log_size = 0

    async def open(self, log_size: int) -> None:
        self.log_size = log_size
        self.pool, self.store = await self._pool()
        self.raw = await asyncpg.connect(self.dsn)
        await init_connection(self.raw)  # the store's jsonb codec: msgspec, exact decimals

    async def close(self) -> None:
        await self.raw.close()
        await self.store.close()
        await self.pool.close()

    async def _pool(self) -> tuple[asyncpg.Pool, EventStore]:
        pool = await create_pool(self.dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
        return pool, EventStore(pool)

    async def measure(self, name: str, run: Callable[[], Awaitable[int]]) -> Replayed:
        """From a CHECKPOINT, so that each phase starts from the same clean state; the CPU of
        the backends there at the start (the pools are fixed-size). Checks it saw every event."""
        await harness.checkpoint(self.admin)
        backends = await harness.backend_pids(self.admin, self.args.database)
        sample = await self.meter.measure(run, Replayed, server=backends)
        if sample.handled != self.log_size:
            self.errors.append(f"{name} saw {sample.handled:,} events, not {self.log_size:,}")
        return sample

    async def projector(self, name: str, schema: str) -> Replayed:
        """A replay or a rebuild as `python -m api rebuild` runs one: on a pool of its own
        (with --reuse-pool, on the one pool of the whole run instead)."""
        pool, store = (self.pool, self.store) if self.args.reuse_pool else await self._pool()

        async def run() -> int:
            if name == "replay":
                return await rebuild_into(pool, store, SCRATCH)
            return await rebuild(pool, store)

        try:
            sample = await self.measure(name, run)
        finally:
            if not self.args.reuse_pool:
                await store.close()
                await pool.close()
        await asyncio.sleep(1.0)  # the backends' statistics are flushed every second
        sample.seq_scans = await seq_scans(self.pool, schema)
        return sample

    async def phase(self, key: str, round_index: int) -> Replayed:
        if key == "raw":
            return await self.measure(key, lambda: raw_read(self.raw))
        if key == "read":
            return await self.measure(key, lambda: store_read(self.store))
        sample = await self.projector("replay", SCRATCH)
        if round_index < self.args.rounds - 1:
            await drop_scratch(self.pool, SCRATCH)
        return sample

    async def run(self) -> dict[str, list[Replayed]]:
        # The live read model, once, unmeasured: the measured rebuilds then replace real tables.
        print("\nBuilding the live read model once (rebuild, not measured)...", flush=True)
        first = await self.projector("rebuild", "public")
        print(f"  {first.handled:,} events in {first.seconds:.1f} s, {first.seq_scans} seq scans")
        # Warm-up of the readers (statements prepared, pages cached).
        await raw_read(self.raw)
        await store_read(self.store)

        keys = ["raw", "read", "replay"]

        async def show(r: int, samples: dict[str, list[Replayed]]) -> None:
            print(
                harness.round_line(f"{r + 1}", (samples[k][-1] for k in keys), 12)
                + f"  ({samples['replay'][-1].seq_scans} seq scans in the replay)",
                flush=True,
            )

        print(f"\n{'round':<7}" + "".join(f"{key:>12} " for key in keys) + "  (events/s)")
        samples = await harness.alternate(self.args.rounds, keys, self.phase, show)
        # The last replay's tables must equal the live ones, which a rebuild made.
        different = await differing_rows(self.pool, SCRATCH)
        await drop_scratch(self.pool, SCRATCH)
        for table, rows in different.items():
            if rows:
                self.errors.append(
                    f"replay and live {table} differ in {len(rows)} rows, e.g. {rows[:3]}"
                )
        samples["rebuild"] = []
        for r in range(self.args.rounds):
            sample = await self.projector("rebuild", "public")
            samples["rebuild"].append(sample)
            print(
                f"rebuild {r + 1}: {sample.seconds:.1f} s ({sample.rate:,.0f} events/s, "
                f"{sample.seq_scans} seq scans of positions){sample.mark()}",
                flush=True,
            )
        print(harness.DISTURBED_NOTE)
        return samples


# -- profile (optional) ----------------------------------------------------------------------

PROFILE_RATE = 200
PROFILE_PLACES = [
    (
        "projector: fold (domain/position.py evolve, msgspec replace)",
        ("domain/position.py", "domain/rules.py"),
    ),
    (
        "projector: event decoding (domain/events.py event_from, msgspec.convert)",
        ("domain/events.py",),
    ),
    ("projector: streams (domain/streams.py position_id_of, UUID)", ("domain/streams.py",)),
    (
        "projector: the rest of projections/positions.py (batch, load, flush)",
        ("projections/positions.py",),
    ),
    ("runner (projections/runner.py)", ("projections/runner.py",)),
    ("event store: reading, RecordedEvent (eventstore/)", ("eventstore/",)),
    ("asyncpg, Python side", ("asyncpg/",)),
    ("other Python (uuid, decimal, datetime, asyncio...)", ("",)),
]
_PASS_THROUGH = ("asyncio/", "uvloop/", "bench/replay.py", "<frozen runpy>", "runpy.py")
_IN_LOOP = "C code called from the event loop (uvloop I/O, asyncpg protocol: rows, codecs)"
_OWN_CODE = ("projections/", "domain/", "eventstore/")


def summarize_profile(path: Path, events: int, seconds: float, top: int = 12) -> None:
    if not path.exists() or not path.stat().st_size:
        print("\nprofile: py-spy wrote nothing")
        return
    found = harness.Profile.read(path).tally(PROFILE_PLACES, _PASS_THROUGH, _IN_LOOP)
    if not found.total:
        print("\nprofile: no samples")
        return
    # The innermost frame of the project's own code: which of its lines costs the most.
    lines: Counter[str] = Counter()
    for frames, n in found.stacks:
        own = [frame for frame in frames if any(p in frame for p in _OWN_CODE)]
        if own:
            lines[own[-1]] += n
    total, busy = found.total, found.total / PROFILE_RATE
    print(
        f"\nWhere this process spends a replay ({events:,} events in {seconds:.1f} s): py-spy "
        f"record --nonblocking, {PROFILE_RATE}/s, {total:,} samples = {busy:.1f} s "
        f"= {busy / events * 1e6:.1f} us/event of this process's time"
    )
    found.print_shares(
        found.places, cost=lambda n: f"{n / PROFILE_RATE / events * 1e6:5.1f} us/ev  "
    )
    print("  innermost frames (self time):")
    found.print_shares(found.leaves, top)
    print("  innermost lines of projections/, domain/, eventstore/ (inclusive time):")
    found.print_shares(lines, top)


async def profile_replay(args: argparse.Namespace, dsn: str, logs: Path) -> None:
    spy = harness.find_py_spy(args.py_spy)
    if spy is None:
        return
    out = logs / "profile-replay.txt"
    options = f"--pid {os.getpid()} --rate {PROFILE_RATE} --nonblocking --format raw --output"
    process = subprocess.Popen(
        [spy, "record", *options.split(), str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    pool = await create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)  # as the replays
    store = EventStore(pool)
    await asyncio.sleep(1.0)  # attached
    started = time.perf_counter()
    events = await rebuild_into(pool, store, "bench_profile")
    seconds = time.perf_counter() - started
    process.send_signal(signal.SIGINT)  # py-spy writes its output and exits
    _, err = process.communicate(timeout=60)
    await drop_scratch(pool, "bench_profile")
    await store.close()
    await pool.close()
    if not out.exists():
        print(f"\nprofile: py-spy failed: {err.decode(errors='replace')[-500:]}")
        return
    summarize_profile(out, events, seconds)
    print(f"  (raw profile: {out})")


# -- the run ---------------------------------------------------------------------------------


async def write_log(args: argparse.Namespace, dsn: str) -> tuple[LogGenerator, Tally, int]:
    """The log, not measured: generated, appended, VACUUM (ANALYZE)d; (generator, tally, size)."""
    positions = args.positions or max(1, args.events // 10)
    owners = args.owners or max(1, positions // 100)
    active = args.active or max(1, positions // 10)
    generator = LogGenerator(
        args.events, positions, owners, args.symbols, active, args.market_every
    )
    print(
        f"\nGenerating {args.events:,} events: {positions:,} positions of {owners:,} owners on "
        f"{args.symbols} symbols, {active:,} alive at once, market prices every "
        f"{args.market_every} events; appends of {WRITE_BATCH} events",
        flush=True,
    )
    writer_pool = await create_pool(
        dsn, min_size=1, max_size=1, server_settings={"synchronous_commit": "off"}
    )
    writer = EventStore(writer_pool)
    generation_seconds = await generate(writer, generator)
    await writer.close()
    await writer_pool.close()
    tally = generator.finish()
    setup = await asyncpg.connect(dsn)
    vacuum_started = time.perf_counter()
    await setup.execute("VACUUM (ANALYZE) events")
    vacuum_seconds = time.perf_counter() - vacuum_started
    log_size = await setup.fetchval("SELECT count(*) FROM events")
    table_bytes = await setup.fetchval("SELECT pg_total_relation_size('events')")
    transactions = await setup.fetchval("SELECT count(DISTINCT tx_id) FROM events")
    await setup.close()
    print(
        f"Generated {log_size:,} events in {generation_seconds:.0f} s "
        f"({log_size / generation_seconds:,.0f}/s) and {transactions:,} transactions, VACUUM "
        f"(ANALYZE) {vacuum_seconds:.0f} s; events table with its indexes "
        f"{table_bytes / 2**20:,.0f} MiB; {generator.opened:,} positions "
        f"({tally.deleted:,} deleted), {generator.refused:,} commands refused (a mark instead)"
    )
    print("Event types: " + ", ".join(f"{name} {n:,}" for name, n in generator.types.most_common()))
    return generator, tally, log_size


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
            print(f"Load average at the start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        _, tally, log_size = await write_log(args, dsn)
        if log_size != args.events:
            print(f"ERROR: the log holds {log_size:,} events, not {args.events:,}")
            return 2
        phases = Phases(args, admin, dsn)
        await phases.open(log_size)
        try:
            samples = await phases.run()
            # What the generator folded must be what the rebuilt live read model holds.
            found = [tuple(row) for row in await phases.pool.fetch(EXPECTED_SQL)]
            if found != tally.rows():
                phases.errors.append(
                    f"the read model holds {found}, the generator folded {tally.rows()}"
                )
            market_rows = await phases.pool.fetchval("SELECT count(*) FROM market_prices")
            if args.profile:
                with tempfile.TemporaryDirectory(prefix="bench-replay-") as scratch:
                    logs = Path(args.profile_dir or scratch)
                    logs.mkdir(parents=True, exist_ok=True)
                    await profile_replay(args, dsn, logs)
        finally:
            await phases.close()
    missed = report(args, samples, log_size)
    print(
        "\nRead model after the rebuilds: "
        + ", ".join(f"{status} {n:,}" for status, n, _, _ in found)
        + f" positions, {market_rows} market prices."
    )
    load = harness.load_average()
    print(
        f"Run time {time.perf_counter() - started:.0f} s"
        + (f"; load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}" if load else "")
        + "."
    )
    for error in phases.errors:
        print(f"ERROR: {error}")
    missed.report()
    if phases.errors:
        return 2
    return 1 if missed.missed and args.strict else 0


def report(
    args: argparse.Namespace, samples: dict[str, list[Replayed]], log_size: int
) -> harness.Verdicts:
    def med(key: str, figure: Callable[[Replayed], float | None]) -> float | None:
        return harness.median(figure(s) for s in samples[key])

    harness.print_columns(
        f"Medians of {args.rounds} round(s) over {log_size:,} events. CPU per event in "
        f"microseconds: client = this Python process, server = the backends of {args.database}; "
        f"\nother = cores busy with anything else (WAL writer, checkpointer, autovacuum, other "
        f"processes); seq scans = sequential scans of the positions table written, against "
        f"{-(-log_size // BATCH):,} batches",
        [
            ("phase", lambda k: PHASES[k]),
            ("seconds", lambda k: f"{med(k, lambda s: s.seconds):.1f}"),
            *harness.rate_columns("events/s", lambda k: samples[k]),
            ("client us/ev", lambda k: harness.num(med(k, lambda s: s.us_per(s.cores.own)), ".1f")),
            (
                "server us/ev",
                lambda k: harness.num(med(k, lambda s: s.us_per(s.cores["server"])), ".1f"),
            ),
            ("other", lambda k: harness.num(med(k, lambda s: s.cores.other), ".2f")),
            ("seq scans", lambda k: harness.num(med(k, lambda s: s.seq_scans), ",.0f")),
        ],
        [key for key in PHASES if samples[key]],
    )
    verdicts, raw = harness.Verdicts(), samples["raw"]
    replay = harness.ratio_row(
        "replay / raw read", samples["replay"], raw, REPLAY_TARGET, verdicts, "replay/raw"
    )
    rebuild_seconds = [s.seconds for s in samples["rebuild"]]
    rebuild_target = REBUILD_SECONDS * log_size / 1_000_000
    rebuild_median = statistics.median(rebuild_seconds)
    rebuild_row = [
        f"rebuild of {log_size:,} events, seconds",
        f"{rebuild_median:.1f}",
        f"{min(rebuild_seconds):.1f}-{max(rebuild_seconds):.1f}",
        f"< {rebuild_target:.0f}",
        verdicts(rebuild_median < rebuild_target, "rebuild time"),
    ]
    harness.print_table(
        "Against the targets (range: within each round)",
        ["figure", "value", "range", "target", "verdict"],
        [
            replay,
            rebuild_row,
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args, parser = harness.parse_options("python -m bench.replay", __doc__, OPTIONS, argv)
    if args.events < 1 or args.rounds < 1:
        parser.error("--events and --rounds must be at least 1")
    return args


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return harness.run_main(main, args)


if __name__ == "__main__":
    sys.exit(run())
