"""Prometheus metrics: one registry per application, rendered by `GET /metrics`.

Requests are labelled by route template (`/positions/{position_id}`), never by raw path, so the
number of series stays bounded whatever clients send.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence
from contextvars import ContextVar

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from eventstore import RecordedEvent

_recorded: ContextVar[Tally[str] | None] = ContextVar("recorded", default=None)


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests",
            "HTTP requests answered, by route template and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by route template",
            ["method", "route"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
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


async def note_recorded(connection: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
    """Inline projector: notes what the current request appended (counted if it commits)."""
    tally = _recorded.get()
    if tally is not None:
        tally.update(event.event_type for event in events)
