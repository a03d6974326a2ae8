"""Typed failures of the event store, so callers can map them without parsing messages."""

from __future__ import annotations


class EventStoreError(Exception):
    """Base of every error the store raises on purpose."""


class WrongExpectedVersion(EventStoreError):
    """A stream was not at the version the writer expected: someone else appended first."""

    def __init__(self, stream_id: str, expected: int | None, actual: int) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        super().__init__(f"stream {stream_id!r} is at version {actual}, expected {expected}")


class DuplicateEventIds(EventStoreError):
    """Some, but not all, of an append's event ids are already stored: not a plain retry."""


class UnknownPosition(EventStoreError):
    """A log position that names no stored event."""

    def __init__(self, global_position: int) -> None:
        self.global_position = global_position
        super().__init__(f"no event at log position {global_position}")


class CheckpointConflict(EventStoreError):
    """A checkpoint moved under a consumer: another runner of the same consumer is active."""

    def __init__(self, subscriber: str) -> None:
        self.subscriber = subscriber
        super().__init__(
            f"checkpoint of {subscriber!r} was moved by someone else: "
            "is a second runner of this consumer active?"
        )


class MigrationError(Exception):
    """The database schema and the migration files disagree; the service must not start."""


class LogClockAhead(EventStoreError):
    """The log holds transaction ids this PostgreSQL cluster has not reached: it was restored
    from a logical backup of another cluster, and must be re-clocked before it is used."""

    def __init__(self, newest: int, next_id: int) -> None:
        self.newest, self.next_id = newest, next_id
        super().__init__(
            f"the event log's transaction ids (up to {newest}) run ahead of this PostgreSQL "
            f"cluster's (next {next_id}): it was restored from another cluster"
        )
