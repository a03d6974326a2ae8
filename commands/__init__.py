"""The command side: the application service, and the handlers that let the domain decide."""

from .errors import StalePosition, TooMuchContention
from .group_commit import GroupCommit, GroupWriteFailed
from .handlers import AtomicFailure, Metadata, Outcome, PositionHandlers, PriceUpdate
from .idempotency import Answer, IdempotencyKey, KeyReused, StoredAnswer
from .service import REFUSALS, CommandService, Observer, PricesRecorded, ReadBack, Reply

__all__ = [
    "REFUSALS",
    "Answer",
    "AtomicFailure",
    "CommandService",
    "GroupCommit",
    "GroupWriteFailed",
    "IdempotencyKey",
    "KeyReused",
    "Metadata",
    "Observer",
    "Outcome",
    "PositionHandlers",
    "PriceUpdate",
    "PricesRecorded",
    "ReadBack",
    "Reply",
    "StalePosition",
    "StoredAnswer",
    "TooMuchContention",
]
