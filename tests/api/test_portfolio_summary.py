"""GET /portfolio/summary against docs/domain.md ("Portfolio summary", "One position",
"Numbers").

The test is the oracle: every figure is computed here, independently of domain/portfolio.py and
projections/queries.py, from the positions the service lists (checked first against a model of the
commands this test sent), in exact arithmetic (a decimal context that traps any rounding, and
fractions for the percentages, rounded to 6 places half to even as the service answers them).

Market prices are global per symbol, so every test uses symbols of its own (random letters).
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Context, Decimal, Inexact, localcontext
from fractions import Fraction
from typing import Any

import msgspec
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from .conftest import Caller

PROXIMITY_PCT = Decimal(2)  # RISK_STOP_PROXIMITY_PCT, the service's default
NO_STRATEGY = "(none)"
PLACES_8 = Decimal("0.00000001")
EXACT = Context(prec=200, traps=[Inexact])
_encode = msgspec.json.Encoder(decimal_format="number").encode

COUNTS = (
    "total_positions",
    "open_positions",
    "closed_positions",
    "pending_positions",
    "long_positions",
    "short_positions",
    "unpriced_positions",
    "positions_at_risk",
    "positions_near_target",
    "closed_trades",
    "winning_trades",
)
SUMS = (
    "total_market_value",
    "long_exposure",
    "short_exposure",
    "net_exposure",
    "gross_exposure",
    "total_unrealized_pnl",
    "total_realized_pnl",
    "total_pnl",
)
RATIOS = ("win_rate", "profit_factor", "largest_position_pct")
FIGURES = COUNTS + SUMS + RATIOS


# -- helpers -------------------------------------------------------------------------------------


def symbol() -> str:
    """A symbol no other test (or run) uses: nobody else's market price can re-mark it."""
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(6))


def decoded(response) -> Any:
    assert response.status_code == 200, response.text
    return response.json(parse_float=Decimal)


