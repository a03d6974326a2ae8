"""What every benchmark shares: scratch databases, server processes and their environment, the
CPU and memory meter (from /proc), alternating rounds, ratios, percentiles and tables."""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import http.client
import importlib.util
import json
import multiprocessing
import os
import queue
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ADMIN_DSN = "postgresql:///postgres"
CORES = os.cpu_count() or 1
DISTURBED = 0.35
"""Cores used by other processes above which a phase is marked: its figures are suspect."""
DISTURBED_NOTE = f"(* = other processes used more than {DISTURBED} cores during that phase)"
SERVICE_CODE = ["api", "commands", "domain", "eventstore", "projections", "migrations"]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")
K = TypeVar("K")
S = TypeVar("S", bound="Sample")


# -- running ------------------------------------------------------------------------------------


def available_loop(wanted: str = "uvloop") -> str:
    """`wanted`, or asyncio where uvloop is not installed."""
    if wanted == "uvloop" and importlib.util.find_spec("uvloop") is None:
        return "asyncio"
    return wanted


def run_loop(main: Callable[[], Coroutine[Any, Any, T]], loop: str = "uvloop") -> T:
    """Run on uvloop (as the service does under uvicorn[standard]) unless told otherwise."""
    if available_loop(loop) == "uvloop":
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())


def raise_fd_limit() -> None:
    """Thousands of sockets need more descriptors than the usual soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def child_loop(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """The body of a load process: many sockets, uvloop, quiet when interrupted."""
    raise_fd_limit()
    try:
        run_loop(main)
    except KeyboardInterrupt:
        pass


def end_processes(processes: Iterable[Any], timeout: float = 10.0) -> None:
    """Wait for multiprocessing children told to exit; terminate, then kill, those that do not."""
    processes = list(processes)
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.1, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(5)
        if process.is_alive():
            process.kill()
            process.join()


def parse_options(
    prog: str, doc: str | None, table: str, argv: list[str] | None
) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    """The command line from a table of `--flag  kind  help` lines (an indented line goes on
    with the help above). kind: `switch`; a default, whose type is the option's (5, 0.25,
    bench_api); a type and no default (int, str, path); a type and a default (float=25); or
    choices, the first the default (uvloop|asyncio). A help of `-` hides the option."""
    parser = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n")[0])
    rows: list[list[str]] = []
    for line in table.strip("\n").splitlines():
        if line[:1].isspace():
            rows[-1][2] += " " + line.strip()
        else:
            rows.append(line.split(None, 2))
    types = {"int": int, "float": float, "str": str, "path": Path}
    for flag, kind, text in rows:
        help = argparse.SUPPRESS if text == "-" else text
        name, typed, default = kind.partition("=")
        if kind == "switch":
            parser.add_argument(flag, action="store_true", help=help)
        elif "|" in kind:
            choices = kind.split("|")
            parser.add_argument(flag, choices=choices, default=choices[0], help=help)
        elif name in types:
            value = ast.literal_eval(default) if typed else None
            parser.add_argument(flag, type=types[name], default=value, help=help)
        else:
            value = _literal(kind)
            parser.add_argument(flag, type=type(value), default=value, help=help)
    return parser.parse_args(argv), parser


def _literal(text: str) -> Any:
    """A number as Python writes it, else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def run_main(main: Callable[[argparse.Namespace], Coroutine[Any, Any, int]], args: Any) -> int:
    """main(args) on the event loop of --loop (uvloop where there is no such option), asyncio
    where uvloop is not installed; args.loop says which ran."""
    args.loop = available_loop(getattr(args, "loop", "uvloop"))
    return run_loop(lambda: main(args), args.loop)


async def bounded(limit: int, run: Callable[[T], Awaitable[Any]], items: Iterable[T]) -> list[Any]:
    """run(item) for every item, at most `limit` at a time; the results in the items' order."""
    gate = asyncio.Semaphore(limit)

    async def one(item: T) -> Any:
        async with gate:
            return await run(item)

    return await asyncio.gather(*map(one, items))


