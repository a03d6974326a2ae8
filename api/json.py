"""JSON in and out: exact decimals both ways, in plain notation, never a float."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
from starlette.responses import Response

from domain.rules import ARITHMETIC

_decoder = msgspec.json.Decoder(float_hook=Decimal)
_encoder = msgspec.json.Encoder()


def decode(body: bytes) -> Any:
    """Numbers become Decimal (exactly as written) or int; never float."""
    return _decoder.decode(body)


def encode(value: Any) -> bytes:
    return _encoder.encode(_plain(msgspec.to_builtins(value, builtin_types=(Decimal,))))


_ZERO = msgspec.Raw(b"0")
_normalize = ARITHMETIC.normalize


def number(value: Decimal) -> msgspec.Raw:
    """A Decimal as a JSON number with every significant digit and no exponent: 1500, 0.00000001."""
    if not value:
        return _ZERO
    text = str(value)
    if "E" in text or ("." in text and text[-1] == "0"):  # 1E+2, 1E-8, 100.50: rarely
        text = format(_normalize(value), "f")
    return msgspec.Raw(text.encode())


_WALKED = frozenset({dict, list, Decimal})
"""What _plain must look into or convert; anything else msgspec writes as it is."""


def _plain(value: Any) -> Any:
    kind = type(value)
    if kind is Decimal:
        return number(value)
    if kind is dict:
        return {key: _plain(item) if type(item) in _WALKED else item for key, item in value.items()}
    if kind is list:
        return [_plain(item) if type(item) in _WALKED else item for item in value]
    return value


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return encode(content)
