"""What a caller asks for. Imperative; the domain decides whether it happens.

Every command carries the moment it is made (`at`): the domain never reads a clock.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

import msgspec
from msgspec import UNSET, UnsetType

from .events import Side


class Command(msgspec.Struct, frozen=True, kw_only=True):
    at: datetime


class OpenPosition(Command, frozen=True, kw_only=True):
    position_id: UUID
    owner: str
    symbol: str
    side: Side
    quantity: Decimal
    entry_price: Decimal
    stop_loss: Decimal | None = None
    take_profit: Decimal | None = None
    strategy: str | None = None
    notes: str | None = None
    pending: bool = False


class FillPosition(Command, frozen=True, kw_only=True):
    entry_price: Decimal | None = None
    """The fill price; the ordered price when not given."""


class AmendPosition(Command, frozen=True, kw_only=True):
    """Change some of these; UNSET leaves a field as it is, None clears it."""

    current_price: Decimal | UnsetType = UNSET
    stop_loss: Decimal | None | UnsetType = UNSET
    take_profit: Decimal | None | UnsetType = UNSET
    notes: str | None | UnsetType = UNSET
    strategy: str | None | UnsetType = UNSET


class IncreasePosition(Command, frozen=True, kw_only=True):
    quantity: Decimal
    price: Decimal


class ClosePosition(Command, frozen=True, kw_only=True):
    exit_price: Decimal | None
    """The price to close at; None when neither the caller nor the market gave one."""
    quantity: Decimal | None = None
    """How much to close; all that is open when not given."""


class DeletePosition(Command, frozen=True, kw_only=True):
    pass


class UpdateMarketPrices(Command, frozen=True, kw_only=True):
    prices: dict[str, Decimal]
