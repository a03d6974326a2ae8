"""A position's commands and what they lead to: given events, when a command, then events (or a
refusal). The rules are those of docs/domain.md ("One position") and docs/api.md ("Positions")."""

from __future__ import annotations

from decimal import Decimal

import pytest

from domain import rules
from domain.errors import (
    AlreadyClosed,
    InvalidCommand,
    NoExitPrice,
    NotOpen,
    NotPending,
    PositionAlreadyExists,
    PositionNotFound,
)
from domain.events import MarketPricesUpdated
from domain.position import check_open, decide_market_prices, evolve, fold

from .given import (
    OWNER,
    POSITION_ID,
    D,
    amend,
    cancelled,
    close,
    closed,
    delete,
    deleted,
    fill,
    filled,
    given,
    increase,
    increased,
    marked,
    notes_changed,
    open_position,
    opened,
    ordered,
    prices_updated,
    reduced,
    stop_loss_moved,
    strategy_changed,
    t,
    take_profit_moved,
    update_prices,
)

NOT_FINITE = ["NaN", "sNaN", "Infinity", "-Infinity"]
OVER_LIMIT = [str(rules.MAX_MAGNITUDE + Decimal("0.00000001")), "1E+13"]


# -- open --------------------------------------------------------------------------------------


def test_opening_a_long_position_records_it_opened() -> None:
    given().when(open_position(side="long", quantity="10", entry_price="100")).then(
        opened(side="long", quantity="10", entry_price="100")
    )


def test_opening_a_short_position_records_it_opened() -> None:
    given().when(open_position(side="short", quantity="5", entry_price="250.5")).then(
        opened(side="short", quantity="5", entry_price="250.5")
    )


def test_opening_keeps_the_protective_levels_strategy_and_notes() -> None:
    given().when(
        open_position(stop_loss="95", take_profit="120", strategy="momentum", notes="earnings")
    ).then(opened(stop_loss="95", take_profit="120", strategy="momentum", notes="earnings"))


def test_an_order_not_yet_filled_opens_pending() -> None:
    state = given().when(open_position(pending=True)).then(ordered())
    assert state is not None and state.status == "pending"


@pytest.mark.parametrize(
    ("given_symbol", "recorded"),
    [
        ("aapl", "AAPL"),
        ("brk.b", "BRK.B"),
        ("btc/usd", "BTC/USD"),
        ("Es-2024", "ES-2024"),
    ],
)
def test_the_symbol_is_recorded_upper_cased(given_symbol: str, recorded: str) -> None:
    given().when(open_position(symbol=given_symbol)).then(opened(symbol=recorded))


def test_spaces_around_the_symbol_are_trimmed() -> None:
    given().when(open_position(symbol="  msft ")).then(opened(symbol="MSFT"))


@pytest.mark.parametrize("symbol", ["A", "ES-2024", "BTC/USD", "BRK.B", "X" * 15, "123"])
def test_symbols_of_1_to_15_letters_digits_dots_dashes_and_slashes_are_accepted(
    symbol: str,
) -> None:
    given().when(open_position(symbol=symbol)).then(opened(symbol=symbol))


@pytest.mark.parametrize(
    "symbol", ["", "   ", "X" * 16, "AAPL!", "APPLE INC", "AAPL_B", "ÄPFEL", "€"]
)
def test_a_symbol_outside_the_pattern_is_refused_on_symbol(symbol: str) -> None:
    given().when(open_position(symbol=symbol)).then_refuses(InvalidCommand, errors=["symbol"])


@pytest.mark.parametrize("quantity", ["0", "-1", "-0.00000001"])
def test_a_quantity_not_above_zero_is_refused_on_quantity(quantity: str) -> None:
    given().when(open_position(quantity=quantity)).then_refuses(InvalidCommand, errors=["quantity"])


@pytest.mark.parametrize("price", ["0", "-100"])
def test_an_entry_price_not_above_zero_is_refused_on_entry_price(price: str) -> None:
    given().when(open_position(entry_price=price)).then_refuses(
        InvalidCommand, errors=["entry_price"]
    )


