"""JSON for event data and metadata: exact decimals both ways.

Numbers are written as JSON numbers with every digit of the Decimal and read back as Decimal (never
float), so money survives the round trip through jsonb (which stores numbers as numeric) unchanged.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg
import msgspec

_encoder = msgspec.json.Encoder(decimal_format="number")
_decoder = msgspec.json.Decoder(float_hook=Decimal)

_JSONB_BINARY_VERSION = b"\x01"


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


def decode(data: bytes | str) -> Any:
    return _decoder.decode(data)


def _encode_jsonb(value: Any) -> bytes:
    return _JSONB_BINARY_VERSION + _encoder.encode(value)


def _decode_jsonb(data: bytes) -> Any:
    return _decoder.decode(memoryview(data)[1:])


async def init_connection(connection: asyncpg.Connection) -> None:
    """Pool `init` hook: jsonb in binary form, through msgspec."""
    await connection.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        format="binary",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
    )
