"""The rules every value must keep, as small checks that name the field and the reason."""

from __future__ import annotations

import re
from decimal import Context, Decimal, DivisionByZero, InvalidOperation, Overflow, localcontext

from .errors import FieldError

MAX_DECIMAL_PLACES = 8
MAX_MAGNITUDE = Decimal(10) ** 12
MAX_SYMBOL_LENGTH = 15
MAX_STRATEGY_LENGTH = 64
MAX_NOTES_LENGTH = 2000

# Quantities and prices have at most 20 significant digits; their products and sums over a book
# need twice that. Traps turn an invalid operation, a division by zero or an overflow into an
# error instead of a NaN or an Infinity.
ARITHMETIC = Context(prec=60, traps=[InvalidOperation, DivisionByZero, Overflow])

_SYMBOL = re.compile(r"[A-Z0-9./-]{1,15}")
_PRICE_PLACES = Decimal(1).scaleb(-MAX_DECIMAL_PLACES)


def exact():
    """A decimal context wide enough that no figure of the domain is ever rounded."""
    return localcontext(ARITHMETIC)


def symbol(field: str, value: str, errors: list[FieldError]) -> str:
    normalized = value.strip().upper()
    if not _SYMBOL.fullmatch(normalized):
        errors.append(FieldError(field, "must be 1-15 characters of A-Z, 0-9, '.', '-' or '/'"))
    return normalized


def amount(
    field: str, value: Decimal, errors: list[FieldError], *, zero_allowed: bool = False
) -> Decimal:
    """A quantity or a price: finite, positive (or zero where allowed), at most 8 places."""
    if not value.is_finite():
        errors.append(FieldError(field, "must be a finite number"))
    elif value < 0 or (value == 0 and not zero_allowed):
        errors.append(
            FieldError(field, "must be zero or more" if zero_allowed else "must be greater than 0")
        )
    elif value > MAX_MAGNITUDE:
        errors.append(FieldError(field, f"must be at most {MAX_MAGNITUDE:f}"))
    elif value.normalize(ARITHMETIC).as_tuple().exponent < -MAX_DECIMAL_PLACES:  # type: ignore[operator]
        errors.append(FieldError(field, f"must have at most {MAX_DECIMAL_PLACES} decimal places"))
    return value


def text(field: str, value: str | None, limit: int, errors: list[FieldError]) -> str | None:
    if value is not None and len(value) > limit:
        errors.append(FieldError(field, f"must be at most {limit} characters"))
    return value


def protective_levels(
    side: str,
    entry_price: Decimal,
    stop_loss: Decimal | None,
    take_profit: Decimal | None,
    errors: list[FieldError],
) -> None:
    """Long: stop < entry < target. Short: target < entry < stop."""
    long = side == "long"
    if stop_loss is not None and stop_loss.is_finite():
        if long and stop_loss >= entry_price:
            errors.append(
                FieldError("stop_loss", "must be below the entry price for a long position")
            )
        if not long and stop_loss <= entry_price:
            errors.append(
                FieldError("stop_loss", "must be above the entry price for a short position")
            )
    if take_profit is not None and take_profit.is_finite():
        if long and take_profit <= entry_price:
            errors.append(
                FieldError("take_profit", "must be above the entry price for a long position")
            )
        if not long and take_profit >= entry_price:
            errors.append(
                FieldError("take_profit", "must be below the entry price for a short position")
            )


def price_places(value: Decimal) -> Decimal:
    """A computed price (an average) rounded, half to even, to the places prices are given in."""
    with exact():
        return value.quantize(_PRICE_PLACES)


_PRICES = {"entry_price", "current_price", "stop_loss", "take_profit", "price"}


def check_fields(fields: dict[str, object]) -> list[FieldError]:
    """The rule of each field present, on its own; None (not given, or cleared) passes."""
    errors: list[FieldError] = []
    for name, value in fields.items():
        if value is None:
            continue
        if name == "side" and value not in ("long", "short"):
            errors.append(FieldError(name, "must be long or short"))
        elif name == "symbol":
            symbol(name, value, errors)  # type: ignore[arg-type]
        elif name in _PRICES or name == "quantity":
            amount(name, value, errors)  # type: ignore[arg-type]
        elif name == "exit_price":
            amount(name, value, errors, zero_allowed=True)  # type: ignore[arg-type]
        elif name == "strategy":
            text(name, value, MAX_STRATEGY_LENGTH, errors)  # type: ignore[arg-type]
        elif name == "notes":
            text(name, value, MAX_NOTES_LENGTH, errors)  # type: ignore[arg-type]
    return errors
