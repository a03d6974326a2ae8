"""Prometheus metrics: one registry per application, rendered by `GET /metrics`.

Requests are labelled by route template (`/positions/{position_id}`), never by raw path, so the
number of series stays bounded whatever clients send.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from itertools import accumulate

import asyncpg
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from eventstore import RecordedEvent

_recorded: ContextVar[Tally[str] | None] = ContextVar("recorded", default=None)


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        # What every Python exporter has: process_* (resident memory, CPU seconds, open file
        # descriptors), python_gc_* (collections by generation) and python_info.
        ProcessCollector(registry=registry)
        GCCollector(registry=registry)
        PlatformCollector(registry=registry)
        self.requests = RequestTally()
        registry.register(self.requests)
        self.open_streams = Gauge(
            "live_connections",
            "Open live connections, by channel (websocket, sse)",
            ["channel"],
            registry=registry,
        )
        self.events_appended = Counter(
            "events_appended",
            "Events this instance appended to the log, by type (counted once committed)",
            ["type"],
            registry=registry,
        )
        self.live_feed_lag = Gauge(
            "live_feed_lag_events",
            "Events in the log that this instance's live feed has not yet passed on",
            registry=registry,
        )
        self.pool_connections = Gauge(
            "db_pool_connections",
            "Database connections of this instance's pool, by state (in_use, idle)",
            ["state"],
            registry=registry,
        )

    def observe_pool(self, pool: asyncpg.Pool) -> None:
        idle = pool.get_idle_size()
        self.pool_connections.labels("in_use").set(pool.get_size() - idle)
        self.pool_connections.labels("idle").set(idle)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # Appended events are counted only once their transaction has committed: the inline
    # projector below notes them, and the request that made them counts them after its commit.

    def start_counting(self) -> None:
        _recorded.set(Tally())

    def count_committed(self) -> None:
        tally = _recorded.get()
        if tally:
            for event_type, count in tally.items():
                self.events_appended.labels(event_type).inc(count)
        _recorded.set(None)


class RequestTally:
    """HTTP requests answered and their latencies, kept as plain numbers and read at each scrape.

    prometheus-client's Counter and Histogram take a lock for every update (three per request),
    which the event loop's one thread does not need. A scrape runs in that thread too.
    """

    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
    _LE = [*map(floatToGoString, BUCKETS), "+Inf"]

    def __init__(self) -> None:
        self._answered: dict[tuple[str, str, int], int] = {}
        """By (method, route, status): requests answered."""
        self._latencies: dict[tuple[str, str], list[float]] = {}
        """By (method, route): requests per bucket (not cumulative; the last is +Inf), then the
        sum of their seconds."""

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        self._answered[key] = self._answered.get(key, 0) + 1
        if (latency := self._latencies.get((method, route))) is None:
            latency = self._latencies[method, route] = [0.0] * (len(self.BUCKETS) + 2)
        latency[bisect_left(self.BUCKETS, seconds)] += 1
        latency[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        answered = CounterMetricFamily(
            "http_requests",
            "HTTP requests answered, by route template and status",
            labels=["method", "route", "status"],
        )
        for (method, route, status), count in list(self._answered.items()):
            answered.add_metric([method, route, str(status)], count)
        yield answered
        latency = HistogramMetricFamily(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by route template",
            labels=["method", "route"],
        )
        for (method, route), counts in list(self._latencies.items()):
            cumulative = zip(self._LE, accumulate(counts[:-1]), strict=True)
            latency.add_metric([method, route], buckets=list(cumulative), sum_value=counts[-1])
        yield latency


async def note_recorded(connection: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
    """Inline projector: notes what the current request appended (counted if it commits)."""
    tally = _recorded.get()
    if tally is not None:
        tally.update(event.event_type for event in events)
