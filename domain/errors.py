"""Why a command was refused, in terms a caller can act on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class DomainError(Exception):
    """A command the domain refuses; nothing is recorded."""


class InvalidCommand(DomainError):
    """The command breaks one or more rules; every broken rule is listed."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))


class PositionNotFound(DomainError):
    def __init__(self) -> None:
        super().__init__("position not found")


class Conflict(DomainError):
    """The command does not fit the position's state (a caller's retry will not help)."""


class PositionAlreadyExists(Conflict):
    def __init__(self) -> None:
        super().__init__("a position with this id exists already")


class AlreadyClosed(Conflict):
    def __init__(self) -> None:
        super().__init__("the position is closed")


class NotPending(Conflict):
    def __init__(self) -> None:
        super().__init__("only a pending position can be filled")


class NotOpen(Conflict):
    def __init__(self) -> None:
        super().__init__("the position is not open")


class NoExitPrice(Conflict):
    def __init__(self) -> None:
        super().__init__("no exit price given and no market price known")
