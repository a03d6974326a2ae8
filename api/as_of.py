"""`?as_of=<time>` and `?at=<event position>`: reads of the state as it was, not as it is."""

from __future__ import annotations

from datetime import datetime

from eventstore import EventStore, LogPosition, UnknownPosition

from .errors import ApiError

SETTLE_SECONDS = 5.0
AS_OF_HEADER = "X-As-Of-Position"
"""On a historical answer: the last event position it reflects."""


async def log_position(point: datetime | int, store: EventStore) -> LogPosition:
    if isinstance(point, datetime):
        await settled(store)
        return await store.position_at(point)
    try:
        position = await store.position_of(point)
    except UnknownPosition:
        problem = {"loc": ["query", "at"], "msg": "no event has this position"}
        raise ApiError(422, "validation failed", [problem]) from None
    await settled(store, position)
    return position


async def settled(store: EventStore, position: LogPosition | None = None) -> None:
    """Wait until the log is final up to `position` (default: all committed before the call).

    Past states and audit pages are read from final events only, so that no late commit can
    change them afterwards; a transaction still open delays them, by this much at most.
    """
    target = position or await store.newest()
    if not await store.wait_until_final(target, SETTLE_SECONDS):
        raise ApiError(
            503,
            "the log is not final that far yet (a transaction is still open); try again",
            headers={"Retry-After": "1"},
        )