async def wait_total(read: Callable[[], Awaitable[int]], expected: int, quiet: float = 5.0) -> int:
    """Poll read() every 0.1 s until it reaches `expected` or has not changed for `quiet`
    seconds (messages still to arrive, say); its last value."""
    changed, previous = time.monotonic(), -1
    while (got := await read()) < expected:
        if got != previous:
            changed, previous = time.monotonic(), got
        elif time.monotonic() - changed > quiet:
            break
        await asyncio.sleep(0.1)
    return got


async def receive(commands: Any) -> Any:
    """The next command of a load process's queue, without blocking its event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, commands.get)


class Children:
    """Load processes (multiprocessing, spawn): a command queue to each, one queue back from
    all, on which each message is (tag, kind, index, payload)."""

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self.out = self._context.Queue()
        self.processes: list[tuple[str, int, Any, Any]] = []  # (kind, index, process, commands)
        self._pending: list[tuple] = []

    def start(self, kind: str, index: int, target: Any, config: dict[str, Any]) -> None:
        """`target(index, config, commands, out)` in a process of its own."""
        commands = self._context.Queue()
        process = self._context.Process(
            target=target, args=(index, config, commands, self.out), daemon=True
        )
        process.start()
        self.processes.append((kind, index, process, commands))

    @property
    def pids(self) -> list[int]:
        return [p.pid for _, _, p, _ in self.processes if p.pid is not None]

    def send(self, kind: str | None, op: str, arg: Any = None, index: int | None = None) -> None:
        for k, i, _, commands in self.processes:
            if (kind is None or k == kind) and (index is None or i == index):
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
        except queue.Empty:
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

    async def ask(self, kind: str, op: str, args: list[Any], timeout: float) -> list[Any]:
        """`op` to the children of `kind`, child i with args[i]; their answers (tagged `op`), in
        the children's order."""
        for index, arg in enumerate(args):
            self.send(kind, op, arg, index)
        got = await self.gather(op, kind, len(args), timeout)
        return [got[index] for index in range(len(args))]

    def stop(self) -> None:
        for _, _, _, commands in self.processes:
            try:
                commands.put(("exit", None))
            except (OSError, ValueError):
                pass
        end_processes(process for _, _, process, _ in self.processes)
        self.out.cancel_join_thread()


# -- /proc --------------------------------------------------------------------------------------


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all cores, from /proc/stat; (0, 0) where there is none."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:9]]
    except OSError:
        return 0, 0
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def busy_cores(start: tuple[int, int], end: tuple[int, int]) -> float | None:
    """Cores busy on the whole machine between two machine_ticks(); None if no tick passed."""
    (busy0, total0), (busy1, total1) = start, end
    return (busy1 - busy0) / (total1 - total0) * CORES if total1 > total0 else None


async def machine_busy(seconds: float = 1.0) -> float:
    """Cores busy over the next `seconds`: how quiet the machine is before a run."""
    start = machine_ticks()
    await asyncio.sleep(seconds)
    return busy_cores(start, machine_ticks()) or 0.0


def process_cpu(pids: Iterable[int]) -> dict[int, float | None]:
    """CPU seconds used so far by each of these processes (None: it has ended)."""
    seconds: dict[int, float | None] = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            seconds[pid] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime
        except (OSError, IndexError, ValueError):
            seconds[pid] = None
    return seconds


def process_memory_kib(pid: int, field_name: str = "VmRSS") -> int | None:
    """A figure of /proc/<pid>/status, in KiB for memory (VmRSS, VmHWM; Threads is a count)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


async def settled_memory_kib(pid: int, wait: float, readings: int = 3) -> int | None:
    """VmRSS once a process has settled: after `wait` s, the median of readings 0.5 s apart."""
    await asyncio.sleep(wait)
    values = [process_memory_kib(pid)]
    for _ in range(readings - 1):
        await asyncio.sleep(0.5)
        values.append(process_memory_kib(pid))
    value = median(values)
    return None if value is None else int(value)


def open_fds(pid: int) -> tuple[int | None, int | None]:
    """(open descriptors, of which sockets) of a process; None where /proc cannot tell."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None, None
    sockets = 0
    for name in names:
        try:
            sockets += os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:")
        except OSError:
            continue
    return len(names), sockets


def load_average() -> tuple[float, float, float]:
    """The machine's 1, 5 and 15 minute load averages."""
    return os.getloadavg()


