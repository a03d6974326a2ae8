"""Old event shapes, read as the current one.

An event once written never changes, so when an event's shape changes the store keeps reading the
old rows and an upcaster lifts each one, a version at a time, to the shape the code knows now.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class Upcasters:
    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], tuple[str, Upcaster]] = {}

    def register(
        self, event_type: str, from_version: int, upcast: Upcaster, *, renamed_to: str | None = None
    ) -> None:
        """Lift `event_type` data from `from_version` to `from_version + 1` (optionally renamed)."""
        key = (event_type, from_version)
        if key in self._steps:
            raise ValueError(f"an upcaster for {event_type} v{from_version} is registered already")
        self._steps[key] = (renamed_to or event_type, upcast)

    def upcast(self, event_type: str, schema_version: int, data: Any) -> tuple[str, int, Any]:
        while (step := self._steps.get((event_type, schema_version))) is not None:
            event_type, upcast = step
            data = upcast(data)
            schema_version += 1
        return event_type, schema_version, data

    def __bool__(self) -> bool:
        return bool(self._steps)
