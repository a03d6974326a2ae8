"""The store's vocabulary: events going in, events coming out, and places in the log."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

import msgspec


class LogPosition(NamedTuple):
    """A place in the log, in log order.

    The log is ordered by (tx_id, global_position): the writing transaction first, so that a reader
    below the snapshot barrier can never be overtaken by a late commit. Outside the store a position
    is the plain integer `global_position`; `EventStore.position_of` turns one back into this pair.
    """

    tx_id: int
    global_position: int


START = LogPosition(0, 0)
"""Before the first event."""


class LogSnapshot(NamedTuple):
    """The log as one transaction's snapshot sees it.

    Everything up to `head` is final. Above it, the snapshot may also see events of transactions
    that committed while an older one was still open: a read model read in the same snapshot
    already shows them, and `includes` tells which they are.
    """

    head: LogPosition
    xmin: int
    xmax: int
    running: frozenset[int]

    def includes(self, position: LogPosition) -> bool:
        tx_id = position.tx_id
        return tx_id < self.xmin or (tx_id < self.xmax and tx_id not in self.running)


class ExpectedVersion:
    """What a writer believes about a stream before appending.

    An exact version is a plain int (the number of events in the stream); these name the others.
    """

    ANY: None = None
    NO_STREAM: int = 0


class NewEvent(msgspec.Struct, frozen=True):
    """An event to append. `data` is anything msgspec can encode (a Struct, a dict)."""

    event_id: UUID
    event_type: str
    data: Any
    metadata: dict[str, Any] = {}
    schema_version: int = 1


class StreamAppend(msgspec.Struct, frozen=True):
    """The events for one stream within a (possibly multi-stream) atomic append."""

    stream_id: str
    events: list[NewEvent]
    expected_version: int | None = ExpectedVersion.ANY


class RecordedEvent(msgspec.Struct, frozen=True):
    """An event as stored, with its place in its stream and in the log."""

    global_position: int
    tx_id: int
    event_id: UUID
    stream_id: str
    stream_version: int
    event_type: str
    schema_version: int
    data: Any
    metadata: dict[str, Any]
    recorded_at: datetime

    @property
    def position(self) -> LogPosition:
        return LogPosition(self.tx_id, self.global_position)