@pytest.mark.parametrize("field", ["stop_loss", "take_profit"])
@pytest.mark.parametrize("price", ["0", "-1"])
def test_a_protective_level_not_above_zero_is_refused_on_its_field(field: str, price: str) -> None:
    given().when(open_position(**{field: price})).then_refuses(InvalidCommand, errors=[field])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("quantity", "0.00000001"),
        ("quantity", "1.12345678"),
        ("entry_price", "100.12345678"),
        ("stop_loss", "99.99999999"),
        ("take_profit", "100.00000001"),
    ],
)
def test_eight_decimal_places_are_accepted(field: str, value: str) -> None:
    state = given().when(open_position(**{field: value})).then(opened(**{field: value}))
    assert state is not None and f"{getattr(state, field):f}" == value


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("quantity", "0.000000001"),
        ("quantity", "1.123456789"),
        ("entry_price", "100.123456789"),
        ("stop_loss", "99.999999999"),
        ("take_profit", "100.000000001"),
    ],
)
def test_more_than_eight_decimal_places_are_refused_on_the_field(field: str, value: str) -> None:
    given().when(open_position(**{field: value})).then_refuses(InvalidCommand, errors=[field])


@pytest.mark.parametrize("field", ["quantity", "entry_price", "stop_loss", "take_profit"])
@pytest.mark.parametrize("value", NOT_FINITE)
def test_nan_and_infinity_are_refused_on_the_field(field: str, value: str) -> None:
    given().when(open_position(**{field: value})).then_refuses(InvalidCommand, errors=[field])


@pytest.mark.parametrize("field", ["quantity", "entry_price"])
def test_an_amount_of_exactly_the_magnitude_limit_is_accepted(field: str) -> None:
    limit = rules.MAX_MAGNITUDE
    given().when(open_position(**{field: limit})).then(opened(**{field: limit}))


@pytest.mark.parametrize("field", ["quantity", "entry_price", "take_profit"])
@pytest.mark.parametrize("value", OVER_LIMIT)
def test_an_amount_over_the_magnitude_limit_is_refused_on_the_field(field: str, value: str) -> None:
    given().when(open_position(**{field: value})).then_refuses(InvalidCommand, errors=[field])


def test_a_long_position_takes_a_stop_below_and_a_target_above_the_entry() -> None:
    given().when(
        open_position(
            side="long", entry_price="100", stop_loss="99.99999999", take_profit="100.00000001"
        )
    ).then(
        opened(side="long", entry_price="100", stop_loss="99.99999999", take_profit="100.00000001")
    )


def test_a_short_position_takes_a_stop_above_and_a_target_below_the_entry() -> None:
    given().when(
        open_position(side="short", entry_price="100", stop_loss="105", take_profit="90")
    ).then(opened(side="short", entry_price="100", stop_loss="105", take_profit="90"))


@pytest.mark.parametrize(
    ("side", "field", "level"),
    [
        ("long", "stop_loss", "100"),
        ("long", "stop_loss", "101"),
        ("long", "take_profit", "100"),
        ("long", "take_profit", "99"),
        ("short", "stop_loss", "100"),
        ("short", "stop_loss", "99"),
        ("short", "take_profit", "100"),
        ("short", "take_profit", "101"),
    ],
)
def test_a_protective_level_on_the_wrong_side_of_the_entry_is_refused(
    side: str, field: str, level: str
) -> None:
    given().when(open_position(side=side, entry_price="100", **{field: level})).then_refuses(
        InvalidCommand, errors=[field]
    )


def test_a_strategy_of_64_characters_and_notes_of_2000_are_accepted() -> None:
    given().when(open_position(strategy="s" * 64, notes="n" * 2000)).then(
        opened(strategy="s" * 64, notes="n" * 2000)
    )


def test_a_strategy_over_64_characters_is_refused_on_strategy() -> None:
    given().when(open_position(strategy="s" * 65)).then_refuses(InvalidCommand, errors=["strategy"])


def test_notes_over_2000_characters_are_refused_on_notes() -> None:
    given().when(open_position(notes="n" * 2001)).then_refuses(InvalidCommand, errors=["notes"])


def test_every_broken_rule_of_an_opening_is_reported_at_once() -> None:
    given().when(
        open_position(
            symbol="not a symbol",
            quantity="0",
            entry_price="100",
            stop_loss="101",
            take_profit="99",
            strategy="s" * 65,
            notes="n" * 2001,
        )
    ).then_refuses(
        InvalidCommand,
        errors=[
            "symbol",
            "quantity",
            "stop_loss",
            "take_profit",
            "strategy",
            "notes",
        ],
    )


def test_an_invalid_entry_price_is_reported_with_the_other_broken_rules() -> None:
    given().when(
        open_position(quantity="NaN", entry_price="-1", take_profit="1.000000001")
    ).then_refuses(InvalidCommand, errors=["quantity", "entry_price", "take_profit"])


