"""JSON in and out: exact decimals both ways, in plain notation, never a float."""

from __future__ import annotations

import functools
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec
import msgspec.inspect as mi
from starlette.responses import Response

from domain.rules import ARITHMETIC

_decoder = msgspec.json.Decoder(float_hook=Decimal)
# A Decimal is written as str() writes it; number() first swaps those whose str() is not plain.
_encoder = msgspec.json.Encoder(decimal_format="number")


def decode(body: bytes) -> Any:
    """Numbers become Decimal (exactly as written) or int; never float."""
    return _decoder.decode(body)


def encode(value: Any) -> bytes:
    return _encoder.encode(_plain(value))


_ZERO = msgspec.Raw(b"0")
_normalize = ARITHMETIC.normalize


def number(value: Decimal) -> Decimal | msgspec.Raw:
    """A Decimal to write with every significant digit and no exponent: 1500, 0.00000001.

    Most are already so written by str() (and by msgspec): those are returned as they are.
    """
    if not value:
        return _ZERO  # 0E-8, 0.00 and -0 alike
    text = str(value)
    if "E" in text or ("." in text and text[-1] == "0"):  # 1E+2, 1E-8, 100.50: rarely
        return msgspec.Raw(format(_normalize(value), "f").encode())
    return value


_WRITTEN_AS_THEY_ARE = (str, int, float, bool, type(None), UUID, datetime, date, time, msgspec.Raw)


class _Walked(dict[type, bool]):
    """Whether _plain must look into or convert a value of a type; msgspec writes the rest."""

    def __missing__(self, kind: type) -> bool:
        self[kind] = walked = not issubclass(kind, _WRITTEN_AS_THEY_ARE)
        return walked


_WALKED = _Walked()


def _plain(value: Any) -> Any:
    kind = type(value)
    if kind is Decimal:
        return number(value)
    if kind is dict:
        return {key: _plain(item) if _WALKED[type(item)] else item for key, item in value.items()}
    if kind is list or kind is tuple:
        return [_plain(item) if _WALKED[type(item)] else item for item in value]
    if not _WALKED[kind]:
        return value
    if (decimals := _decimal_fields(kind)) is not None:
        fields = msgspec.structs.asdict(value)
        for name in decimals:
            if (item := fields[name]) is not None:
                fields[name] = number(item)
        return fields
    # Anything else (other structs, tuples, dataclasses...) as dicts and lists first.
    return _plain(msgspec.to_builtins(value, builtin_types=(Decimal,)))


_SCALAR_INFO = (
    mi.StrType,
    mi.IntType,
    mi.BoolType,
    mi.NoneType,
    mi.UUIDType,
    mi.DateTimeType,
    mi.LiteralType,
    mi.EnumType,
)


@functools.cache
def _decimal_fields(kind: type) -> tuple[str, ...] | None:
    """The Decimal fields of a struct of scalars (a view), found once; None for any other type.

    Such a struct is written field by field without walking its other values (a sixth of a read).
    """
    if not issubclass(kind, msgspec.Struct):
        return None
    info = mi.type_info(kind)
    config = kind.__struct_config__
    if config.tag is not None or config.omit_defaults or config.array_like:
        return None  # written otherwise than as the dict of its fields
    decimals = []
    for field in info.fields:  # type: ignore[attr-defined]
        if field.encode_name != field.name:
            return None
        kinds = field.type.types if isinstance(field.type, mi.UnionType) else (field.type,)
        if any(isinstance(k, mi.DecimalType) for k in kinds):
            decimals.append(field.name)
        if not all(isinstance(k, (mi.DecimalType, *_SCALAR_INFO)) for k in kinds):
            return None
    return tuple(decimals)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return encode(content)
