"""What the benchmarks share: reading CPU time from /proc, medians, tables, scratch databases."""

from __future__ import annotations

import os
import statistics
from abc import ABC, abstractmethod
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

DISTURBED = 0.35
"""Cores used by other processes above which a phase is marked: its figures are suspect."""


class PhaseSample(ABC):
    """What a phase's figures give: its rate, the CPU of everything else, and a cost per item."""

    seconds: float
    machine_cpu: float  # cores busy on the whole machine

    @abstractmethod
    def handled(self) -> int:
        """The events or requests the phase handled."""

    @abstractmethod
    def measured_cpu(self) -> tuple[float | None, ...]:
        """The cores used by each part the bench measures (None: not read)."""

    @property
    def rate(self) -> float:
        return self.handled() / self.seconds if self.seconds else 0.0

    @property
    def other_cpu(self) -> float | None:
        """Cores busy with anything else: WAL writer, checkpointer, other people's processes."""
        measured = self.measured_cpu()
        if None in measured:
            return None
        return max(0.0, self.machine_cpu - sum(measured))  # type: ignore[arg-type]

    def disturbed(self) -> bool:
        """Whether something else took a noticeable share of the machine during the phase."""
        other = self.other_cpu
        return other is not None and other > DISTURBED

    def us_per(self, cores: float | None) -> float | None:
        """CPU time per event or request, in microseconds, of something that used `cores`."""
        handled = self.handled()
        if cores is None or not handled:
            return None
        return cores * self.seconds / handled * 1e6


@dataclass
class EventsSample(PhaseSample):
    """A phase that handled `events` in `seconds`, and the CPU it took."""

    events: int
    seconds: float
    client_cpu: float  # cores used by this Python process (1.0 = one core saturated)
    server_cpu: float | None  # cores used by the PostgreSQL backends of the bench database
    machine_cpu: float

    def handled(self) -> int:
        return self.events

    def measured_cpu(self) -> tuple[float | None, ...]:
        return self.client_cpu, self.server_cpu

    def mark(self) -> str:
        return "*" if self.disturbed() else " "


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


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all cores, from /proc/stat; (0, 0) where there is none."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:9]]
    except OSError:
        return 0, 0
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def process_seconds(pids: list[int]) -> float | None:
    """CPU seconds used so far by these (local) processes; None when /proc cannot tell."""
    total = 0
    try:
        for pid in pids:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, IndexError, ValueError):
        return None
    return total / _CLOCK_TICKS


def num(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def database_dsn(admin_dsn: str, name: str) -> str:
    parts = urlsplit(admin_dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def drop_database(admin: asyncpg.Connection, name: str) -> None:
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def backend_pids(admin: asyncpg.Connection, database: str) -> list[int]:
    """The server processes serving `database` now: their CPU time is the database's cost."""
    rows = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
    return [row["pid"] for row in rows]


def process_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds used so far by each of these processes that still exists (from /proc)."""
    seconds = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            seconds[pid] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
        except (OSError, IndexError, ValueError):
            continue
    return seconds


def process_memory_kib(pid: int, field: str = "VmRSS") -> int | None:
    """A memory figure of a process from /proc/<pid>/status, in KiB (VmRSS, VmHWM...)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of values (sorted or not); with few values, p99 is the largest."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(-(-q * len(ordered) // 100)) - 1))]


async def recreate_database(admin: asyncpg.Connection, name: str) -> None:
    """Drop `name` (closing its connections) and create it empty."""
    await drop_database(admin, name)
    await admin.execute(f'CREATE DATABASE "{name}"')


def load_average() -> tuple[float, float, float] | None:
    """The machine's 1, 5 and 15 minute load averages, from /proc/loadavg."""
    try:
        with open("/proc/loadavg") as loadavg:
            one, five, fifteen = (float(v) for v in loadavg.read().split()[:3])
    except (OSError, ValueError):
        return None
    return one, five, fifteen


def open_fd_count(pid: int) -> int | None:
    """How many file descriptors a process has open now (/proc/<pid>/fd); None if unknown."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