def test_a_side_other_than_long_or_short_is_refused_on_side() -> None:
    given().when(open_position(side="sideways", quantity="0")).then_refuses(
        InvalidCommand, errors=["side", "quantity"]
    )


def test_check_open_lists_the_broken_rules_without_raising() -> None:
    errors = check_open(open_position(quantity="-1", notes="n" * 2001))
    assert {e.field for e in errors} == {"quantity", "notes"}
    assert check_open(open_position()) == []


def test_opening_an_existing_position_is_refused() -> None:
    given(opened()).when(open_position()).then_refuses(PositionAlreadyExists)


def test_opening_the_id_of_a_deleted_position_is_refused() -> None:
    given(opened(), deleted()).when(open_position()).then_refuses(PositionAlreadyExists)


def test_the_events_carry_the_moment_of_the_command() -> None:
    given(opened(at=t(0))).when(amend(notes="later", at=t(42))).then(
        notes_changed("later", at=t(42))
    )


# -- fill --------------------------------------------------------------------------------------


def test_filling_a_pending_position_without_a_price_fills_it_at_the_ordered_price() -> None:
    state = given(ordered(entry_price="100")).when(fill()).then(filled("100"))
    assert state is not None and state.status == "open"


def test_filling_a_pending_position_at_a_price_records_that_price() -> None:
    state = given(ordered(entry_price="100")).when(fill("99.5")).then(filled("99.5"))
    assert state is not None and state.entry_price == D("99.5")


def test_filling_an_open_position_is_refused() -> None:
    given(opened()).when(fill("100")).then_refuses(NotPending)


def test_filling_a_filled_order_again_is_refused() -> None:
    given(ordered(), filled("100")).when(fill()).then_refuses(NotPending)


def test_filling_a_closed_position_is_refused() -> None:
    given(opened(), closed("10", "110", "100", "110")).when(fill()).then_refuses(AlreadyClosed)


def test_filling_a_cancelled_order_is_refused() -> None:
    given(ordered(), cancelled()).when(fill()).then_refuses(AlreadyClosed)


def test_filling_a_deleted_order_is_refused_as_not_found() -> None:
    given(ordered(), deleted()).when(fill()).then_refuses(PositionNotFound)


def test_filling_a_position_that_does_not_exist_is_refused_as_not_found() -> None:
    given().when(fill()).then_refuses(PositionNotFound)


@pytest.mark.parametrize("price", ["0", "-1", "NaN", "Infinity", "100.000000001", "1E+13"])
def test_filling_at_an_invalid_price_is_refused_on_entry_price(price: str) -> None:
    given(ordered()).when(fill(price)).then_refuses(InvalidCommand, errors=["entry_price"])


def test_filling_at_a_price_that_leaves_the_stop_on_the_wrong_side_is_refused() -> None:
    given(ordered(side="long", entry_price="100", stop_loss="95")).when(fill("94")).then_refuses(
        InvalidCommand, errors=["stop_loss"]
    )


def test_filling_at_a_price_that_leaves_the_target_on_the_wrong_side_is_refused() -> None:
    given(ordered(side="short", entry_price="100", take_profit="90")).when(fill("89")).then_refuses(
        InvalidCommand, errors=["take_profit"]
    )


# -- amend -------------------------------------------------------------------------------------


def test_amending_the_stop_loss_moves_it() -> None:
    state = given(opened(stop_loss="90")).when(amend(stop_loss="95")).then(stop_loss_moved("95"))
    assert state is not None and state.stop_loss == D("95")


def test_amending_the_take_profit_moves_it() -> None:
    state = given(opened()).when(amend(take_profit="130")).then(take_profit_moved("130"))
    assert state is not None and state.take_profit == D("130")


def test_amending_the_notes_changes_them() -> None:
    given(opened(notes="old")).when(amend(notes="new")).then(notes_changed("new"))


def test_amending_the_strategy_changes_it() -> None:
    given(opened(strategy="swing")).when(amend(strategy="momentum")).then(
        strategy_changed("momentum")
    )


def test_amending_the_current_price_marks_the_position() -> None:
    state = given(opened()).when(amend(current_price="101.25")).then(marked("101.25"))
    assert state is not None and state.current_price == D("101.25")


def test_a_mark_at_the_same_price_is_recorded_again() -> None:
    given(opened(), marked("101")).when(amend(current_price="101")).then(marked("101"))


