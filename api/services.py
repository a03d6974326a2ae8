"""The service's parts, as the composition root (api/app.py) wired them, typed for the routes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis
from starlette.requests import HTTPConnection

from commands import CommandService
from eventstore import EventStore
from live import Feed, Hub, LiveLog
from projections.queries import PositionView

from . import logs
from .config import Settings
from .metrics import Metrics
from .revocation import Revocations


@dataclass
class Services:
    settings: Settings
    pool: asyncpg.Pool
    store: EventStore
    commands: CommandService[PositionView]
    hub: Hub
    live_log: LiveLog
    feed: Feed
    redis: aioredis.Redis | None
    metrics: Metrics
    revocations: Revocations
    started_at: float
    stopping: asyncio.Event
    """Set when shutdown begins: /health/ready answers 503 so load balancers stop sending."""


def services_of(connection: HTTPConnection) -> Services:
    return connection.app.state.services


class CommandObserver:
    """Counts what each command transaction recorded once it commits; a transaction shared by
    several requests logs under all their correlation ids."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def began(self) -> None:
        self._metrics.start_counting()

    def committed(self) -> None:
        self._metrics.count_committed()

    def shared(self, correlation_ids: Sequence[str]) -> None:
        logs.correlation_id.set(",".join(correlation_ids))
