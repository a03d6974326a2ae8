"""A gap-free, concurrent, append-only event log on PostgreSQL. Knows nothing of positions."""

from .checkpoints import load_checkpoint, reset_checkpoint, save_checkpoint
from .clock import check_clock, reclock
from .codec import init_connection
from .connections import create_pool
from .errors import (
    CheckpointConflict,
    DuplicateEventIds,
    EventStoreError,
    LogClockAhead,
    MigrationError,
    UnknownPosition,
    WrongExpectedVersion,
)
from .events import (
    START,
    ExpectedVersion,
    LogPosition,
    LogSnapshot,
    NewEvent,
    RecordedEvent,
    StreamAppend,
)
from .migrations import migrate
from .store import EventStore, InlineProjector, opened_store
from .upcasting import Upcasters

__all__ = [
    "START",
    "CheckpointConflict",
    "DuplicateEventIds",
    "EventStore",
    "EventStoreError",
    "ExpectedVersion",
    "InlineProjector",
    "LogClockAhead",
    "LogSnapshot",
    "MigrationError",
    "NewEvent",
    "LogPosition",
    "RecordedEvent",
    "StreamAppend",
    "UnknownPosition",
    "Upcasters",
    "WrongExpectedVersion",
    "check_clock",
    "create_pool",
    "init_connection",
    "load_checkpoint",
    "migrate",
    "opened_store",
    "reclock",
    "reset_checkpoint",
    "save_checkpoint",
]