@pytest.mark.parametrize(
    "changes",
    [
        {"stop_loss": "90"},
        {"stop_loss": "90.00"},
        {"take_profit": "120"},
        {"notes": "n"},
        {"strategy": "s"},
        {"stop_loss": "90", "take_profit": "120", "notes": "n", "strategy": "s"},
        {},
    ],
)
def test_amending_to_the_values_already_set_records_nothing(changes: dict) -> None:
    given(opened(stop_loss="90", take_profit="120", notes="n", strategy="s")).when(
        amend(**changes)
    ).then_nothing()


@pytest.mark.parametrize(
    ("field", "event"),
    [
        ("stop_loss", stop_loss_moved(None)),
        ("take_profit", take_profit_moved(None)),
        ("notes", notes_changed(None)),
        ("strategy", strategy_changed(None)),
    ],
)
def test_amending_a_field_to_none_clears_it(field: str, event) -> None:
    state = (
        given(opened(stop_loss="90", take_profit="120", notes="n", strategy="s"))
        .when(amend(**{field: None}))
        .then(event)
    )
    assert state is not None and getattr(state, field) is None


@pytest.mark.parametrize("field", ["stop_loss", "take_profit", "notes", "strategy"])
def test_clearing_a_field_that_is_not_set_records_nothing(field: str) -> None:
    given(opened()).when(amend(**{field: None})).then_nothing()


def test_amending_several_fields_records_one_event_for_each_change() -> None:
    given(opened(stop_loss="90", notes="n")).when(
        amend(
            current_price="105",
            stop_loss="95",
            take_profit="130",
            notes="n",
            strategy="breakout",
        )
    ).then(
        stop_loss_moved("95"), take_profit_moved("130"), strategy_changed("breakout"), marked("105")
    )


def test_a_pending_position_can_be_amended() -> None:
    given(ordered()).when(amend(stop_loss="95")).then(stop_loss_moved("95"))


@pytest.mark.parametrize(
    ("side", "field", "level"),
    [
        ("long", "stop_loss", "100"),
        ("long", "take_profit", "99"),
        ("short", "stop_loss", "99"),
        ("short", "take_profit", "100"),
    ],
)
def test_amending_a_protective_level_to_the_wrong_side_of_the_entry_is_refused(
    side: str, field: str, level: str
) -> None:
    given(opened(side=side, entry_price="100")).when(amend(**{field: level})).then_refuses(
        InvalidCommand, errors=[field]
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("current_price", "0"),
        ("current_price", "-1"),
        ("current_price", "NaN"),
        ("current_price", "1.000000001"),
        ("current_price", "1E+13"),
        ("stop_loss", "0"),
        ("stop_loss", "Infinity"),
        ("take_profit", "120.000000001"),
        ("strategy", "s" * 65),
        ("notes", "n" * 2001),
    ],
)
def test_amending_to_an_invalid_value_is_refused_on_the_field(field: str, value: str) -> None:
    given(opened()).when(amend(**{field: value})).then_refuses(InvalidCommand, errors=[field])


def test_every_invalid_value_of_an_amendment_is_reported_at_once() -> None:
    given(opened()).when(amend(current_price="0", stop_loss="-1", strategy="s" * 65)).then_refuses(
        InvalidCommand, errors=["current_price", "stop_loss", "strategy"]
    )


def test_a_stop_on_the_wrong_side_is_reported_with_the_other_broken_rules_of_an_amendment() -> None:
    given(opened(side="long", entry_price="100")).when(
        amend(stop_loss="101", notes="n" * 2001)
    ).then_refuses(InvalidCommand, errors=["stop_loss", "notes"])


def test_amending_a_closed_position_is_refused() -> None:
    given(opened(), closed("10", "110", "100", "110")).when(amend(notes="x")).then_refuses(
        AlreadyClosed
    )


def test_marking_a_closed_position_is_refused() -> None:
    given(opened(), closed("10", "110", "100", "110")).when(
        amend(current_price="111")
    ).then_refuses(AlreadyClosed)


def test_amending_a_cancelled_order_is_refused() -> None:
    given(ordered(), cancelled()).when(amend(notes="x")).then_refuses(AlreadyClosed)


def test_amending_a_deleted_position_is_refused_as_not_found() -> None:
    given(opened(), deleted()).when(amend(notes="x")).then_refuses(PositionNotFound)


def test_amending_a_position_that_does_not_exist_is_refused_as_not_found() -> None:
    given().when(amend(notes="x")).then_refuses(PositionNotFound)


# -- increase ----------------------------------------------------------------------------------


