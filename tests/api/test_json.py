"""api/json.py: every Decimal written exactly, in plain notation, whatever holds it."""

from __future__ import annotations

import dataclasses
import re
from decimal import Decimal
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from api.json import decode, encode

decimals = st.decimals(allow_nan=False, allow_infinity=False, min_value=-(10**15), max_value=10**15)


class Flat(msgspec.Struct):
    """Written field by field (a struct of scalars, as the views are)."""

    amount: Decimal
    maybe: Decimal | None
    name: str


class Renamed(msgspec.Struct, rename="camel"):
    some_amount: Decimal


class Tagged(msgspec.Struct, tag=True):
    amount: Decimal


class Nested(msgspec.Struct):
    flat: Flat
    amounts: list[Decimal]
    by_name: dict[str, Decimal]


@dataclasses.dataclass
class Plain:
    amount: Decimal


def holders(value: Decimal) -> list[tuple[Any, Any]]:
    """(something holding `value`, the same as plain JSON data)."""
    return [
        (value, value),
        (Flat(value, value, "x"), {"amount": value, "maybe": value, "name": "x"}),
        (Flat(value, None, "x"), {"amount": value, "maybe": None, "name": "x"}),
        (Renamed(value), {"someAmount": value}),
        (Tagged(value), {"type": "Tagged", "amount": value}),
        (
            Nested(Flat(value, None, "y"), [value], {"k": value}),
            {
                "flat": {"amount": value, "maybe": None, "name": "y"},
                "amounts": [value],
                "by_name": {"k": value},
            },
        ),
        ([Flat(value, value, "z")], [{"amount": value, "maybe": value, "name": "z"}]),
        ({"a": (value, Plain(value))}, {"a": [value, {"amount": value}]}),
    ]


@given(decimals)
def test_every_decimal_is_written_exactly_and_without_an_exponent(value: Decimal) -> None:
    for holder, data in holders(value):
        written = encode(holder)
        assert decode(written) == data
        numbers = re.findall(rb"(?<![\w\"])-?\d[\d.eE+-]*", written)
        assert numbers, written
        for number in numbers:
            assert b"e" not in number.lower(), written
            if b"." in number:
                assert not number.endswith(b"0"), written  # no trailing zeros: 1.5, not 1.50
        assert b"-0" not in written or value < 0


def test_zero_in_any_form_is_written_0() -> None:
    for zero in (Decimal("0"), Decimal("-0"), Decimal("0E-8"), Decimal("0.00")):
        assert encode(Flat(zero, zero, "z")) == b'{"amount":0,"maybe":0,"name":"z"}'
