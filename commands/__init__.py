"""Command handlers: load a stream, let the domain decide, append with the expected version."""

from .errors import StalePosition, TooMuchContention
from .handlers import AtomicFailure, Metadata, Outcome, PositionHandlers, PriceUpdate

__all__ = [
    "AtomicFailure",
    "Metadata",
    "Outcome",
    "PositionHandlers",
    "PriceUpdate",
    "StalePosition",
    "TooMuchContention",
]