def test_adding_to_a_long_position_averages_the_entry_price_by_quantity() -> None:
    # avg = (100*10 + 110*30) / (10 + 30) = 107.5
    state = (
        given(opened(side="long", quantity="10", entry_price="100"))
        .when(increase("30", "110"))
        .then(increased("30", "110"))
    )
    assert state is not None
    assert (state.quantity, state.entry_price) == (D("40"), D("107.5"))


def test_adding_to_a_short_position_averages_the_entry_price_by_quantity() -> None:
    # avg = (50*4 + 40*1) / (4 + 1) = 48
    state = (
        given(opened(side="short", quantity="4", entry_price="50"))
        .when(increase("1", "40"))
        .then(increased("1", "40"))
    )
    assert state is not None
    assert (state.quantity, state.entry_price) == (D("5"), D("48"))


def test_the_average_entry_price_is_rounded_to_eight_places() -> None:
    # (1*1 + 2*2) / 3 = 1.6666...
    state = (
        given(opened(quantity="1", entry_price="1"))
        .when(increase("2", "2"))
        .then(increased("2", "2"))
    )
    assert state is not None and state.entry_price == D("1.66666667")


@pytest.mark.parametrize(
    ("first", "second", "average"),
    [
        ("0.00000001", "0.00000002", "0.00000002"),  # 0.000000015: half to the even 2
        ("0.00000002", "0.00000003", "0.00000002"),  # 0.000000025: half to the even 2, not up to 3
    ],
)
def test_the_average_entry_price_is_rounded_half_to_even(
    first: str, second: str, average: str
) -> None:
    state = fold([opened(quantity="1", entry_price=first), increased("1", second)])
    assert state is not None and state.entry_price == D(average)


def test_adding_past_the_largest_quantity_is_refused_and_up_to_it_accepted() -> None:
    held = opened(quantity="999999999999", entry_price="1")
    given(held).when(increase("1.00000001", "1")).then_refuses(InvalidCommand, errors=["quantity"])
    state = given(held).when(increase("1", "1")).then(increased("1", "1"))
    assert state is not None and state.quantity == D("1000000000000")


def test_adding_to_a_pending_order_is_refused() -> None:
    given(ordered()).when(increase("1", "100")).then_refuses(NotOpen)


def test_adding_to_a_closed_position_is_refused() -> None:
    given(opened(), closed("10", "110", "100", "110")).when(increase("1", "100")).then_refuses(
        AlreadyClosed
    )


def test_adding_to_a_deleted_position_is_refused_as_not_found() -> None:
    given(opened(), deleted()).when(increase("1", "100")).then_refuses(PositionNotFound)


def test_adding_an_invalid_quantity_at_an_invalid_price_reports_both() -> None:
    given(opened()).when(increase("0", "100.000000001")).then_refuses(
        InvalidCommand, errors=["quantity", "price"]
    )


@pytest.mark.parametrize("value", ["-1", "NaN", "1E+13"])
def test_adding_at_an_invalid_price_is_refused_on_price(value: str) -> None:
    given(opened()).when(increase("1", value)).then_refuses(InvalidCommand, errors=["price"])


# -- close -------------------------------------------------------------------------------------


def test_a_partial_close_of_a_long_position_realizes_quantity_times_exit_minus_average() -> None:
    # 4 x (112.5 - 100) = 50
    state = (
        given(opened(side="long", quantity="10", entry_price="100"))
        .when(close(exit_price="112.5", quantity="4"))
        .then(reduced("4", "112.5", "50"))
    )
    assert state is not None
    assert (state.status, state.quantity, state.entry_price, state.realized_pnl) == (
        "open",
        D("6"),
        D("100"),
        D("50"),
    )


def test_a_partial_close_of_a_short_position_realizes_quantity_times_average_minus_exit() -> None:
    # 4 x (100 - 112.5) = -50
    state = (
        given(opened(side="short", quantity="10", entry_price="100"))
        .when(close(exit_price="112.5", quantity="4"))
        .then(reduced("4", "112.5", "-50"))
    )
    assert state is not None
    assert (state.status, state.quantity, state.realized_pnl) == ("open", D("6"), D("-50"))


def test_a_partial_close_realizes_against_the_average_of_an_increased_position() -> None:
    # avg 107.5; 20 x (100 - 107.5) = -150 for a long
    given(opened(quantity="10", entry_price="100"), increased("30", "110")).when(
        close(exit_price="100", quantity="20")
    ).then(reduced("20", "100", "-150"))