async def wait_quiet(limit: float, patience: float) -> None:
    """Wait (up to `patience` seconds) until the 1-minute load average is below `limit`."""
    deadline = time.monotonic() + patience
    while (load := load_average())[0] >= limit:
        if time.monotonic() >= deadline:
            print(f"load average {load}: still above {limit} after waiting; starting anyway")
            return
        print(f"load average {load[0]:.2f} >= {limit}: waiting", flush=True)
        await asyncio.sleep(30)
    print(f"load average {load}: starting", flush=True)


# -- the CPU meter -----------------------------------------------------------------------------


@dataclass
class Reading:
    """CPU seconds so far: of each process of each group, of this process, of the machine."""

    wall: float
    machine: tuple[int, int]
    own: float
    groups: dict[str, dict[int, float | None]]


@dataclass
class Cores:
    """Cores used between two readings (1.0 = one core saturated)."""

    seconds: float
    machine: float  # busy on the whole machine
    own: float  # this process (and, where counted, the children it has reaped: wrk)
    groups: dict[str, float | None]  # None: a process of the group ended, its CPU is unknown

    def __getitem__(self, group: str) -> float | None:
        return self.groups[group]

    @property
    def other(self) -> float | None:
        """Cores busy with anything else: WAL writer, checkpointer, other people's processes."""
        if None in self.groups.values():
            return None
        return max(0.0, self.machine - self.own - sum(self.groups.values()))  # type: ignore[arg-type]

    def disturbed(self) -> bool:
        """Whether something else took a noticeable share of the machine."""
        other = self.other
        return other is not None and other > DISTURBED


class CpuMeter:
    """Reads the CPU of groups of processes (a server, database backends, clients), of this
    process and of the machine, and gives the cores each used between two readings.

    A process that ends in between takes its last CPU time with it: `strict` makes its group's
    figure unknown rather than too low; otherwise the group counts the processes still there. A
    process first seen at the second reading counts from zero: it started in between."""

    def __init__(self, strict: bool = True, children: bool = False) -> None:
        self.strict, self.children = strict, children

    def read(self, **groups: Iterable[int]) -> Reading:
        own = time.process_time()
        if self.children:
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            own += usage.ru_utime + usage.ru_stime
        cpu = {name: process_cpu(pids) for name, pids in groups.items()}
        return Reading(time.perf_counter(), machine_ticks(), own, cpu)

    def since(self, start: Reading, **groups: Iterable[int]) -> Cores:
        """The cores used from `start` to now; `groups` default to the processes of the start."""
        end = self.read(**{name: groups.get(name, pids) for name, pids in start.groups.items()})
        seconds = end.wall - start.wall
        used = {
            name: self._used(start.groups[name], after, seconds)
            for name, after in end.groups.items()
        }
        machine = busy_cores(start.machine, end.machine) or 0.0
        return Cores(seconds, machine, (end.own - start.own) / seconds, used)

    def _used(self, before: dict, after: dict, seconds: float) -> float | None:
        total = 0.0
        for pid, now in after.items():
            then = before.get(pid, 0.0)
            if now is None or then is None:
                if self.strict:
                    return None
                continue
            total += now - then
        return total / seconds

    async def measure(
        self, run: Callable[[], Awaitable[int]], kind: type[S], **groups: Iterable[int]
    ) -> S:
        """Run a phase that returns how many items it handled, and what it cost."""
        start = self.read(**groups)
        handled = await run()
        cores = self.since(start)
        return kind(handled, cores.seconds, cores)


@dataclass
class Sample:
    """A measured phase: the events or requests it handled, in how long, with what CPU."""

    handled: int
    seconds: float
    cores: Cores

    @property
    def rate(self) -> float:
        return self.handled / self.seconds if self.seconds else 0.0

    def us_per(self, cores: float | None) -> float | None:
        """CPU time per item, in microseconds, of something that used `cores`."""
        if cores is None or not self.handled:
            return None
        return cores * self.seconds / self.handled * 1e6

    def mark(self) -> str:
        return "*" if self.cores.disturbed() else " "


# -- rounds, ratios, statistics -----------------------------------------------------------------


def in_turn(keys: Sequence[K], round_index: int) -> list[K]:
    """The phases in order in odd rounds and in reverse in even ones, so that each runs next to
    its counterpart and neither always runs first."""
    return list(keys) if round_index % 2 == 0 else list(keys)[::-1]


