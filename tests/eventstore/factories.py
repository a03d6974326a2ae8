"""Small builders for events in store tests."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from eventstore import EventStore, NewEvent


def new_stream(category: str = "test") -> str:
    return f"{category}-{uuid.uuid4()}"


def new_event(event_type: str = "SomethingHappened", **data: Any) -> NewEvent:
    return NewEvent(
        event_id=uuid.uuid4(),
        event_type=event_type,
        data=data,
        metadata={"actor": "tester", "correlation_id": str(uuid.uuid4())},
    )


async def settled(store: EventStore, timeout: float = 10) -> None:
    """Wait until readers can reach the newest committed event.

    The barrier is the server's oldest open transaction, in any database: a test must not assume
    that nothing else on the server has a transaction open at the moment it reads.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while await store.head() != await store.newest():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("the log did not settle: a transaction stays open on the server")
        await asyncio.sleep(0.01)