def test_closing_without_a_quantity_closes_all_of_it() -> None:
    state = (
        given(opened(side="long", quantity="10", entry_price="100"))
        .when(close(exit_price="110"))
        .then(closed("10", "110", "100", "110"))
    )
    assert state is not None
    assert (state.status, state.quantity, state.realized_pnl, state.exit_price) == (
        "closed",
        D("0"),
        D("100"),
        D("110"),
    )


def test_closing_exactly_the_open_quantity_closes_the_position() -> None:
    given(opened(side="short", quantity="10", entry_price="100")).when(
        close(exit_price="90", quantity="10")
    ).then(closed("10", "90", "100", "90"))


def test_the_exit_price_is_the_quantity_weighted_average_of_every_closing_price() -> None:
    # closes 4 @ 110 (+40) and then 6 @ 120 (+120): exit (4*110 + 6*120) / 10 = 116
    state = (
        given(opened(quantity="10", entry_price="100"), reduced("4", "110", "40"))
        .when(close(exit_price="120"))
        .then(closed("6", "120", "120", "116"))
    )
    assert state is not None
    assert (state.realized_pnl, state.exit_price) == (D("160"), D("116"))


def test_the_exit_price_is_rounded_to_eight_places() -> None:
    # (1*1 + 2*2) / 3 = 1.6666...
    given(opened(quantity="3", entry_price="1"), reduced("1", "1", "0")).when(
        close(exit_price="2")
    ).then(closed("2", "2", "2", "1.66666667"))


def test_the_exit_price_weighs_closes_made_before_the_position_was_added_to() -> None:
    # 2 closed @ 90, then 8 more bought @ 100 and all 10 closed @ 100: (2*90 + 10*100) / 12
    given(
        opened(quantity="4", entry_price="100"),
        reduced("2", "90", "-20"),
        increased("8", "100"),
    ).when(close(exit_price="100")).then(closed("10", "100", "0", "98.33333333"))


def test_closing_at_a_price_of_zero_is_allowed() -> None:
    given(opened(side="long", quantity="10", entry_price="100")).when(close(exit_price="0")).then(
        closed("10", "0", "-1000", "0")
    )


def test_a_short_closed_at_zero_realizes_all_of_its_entry_value() -> None:
    given(opened(side="short", quantity="10", entry_price="100")).when(
        close(exit_price="0", quantity="3")
    ).then(reduced("3", "0", "300"))


def test_closing_more_than_is_open_is_refused_on_quantity() -> None:
    given(opened(quantity="10")).when(close(quantity="10.00000001")).then_refuses(
        InvalidCommand, errors=["quantity"]
    )


def test_closing_more_than_is_left_after_a_partial_close_is_refused_on_quantity() -> None:
    given(opened(quantity="10"), reduced("4", "110", "40")).when(close(quantity="7")).then_refuses(
        InvalidCommand, errors=["quantity"]
    )


@pytest.mark.parametrize("quantity", ["0", "-1", "1.000000001", "NaN"])
def test_closing_an_invalid_quantity_is_refused_on_quantity(quantity: str) -> None:
    given(opened()).when(close(quantity=quantity)).then_refuses(InvalidCommand, errors=["quantity"])


@pytest.mark.parametrize("price", ["-0.01", "NaN", "-Infinity", "110.000000001", "1E+13"])
def test_closing_at_an_invalid_exit_price_is_refused_on_exit_price(price: str) -> None:
    given(opened()).when(close(exit_price=price)).then_refuses(
        InvalidCommand, errors=["exit_price"]
    )


def test_an_invalid_exit_price_and_an_invalid_quantity_are_reported_together() -> None:
    given(opened()).when(close(exit_price="-1", quantity="0")).then_refuses(
        InvalidCommand, errors=["exit_price", "quantity"]
    )


def test_an_invalid_exit_price_is_reported_with_closing_more_than_is_open() -> None:
    given(opened(quantity="10")).when(close(exit_price="-1", quantity="11")).then_refuses(
        InvalidCommand, errors=["exit_price", "quantity"]
    )


def test_closing_without_an_exit_price_is_refused() -> None:
    given(opened()).when(close(exit_price=None)).then_refuses(NoExitPrice)


def test_closing_a_pending_order_cancels_it_with_nothing_realized() -> None:
    state = given(ordered()).when(close(exit_price="110")).then(cancelled())
    assert state is not None
    assert (state.status, state.realized_pnl, state.exit_price) == ("closed", D("0"), None)


def test_closing_a_pending_order_needs_no_exit_price() -> None:
    given(ordered()).when(close(exit_price=None)).then(cancelled())