def open_position(caller: Caller, **fields: Any) -> dict:
    body = {"side": "long", "quantity": 10, "entry_price": 100, **fields}
    response = caller.http.post(
        "/positions", content=_encode(body), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 201, response.text
    return response.json(parse_float=Decimal)


def mark(caller: Caller, position_id: str, price: Decimal | str | int) -> dict:
    response = caller.http.put(
        f"/positions/{position_id}",
        content=_encode({"current_price": price}),
        headers={"Content-Type": "application/json"},
    )
    return decoded(response)


def close(caller: Caller, position_id: str, exit_price: Any = None, quantity: Any = None) -> dict:
    params = {}
    if exit_price is not None:
        params["exit_price"] = str(exit_price)
    if quantity is not None:
        params["quantity"] = str(quantity)
    return decoded(caller.http.post(f"/positions/{position_id}/close", params=params))


def market_prices(admin: Caller, prices: dict[str, Decimal | str | int]) -> dict:
    response = admin.http.post(
        "/positions/update-prices",
        content=_encode(prices),
        headers={"Content-Type": "application/json"},
    )
    return decoded(response)


def summary_of(caller: Caller, **params: str) -> dict:
    return decoded(caller.http.get("/portfolio/summary", params=params))


def listed(caller: Caller) -> list[dict]:
    return decoded(caller.http.get("/positions", params={"limit": 1000}))


def six_places(value: Fraction) -> Decimal:
    """An exact fraction rounded to 6 places, half to even (Python's round() of a Fraction)."""
    return Decimal(round(value * 10**6)).scaleb(-6)


def percent(part: Decimal | int, whole: Decimal | int) -> Decimal:
    """part / whole x 100, to 6 places half to even."""
    return six_places(Fraction(part) * 100 / Fraction(whole))


# -- the oracle ----------------------------------------------------------------------------------


def figures(positions: list[dict]) -> dict[str, Any]:
    """Every figure of docs/domain.md's summary over `positions` (as GET /positions lists them)."""
    with localcontext(EXACT):
        counts = dict.fromkeys(COUNTS, 0)
        long_exposure = short_exposure = unrealized = realized = Decimal(0)
        market_values: list[Decimal] = []
        gross_profit = gross_loss = Decimal(0)
        proximity = PROXIMITY_PCT / 100
        for p in positions:
            status, side, quantity = p["status"], p["side"], Decimal(p["quantity"])
            counts["total_positions"] += 1
            counts[f"{status}_positions"] += 1
            realized += Decimal(p["realized_pnl"])
            if status == "closed" and Decimal(p["closed_quantity"]) > 0:  # a cancel closed nothing
                counts["closed_trades"] += 1
                pnl = Decimal(p["realized_pnl"])
                if pnl > 0:
                    counts["winning_trades"] += 1
                    gross_profit += pnl
                elif pnl < 0:
                    gross_loss += pnl
            if status != "open":
                continue
            counts[f"{side}_positions"] += 1
            average = Decimal(p["entry_price"])
            price = None if p["current_price"] is None else Decimal(p["current_price"])
            the_mark = average if price is None else price
            value = quantity * the_mark
            market_values.append(value)
            if side == "long":
                long_exposure += value
            else:
                short_exposure -= value
            if price is None:
                counts["unpriced_positions"] += 1
            else:
                unrealized += (price - average) * (quantity if side == "long" else -quantity)
            band = the_mark * proximity
            stop, target = p["stop_loss"], p["take_profit"]
            if stop is not None:
                stop = Decimal(stop)
                hit = the_mark <= stop if side == "long" else the_mark >= stop
                if hit or abs(the_mark - stop) <= band:
                    counts["positions_at_risk"] += 1
            if target is not None:
                target = Decimal(target)
                hit = the_mark >= target if side == "long" else the_mark <= target
                if hit or abs(target - the_mark) <= band:
                    counts["positions_near_target"] += 1
        total_value = sum(market_values, Decimal(0))
        if gross_profit == 0:
            profit_factor: Decimal | None = Decimal(0)
        elif gross_loss == 0:
            profit_factor = None
        else:
            # Rounded like a percentage, as docs/domain.md says (6 places, half to even).
            profit_factor = six_places(Fraction(gross_profit) / Fraction(-gross_loss))
        return {
            **counts,
            "total_market_value": total_value,
            "long_exposure": long_exposure,
            "short_exposure": short_exposure,
            "net_exposure": long_exposure + short_exposure,
            "gross_exposure": long_exposure + abs(short_exposure),
            "total_unrealized_pnl": unrealized,
            "total_realized_pnl": realized,
            "total_pnl": unrealized + realized,
            "win_rate": percent(counts["winning_trades"], counts["closed_trades"])
            if counts["closed_trades"]
            else Decimal(0),
            "profit_factor": profit_factor,
            "largest_position_pct": percent(max(market_values), total_value)
            if market_values
            else Decimal(0),
        }


def expected_summary(positions: list[dict]) -> dict[str, Any]:
    by_symbol: dict[str, list[dict]] = {}
    by_strategy: dict[str, list[dict]] = {}
    for p in positions:
        by_symbol.setdefault(p["symbol"], []).append(p)
        by_strategy.setdefault(
            p["strategy"] if p["strategy"] is not None else NO_STRATEGY, []
        ).append(p)
    return {
        **figures(positions),
        "by_symbol": {key: figures(group) for key, group in by_symbol.items()},
        "by_strategy": {key: figures(group) for key, group in by_strategy.items()},
    }


def assert_summary(actual: dict, expected: dict) -> None:
    """Every expected figure, compared exactly (Decimal == Decimal), with a readable difference."""

    def compare(where: str, got: dict, want: dict) -> list[str]:
        wrong = []
        for name in FIGURES:
            if name not in got:
                wrong.append(f"{where}{name}: missing (expected {want[name]!r})")
            elif got[name] != want[name] or (got[name] is None) != (want[name] is None):
                wrong.append(f"{where}{name}: expected {want[name]!r}, got {got[name]!r}")
        return wrong

    problems = compare("", actual, expected)
    for group in ("by_symbol", "by_strategy"):
        got, want = actual.get(group), expected[group]
        if got is None or set(got) != set(want):
            problems.append(f"{group}: keys {sorted(got or {})} != expected {sorted(want)}")
            continue
        for key in want:
            problems += compare(f"{group}[{key!r}].", got[key], want[key])
    assert not problems, "\n".join(problems)


# -- a model of what the test did, to check the listing the oracle reads ---------------------------


@dataclass
class Model:
    id: str
    symbol: str
    side: str
    status: str
    quantity: Decimal
    entry: Decimal
    current_price: Decimal | None
    realized: Decimal = Decimal(0)
    closed_quantity: Decimal = Decimal(0)
    strategy: str | None = None

    def close(self, quantity: Decimal, exit_price: Decimal) -> None:
        with localcontext(EXACT):
            move = exit_price - self.entry if self.side == "long" else self.entry - exit_price
            self.realized += quantity * move
            self.closed_quantity += quantity
            self.quantity -= quantity
        if self.quantity == 0:
            self.status = "closed"


def assert_listing_matches(positions: list[dict], models: dict[str, Model]) -> None:
    assert {p["id"] for p in positions} == set(models)
    for p in positions:
        m = models[p["id"]]
        assert (p["symbol"], p["side"], p["status"], p["strategy"]) == (
            m.symbol,
            m.side,
            m.status,
            m.strategy,
        ), p
        assert Decimal(p["entry_price"]) == m.entry, p
        assert Decimal(p["realized_pnl"]) == m.realized, p
        assert Decimal(p["closed_quantity"]) == m.closed_quantity, p
        if m.status == "open":
            assert Decimal(p["quantity"]) == m.quantity, p
            assert (
                None if p["current_price"] is None else Decimal(p["current_price"])
            ) == m.current_price, p


# -- strategies ----------------------------------------------------------------------------------


def amounts(low: str, high: str) -> st.SearchStrategy[Decimal]:
    """Positive decimals in [low, high] with 0 to 8 decimal places."""
    return (
        st.integers(0, 8)
        .flatmap(
            lambda places: st.decimals(
                min_value=Decimal(low),
                max_value=Decimal(high),
                places=places,
                allow_nan=False,
                allow_infinity=False,
            )
        )
        .filter(lambda d: d > 0)
    )


PRICES = amounts("0.01", "5000")
QUANTITIES = amounts("0.001", "500")
RELATIVE = st.integers(-60, 60)  # thousandths around an anchor price: +-6 %, across the 2 % band


def q8(value: Decimal) -> Decimal:
    with localcontext(Context(prec=60)):
        return value.quantize(PLACES_8)


@st.composite
def level(draw, entry: Decimal, below: bool) -> Decimal | None:
    """A stop or a target on the side of the entry the rules require (or None)."""
    if draw(st.integers(0, 2)) == 0:
        return None
    percent_away = draw(st.sampled_from([1, 2, 2, 3, 5, 10, 40]))
    factor = Decimal(100 - percent_away if below else 100 + percent_away) / 100
    value = q8(entry * factor)
    if value <= 0 or (below and value >= entry) or (not below and value <= entry):
        return None
    return value


@st.composite
def price_near(draw, anchors: list[Decimal]) -> Decimal:
    """A random price, or one at or around one of the position's own levels."""
    if draw(st.booleans()):
        return draw(PRICES)
    anchor = draw(st.sampled_from(anchors))
    price = q8(anchor * (1000 + draw(RELATIVE)) / 1000)
    return price if price > 0 else anchor


@st.composite
def exit_prices(draw, side: str, entry: Decimal, anchors: list[Decimal]) -> Decimal:
    """A winning, losing or breakeven exit (down to 0), or one around the position's levels."""
    kind = draw(st.sampled_from(["win", "loss", "breakeven", "near", "win", "loss"]))
    if kind == "breakeven":
        return entry
    if kind == "near":
        return draw(price_near(anchors))
    up = (kind == "win") == (side == "long")
    percent_moved = draw(st.integers(1, 50 if up or side == "short" else 100))
    return q8(entry * (100 + percent_moved if up else 100 - percent_moved) / 100)


@st.composite
def plans(draw) -> dict:
    side = draw(st.sampled_from(["long", "short"]))
    entry = draw(PRICES)
    stop = draw(level(entry, below=side == "long"))
    target = draw(level(entry, below=side == "short"))
    anchors = [entry] + [x for x in (stop, target) if x is not None]
    pending = draw(st.integers(0, 4)) == 0
    exits = exit_prices(side, entry, anchors)
    steps: list[tuple] = []
    # Some marks (and, when open, partial closes); then, half of the time, the end of it.
    for _ in range(draw(st.integers(0, 2))):
        if pending or draw(st.booleans()):
            steps.append(("mark", draw(price_near(anchors))))
        else:
            steps.append(("partial", draw(st.integers(1, 99)), draw(exits)))
    if draw(st.booleans()):
        steps.append(("cancel",) if pending else ("full", draw(exits)))
    return {
        "symbol": draw(st.integers(0, 2)),
        "side": side,
        "quantity": draw(QUANTITIES),
        "entry_price": entry,
        "stop_loss": stop,
        "take_profit": target,
        "strategy": draw(st.sampled_from([None, None, "momentum", "swing", "mean-reversion"])),
        "pending": pending,
        "steps": steps,
    }


@st.composite
def books(draw) -> tuple[list[dict], list[tuple[int, dict[int, Decimal]]]]:
    size = draw(st.integers(1, 8))
    book = draw(st.lists(plans(), min_size=size, max_size=size))
    # Market prices at random points of the sequence of commands: (index, {symbol number: price}).
    updates = draw(
        st.lists(
            st.tuples(
                st.integers(0, 1000),
                st.dictionaries(st.integers(0, 2), PRICES, min_size=1, max_size=3),
            ),
            max_size=3,
        )
    )
    return book, updates


# -- 1. the property -----------------------------------------------------------------------------


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(books())
def test_the_summary_of_a_random_book_equals_a_direct_computation_from_its_positions(
    make_caller, admin: Caller, book
) -> None:
    plan, updates = book
    user = make_caller()
    symbols = [symbol() for _ in range(3)]
    known_prices: dict[str, Decimal] = {}
    models: dict[str, Model] = {}

    # The commands: every opening first, then each position's steps; market prices anywhere.
    commands: list[tuple] = [("open", i) for i in range(len(plan))]
    commands += [("step", i, s) for i, p in enumerate(plan) for s in p["steps"]]
    for at, prices in sorted(updates, key=lambda u: u[0]):
        commands.insert(at % (len(commands) + 1), ("market", prices))

    ids: list[str] = []
    for command in commands:
        if command[0] == "market":
            prices = {symbols[k]: v for k, v in command[1].items()}
            market_prices(admin, prices)
            known_prices.update(prices)
            for m in models.values():
                if m.status == "open" and m.symbol in prices:
                    m.current_price = prices[m.symbol]
            continue
        p = plan[command[1]]
        if command[0] == "open":
            fields = {
                k: p[k]
                for k in ("side", "quantity", "entry_price", "stop_loss", "take_profit", "strategy")
                if p[k] is not None
            }
            created = open_position(
                user,
                symbol=symbols[p["symbol"]],
                **fields,
                **({"status": "pending"} if p["pending"] else {}),
            )
            ids.append(created["id"])
            models[created["id"]] = Model(
                id=created["id"],
                symbol=symbols[p["symbol"]],
                side=p["side"],
                status="pending" if p["pending"] else "open",
                quantity=p["quantity"],
                entry=p["entry_price"],
                current_price=known_prices.get(symbols[p["symbol"]]),
                strategy=p["strategy"],
            )
            continue
        position_id, step = ids[command[1]], command[2]
        m = models[position_id]
        if step[0] == "mark":
            mark(user, position_id, step[1])
            m.current_price = step[1]
        elif step[0] == "cancel":
            close(user, position_id)
            m.status = "closed"
        elif step[0] == "partial":
            quantity = (m.quantity * step[1] / 100).quantize(PLACES_8, rounding=ROUND_DOWN)
            if 0 < quantity < m.quantity:
                close(user, position_id, exit_price=step[2], quantity=quantity)
                m.close(quantity, step[2])
        else:
            close(user, position_id, exit_price=step[1])
            m.close(m.quantity, step[1])

    summary = summary_of(user)
    positions = listed(user)
    assert_listing_matches(positions, models)
    expected = expected_summary(positions)
    for name in (
        "closed_trades",
        "positions_at_risk",
        "positions_near_target",
        "unpriced_positions",
        "pending_positions",
        "short_positions",
    ):
        event(f"{name} > 0: {expected[name] > 0}")
    event(
        "profit_factor: "
        f"{'null' if expected['profit_factor'] is None else expected['profit_factor'] > 0}"
    )
    event(f"strategies: {len(expected['by_strategy'])}, symbols: {len(expected['by_symbol'])}")
    assert_summary(summary, expected)


# -- 2. examples ---------------------------------------------------------------------------------


def test_an_empty_book_has_all_figures_zero(user: Caller) -> None:
    summary = summary_of(user)

    for name in FIGURES:
        assert summary[name] == 0, name
        assert summary[name] is not None, name
    assert summary["by_symbol"] == {}
    assert summary["by_strategy"] == {}
    assert_summary(summary, expected_summary([]))


def test_profit_factor_is_null_when_trades_won_and_none_lost(user: Caller) -> None:
    s = symbol()
    for exit_price in ("110", "100"):  # a win of 100 and a breakeven
        close(user, open_position(user, symbol=s)["id"], exit_price=exit_price)

    response = user.http.get("/portfolio/summary")
    summary = decoded(response)

    assert '"profit_factor":null' in response.text.replace(" ", "")
    assert summary["profit_factor"] is None
    assert summary["by_symbol"][s]["profit_factor"] is None
    assert summary["total_realized_pnl"] == 100
    assert_summary(summary, expected_summary(listed(user)))


def test_profit_factor_is_winnings_over_losses(user: Caller) -> None:
    s = symbol()
    close(user, open_position(user, symbol=s)["id"], exit_price="101")  # +10
    close(user, open_position(user, symbol=s)["id"], exit_price="97")  # -30

    summary = summary_of(user)

    assert summary["profit_factor"] == Decimal("0.333333")  # 10 / 30, to six places
    assert_summary(summary, expected_summary(listed(user)))


def test_a_breakeven_trade_counts_in_the_win_rate_denominator(user: Caller) -> None:
    s = symbol()
    close(user, open_position(user, symbol=s)["id"], exit_price="100.5")  # win
    close(user, open_position(user, symbol=s, side="short")["id"], exit_price="99")  # win
    close(user, open_position(user, symbol=s)["id"], exit_price="100")  # breakeven

    summary = summary_of(user)

    assert (summary["closed_trades"], summary["winning_trades"]) == (3, 2)
    assert summary["win_rate"] == Decimal("66.666667")  # 2/3, half-even to six places
    assert summary["profit_factor"] is None  # nothing lost
    assert_summary(summary, expected_summary(listed(user)))


def test_a_cancelled_pending_order_is_not_a_trade(user: Caller) -> None:
    s = symbol()
    close(user, open_position(user, symbol=s)["id"], exit_price="99")  # a loss of 10
    cancelled = close(user, open_position(user, symbol=s, status="pending")["id"])
    assert cancelled["status"] == "closed"

    summary = summary_of(user)

    assert summary["closed_positions"] == 2
    assert summary["closed_trades"] == 1
    assert summary["win_rate"] == 0
    assert summary["profit_factor"] == 0  # nothing won
    assert summary["total_realized_pnl"] == -10
    assert_summary(summary, expected_summary(listed(user)))


def test_short_exposure_is_negative_and_gross_adds_its_magnitude(user: Caller) -> None:
    long_symbol, short_symbol = symbol(), symbol()
    open_position(user, symbol=long_symbol, quantity=10, entry_price=100)
    short = open_position(user, symbol=short_symbol, side="short", quantity=5, entry_price=50)
    mark(user, short["id"], 60)

    summary = summary_of(user)

    assert summary["long_exposure"] == 1000
    assert summary["short_exposure"] == -300
    assert summary["net_exposure"] == 700
    assert summary["gross_exposure"] == 1300
    assert summary["total_market_value"] == 1300
    assert summary["total_unrealized_pnl"] == -50  # (60 - 50) x -5
    assert summary["unpriced_positions"] == 1
    assert (summary["long_positions"], summary["short_positions"]) == (1, 1)
    assert summary["largest_position_pct"] == Decimal("76.923077")  # 1000 / 1300
    assert summary["by_symbol"][short_symbol]["short_exposure"] == -300
    assert summary["by_symbol"][short_symbol]["gross_exposure"] == 300
    assert_summary(summary, expected_summary(listed(user)))


def test_realized_pnl_of_partial_closes_of_open_positions_is_counted(user: Caller) -> None:
    s = symbol()
    long = open_position(user, symbol=s, quantity=10, entry_price=100, strategy="swing")
    short = open_position(user, symbol=s, side="short", quantity=4, entry_price=100)
    close(user, long["id"], exit_price="110", quantity="4")  # +40
    close(user, short["id"], exit_price="101.5", quantity="1")  # -1.5

    summary = summary_of(user)

    assert summary["open_positions"] == 2
    assert summary["closed_positions"] == summary["closed_trades"] == 0
    assert summary["total_realized_pnl"] == Decimal("38.5")
    assert summary["total_pnl"] == Decimal("38.5")  # unpriced: unrealized is 0
    assert summary["total_market_value"] == 600 + 300
    assert summary["by_strategy"]["swing"]["total_realized_pnl"] == 40
    assert summary["by_strategy"][NO_STRATEGY]["total_realized_pnl"] == Decimal("-1.5")
    assert_summary(summary, expected_summary(listed(user)))


def test_stop_and_target_proximity_is_two_percent_of_the_mark_inclusive(user: Caller) -> None:
    # (side, stop, target, mark or None for unpriced) -> (at risk, near target); entry 100.
    cases = {
        ("long", "98", "102", None): (1, 1),  # exactly 2 % of the mark away: inclusive
        ("short", "102", "98", None): (1, 1),
        ("long", "97.99999999", "102.00000001", None): (0, 0),  # just outside
        ("short", "102.00000001", "97.99999999", None): (0, 0),
        ("long", "50", "150", "40"): (1, 0),  # stop hit: mark <= stop
        ("long", "50", "150", "50"): (1, 0),
        ("long", "50", "150", "150"): (0, 1),  # target hit: mark >= target
        ("long", "50", "150", "160"): (0, 1),
        ("short", "150", "50", "150"): (1, 0),  # stop hit: mark >= stop
        ("short", "150", "50", "160"): (1, 0),
        ("short", "150", "50", "50"): (0, 1),  # target hit: mark <= target
        ("short", "150", "50", "40"): (0, 1),
        ("long", "50", "105", "103"): (0, 1),  # 105 - 103 = 2 <= 103 x 2 % = 2.06
        ("long", "99", "150", "101"): (1, 0),  # 101 - 99 = 2 <= 2.02
        ("short", "105", "50", "103"): (1, 0),  # 105 - 103 = 2 <= 2.06
        # The band is 2 % of the mark, not of the entry (which would be 2).
        ("long", "95", "150", "97"): (0, 0),  # 97 - 95 = 2 > 1.94
        ("short", "150", "97", "99"): (0, 0),  # 99 - 97 = 2 > 1.98
    }
    symbols = {}
    for (side, stop, target, price), _ in cases.items():
        symbols[(side, stop, target, price)] = s = symbol()
        position = open_position(
            user, symbol=s, side=side, entry_price=100, stop_loss=stop, take_profit=target
        )
        if price is not None:
            mark(user, position["id"], price)

    summary = summary_of(user)

    for case, (at_risk, near_target) in cases.items():
        group = summary["by_symbol"][symbols[case]]
        assert (group["positions_at_risk"], group["positions_near_target"]) == (
            at_risk,
            near_target,
        ), case
    assert summary["positions_at_risk"] == sum(a for a, _ in cases.values())
    assert summary["positions_near_target"] == sum(n for _, n in cases.values())
    assert_summary(summary, expected_summary(listed(user)))


def test_proximity_is_exact_for_large_prices(user: Caller) -> None:
    # A PostgreSQL numeric division (`mark * 2 / 100`) rounds to 8 places at these magnitudes.
    # mark 6000000000.00000075: the band is exactly 120000000.000000015. The levels are
    # 120000000.00000002 away: outside the band, neither at risk nor near its target.
    s = symbol()
    price = Decimal("6000000000.00000075")
    distance = Decimal("120000000.00000002")
    open_position(
        user,
        symbol=s,
        quantity=1,
        entry_price=price,
        stop_loss=price - distance,
        take_profit=price + distance,
    )

    summary = summary_of(user)

    assert_summary(summary, expected_summary(listed(user)))
    assert (summary["positions_at_risk"], summary["positions_near_target"]) == (0, 0)


def test_admin_sees_a_users_figures_with_owner(
    user: Caller, admin: Caller, other_user: Caller
) -> None:
    s = symbol()
    close(user, open_position(user, symbol=s, strategy="momentum")["id"], exit_price="104")
    open_position(user, symbol=s, side="short", quantity="2.5", entry_price="80.25")
    open_position(other_user, symbol=s, quantity=1000, entry_price=1)  # someone else's

    own = summary_of(user)
    seen_by_admin = summary_of(admin, owner=user.subject)

    assert_summary(seen_by_admin, expected_summary(listed(user)))
    assert {k: v for k, v in seen_by_admin.items() if k != "calculated_at"} == {
        k: v for k, v in own.items() if k != "calculated_at"
    }
    assert seen_by_admin["total_positions"] == 2
    # The whole book, without owner: at least both users' positions.
    assert summary_of(admin)["total_positions"] >= 3
    # A user may not look at someone else's figures.
    assert (
        user.http.get("/portfolio/summary", params={"owner": other_user.subject}).status_code == 403
    )


def test_the_summary_says_when_it_was_calculated(user: Caller) -> None:
    before = datetime.now(UTC)
    summary = summary_of(user)
    after = datetime.now(UTC)

    calculated_at = datetime.fromisoformat(summary["calculated_at"])
    assert calculated_at.tzinfo is not None
    assert before - timedelta(seconds=5) <= calculated_at <= after + timedelta(seconds=5)


def test_the_summary_says_up_to_which_event_it_reflects(user: Caller, admin: Caller) -> None:
    s = symbol()
    open_position(user, symbol=s)
    recorded = market_prices(admin, {s: 101})

    summary = summary_of(user)

    later = market_prices(admin, {s: 102})

    assert isinstance(summary["as_of_position"], int)
    assert recorded["position"] <= summary["as_of_position"] < later["position"]
    assert summary["total_unrealized_pnl"] == 10  # the figures include the price at that event


def test_figures_carry_no_float_artefacts(user: Caller, admin: Caller) -> None:
    s = symbol()
    for _ in range(3):
        position = open_position(user, symbol=s, quantity=1, entry_price="0.1")
        close(user, position["id"], exit_price="0.2", quantity="0.5")  # +0.05 each
    open_position(user, symbol=s, quantity=3, entry_price="0.1", strategy="x")
    market_prices(admin, {s: "0.2"})
    many_digits = symbol()  # 123456.78901234 x 0.12345678: 22 significant digits, no float has them
    open_position(user, symbol=many_digits, quantity="123456.78901234", entry_price="0.12345678")

    response = user.http.get("/portfolio/summary")
    summary = decoded(response)

    assert "e-" not in response.text.lower() and "e+" not in response.text.lower()
    assert "0000000000" not in response.text and "9999999999" not in response.text
    tenths = summary["by_symbol"][s]
    assert tenths["total_realized_pnl"] == Decimal("0.15")
    assert tenths["total_market_value"] == Decimal("0.9")  # 3 x 0.5 x 0.2 + 3 x 0.2
    assert summary["by_strategy"]["x"]["total_market_value"] == Decimal("0.6")
    assert tenths["total_unrealized_pnl"] == Decimal("0.45")  # 3 x 0.5 x 0.1 + 3 x 0.1
    assert tenths["total_pnl"] == Decimal("0.6")
    assert summary["by_symbol"][many_digits]["total_market_value"] == Decimal(
        "15241.5776406028766652"
    )
    assert_summary(summary, expected_summary(listed(user)))


def test_percentages_and_ratios_round_half_to_even_at_six_places(user: Caller) -> None:
    s = symbol()
    open_position(user, symbol=s, quantity=1, entry_price="8765432.25")
    open_position(user, symbol=s, quantity=1, entry_price="1234567.75")
    close(user, open_position(user, symbol=s, quantity=1)["id"], exit_price="101")  # +1
    close(user, open_position(user, symbol=s, quantity=4000)["id"], exit_price="0")  # -400000

    summary = summary_of(user)

    assert summary["total_market_value"] == 10_000_000
    assert summary["largest_position_pct"] == Decimal("87.654322")  # exactly 87.6543225
    assert summary["profit_factor"] == Decimal("0.000002")  # exactly 0.0000025
    assert summary["win_rate"] == 50
    assert_summary(summary, expected_summary(listed(user)))
