"""Request bodies: their types, and parsing that reports every field error at once.

msgspec stops at the first error it meets, so each field is converted on its own, and the
domain's own per-field rules run on every field that converted; all findings are answered together.
"""

from __future__ import annotations

import functools
import json as stdlib_json
import typing
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID

import msgspec
from msgspec import UNSET, UnsetType
from starlette.requests import Request

from domain.rules import check_fields, protective_levels

from . import json
from .errors import ApiError, field_errors

MAX_BODY_BYTES = 1 << 20
NUL_MESSAGE = "must not contain the NUL character"
"""PostgreSQL text cannot hold U+0000: such a value is refused, never truncated."""
MAX_BATCH = 1000

Body = TypeVar("Body", bound=msgspec.Struct)


class OpenPositionBody(msgspec.Struct, kw_only=True):
    symbol: str
    side: Literal["long", "short"]
    quantity: Decimal
    entry_price: Decimal
    stop_loss: Decimal | None = None
    take_profit: Decimal | None = None
    strategy: str | None = None
    notes: str | None = None
    status: Literal["open", "pending"] = "open"
    owner: str | None = None
    """Admins may open a position for another owner."""


class AmendPositionBody(msgspec.Struct, kw_only=True):
    """Only the fields given change; null clears stop_loss, take_profit, notes or strategy."""

    current_price: Decimal | UnsetType = UNSET
    stop_loss: Decimal | None | UnsetType = UNSET
    take_profit: Decimal | None | UnsetType = UNSET
    notes: str | None | UnsetType = UNSET
    strategy: str | None | UnsetType = UNSET


class FillPositionBody(msgspec.Struct, kw_only=True):
    entry_price: Decimal | None = None


class IncreasePositionBody(msgspec.Struct, kw_only=True):
    quantity: Decimal
    price: Decimal


class RevokeTokenBody(msgspec.Struct, kw_only=True):
    jti: str
    expires_at: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    """When the token expires (the revocation is kept until then); unknown: 30 days."""


class BulkUpdateBody(msgspec.Struct, kw_only=True):
    position_ids: list[UUID]
    updates: dict[str, Any]
    atomic: bool = False


async def read_body(request: Request) -> bytes:
    """The body, refusing (413) one over MAX_BODY_BYTES without reading all of it."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"the body is over {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"the body is over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse(request: Request, kind: type[Body], *, empty_allowed: bool = False) -> Body:
    raw = await read_body(request)
    if not raw.strip() and empty_allowed:
        return kind()
    return parse_object(decode_object(raw), kind)


def decode_object(raw: bytes) -> dict[str, Any]:
    try:
        data = json.decode(raw)
    except UnicodeDecodeError:
        raise ApiError(
            422, "the body is not valid JSON", [{"loc": ["body"], "msg": "must be UTF-8"}]
        ) from None
    except (msgspec.DecodeError, RecursionError) as error:
        raise ApiError(
            422, "the body is not valid JSON", [{"loc": ["body"], "msg": str(error)}]
        ) from None
    if not isinstance(data, dict):
        raise ApiError(
            422, "validation failed", [{"loc": ["body"], "msg": "must be a JSON object"}]
        )
    _refuse_duplicate_keys(raw)
    return data


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> None:
    if len(pairs) > 1 and len({key for key, _ in pairs}) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)


# Only the keys matter: the values are not built (the body was decoded already, exactly).
_KEYS_ONLY = stdlib_json.JSONDecoder(
    object_pairs_hook=_unique_keys, parse_float=len, parse_int=len, parse_constant=len
)


def _refuse_duplicate_keys(raw: bytes) -> None:
    """A key given twice in one object is refused (decoders keep the last value, silently)."""
    try:
        _KEYS_ONLY.decode(raw.decode())
    except RecursionError:
        raise ApiError(
            422, "the body is not valid JSON", [{"loc": ["body"], "msg": "nested too deeply"}]
        ) from None
    except _DuplicateKey as duplicate:
        [key] = duplicate.args
        raise ApiError(
            422, "validation failed", [{"loc": ["body", key], "msg": "is given more than once"}]
        ) from None


@functools.cache
def _fields(kind: type[msgspec.Struct]) -> dict[str, msgspec.structs.FieldInfo]:
    return {field.encode_name: field for field in msgspec.structs.fields(kind)}


def parse_object(data: dict[str, Any], kind: type[Body], location: str = "body") -> Body:
    fields = _fields(kind)
    if all(key in fields for key in data):
        try:
            body = msgspec.convert(data, kind)  # the usual case: every field in one call
        except msgspec.ValidationError:
            pass  # field by field below, to name every problem at once
        else:
            _check(
                {fields[key].name: getattr(body, fields[key].name) for key in data}, [], location
            )
            return body
    errors = [{"loc": [location, key], "msg": "unknown field"} for key in data if key not in fields]
    values: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in data:
            if field.required:
                errors.append({"loc": [location, name], "msg": "field required"})
            continue
        try:
            values[field.name] = msgspec.convert(data[name], field.type)
        except msgspec.ValidationError as error:
            errors += _conversion_errors(data[name], field.type, [location, name], error)
    _check(values, errors, location)
    return kind(**values)


def _conversion_errors(
    value: Any, kind: Any, loc: list[Any], error: msgspec.ValidationError
) -> list[dict[str, Any]]:
    """Each bad element of a list named by its index (`["body", "position_ids", 3]`), else the
    field itself."""
    if isinstance(value, list) and typing.get_origin(kind) is list:
        [element] = typing.get_args(kind)
        found = []
        for index, item in enumerate(value):
            try:
                msgspec.convert(item, element)
            except msgspec.ValidationError as bad:
                found.append({"loc": [*loc, index], "msg": _message(bad)})
        if found:
            return found
    return [{"loc": loc, "msg": _message(error)}]


def _check(values: dict[str, Any], errors: list[dict[str, Any]], location: str) -> None:
    """The rules on the values given (by field name); raises with `errors` and every one broken."""
    errors += (
        {"loc": [location, name], "msg": NUL_MESSAGE}
        for name, value in values.items()
        if isinstance(value, str) and "\x00" in value
    )
    rule_errors = check_fields(values)
    broken = {e.field for e in rule_errors} | {e["loc"][-1] for e in errors}
    if {"side", "entry_price"} <= values.keys() and not {"side", "entry_price"} & broken:
        # An opening: stop and target against the entry, with the other errors, all at once.
        protective_levels(
            values["side"],
            values["entry_price"],
            None if "stop_loss" in broken else values.get("stop_loss"),
            None if "take_profit" in broken else values.get("take_profit"),
            rule_errors,
        )
    errors += field_errors(rule_errors, location)
    if isinstance(values.get("position_ids"), list) and len(values["position_ids"]) > MAX_BATCH:
        errors.append({"loc": [location, "position_ids"], "msg": f"at most {MAX_BATCH} ids"})
    if errors:
        raise ApiError(422, "validation failed", errors)


def _message(error: msgspec.ValidationError) -> str:
    """msgspec's text without its JSON path (the `loc` says where)."""
    text = str(error)
    return text.split(" - at `", 1)[0]
