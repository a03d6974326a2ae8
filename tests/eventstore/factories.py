"""Small builders for events in store tests."""

from __future__ import annotations

import uuid
from typing import Any

from eventstore import NewEvent


def new_stream(category: str = "test") -> str:
    return f"{category}-{uuid.uuid4()}"


def new_event(event_type: str = "SomethingHappened", **data: Any) -> NewEvent:
    return NewEvent(
        event_id=uuid.uuid4(),
        event_type=event_type,
        data=data,
        metadata={"actor": "tester", "correlation_id": str(uuid.uuid4())},
    )
