"""Money properties of a position, over many generated histories (Hypothesis).

The expected figures are computed here, independently of the domain, with exact fractions: the
docs/domain.md formulas, with the one rounding the domain makes (the average entry price is rounded,
half to even, to 8 places after each addition; so is the final exit price).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from decimal import Context, Decimal, localcontext
from fractions import Fraction

import msgspec
import pytest
from hypothesis import given as for_all
from hypothesis import settings
from hypothesis import strategies as st

from domain import rules
from domain.commands import Command
from domain.events import Event, PositionClosed, PositionReduced
from domain.position import Position, decide, evolve, fold

from .given import (
    amend,
    close,
    closed,
    fill,
    increase,
    increased,
    open_position,
    opened,
)

PLACES = rules.MAX_DECIMAL_PLACES
UNIT = Decimal(1).scaleb(-PLACES)  # 0.00000001

prices = st.decimals(
    places=PLACES,
    min_value=UNIT,
    max_value=rules.MAX_MAGNITUDE,
    allow_nan=False,
    allow_infinity=False,
)
exit_prices = st.decimals(
    places=PLACES,
    min_value=Decimal(0),
    max_value=rules.MAX_MAGNITUDE,
    allow_nan=False,
    allow_infinity=False,
)
quantities = st.decimals(
    places=PLACES, min_value=UNIT, max_value=Decimal(10) ** 6, allow_nan=False, allow_infinity=False
)
sides = st.sampled_from(["long", "short"])


def half_even_8(value: Fraction) -> Fraction:
    """`value` rounded half to even to 8 places (Python rounds a Fraction half to even)."""
    return Fraction(round(value * 10**PLACES), 10**PLACES)


def places(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


@dataclass
class Book:
    """Runs commands through decide and evolve, keeping every event, as the service would."""

    state: Position | None = None
    events: list[Event] = field(default_factory=list)

    def run(self, command: Command) -> list[Event]:
        new = decide(command, self.state)
        self.events += new
        self.state = fold(new, self.state)
        return new


def split(total: Decimal, cuts: list[int]) -> list[Decimal]:
    """`total` cut at these multiples of 0.00000001 into positive parts."""
    units = int(total.scaleb(PLACES))
    points = [0, *sorted(c for c in set(cuts) if 0 < c < units), units]
    return [Decimal(b - a).scaleb(-PLACES) for a, b in zip(points, points[1:], strict=False)]


# -- (a) scale in, close in parts --------------------------------------------------------------


@settings(max_examples=200)
@for_all(
    side=sides,
    first=st.tuples(quantities, prices),
    additions=st.lists(st.tuples(quantities, prices), max_size=4),
    data=st.data(),
    close_the_rest_without_a_quantity=st.booleans(),
)
def test_realized_pnl_of_scaling_in_and_out_is_the_domain_formula_on_the_rounded_average(
    side: str, first, additions, data, close_the_rest_without_a_quantity: bool
) -> None:
    book = Book()
    book.run(open_position(side=side, quantity=first[0], entry_price=first[1]))
    for quantity, price in additions:
        book.run(increase(quantity, price))

    # What docs/domain.md says, computed here: avg = (avg*q + px*add_q) / (q + add_q), rounded.
    average, open_quantity = Fraction(first[1]), Fraction(first[0])
    for quantity, price in additions:
        average = half_even_8(
            (average * open_quantity + Fraction(price) * Fraction(quantity))
            / (open_quantity + Fraction(quantity))
        )
        open_quantity += Fraction(quantity)
    assert book.state is not None and Fraction(book.state.entry_price) == average

    total = book.state.quantity
    units = int(total.scaleb(PLACES))
    cuts = data.draw(st.lists(st.integers(1, max(1, units - 1)), max_size=4), label="cuts")
    parts = split(total, cuts)
    closing_prices = data.draw(
        st.lists(exit_prices, min_size=len(parts), max_size=len(parts)), label="closing prices"
    )
    for i, (quantity, price) in enumerate(zip(parts, closing_prices, strict=True)):
        last = i == len(parts) - 1
        book.run(
            close(
                exit_price=price,
                quantity=None if last and close_the_rest_without_a_quantity else quantity,
            )
        )

    sign = 1 if side == "long" else -1
    expected_pnl = sum(
        (
            Fraction(q) * (Fraction(px) - average) * sign
            for q, px in zip(parts, closing_prices, strict=True)
        ),
        Fraction(0),
    )
    expected_exit = half_even_8(
        sum(Fraction(q) * Fraction(px) for q, px in zip(parts, closing_prices, strict=True))
        / Fraction(total)
    )

    closes = book.events[1 + len(additions) :]
    assert [type(e) for e in closes] == [PositionReduced] * (len(parts) - 1) + [PositionClosed]
    assert sum(Fraction(e.realized_pnl) for e in closes) == expected_pnl  # type: ignore[attr-defined]
    state = book.state
    assert (state.status, state.quantity) == ("closed", 0)
    assert Fraction(state.realized_pnl) == expected_pnl
    assert state.exit_price is not None and Fraction(state.exit_price) == expected_exit
    assert places(state.exit_price) <= PLACES


@for_all(side=sides, quantity=quantities, entry=prices, data=st.data())
def test_each_close_realizes_the_formula_of_its_side(side: str, quantity, entry, data) -> None:
    exit_price = data.draw(exit_prices, label="exit price")
    units = int(quantity.scaleb(PLACES))
    part = Decimal(data.draw(st.integers(1, units), label="units closed")).scaleb(-PLACES)
    (event,) = decide(
        close(exit_price=exit_price, quantity=part),
        fold([opened(side=side, quantity=quantity, entry_price=entry)]),
    )
    move = exit_price - entry if side == "long" else entry - exit_price
    assert Fraction(event.realized_pnl) == Fraction(part) * Fraction(move)  # type: ignore[attr-defined]


# -- generated histories -----------------------------------------------------------------------


@st.composite
def histories(draw: st.DrawFn) -> list[Event]:
    """A history a position could have: commands drawn to fit the state, run through decide."""
    book = Book()
    book.run(
        open_position(
            side=draw(sides),
            quantity=draw(quantities),
            entry_price=draw(prices),
            pending=draw(st.booleans()),
        )
    )
    for _ in range(draw(st.integers(0, 8))):
        state = book.state
        assert state is not None
        if state.status == "closed":
            break
        actions = ["mark", "close"] + (
            ["fill"] if state.status == "pending" else ["increase", "reduce"]
        )
        action = draw(st.sampled_from(actions))
        if action == "fill":
            book.run(fill(draw(st.none() | prices)))
        elif action == "mark":
            book.run(amend(current_price=draw(prices)))
        elif action == "increase":
            book.run(increase(draw(quantities), draw(prices)))
        elif action == "close":
            book.run(close(exit_price=draw(exit_prices)))
        elif action == "reduce":
            units = int(state.quantity.scaleb(PLACES))
            if units > 1:
                part = Decimal(draw(st.integers(1, units - 1))).scaleb(-PLACES)
                book.run(close(exit_price=draw(exit_prices), quantity=part))
    return book.events


# -- (b) no float, no stray digits -------------------------------------------------------------

AT_MOST_8_PLACES = {
    "quantity",
    "entry_price",
    "current_price",
    "stop_loss",
    "take_profit",
    "exit_price",
    "closed_quantity",
    "price",
}
MONEY = {"realized_pnl", "closed_value"}  # products of two 8-place figures: at most 16 places


def assert_exact_decimals(struct: msgspec.Struct) -> None:
    for name, value in msgspec.structs.asdict(struct).items():
        assert not isinstance(value, float), f"{name} is a float"
        if not isinstance(value, Decimal):
            continue
        assert value.is_finite(), name
        assert Decimal(str(value)) == value and str(Decimal(str(value))) == str(value), name
        if name in AT_MOST_8_PLACES:
            assert places(value) <= PLACES, f"{name}={value}"
        else:
            assert name in MONEY, f"unexpected decimal {name}"
            assert places(value) <= 2 * PLACES, f"{name}={value}"


@for_all(histories())
def test_every_decimal_of_every_state_and_event_is_exact(events: list[Event]) -> None:
    state = None
    for event in events:
        assert_exact_decimals(event)
        state = evolve(state, event)
        assert_exact_decimals(state)


def test_tenths_add_up_to_three_tenths_exactly() -> None:
    # 0.3 bought at 0.1; 0.1 and then 0.2 of it sold at 0.2
    state = fold([opened(quantity="0.3", entry_price="0.1")])
    state = fold(decide(close(exit_price="0.2", quantity="0.1"), state), state)
    assert state is not None and str(state.quantity) == "0.2"
    state = fold(decide(close(exit_price="0.2"), state), state)
    assert state is not None
    assert state.closed_quantity == Decimal("0.3") and str(state.closed_quantity) == "0.3"
    assert str(state.realized_pnl) == "0.03"
    assert str(state.closed_value) == "0.06"


def test_three_times_a_tenth_is_three_tenths_exactly() -> None:
    (event,) = decide(close(exit_price="0.2"), fold([opened(quantity="3", entry_price="0.1")]))
    assert str(event.realized_pnl) == "0.3"  # type: ignore[attr-defined]


def test_adding_a_tenth_to_two_tenths_gives_three_tenths_exactly() -> None:
    state = fold([opened(quantity="0.1", entry_price="1"), increased("0.2", "1")])
    assert state is not None and str(state.quantity) == "0.3" and state.entry_price == 1


@for_all(histories())
def test_the_ambient_decimal_context_does_not_change_any_figure(events: list[Event]) -> None:
    expected = fold(events)
    with localcontext(Context(prec=4)):
        assert fold(events) == expected


# -- (c) fold ----------------------------------------------------------------------------------


@for_all(histories(), st.data())
def test_folding_one_event_at_a_time_equals_folding_them_all_at_once(
    events: list[Event], data
) -> None:
    all_at_once = fold(events)
    assert functools.reduce(evolve, events, None) == all_at_once
    cut = data.draw(st.integers(0, len(events)), label="cut")
    assert fold(events[cut:], fold(events[:cut])) == all_at_once
    assert all_at_once is not None and all_at_once.version == len(events)


# -- (d) breakeven -----------------------------------------------------------------------------


@for_all(
    side=sides,
    first=st.tuples(quantities, prices),
    additions=st.lists(st.tuples(quantities, prices), max_size=4),
    data=st.data(),
)
def test_closing_at_the_average_entry_price_realizes_nothing(
    side: str, first, additions, data
) -> None:
    history = [opened(side=side, quantity=first[0], entry_price=first[1])]
    history += [increased(q, px) for q, px in additions]
    state = fold(history)
    assert state is not None
    units = int(state.quantity.scaleb(PLACES))
    part = Decimal(data.draw(st.integers(1, units), label="units closed")).scaleb(-PLACES)
    (event,) = decide(close(exit_price=state.entry_price, quantity=part), state)
    assert event.realized_pnl == 0  # type: ignore[attr-defined]
    assert fold([event], state).realized_pnl == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("side", ["long", "short"])
def test_a_close_at_the_entry_price_realizes_zero(side: str) -> None:
    (event,) = decide(
        close(exit_price="123.45678901"),
        fold([opened(side=side, quantity="7.5", entry_price="123.45678901")]),
    )
    assert event.realized_pnl == 0  # type: ignore[attr-defined]


def test_the_breakeven_of_a_scaled_in_position_is_its_rounded_average() -> None:
    # avg (1*1 + 2*2) / 3 = 1.66666667 after rounding; closing 3 there realizes 0
    state = fold([opened(quantity="1", entry_price="1"), increased("2", "2")])
    assert state is not None
    assert decide(close(exit_price="1.66666667"), state) == [
        closed("3", "1.66666667", "0", "1.66666667")
    ]
