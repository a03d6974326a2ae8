"""Why a command could not be applied, beyond what the domain itself refuses."""

from __future__ import annotations


class StalePosition(Exception):
    """The caller's expected version (If-Match) is not the position's version."""

    def __init__(self, expected: int, actual: int) -> None:
        self.expected, self.actual = expected, actual
        super().__init__(f"the position is at version {actual}, not {expected}")


class TooMuchContention(Exception):
    """The position kept changing under the command; retrying later may succeed."""

    def __init__(self) -> None:
        super().__init__("the position changed concurrently too often; try again")