def test_closing_a_closed_position_is_refused() -> None:
    given(opened(), closed("10", "110", "100", "110")).when(close()).then_refuses(AlreadyClosed)


def test_closing_a_cancelled_order_is_refused() -> None:
    given(ordered(), cancelled()).when(close()).then_refuses(AlreadyClosed)


def test_closing_a_deleted_position_is_refused_as_not_found() -> None:
    given(opened(), deleted()).when(close()).then_refuses(PositionNotFound)


def test_closing_a_position_that_does_not_exist_is_refused_as_not_found() -> None:
    given().when(close()).then_refuses(PositionNotFound)


# -- delete ------------------------------------------------------------------------------------


def test_deleting_a_position_records_it_deleted() -> None:
    state = given(opened()).when(delete()).then(deleted())
    assert state is not None and state.deleted


def test_a_closed_position_can_be_deleted() -> None:
    given(opened(), closed("10", "110", "100", "110")).when(delete()).then(deleted())


def test_deleting_a_position_that_does_not_exist_is_refused_as_not_found() -> None:
    given().when(delete()).then_refuses(PositionNotFound)


@pytest.mark.parametrize(
    "command",
    [
        delete(),
        fill(),
        amend(notes="x"),
        amend(current_price="1"),
        increase("1", "100"),
        close(),
        close(exit_price=None),
    ],
    ids=["delete", "fill", "amend", "mark", "increase", "close", "close-without-price"],
)
def test_every_command_on_a_deleted_position_is_refused_as_not_found(command) -> None:
    given(opened(), deleted()).when(command).then_refuses(PositionNotFound)


# -- market prices -----------------------------------------------------------------------------


def test_market_prices_are_recorded_under_upper_cased_symbols() -> None:
    given().when(update_prices({"aapl": "155.5", "Brk.b": "400", "MSFT": "0.00000001"})).then(
        prices_updated({"AAPL": "155.5", "BRK.B": "400", "MSFT": "0.00000001"})
    )


def test_market_prices_keep_their_exact_digits() -> None:
    (event,) = decide_market_prices(update_prices({"aapl": "155.50"}))
    assert isinstance(event, MarketPricesUpdated)
    assert f"{event.prices['AAPL']:f}" == "155.50"


@pytest.mark.parametrize("price", ["0", "-1", "NaN", "Infinity", "1.000000001", "1E+13"])
def test_an_invalid_market_price_is_refused_on_its_symbol(price: str) -> None:
    given().when(update_prices({"AAPL": "150", "msft": price})).then_refuses(
        InvalidCommand, errors=["msft"]
    )


@pytest.mark.parametrize("symbol", ["", "NOT A SYMBOL", "X" * 16])
def test_an_invalid_market_symbol_is_refused_on_that_symbol(symbol: str) -> None:
    given().when(update_prices({"AAPL": "150", symbol: "1"})).then_refuses(
        InvalidCommand, errors=[symbol]
    )


def test_every_invalid_market_price_is_reported_at_once() -> None:
    given().when(update_prices({"AAPL": "0", "bad symbol": "1", "MSFT": "NaN"})).then_refuses(
        InvalidCommand, errors=["AAPL", "bad symbol", "MSFT"]
    )


def test_market_prices_for_no_symbol_are_refused() -> None:
    given().when(update_prices({})).then_refuses(InvalidCommand, errors=["prices"])


# -- evolve ------------------------------------------------------------------------------------


def test_an_opened_position_starts_at_version_1_open_unpriced_with_nothing_realized() -> None:
    state = evolve(None, opened(quantity="10", entry_price="100", at=t(5)))
    assert (state.position_id, state.owner, state.symbol, state.side) == (
        POSITION_ID,
        OWNER,
        "AAPL",
        "long",
    )
    assert (state.status, state.version, state.quantity, state.entry_price) == (
        "open",
        1,
        D("10"),
        D("100"),
    )
    assert (state.current_price, state.realized_pnl, state.exit_price) == (None, D("0"), None)
    assert (state.created_at, state.updated_at, state.opened_at, state.closed_at) == (
        t(5),
        t(5),
        t(5),
        None,
    )
    assert not state.deleted


def test_a_pending_order_has_no_opening_time_until_it_is_filled() -> None:
    state = fold([ordered(entry_price="100", at=t(1))])
    assert state is not None and (state.status, state.opened_at) == ("pending", None)
    state = evolve(state, filled("101", at=t(9)))
    assert (state.status, state.opened_at, state.created_at, state.entry_price) == (
        "open",
        t(9),
        t(1),
        D("101"),
    )


