"""Replay and rebuild benchmark: the whole log through the positions projector, beside a raw read.

Run from the project root (about 12 minutes with the defaults; `--events 50000` is a smoke run of
under a minute):

    python -m bench.replay [--events 1000000] [--rounds 3] [--keep] [--strict] [--reuse-pool]
                           [--profile [--py-spy PATH] [--profile-dir DIR]]

It drops and creates its own database (`bench_replay`, on the server of BENCH_DATABASE_URL, default
postgresql:///postgres, which is used as the admin connection only), applies the project's
migrations with `eventstore.migrate`, and writes a log of `--events` events (not measured):

  positions   `--events`/10 positions (`--positions`) of ~`--events`/1000 owners (`--owners`, some
              far busier than others) on 200 symbols (`--symbols`, some far more traded), each
              opened (a tenth as pending orders, later filled or cancelled) and then amended
              (PositionMarked, StopLossMoved, NotesChanged, TakeProfitMoved, StrategyChanged),
              scaled in (PositionIncreased), partly closed (PositionReduced) and mostly closed
              (PositionClosed), a few deleted; about 10 events each. `--active` positions (a tenth
              of them) are alive at once, so the events of any stretch of the log touch that many
              positions, and a position's events spread over a tenth of the log;
  prices      a MarketPricesUpdated of 20-100 symbols on the "market-prices" stream every
              `--market-every` (200) events.

Every event is what the domain decides (`domain.position.decide`) from a command on the position's
state folded so far, with the metadata the API writes (actor, role, client address, user agent,
correlation and causation ids). The log is appended with `EventStore.append_streams`, in atomic
multi-stream batches of 5000 events (no inline projector; `synchronous_commit = off` on the
writing connections), then VACUUM (ANALYZE)d. Then, measured in ONE run:

  raw      baseline: a keyset SELECT of the same rows and columns in log order (`WHERE (tx_id,
           global_position) > ($1, $2) ORDER BY tx_id, global_position LIMIT 1000`) on a plain
           `asyncpg.connect` with the store's jsonb codec (`eventstore.init_connection`: msgspec,
           exact decimals): every row read and its JSON decoded, nothing else;
  read     (information) `EventStore.read_all(batch_size=1000)`: the same plus the store's
           barrier and its RecordedEvent objects, i.e. the reading half of a replay;
  replay   `projections.runner.rebuild_into(pool, store, schema)`: the whole log folded in
           memory with the projector's fold (`FoldedPositions`), read in batches of 5000 with
           the next batch read while one is folded, then written by COPY into fresh tables in a
           scratch schema (dropped after), analysed, and the checkpoint saved;
  rebuild  `projections.runner.rebuild(pool, store)` end to end: the same
           build beside the live tables, then the swap that replaces them. The live read model is
           built once (by an unmeasured rebuild) before the first measured one.

The raw, read and replay phases alternate over `--rounds` rounds (in order, then reversed), then
the rebuilds run `--rounds` times. Each replay and rebuild runs on a fresh pool of 3 connections,
as `python -m api rebuild` does (it makes a pool for the one rebuild); `--reuse-pool` runs them
all on one pool instead, as a long-lived process would, which shows a planning problem (see
BENCHMARKS.md). The report gives medians, the CPU time per event of this client and of the
database's backends (from /proc: the server is local), the sequential scans of the positions table
the projector wrote (it reads rows by primary key: a scan per batch means a bad plan), and
replay/raw against the target >= 0.5 and the rebuild's seconds against < 60 s for 1,000,000 events
(scaled for other sizes). A CHECKPOINT precedes every measured phase, so each starts from the
same clean state.

The results are checked: every phase must see all the events, a replay's tables must equal the
live ones row for row (`differing_rows`), and the live read model must hold the positions, per
status, with the versions and realized P&L the generator's own folded states have.

With --profile, one more replay runs under py-spy (`record --nonblocking`, this process), and the
report names where this process spends the replay's time, by place and by innermost frame.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
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

from bench.common import (
    DISTURBED,
    EventsSample,
    backend_pids,
    database_dsn,
    drop_database,
    load_average,
    machine_ticks,
    median,
    num,
    print_table,
    process_seconds,
    recreate_database,
)
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
    migrate,
    reset_checkpoint,
)
from projections.runner import differing_rows, rebuild, rebuild_into

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ADMIN_DSN = "postgresql:///postgres"
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
AMENDMENTS = [
    ("mark", 30),
    ("stop", 20),
    ("notes", 12),
    ("target", 6),
    ("strategy", 4),
    ("increase", 8),
    ("reduce", 10),
]
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
        self.amendments = [name for name, _ in AMENDMENTS]
        self.amendment_weights = list(accumulate(w for _, w in AMENDMENTS))
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
class Sample(EventsSample):
    seq_scans: int | None = None  # of the positions table the projector wrote


class Meter:
    def __init__(self, admin: asyncpg.Connection, database: str) -> None:
        self._admin = admin
        self._database = database
        self.cores = os.cpu_count() or 1

    async def measure(self, run: Callable[[], Awaitable[int]]) -> Sample:
        try:
            await self._admin.execute("CHECKPOINT")  # each phase starts from a clean state
        except asyncpg.PostgresError:
            pass
        backends = await backend_pids(self._admin, self._database)
        server0 = process_seconds(backends)
        busy0, total0 = machine_ticks()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        events = await run()
        wall1, cpu1 = time.perf_counter(), time.process_time()
        busy1, total1 = machine_ticks()
        # Backends that were started during the phase are not counted: the pool is fixed-size.
        server1 = process_seconds(backends)
        seconds = wall1 - wall0
        machine = (busy1 - busy0) / (total1 - total0) * self.cores if total1 > total0 else 0.0
        server = None if server0 is None or server1 is None else (server1 - server0) / seconds
        return Sample(events, seconds, (cpu1 - cpu0) / seconds, server, machine)


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


def _place(frames: list[str]) -> str:
    for depth, where in enumerate(reversed(frames)):
        if any(p in where for p in _PASS_THROUGH):
            continue
        for label, patterns in PROFILE_PLACES:
            if any(p in where for p in patterns):
                if label.startswith("other") and depth:
                    break
                return label
    return _IN_LOOP


def summarize_profile(path: Path, events: int, seconds: float, top: int = 12) -> None:
    if not path.exists() or not path.stat().st_size:
        print("\nprofile: py-spy wrote nothing")
        return
    places: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        wheres = [f.partition(" (")[2].rstrip(")") for f in frames]
        count = int(n)
        total += count
        places[_place([w.rsplit(":", 1)[0] for w in wheres])] += count
        leaves[frames[-1]] += count
        # The innermost frame of the project's own code: which of its lines costs the most.
        for frame in reversed(frames):
            if any(p in frame for p in ("projections/", "domain/", "eventstore/")):
                lines[frame] += count
                break
    if not total:
        print("\nprofile: no samples")
        return
    busy = total / PROFILE_RATE
    print(
        f"\nWhere this process spends a replay ({events:,} events in {seconds:.1f} s): py-spy "
        f"record --nonblocking, {PROFILE_RATE}/s, {total:,} samples = {busy:.1f} s "
        f"= {busy / events * 1e6:.1f} us/event of this process's time"
    )
    for label, n in places.most_common():
        print(f"  {n / total:6.1%}  {n / PROFILE_RATE / events * 1e6:5.1f} us/ev  {label}")
    print("  innermost frames (self time):")
    for key, n in leaves.most_common(top):
        print(f"  {n / total:6.1%}  {key}")
    print("  innermost lines of projections/, domain/, eventstore/ (inclusive time):")
    for key, n in lines.most_common(top):
        print(f"  {n / total:6.1%}  {key}")


async def profile_replay(args: argparse.Namespace, dsn: str, logs: Path) -> None:
    spy = args.py_spy or shutil.which("py-spy")
    if spy is None:
        print("\n--profile: py-spy is not on the PATH (pip install py-spy, or --py-spy PATH)")
        return
    out = logs / "profile-replay.txt"
    process = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(os.getpid()),
            "--rate",
            str(PROFILE_RATE),
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    pool = await create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)  # as the replays
    store = EventStore(pool)
    await asyncio.sleep(1.0)  # attached
    started = time.perf_counter()
    events = await rebuild_into(pool, store, "bench_profile")
    seconds = time.perf_counter() - started
    process.send_signal(2)  # SIGINT: py-spy writes its output and exits
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

PHASES = {
    "raw": f"raw keyset SELECT + JSON decode, batch {BATCH}",
    "read": f"store.read_all, batch {BATCH} (information)",
    "replay": "replay: rebuild_into (fold in memory, COPY)",
    "rebuild": "rebuild: rebuild_into + swap, end to end",
}


async def main(args: argparse.Namespace) -> int:
    admin_dsn = os.environ.get("BENCH_DATABASE_URL", DEFAULT_ADMIN_DSN)
    dsn = database_dsn(admin_dsn, args.database)
    started = time.perf_counter()
    positions = args.positions or max(1, args.events // 10)
    owners = args.owners or max(1, positions // 100)
    active = args.active or max(1, positions // 10)

    load = load_average()
    admin = await asyncpg.connect(admin_dsn)
    await recreate_database(admin, args.database)
    setup = await asyncpg.connect(dsn)
    await migrate(setup, ROOT / "migrations")
    server = await setup.fetchrow(
        "SELECT current_setting('server_version') AS version, "
        "current_setting('synchronous_commit') AS sync, current_setting('fsync') AS fsync, "
        "current_setting('shared_buffers') AS shared_buffers, "
        "current_setting('max_wal_size') AS max_wal_size, "
        "current_setting('autovacuum') AS autovacuum"
    )
    await setup.close()
    print(
        f"Replay benchmark: {os.cpu_count()} cores, Python {platform.python_version()} "
        f"({args.loop}), "
        f"asyncpg {asyncpg.__version__}, PostgreSQL {server['version'].split()[0]} "
        f"(fsync={server['fsync']}, synchronous_commit={server['sync']}, "
        f"shared_buffers={server['shared_buffers']}, max_wal_size={server['max_wal_size']}, "
        f"autovacuum={server['autovacuum']})"
    )
    if load:
        print(f"Load average at the start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")

    # -- the log (not measured) -------------------------------------------------------------
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
    if log_size != args.events:
        print(f"ERROR: the log holds {log_size:,} events, not {args.events:,}")
        return 2

    # -- the measurements -------------------------------------------------------------------
    pool = await create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
    store = EventStore(pool)
    raw = await asyncpg.connect(dsn)
    await init_connection(raw)  # the store's jsonb codec: msgspec, exact decimals
    meter = Meter(admin, args.database)
    errors: list[str] = []

    def check(phase: str, sample: Sample) -> Sample:
        if sample.events != log_size:
            errors.append(f"{phase} saw {sample.events:,} events, not {log_size:,}")
        return sample

    async def projector_phase(
        run: Callable[[asyncpg.Pool, EventStore], Awaitable[int]], schema: str
    ) -> Sample:
        """A replay or a rebuild as `python -m api rebuild` runs one: on a pool of its own
        (with --reuse-pool, on the one pool of the whole run instead)."""
        if args.reuse_pool:
            phase_pool, phase_store = pool, store
        else:
            phase_pool = await create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
            phase_store = EventStore(phase_pool)
        try:
            sample = await meter.measure(lambda: run(phase_pool, phase_store))
        finally:
            if not args.reuse_pool:
                await phase_store.close()
                await phase_pool.close()
        await asyncio.sleep(1.0)  # the backends' statistics are flushed every second
        sample.seq_scans = await seq_scans(pool, schema)
        return sample

    def replay(phase_pool: asyncpg.Pool, phase_store: EventStore) -> Awaitable[int]:
        return rebuild_into(phase_pool, phase_store, "bench_replay")

    def rebuild_live(phase_pool: asyncpg.Pool, phase_store: EventStore) -> Awaitable[int]:
        return rebuild(phase_pool, phase_store)

    # The live read model, once, unmeasured: the measured rebuilds then replace real tables.
    print("\nBuilding the live read model once (rebuild, not measured)...", flush=True)
    first = await projector_phase(rebuild_live, "public")
    print(f"  {first.events:,} events in {first.seconds:.1f} s, {first.seq_scans} seq scans")
    # Warm-up of the readers (statements prepared, pages cached).
    await raw_read(raw)
    await store_read(store)

    samples: dict[str, list[Sample]] = {key: [] for key in PHASES}
    runs: dict[str, Callable[[], Awaitable[Sample]]] = {
        "raw": lambda: meter.measure(lambda: raw_read(raw)),
        "read": lambda: meter.measure(lambda: store_read(store)),
        "replay": lambda: projector_phase(replay, "bench_replay"),
    }
    print(f"\n{'round':<7}" + "".join(f"{key:>12} " for key in runs) + "  (events/s)", flush=True)
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        for key in order:
            samples[key].append(check(key, await runs[key]()))
            if key == "replay" and r < args.rounds - 1:
                await drop_scratch(pool, "bench_replay")
        print(
            f"{r + 1:<7}"
            + "".join(f"{samples[k][-1].rate:>12,.0f}{samples[k][-1].mark()}" for k in runs)
            + f"  ({samples['replay'][-1].seq_scans} seq scans in the replay)",
            flush=True,
        )

    # The last replay's tables must equal the live ones, which a rebuild made.
    different = await differing_rows(pool, "bench_replay")
    await drop_scratch(pool, "bench_replay")
    for table, keys in different.items():
        if keys:
            errors.append(f"replay and live {table} differ in {len(keys)} rows, e.g. {keys[:3]}")

    for r in range(args.rounds):
        sample = check("rebuild", await projector_phase(rebuild_live, "public"))
        samples["rebuild"].append(sample)
        print(
            f"rebuild {r + 1}: {sample.seconds:.1f} s ({sample.rate:,.0f} events/s, "
            f"{sample.seq_scans} seq scans of positions){sample.mark()}",
            flush=True,
        )
    print(f"(* = other processes used more than {DISTURBED} cores during that phase)")

    # What the generator folded must be what the rebuilt live read model holds.
    found = [
        (row["status"], row["positions"], row["versions"], row["pnl"])
        for row in await pool.fetch(EXPECTED_SQL)
    ]
    if found != tally.rows():
        errors.append(f"the read model holds {found}, the generator folded {tally.rows()}")
    market_rows = await pool.fetchval("SELECT count(*) FROM market_prices")

    if args.profile:
        with tempfile.TemporaryDirectory(prefix="bench-replay-") as scratch:
            logs = Path(args.profile_dir or scratch)
            logs.mkdir(parents=True, exist_ok=True)
            await profile_replay(args, dsn, logs)

    # -- report -----------------------------------------------------------------------------
    rows = []
    for key, label in PHASES.items():
        phase = samples[key]
        if not phase:
            continue
        rates = [s.rate for s in phase]
        rows.append(
            [
                label,
                f"{median([s.seconds for s in phase]):.1f}",
                f"{statistics.median(rates):,.0f}",
                f"{min(rates):,.0f}",
                f"{max(rates):,.0f}",
                num(median([s.us_per(s.client_cpu) for s in phase]), ".1f"),
                num(median([s.us_per(s.server_cpu) for s in phase]), ".1f"),
                num(median([s.other_cpu for s in phase]), ".2f"),
                num(median([s.seq_scans for s in phase]), ",.0f"),
            ]
        )
    print_table(
        f"Medians of {args.rounds} round(s) over {log_size:,} events. CPU per event in "
        f"microseconds: client = this Python process, server = the backends of {args.database}; "
        f"\nother = cores busy with anything else (WAL writer, checkpointer, autovacuum, other "
        f"processes); seq scans = sequential scans of the positions table written, against "
        f"{-(-log_size // BATCH):,} batches",
        [
            "phase",
            "seconds",
            "events/s",
            "min",
            "max",
            "client us/ev",
            "server us/ev",
            "other",
            "seq scans",
        ],
        rows,
    )

    def ratio(top: str, bottom: str) -> tuple[float, float, float]:
        paired = [t.rate / b.rate for t, b in zip(samples[top], samples[bottom], strict=True)]
        value = statistics.median(s.rate for s in samples[top]) / statistics.median(
            s.rate for s in samples[bottom]
        )
        return value, min(paired), max(paired)

    missed = []
    replay_ratio = ratio("replay", "raw")
    read_ratio = ratio("read", "raw")
    rebuild_seconds = [s.seconds for s in samples["rebuild"]]
    rebuild_target = REBUILD_SECONDS * log_size / 1_000_000
    rebuild_median = statistics.median(rebuild_seconds)
    if replay_ratio[0] < REPLAY_TARGET:
        missed.append("replay/raw")
    if rebuild_median >= rebuild_target:
        missed.append("rebuild time")
    print_table(
        "Against the targets (range: within each round)",
        ["figure", "value", "range", "target", "verdict"],
        [
            [
                "replay / raw read",
                f"{replay_ratio[0]:.2f}",
                f"{replay_ratio[1]:.2f}-{replay_ratio[2]:.2f}",
                f">= {REPLAY_TARGET:.2f}",
                "met" if "replay/raw" not in missed else "MISSED",
            ],
            [
                f"rebuild of {log_size:,} events, seconds",
                f"{rebuild_median:.1f}",
                f"{min(rebuild_seconds):.1f}-{max(rebuild_seconds):.1f}",
                f"< {rebuild_target:.0f}",
                "met" if "rebuild time" not in missed else "MISSED",
            ],
            [
                "store.read_all / raw read",
                f"{read_ratio[0]:.2f}",
                f"{read_ratio[1]:.2f}-{read_ratio[2]:.2f}",
                "-",
                "info",
            ],
        ],
    )
    print(
        "\nRead model after the rebuilds: "
        + ", ".join(f"{status} {n:,}" for status, n, _, _ in found)
        + f" positions, {market_rows} market prices."
    )
    load = load_average()
    print(
        f"Run time {time.perf_counter() - started:.0f} s"
        + (f"; load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}" if load else "")
        + "."
    )
    for error in errors:
        print(f"ERROR: {error}")
    if missed:
        print(f"TARGET MISSED: {', '.join(missed)}.")

    await raw.close()
    await store.close()
    await pool.close()
    if not args.keep:
        await drop_database(admin, args.database)
    await admin.close()
    if errors:
        return 2
    return 1 if missed and args.strict else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.replay", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--events", type=int, default=1_000_000, help="events in the log (1,000,000)"
    )
    parser.add_argument("--positions", type=int, default=None, help="positions (default events/10)")
    parser.add_argument("--owners", type=int, default=None, help="owners (default positions/100)")
    parser.add_argument("--symbols", type=int, default=200, help="symbols (default 200)")
    parser.add_argument(
        "--active", type=int, default=None, help="positions alive at once (default positions/10)"
    )
    parser.add_argument(
        "--market-every", type=int, default=200, help="a market price update every N events (200)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every phase (default 3)")
    parser.add_argument("--database", default="bench_replay", help="database to (re)create")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--loop", choices=["uvloop", "asyncio"], default="uvloop", help="event loop (uvloop)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--reuse-pool",
        action="store_true",
        help="replay and rebuild on the run's one pool, not a fresh pool each (see BENCHMARKS.md)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="afterwards, one more replay under py-spy"
    )
    parser.add_argument("--py-spy", default=None, help="the py-spy executable (default: PATH)")
    parser.add_argument("--profile-dir", default=None, help="keep the raw profile in this folder")
    args = parser.parse_args(argv)
    if args.events < 1 or args.rounds < 1:
        parser.error("--events and --rounds must be at least 1")
    return args


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