async def alternate(
    rounds: int,
    keys: Sequence[K],
    measure: Callable[[K, int], Awaitable[S]],
    after_round: Callable[[int, dict[K, list[S]]], Awaitable[None]] | None = None,
) -> dict[K, list[S]]:
    """Every phase once a round, in turn; `after_round` sees the samples so far."""
    samples: dict[K, list[S]] = {key: [] for key in keys}
    for r in range(rounds):
        for key in in_turn(keys, r):
            samples[key].append(await measure(key, r))
        if after_round is not None:
            await after_round(r, samples)
    return samples


def round_line(label: str, samples: Iterable[Sample], width: int, mark_width: int = 1) -> str:
    """A line of the progress table: each phase's rate and its mark."""
    return f"{label:<7}" + "".join(
        f"{s.rate:>{width},.0f}{s.mark():<{mark_width}}" for s in samples
    )


def ratio(top: list[Sample], bottom: list[Sample]) -> tuple[float, float, float]:
    """The ratio of the median rates, and the lowest and highest within a round."""
    paired = [t.rate / b.rate for t, b in zip(top, bottom, strict=True)]
    value = statistics.median(s.rate for s in top) / statistics.median(s.rate for s in bottom)
    return value, min(paired), max(paired)


def ratio_row(
    name: str,
    top: list[Sample],
    bottom: list[Sample],
    target: float | None,
    verdicts: Verdicts,
    missed_as: str | None = None,
) -> list[str]:
    """A targets-table row of top / bottom: value, range within the rounds, target, verdict."""
    value, low, high = ratio(top, bottom)
    met = None if target is None else value >= target
    shown = "-" if target is None else f">= {target:.2f}"
    verdict = verdicts(met, missed_as or name)
    return [name, f"{value:.2f}", f"{low:.2f}-{high:.2f}", shown, verdict]


def rate_columns(
    label: str, runs: Callable[[K], list[Sample]]
) -> list[tuple[str, Callable[[K], str]]]:
    """The median rate of a phase over the rounds, and the lowest and highest."""

    def rates(key: K) -> list[float]:
        return [s.rate for s in runs(key)]

    return [
        (label, lambda key: f"{statistics.median(rates(key)):,.0f}"),
        ("min", lambda key: f"{min(rates(key)):,.0f}"),
        ("max", lambda key: f"{max(rates(key)):,.0f}"),
    ]


def median(values: Iterable[float | None]) -> float | None:
    """The median of the known values; None if there is none."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of values (sorted or not); with few values, p99 is the largest."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(-(-q * len(ordered) // 100)) - 1))]


class Verdicts:
    """The verdicts of a targets table, and the names of the targets missed."""

    def __init__(self) -> None:
        self.missed: list[str] = []

    def __call__(self, met: bool | None, name: str, shown: str = "MISSED") -> str:
        """'info' where there is no target, else 'met', or `shown` for a miss (noting `name`)."""
        if met is None:
            return "info"
        if not met:
            self.missed.append(name)
        return "met" if met else shown

    def report(self, suffix: str = "") -> None:
        if self.missed:
            print(f"TARGET MISSED: {', '.join(self.missed)}{suffix}.")


# -- tables -------------------------------------------------------------------------------------


def num(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.rjust(width) if i else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    print(f"\n{title}")
    print(line(header))
    print("-" * len(line(header)))
    for row in rows:
        print(line(row))


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """The table of print_table as markdown: the first column left-aligned, the others right."""
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def print_columns(
    title: str, columns: list[tuple[str, Callable[[T], str]]], items: Iterable[T]
) -> None:
    """A table of one row per item: each column its header and how it shows an item."""
    rows = [[show(item) for _, show in columns] for item in items]
    print_table(title, [header for header, _ in columns], rows)


# -- databases ----------------------------------------------------------------------------------


def database_dsn(admin_dsn: str, name: str) -> str:
    parts = urlsplit(admin_dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def drop_database(admin: asyncpg.Connection, name: str) -> None:
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@asynccontextmanager
async def scratch_database(
    name: str, keep: bool, default_admin: str = DEFAULT_ADMIN_DSN
) -> AsyncIterator[tuple[asyncpg.Connection, str]]:
    """An admin connection (BENCH_DATABASE_URL) and the DSN of database `name`, made empty; it
    is dropped at the end, failures included, unless `keep`."""
    admin_dsn = os.environ.get("BENCH_DATABASE_URL", default_admin)
    admin = await asyncpg.connect(admin_dsn)
    try:
        await drop_database(admin, name)
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield admin, database_dsn(admin_dsn, name)
    finally:
        if not keep:
            await drop_database(admin, name)
        await admin.close()


async def migrated(dsn: str, *statements: str) -> asyncpg.Connection:
    """A connection to a database with the project's migrations, and `statements`, applied."""
    from eventstore import migrate

    connection = await asyncpg.connect(dsn)
    await migrate(connection, ROOT / "migrations")
    for statement in statements:
        await connection.execute(statement)
    return connection


