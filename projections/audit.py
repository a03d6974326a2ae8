"""The audit trail: the log itself, searched by position, owner, actor, type, time and position.

Only final events are shown (those below the snapshot barrier), so pages never shift: an event
cannot later appear behind a cursor.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from domain.streams import MARKET_STREAM, position_stream
from eventstore import EventStore, LogPosition, RecordedEvent


class EventSearch(msgspec.Struct, frozen=True, kw_only=True):
    position_ids: list[UUID] | None = None
    owner: str | None = None
    actor: str | None = None
    event_types: list[str] | None = None
    recorded_from: datetime | None = None
    recorded_to: datetime | None = None
    """Inclusive bounds on the time the event was recorded."""
    from_position: int | None = None
    to_position: int | None = None
    """Inclusive bounds on the event position."""
    include_market: bool = False
    """With `position_ids` or `owner`: also the market-price events."""
    newest_first: bool = False


async def search(
    connection: asyncpg.Connection | asyncpg.Pool,
    store: EventStore,
    criteria: EventSearch,
    *,
    after: LogPosition | None = None,
    until: LogPosition | None = None,
    limit: int = 100,
) -> list[RecordedEvent]:
    """A page of matching events in log order (or reverse), after the cursor `after`.

    `until` is the last log position to consider (inclusive).
    """
    clauses = ["tx_id < pg_snapshot_xmin(pg_current_snapshot())"]
    arguments: list[Any] = []

    def argument(value: Any) -> str:
        arguments.append(value)
        return f"${len(arguments)}"

    streams = []
    if criteria.position_ids is not None:
        ids = [position_stream(i) for i in criteria.position_ids]
        streams.append(f"stream_id = ANY ({argument(ids)}::text[])")
    if criteria.owner is not None:
        # The owner is named in each position's first event (the index serves this form).
        streams.append(
            "stream_id IN (SELECT o.stream_id FROM events o WHERE o.event_type = 'PositionOpened'"
            f" AND o.data->>'owner' = {argument(criteria.owner)})"
        )
    if streams:
        condition = " AND ".join(streams)
        if criteria.include_market:
            condition = f"({condition}) OR stream_id = {argument(MARKET_STREAM)}"
        clauses.append(f"({condition})")
    for value, clause in (
        (criteria.actor, "metadata->>'actor' = {}"),
        (criteria.event_types, "event_type = ANY ({}::text[])"),
        (criteria.recorded_from, "recorded_at >= {}"),
        (criteria.recorded_to, "recorded_at <= {}"),
        (criteria.from_position, "global_position >= {}"),
        (criteria.to_position, "global_position <= {}"),
    ):
        if value is not None:
            clauses.append(clause.format(argument(value)))
    for bound, comparison in ((after, "<" if criteria.newest_first else ">"), (until, "<=")):
        if bound is not None:
            tx, position = argument(bound.tx_id), argument(bound.global_position)
            clauses.append(
                f"(tx_id, global_position) {comparison} ({tx}::xid8, {position}::bigint)"
            )
    order = "DESC" if criteria.newest_first else "ASC"
    rows = await connection.fetch(
        f"SELECT {store.COLUMNS} FROM events WHERE {' AND '.join(clauses)} "
        f"ORDER BY tx_id {order}, global_position {order} LIMIT {argument(limit)}",
        *arguments,
    )
    return [store.recorded(row) for row in rows]


_METADATA = (
    "actor",
    "role",
    "client_ip",
    "user_agent",
    "correlation_id",
    "causation_id",
    "idempotency_key",
)


def entry(event: RecordedEvent) -> dict[str, Any]:
    """An event as auditors read it: what happened, to which stream, when, by whom, from where."""
    return {
        "position": event.global_position,
        "stream_id": event.stream_id,
        "version": event.stream_version,
        "type": event.event_type,
        "schema_version": event.schema_version,
        "event_id": event.event_id,
        "recorded_at": event.recorded_at,
        "data": event.data,
        **{name: event.metadata.get(name) for name in _METADATA},
    }