def test_the_version_counts_the_events() -> None:
    history = [opened(), marked("101"), stop_loss_moved("90"), reduced("1", "101", "1"), deleted()]
    for count in range(1, len(history) + 1):
        state = fold(history[:count])
        assert state is not None and state.version == count


def test_updated_at_follows_each_event_and_created_at_stays() -> None:
    state = fold([opened(at=t(0))])
    for minute, event in [
        (3, marked("101", at=t(3))),
        (7, notes_changed("x", at=t(7))),
        (8, reduced("1", "101", "1", at=t(8))),
        (20, deleted(at=t(20))),
    ]:
        state = evolve(state, event)
        assert (state.updated_at, state.created_at) == (t(minute), t(0))


def test_protective_levels_notes_strategy_and_mark_follow_their_events() -> None:
    state = fold(
        [
            opened(stop_loss="90", take_profit="120"),
            stop_loss_moved("95"),
            take_profit_moved(None),
            notes_changed("why"),
            strategy_changed("trend"),
            marked("102"),
            marked("103"),
        ]
    )
    assert state is not None
    assert (
        state.stop_loss,
        state.take_profit,
        state.notes,
        state.strategy,
        state.current_price,
    ) == (
        D("95"),
        None,
        "why",
        "trend",
        D("103"),
    )


def test_a_reduction_keeps_the_position_open() -> None:
    state = fold([opened(quantity="10", at=t(0)), reduced("4", "110", "40", at=t(1))])
    assert state is not None
    assert (state.status, state.quantity, state.closed_quantity, state.closed_at) == (
        "open",
        D("6"),
        D("4"),
        None,
    )


def test_closing_sets_status_closing_time_exit_price_and_zero_quantity() -> None:
    state = fold(
        [
            opened(quantity="10", at=t(0)),
            reduced("4", "110", "40", at=t(1)),
            closed("6", "120", "120", "116", at=t(2)),
        ]
    )
    assert state is not None
    assert (state.status, state.quantity, state.exit_price, state.closed_at, state.opened_at) == (
        "closed",
        D("0"),
        D("116"),
        t(2),
        t(0),
    )
    assert (state.realized_pnl, state.closed_quantity, state.closed_value) == (
        D("160"),
        D("10"),
        D("1160"),
    )


def test_a_cancelled_order_is_closed_with_nothing_realized_and_no_exit_price() -> None:
    state = fold([ordered(at=t(0)), cancelled(at=t(3))])
    assert state is not None
    assert (
        state.status,
        state.closed_at,
        state.opened_at,
        state.realized_pnl,
        state.exit_price,
    ) == (
        "closed",
        t(3),
        None,
        D("0"),
        None,
    )


def test_a_deleted_position_is_marked_deleted_and_keeps_its_figures() -> None:
    before = fold([opened(), reduced("4", "110", "40")])
    after = evolve(before, deleted(at=t(30)))
    assert after.deleted and not before.deleted
    assert (after.quantity, after.realized_pnl, after.status) == (
        before.quantity,
        before.realized_pnl,
        "open",
    )


def test_a_history_with_no_events_is_no_position() -> None:
    assert fold([]) is None


def test_a_cancelled_order_has_nothing_open() -> None:
    state = given(ordered(quantity=D("10"))).when(close()).then(cancelled())
    assert (state.status, state.quantity, state.realized_pnl) == ("closed", D("0"), D("0"))


def test_a_symbol_given_twice_in_one_price_update_is_refused() -> None:
    given().when(update_prices({"aapl": "1", "AAPL": "2"})).then_refuses(
        InvalidCommand, errors=["AAPL"]
    )


def test_an_exit_price_of_minus_zero_closes_at_zero() -> None:
    state = (
        given(opened(quantity="10", entry_price="100"))
        .when(close(exit_price="-0"))
        .then(closed(quantity="10", price="0", realized_pnl="-1000", exit_price="0"))
    )
    assert not state.exit_price.is_signed()


def test_trailing_zeros_beyond_eight_places_do_not_count_as_places() -> None:
    given().when(open_position(quantity="1.000000000")).then(opened(quantity="1.000000000"))


def test_an_amendment_is_refused_only_for_the_levels_it_changes() -> None:
    # Scaling in moved the average above the old target; moving the stop is still fine.
    history = [opened(side="long", entry_price="100", take_profit="110"), increased("90", "120")]
    given(*history).when(amend(stop_loss="90")).then(stop_loss_moved("90"))