async def backend_pids(admin: asyncpg.Connection, database: str) -> list[int]:
    """The server processes serving `database` now: their CPU time is the database's cost."""
    rows = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
    return [row["pid"] for row in rows]


async def postgres(connection: asyncpg.Connection, *settings: str) -> str:
    """'PostgreSQL <version> (setting=value, ...)' for the run's header."""
    names = ["server_version", *settings]
    row = await connection.fetchrow(
        "SELECT " + ", ".join(f"current_setting('{name}') AS {name}" for name in names)
    )
    shown = ", ".join(f"{name}={row[name]}" for name in settings)
    return f"PostgreSQL {row['server_version'].split()[0]}" + (f" ({shown})" if shown else "")


FOREIGN_WRITES = (
    "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)), 0) "
    "FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND datname IS DISTINCT FROM $1"
)


async def longest_foreign_write(admin: asyncpg.Connection, database: str, stop: Any) -> float:
    """The longest-lived write transaction (s) of the databases other than `database`, sampled
    until `stop` (an asyncio.Event) is set. The event store's feed reads only below the oldest
    open writing transaction of the whole server (README, "The barrier is server-wide"): this
    tells a stall caused by someone else's transaction from one of the service's own."""
    longest = 0.0
    while not stop.is_set():
        longest = max(longest, float(await admin.fetchval(FOREIGN_WRITES, database)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)
    return longest


async def checkpoint(admin: asyncpg.Connection) -> None:
    """Start from a clean slate: no dirty pages of an earlier phase (needs a superuser)."""
    try:
        await admin.execute("CHECKPOINT")
    except asyncpg.PostgresError:
        pass


# -- servers ------------------------------------------------------------------------------------


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
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, json.loads(raw) if raw else None, elapsed
    finally:
        connection.close()


def source_state() -> tuple[str, list[str]]:
    """The commit, and the files of the service's code that differ from it (git, if any)."""

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", *argv], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout

    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        status = git("status", "--porcelain", "--", *SERVICE_CODE)
    except (OSError, subprocess.CalledProcessError):
        return "unknown", []
    return head, sorted(line[3:] for line in status.splitlines())


def source_note(source: tuple[str, list[str]]) -> str:
    """'commit X, clean' or 'commit X, modified: files'."""
    return f"commit {source[0]}" + (
        f", modified: {', '.join(source[1])}" if source[1] else ", clean"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_env(**values: str) -> dict[str, str]:
    """This environment less what could change the servers' behaviour, plus `values`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JWT_", "DB_", "REDIS_", "SQL_", "WORKERS", "DATABASE_URL"))
    }
    env.update(values)
    return env


def mint_tokens(secret: str, roles: dict[str, Any], ttl: timedelta) -> dict[str, str]:
    """An HS256 token for each subject, with its role."""
    from api.auth import mint_token

    return {
        subject: mint_token(
            secret_or_private_key=secret, algorithm="HS256", subject=subject, role=role, ttl=ttl
        )
        for subject, role in roles.items()
    }


class Server:
    """A server in a process of its own, its output kept in a file for when it fails."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        port: int,
        ready: tuple[str, str],
        logs: Path,
    ) -> None:
        """`ready`: the path that answers 200 once the server is up, and the token it takes."""
        self.name, self.port, self.log = name, port, logs / f"{name}.log"
        self._argv, self._env, self._ready = argv, env, ready
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
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if http_call(self.port, "GET", *self._ready)[0] == 200:
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


def log_levels(path: Path, examples: int = 8) -> tuple[Counter[str], list[str]]:
    """A server log's lines by level (JSON records; TEXT for other lines), and the first lines
    above INFO."""
    levels: Counter[str] = Counter()
    shown: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
            level = str(record.get("levelname") or record.get("level") or "?").upper()
        except (ValueError, AttributeError):
            level = "TEXT"
        levels[level] += 1
        if level not in ("INFO", "DEBUG") and len(shown) < examples:
            shown.append(line[:400])
    return levels, shown


def prometheus_metric(text: str, name: str) -> dict[str, float]:
    """The samples of one metric of a Prometheus text page (/metrics), by their label string."""
    found = {}
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            labels, _, value = line.rpartition(" ")
            found[labels[len(name) :] or "{}"] = float(value)
    return found


def start_service(
    dsn: str, secret: str, token: str, logs: Path, ready: str = "/health", **settings: str
) -> Server:
    """`python -m api serve`, one uvicorn worker on 127.0.0.1, logging warnings; `settings`
    (DB_POOL_SIZE...) added to its environment."""
    port = free_port()
    env = server_env(
        DATABASE_URL=dsn,
        JWT_SECRET=secret,
        PORT=str(port),
        HOST="127.0.0.1",
        LOG_LEVEL="warning",
        WORKERS="1",
    )
    env.update(settings)
    return Server(
        "service", [sys.executable, "-m", "api", "serve"], env, port, (ready, token), logs
    )


# -- profiles (py-spy) ---------------------------------------------------------------------------


def find_py_spy(option: str | None) -> str | None:
    """The py-spy executable (--py-spy, else the PATH); None, said so, where there is none."""
    import shutil

    spy = option or shutil.which("py-spy")
    if spy is None:
        print("\n--profile: py-spy is not on the PATH (pip install py-spy, or --py-spy PATH)")
    return spy


def frame_file(frame: str) -> str:
    """The file of a py-spy raw frame, `name (file:line)`, without the line."""
    return frame.partition(" (")[2].rstrip(")").rsplit(":", 1)[0]


@dataclass
class Profile:
    """py-spy's raw stacks (`frame;frame;... count`), tallied by place and by innermost frame."""

    stacks: list[tuple[list[str], int]]
    total: int = 0
    places: Counter[str] = field(default_factory=Counter)
    leaves: Counter[str] = field(default_factory=Counter)

    @classmethod
    def read(cls, path: Path) -> Profile:
        stacks = []
        for line in path.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if stack.strip():
                stacks.append((stack.split(";"), int(n)))
        return cls(stacks, sum(n for _, n in stacks))

    def tally(
        self,
        places: list[tuple[str, tuple[str, ...]]],
        pass_through: tuple[str, ...],
        in_loop: str,
        leaf: Callable[[str], str] = lambda frame: frame,
        innermost_only: tuple[str, ...] = (),
    ) -> Profile:
        """A sample goes to the place of its innermost frame in a file of `places` (patterns);
        frames of `pass_through` only pass control on, and those of `innermost_only` are a
        place only as the innermost frame. A sample with no place is C code called from the
        event loop (`in_loop`). The last place, pattern "", takes other Python."""
        for frames, n in self.stacks:
            files = [frame_file(frame) for frame in frames]
            self.places[_place(files, places, pass_through, in_loop, innermost_only)] += n
            self.leaves[leaf(frames[-1])] += n
        return self

    def print_shares(
        self, counts: Counter[str], top: int | None = None, cost: Callable[[int], str] | None = None
    ) -> None:
        """Each place or frame with its share of the samples (and `cost(samples)`, if given)."""
        for key, n in counts.most_common(top):
            print(f"  {n / self.total:6.1%}  {cost(n) if cost else ''}{key}")


def _place(
    files: list[str],
    places: list[tuple[str, tuple[str, ...]]],
    pass_through: tuple[str, ...],
    in_loop: str,
    innermost_only: tuple[str, ...],
) -> str:
    for depth, where in enumerate(reversed(files)):
        if any(p in where for p in pass_through) or depth and where.endswith(innermost_only):
            continue
        for label, patterns in places:
            if any(p in where for p in patterns):
                if not any(patterns) and depth:
                    break  # an unlisted frame inside a listed one: look further out
                return label
    return in_loop
