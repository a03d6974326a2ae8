"""Query parameters, converted one by one, every problem reported together (422)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar
from uuid import UUID

import msgspec
import msgspec.inspect as types
from starlette import datastructures
from starlette.requests import HTTPConnection

from domain.rules import check_fields

from .bodies import NUL_MESSAGE
from .errors import ApiError, field_errors
from .parameters import BIGGEST, Query

Parsed = TypeVar("Parsed", bound=Query)


def parse_query(
    connection: HTTPConnection, kind: type[Parsed], *, ignore: frozenset[str] = frozenset()
) -> Parsed:
    """The query string as `kind` declares it (api/parameters.py); every problem at once (422).

    Parameters it does not declare are not read; those named in `ignore` are left at their
    default (a value given another way instead, such as a header).
    """
    if not connection.scope["query_string"]:
        return kind()  # nothing given: every default (most requests)
    reader = QueryParams(connection)
    values = {}
    for name, encode_name, declared, default in _fields(kind):
        if encode_name in ignore:
            continue
        value = reader.read(encode_name, declared, default)
        if value is not None:
            values[name] = value
    parsed = kind(**values)
    reader.errors += parsed.problems()
    reader.done()
    return parsed


@functools.cache
def _fields(kind: type[Query]) -> tuple[tuple[str, str, types.Type, Any], ...]:
    """Each field's name, parameter name, type and default: inspected once per kind."""
    return tuple(
        (field.name, field.encode_name, field.type, field.default)
        for field in types.type_info(kind).fields
    )


def in_range(moment: datetime) -> bool:
    """Whether a time with an offset can be stored (PostgreSQL and Python stop at year 9999)."""
    try:
        moment.astimezone(UTC)
    except OverflowError:
        return False
    return True


_NONE = datastructures.QueryParams()


class QueryParams:
    """Query parameters, converted one by one, every problem reported together."""

    def __init__(self, request: HTTPConnection) -> None:
        # Most requests have no query: not parsing an empty one saves every such request a step.
        self.params = request.query_params if request.scope["query_string"] else _NONE
        self.errors: list[dict[str, Any]] = []

    def _fail(self, name: str, message: str) -> None:
        self.errors.append({"loc": ["query", name], "msg": message})

    def text(
        self, name: str, *, choices: tuple[str, ...] | None = None, upper: bool = False
    ) -> str | None:
        value = self.params.get(name)
        if value is None:
            return None
        if "\x00" in value:
            self._fail(name, NUL_MESSAGE)
            return None
        value = value.upper() if upper else value
        if choices is not None and value not in choices:
            self._fail(name, f"must be one of {', '.join(choices)}")
        return value

    def integer(
        self, name: str, default: int | None, low: int, high: int | None = None
    ) -> int | None:
        raw = self.params.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            self._fail(name, "must be a whole number")
            return default
        if value < low or value > (BIGGEST if high is None else high):
            self._fail(name, f"must be between {low} and {high}" if high else f"must be >= {low}")
            return default
        if value > BIGGEST:
            self._fail(name, f"must be at most {BIGGEST}")
            return default
        return value

    def decimal(self, name: str) -> Decimal | None:
        raw = self.params.get(name)
        if raw is None:
            return None
        try:
            value = Decimal(raw)
        except InvalidOperation:
            self._fail(name, "must be a number")
            return None
        self.errors += field_errors(check_fields({name: value}), "query")
        return value

    def listed(self, name: str, choices: tuple[str, ...]) -> list[str] | None:
        """A comma-separated list (or the parameter repeated), each one of `choices`."""
        values = [v for raw in self.params.getlist(name) for v in raw.split(",") if v]
        if any("\x00" in v for v in values):
            self._fail(name, NUL_MESSAGE)
            return None
        if not values:
            return None
        unknown = sorted(set(values) - set(choices))
        if unknown:
            self._fail(name, f"unknown: {', '.join(unknown)}; must be among {', '.join(choices)}")
        return values

    def uuids(self, name: str) -> list[UUID] | None:
        """Ids, comma-separated or the parameter repeated."""
        ids = []
        for value in (v for raw in self.params.getlist(name) for v in raw.split(",") if v):
            try:
                ids.append(UUID(value))
            except ValueError:
                self._fail(name, f"{value!r} is not a UUID")
        return ids or None

    def moment(self, name: str) -> datetime | None:
        """An ISO-8601 time with its offset (`Z` for UTC)."""
        raw = self.params.get(name)
        if raw is None:
            return None
        try:
            value = datetime.fromisoformat(raw)
        except ValueError:
            self._fail(name, "must be an ISO-8601 time, e.g. 2026-01-05T14:30:00Z")
            return None
        if value.tzinfo is None:
            self._fail(name, "must give its UTC offset, e.g. Z or +01:00")
            return None
        if not in_range(value):
            self._fail(name, "must be between the years 1 and 9999 in UTC")
            return None
        return value

    def read(self, name: str, kind: types.Type, default: Any) -> Any:
        """A parameter of the declared type, by the converter for that type."""
        extra: dict[str, Any] = {}
        if isinstance(kind, types.UnionType):  # X | None: absent is None
            [kind] = [t for t in kind.types if not isinstance(t, types.NoneType)]
        if isinstance(kind, types.Metadata):
            extra, kind = kind.extra or {}, kind.type
        default = None if default is msgspec.NODEFAULT else default
        match kind:
            case types.LiteralType(values=values):
                return self.text(name, choices=tuple(values)) or default
            case types.StrType():
                return self.text(name, upper=extra.get("upper", False))
            case types.IntType(ge=low, le=high):
                return self.integer(name, default, low or 0, high)
            case types.DecimalType():
                return self.decimal(name)
            case types.DateTimeType():
                return self.moment(name)
            case types.ListType(item_type=types.UUIDType()):
                return self.uuids(name)
            case types.ListType(item_type=types.LiteralType(values=values)):
                return self.listed(name, tuple(values))
        raise TypeError(f"no converter for the query parameter {name!r} ({kind})")

    def done(self) -> None:
        if self.errors:
            raise ApiError(422, "validation failed", self.errors)
