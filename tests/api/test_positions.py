"""Every position endpoint over a real socket, against docs/api.md ("Positions", "Errors and
validation") and docs/domain.md.

Each test acts as fresh callers, so it sees only its own positions. Market prices are global: a
test about prices uses a symbol no other test uses.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from .conftest import Caller
from .support import assert_error, event_types, events_of, exact, fresh_symbol

CONTRACT_FIELDS = {
    "id",
    "owner",
    "symbol",
    "side",
    "quantity",
    "entry_price",
    "current_price",
    "stop_loss",
    "take_profit",
    "strategy",
    "notes",
    "status",
    "market_value",
    "unrealized_pnl",
    "unrealized_pnl_pct",
    "realized_pnl",
    "exit_price",
    "opened_at",
    "closed_at",
    "created_at",
    "updated_at",
    "version",
}


# -- helpers -------------------------------------------------------------------------------------


def utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert moment.utcoffset() == timedelta(0), f"{text} is not UTC"
    return moment


def error_locs(response: httpx.Response) -> list[list]:
    assert response.status_code == 422, response.text
    return [error["loc"] for error in response.json()["errors"]]


def levels_and_labels(position: dict) -> tuple:
    return (position["stop_loss"], position["take_profit"], position["notes"], position["strategy"])


def close(caller: Caller, position_id: str, **params: object) -> httpx.Response:
    return caller.http.post(f"/positions/{position_id}/close", params=params)


def set_prices(caller: Caller, prices: dict[str, object]) -> httpx.Response:
    return caller.http.post("/positions/update-prices", json=prices)


VALID = {"symbol": "AAPL", "side": "long", "quantity": 10, "entry_price": 100}


# -- POST /positions -----------------------------------------------------------------------------


def test_create_answers_201_with_location_etag_and_every_field(user: Caller) -> None:
    symbol = fresh_symbol() + ".B"
    response = user.http.post(
        "/positions",
        json={
            "symbol": symbol.lower(),
            "side": "long",
            "quantity": "12.5",
            "entry_price": "100.25",
            "stop_loss": 90,
            "take_profit": "120.5",
            "strategy": "momentum",
            "notes": "first",
        },
    )

    assert response.status_code == 201, response.text
    body = exact(response)
    assert CONTRACT_FIELDS <= body.keys()
    assert response.headers["location"] == f"/positions/{body['id']}"
    assert response.headers["etag"] == '"1"'
    uuid.UUID(body["id"])
    assert body["owner"] == user.subject
    assert body["symbol"] == symbol
    assert body["side"] == "long"
    assert body["quantity"] == Decimal("12.5")
    assert body["entry_price"] == Decimal("100.25")
    assert body["stop_loss"] == 90 and body["take_profit"] == Decimal("120.5")
    assert (body["strategy"], body["notes"]) == ("momentum", "first")
    assert body["status"] == "open"
    assert body["current_price"] is None
    assert body["market_value"] == Decimal("1253.125")
    assert body["unrealized_pnl"] == 0
    assert body["realized_pnl"] == 0
    assert body["exit_price"] is None
    assert body["closed_at"] is None
    assert body["version"] == 1
    created, opened = utc(body["created_at"]), utc(body["opened_at"])
    assert abs(created - datetime.now(created.tzinfo)) < timedelta(minutes=1)
    assert opened == created and utc(body["updated_at"]) == created

    fetched = user.http.get(response.headers["location"])
    assert fetched.status_code == 200
    assert exact(fetched) == body


def test_create_keeps_every_digit_given_as_string_or_number(user: Caller) -> None:
    response = user.http.post(
        "/positions",
        content=b'{"symbol": "%s", "side": "short", "quantity": 0.00000001,'
        b' "entry_price": "123456789.12345678"}' % fresh_symbol().encode(),
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 201, response.text
    assert '"quantity":0.00000001' in response.text
    assert '"entry_price":123456789.12345678' in response.text
    body = exact(response)
    assert body["market_value"] == Decimal("1.2345678912345678")


def test_a_pending_order_is_created_pending_and_not_yet_opened(user: Caller) -> None:
    body = user.open(status="pending")

    assert body["status"] == "pending"
    assert body["opened_at"] is None
    assert body["realized_pnl"] == 0


@pytest.mark.parametrize("symbol", ["A", "BTC/USD", "ES-F", "BRK.B", "A" * 15, "x1.y-z/9"])
def test_symbols_of_the_allowed_alphabet_are_accepted_upper_cased(
    user: Caller, symbol: str
) -> None:
    assert user.open(symbol=symbol)["symbol"] == symbol.upper()


def test_limits_are_inclusive(user: Caller) -> None:
    body = user.open(
        strategy="s" * 64, notes="n" * 2000, quantity="0.00000001", entry_price="99.99999999"
    )

    assert len(body["strategy"]) == 64 and len(body["notes"]) == 2000
    assert exact(user.http.get(f"/positions/{body['id']}"))["entry_price"] == Decimal("99.99999999")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"symbol": ""}, "symbol"),
        ({"symbol": "A" * 16}, "symbol"),
        ({"symbol": "AA PL"}, "symbol"),
        ({"symbol": "AAPL$"}, "symbol"),
        ({"symbol": "ÄPL"}, "symbol"),
        ({"quantity": 0}, "quantity"),
        ({"quantity": -1}, "quantity"),
        ({"quantity": "0.000000001"}, "quantity"),
        ({"quantity": "NaN"}, "quantity"),
        ({"quantity": "Infinity"}, "quantity"),
        ({"side": "flat"}, "side"),
        ({"side": "LONG"}, "side"),
        ({"entry_price": 0}, "entry_price"),
        ({"entry_price": -100}, "entry_price"),
        ({"entry_price": "100.123456789"}, "entry_price"),
        ({"stop_loss": 0}, "stop_loss"),
        ({"stop_loss": -5}, "stop_loss"),
        ({"take_profit": 0}, "take_profit"),
        ({"take_profit": "120.000000001"}, "take_profit"),
        ({"strategy": "s" * 65}, "strategy"),
        ({"notes": "n" * 2001}, "notes"),
        ({"status": "closed"}, "status"),
        ({"colour": "red"}, "colour"),
        ({"quantity": "ten"}, "quantity"),
        ({"quantity": [10]}, "quantity"),
        ({"quantity": {"value": 10}}, "quantity"),
        ({"quantity": True}, "quantity"),
        ({"entry_price": None}, "entry_price"),
        ({"symbol": 123}, "symbol"),
        ({"side": 1}, "side"),
        ({"notes": 5}, "notes"),
        ({"strategy": ["a"]}, "strategy"),
    ],
)
def test_a_bad_field_is_refused_with_its_location(user: Caller, changes: dict, field: str) -> None:
    response = user.http.post("/positions", json={**VALID, **changes})

    body = assert_error(response, 422, "/positions")
    assert ["body", field] in error_locs(response), body
    assert all(isinstance(e["msg"], str) and e["msg"] for e in body["errors"])
    assert user.http.get("/positions").json() == []


@pytest.mark.parametrize("missing", ["symbol", "side", "quantity", "entry_price"])
def test_a_missing_required_field_is_refused(user: Caller, missing: str) -> None:
    body = {k: v for k, v in VALID.items() if k != missing}

    assert ["body", missing] in error_locs(user.http.post("/positions", json=body))


def test_every_field_error_is_answered_at_once(user: Caller) -> None:
    response = user.http.post(
        "/positions",
        json={
            "symbol": "NOT A SYMBOL!",
            "side": "sideways",
            "quantity": -3,
            "entry_price": "0",
            "stop_loss": "1.123456789",
            "take_profit": -1,
            "strategy": "s" * 65,
            "notes": "n" * 2001,
            "leverage": 10,
            "status": "filled",
        },
    )

    locs = error_locs(response)
    for field in (
        "symbol",
        "side",
        "quantity",
        "entry_price",
        "stop_loss",
        "take_profit",
        "strategy",
        "notes",
        "leverage",
        "status",
    ):
        assert ["body", field] in locs, locs
    assert user.http.get("/positions").json() == []


@pytest.mark.parametrize(
    ("side", "stop_loss", "take_profit"),
    [
        ("long", 110, 90),  # both on the wrong side
        ("long", 100, 100),  # equal to the entry is not below/above it
        ("short", 90, 110),
        ("short", 100, 100),
    ],
)
def test_stop_and_target_on_the_wrong_side_of_the_entry_are_refused(
    user: Caller, side: str, stop_loss: int, take_profit: int
) -> None:
    response = user.http.post(
        "/positions",
        json={
            **VALID,
            "side": side,
            "stop_loss": stop_loss,
            "take_profit": take_profit,
        },
    )

    locs = error_locs(response)
    assert ["body", "stop_loss"] in locs and ["body", "take_profit"] in locs
    assert user.http.get("/positions").json() == []


@pytest.mark.parametrize(
    ("side", "stop_loss", "take_profit"), [("long", 95, 105), ("short", 105, 95)]
)
def test_stop_and_target_on_the_right_side_are_accepted(
    user: Caller, side: str, stop_loss: int, take_profit: int
) -> None:
    body = user.open(side=side, stop_loss=stop_loss, take_profit=take_profit)

    assert (body["stop_loss"], body["take_profit"]) == (stop_loss, take_profit)


def test_side_errors_are_answered_together_with_field_errors(user: Caller) -> None:
    response = user.http.post(
        "/positions",
        json={
            **VALID,
            "quantity": -1,
            "stop_loss": 110,
            "take_profit": 90,
        },
    )

    locs = error_locs(response)
    assert ["body", "quantity"] in locs
    assert ["body", "stop_loss"] in locs and ["body", "take_profit"] in locs


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"not json",
        b'{"symbol": "AAPL",}',
        b"\xff\xfe",
        b"[1, 2]",
        b'"AAPL"',
        b"42",
        b"null",
    ],
)
def test_a_body_that_is_not_a_json_object_is_refused(user: Caller, content: bytes) -> None:
    response = user.http.post(
        "/positions", content=content, headers={"content-type": "application/json"}
    )

    assert_error(response, 422, "/positions")
    assert ["body"] in error_locs(response)


# -- GET /positions/{id} -------------------------------------------------------------------------


def test_a_position_is_read_with_its_version_as_etag(user: Caller) -> None:
    created = user.open()
    user.http.put(f"/positions/{created['id']}", json={"notes": "changed"})

    response = user.http.get(f"/positions/{created['id']}")

    assert response.status_code == 200
    assert response.headers["etag"] == '"2"'
    assert response.json()["version"] == 2 and response.json()["notes"] == "changed"


def test_another_users_position_does_not_exist_for_a_user(
    user: Caller, other_user: Caller, admin: Caller, service: Caller
) -> None:
    created = user.open()
    path = f"/positions/{created['id']}"

    assert_error(other_user.http.get(path), 404, path)
    assert admin.http.get(path).status_code == 200
    assert service.http.get(path).status_code == 200


@pytest.mark.parametrize("position_id", [str(uuid.uuid4()), "not-a-uuid", "123"])
def test_an_unknown_position_answers_404(user: Caller, position_id: str) -> None:
    assert_error(user.http.get(f"/positions/{position_id}"), 404, f"/positions/{position_id}")


# -- GET /positions ------------------------------------------------------------------------------


def test_the_list_is_newest_first_with_the_total_count(user: Caller, other_user: Caller) -> None:
    ids = [user.open(notes=str(n))["id"] for n in range(3)]
    other_user.open()

    response = user.http.get("/positions")

    assert response.status_code == 200
    assert [p["id"] for p in response.json()] == ids[::-1]
    assert response.headers["x-total-count"] == "3"
    assert all(p["owner"] == user.subject for p in response.json())


def test_the_list_filters_by_status_symbol_strategy_and_side(user: Caller) -> None:
    a = user.open(symbol="AAA", side="long", strategy="alpha")
    b = user.open(symbol="BBB", side="short", strategy="beta")
    c = user.open(symbol="AAA", side="short", strategy="beta", status="pending")
    d = user.open(symbol="BBB", side="long", strategy="alpha")
    assert close(user, d["id"], exit_price=100).status_code == 200

    def ids(**params: str) -> tuple[set[str], str]:
        response = user.http.get("/positions", params=params)
        assert response.status_code == 200, response.text
        return {p["id"] for p in response.json()}, response.headers["x-total-count"]

    assert ids(status="open") == ({a["id"], b["id"]}, "2")
    assert ids(status="pending") == ({c["id"]}, "1")
    assert ids(status="closed") == ({d["id"]}, "1")
    assert ids(symbol="AAA") == ({a["id"], c["id"]}, "2")
    assert ids(symbol="aaa") == ({a["id"], c["id"]}, "2")
    assert ids(strategy="beta") == ({b["id"], c["id"]}, "2")
    assert ids(side="long") == ({a["id"], d["id"]}, "2")
    assert ids(side="short", symbol="AAA") == ({c["id"]}, "1")
    assert ids(symbol="ZZZ") == (set(), "0")


def test_the_list_pages_with_limit_and_offset(user: Caller) -> None:
    ids = [user.open()["id"] for _ in range(5)][::-1]

    def page(limit: int, offset: int) -> list[str]:
        response = user.http.get("/positions", params={"limit": limit, "offset": offset})
        assert response.status_code == 200
        assert response.headers["x-total-count"] == "5"
        return [p["id"] for p in response.json()]

    assert page(2, 0) == ids[:2]
    assert page(2, 2) == ids[2:4]
    assert page(2, 4) == ids[4:]
    assert page(1000, 0) == ids
    assert page(1, 1) == ids[1:2]
    assert page(10, 5) == []


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": "x"}, "offset"),
        ({"status": "archived"}, "status"),
        ({"side": "flat"}, "side"),
    ],
)
def test_bad_list_parameters_answer_422(user: Caller, params: dict, name: str) -> None:
    response = user.http.get("/positions", params=params)

    assert_error(response, 422, "/positions")
    assert ["query", name] in error_locs(response)


# -- PUT /positions/{id} -------------------------------------------------------------------------


def test_put_changes_the_amendable_fields_and_counts_versions(user: Caller) -> None:
    created = user.open(
        symbol=fresh_symbol(), stop_loss=90, take_profit=120, strategy="a", notes="n"
    )
    path = f"/positions/{created['id']}"

    response = user.http.put(
        path,
        json={
            "current_price": "105.5",
            "stop_loss": 95,
            "take_profit": "130",
            "notes": "m",
            "strategy": "b",
        },
    )

    assert response.status_code == 200, response.text
    body = exact(response)
    assert body["current_price"] == Decimal("105.5")
    assert levels_and_labels(body) == (95, 130, "m", "b")
    assert body["version"] > created["version"]
    assert response.headers["etag"] == f'"{body["version"]}"'
    assert body["market_value"] == Decimal("1055")
    assert body["unrealized_pnl"] == Decimal("55")
    assert exact(user.http.get(path)) == body


def test_put_with_null_clears_and_leaves_what_is_not_given(user: Caller) -> None:
    created = user.open(stop_loss=90, take_profit=120, strategy="a", notes="n")
    path = f"/positions/{created['id']}"

    body = user.http.put(path, json={"stop_loss": None, "notes": None}).json()
    assert levels_and_labels(body) == (None, 120, None, "a")

    body = user.http.put(path, json={"take_profit": None, "strategy": None}).json()
    assert levels_and_labels(body) == (None, None, None, None)
    assert body["version"] == 5  # one event per change


def test_put_with_the_current_version_in_if_match_succeeds(user: Caller) -> None:
    created = user.open()
    path = f"/positions/{created['id']}"

    first = user.http.put(path, json={"notes": "a"}, headers={"If-Match": '"1"'})
    assert first.status_code == 200 and first.json()["version"] == 2

    stale = user.http.put(path, json={"notes": "b"}, headers={"If-Match": '"1"'})
    assert_error(stale, 412, path)
    assert stale.headers["etag"] == '"2"'
    assert user.http.get(path).json()["notes"] == "a"

    second = user.http.put(path, json={"notes": "b"}, headers={"If-Match": first.headers["etag"]})
    assert second.status_code == 200 and second.json()["version"] == 3


@pytest.mark.parametrize("if_match", ['"abc"', "three", '"1.5"'])
def test_a_malformed_if_match_answers_422(user: Caller, if_match: str) -> None:
    created = user.open()
    path = f"/positions/{created['id']}"

    response = user.http.put(path, json={"notes": "x"}, headers={"If-Match": if_match})

    assert_error(response, 422, path)
    assert ["header", "If-Match"] in error_locs(response)
    assert user.http.get(path).json()["notes"] is None


def test_if_match_star_and_weak_etags_are_understood(user: Caller) -> None:
    created = user.open()
    path = f"/positions/{created['id']}"

    assert user.http.put(path, json={"notes": "a"}, headers={"If-Match": "*"}).status_code == 200
    assert (
        user.http.put(path, json={"notes": "b"}, headers={"If-Match": 'W/"2"'}).status_code == 200
    )
    assert (
        user.http.put(path, json={"notes": "c"}, headers={"If-Match": 'W/"2"'}).status_code == 412
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"stop_loss": 110}, "stop_loss"),
        ({"take_profit": 90}, "take_profit"),
        ({"current_price": 0}, "current_price"),
        ({"current_price": None}, "current_price"),
        ({"current_price": "1.000000001"}, "current_price"),
        ({"notes": "n" * 2001}, "notes"),
        ({"strategy": "s" * 65}, "strategy"),
        ({"quantity": 5}, "quantity"),
        ({"symbol": "MSFT"}, "symbol"),
    ],
)
def test_put_refuses_bad_changes(
    user: Caller, changes: dict, field: str, api_database: str
) -> None:
    created = user.open()
    path = f"/positions/{created['id']}"

    response = user.http.put(path, json=changes)

    assert_error(response, 422, path)
    assert ["body", field] in error_locs(response)
    assert user.http.get(path).json()["version"] == 1
    assert event_types(api_database, created["id"]) == ["PositionOpened"]


@pytest.mark.parametrize("if_match", [None, '"1"', '"2"'])
def test_put_on_an_unknown_or_deleted_position_answers_404(
    user: Caller, admin: Caller, if_match: str | None
) -> None:
    deleted = user.open()
    assert admin.http.delete(f"/positions/{deleted['id']}").status_code == 204
    headers = {} if if_match is None else {"If-Match": if_match}

    for position_id in (str(uuid.uuid4()), deleted["id"]):
        path = f"/positions/{position_id}"
        assert_error(user.http.put(path, json={"notes": "x"}, headers=headers), 404, path)
        assert_error(admin.http.put(path, json={"notes": "x"}, headers=headers), 404, path)
        for action, kwargs in (
            ("close", {"params": {"exit_price": 1}}),
            ("open", {}),
            ("increase", {"json": {"quantity": 1, "price": 1}}),
        ):
            assert_error(
                user.http.post(f"{path}/{action}", headers=headers, **kwargs),
                404,
                f"{path}/{action}",
            )
        assert_error(admin.http.delete(path, headers=headers), 404, path)


def test_put_on_another_users_position_answers_404(user: Caller, other_user: Caller) -> None:
    created = user.open()

    response = other_user.http.put(f"/positions/{created['id']}", json={"notes": "mine"})

    assert_error(response, 404, f"/positions/{created['id']}")
    assert user.http.get(f"/positions/{created['id']}").json()["notes"] is None


# -- POST /positions/{id}/open -------------------------------------------------------------------


def test_open_fills_a_pending_position_at_the_price_given(user: Caller, api_database: str) -> None:
    created = user.open(status="pending", entry_price=100, stop_loss=90)

    response = user.http.post(f"/positions/{created['id']}/open", json={"entry_price": "99.5"})

    assert response.status_code == 200, response.text
    body = exact(response)
    assert body["status"] == "open"
    assert body["entry_price"] == Decimal("99.5")
    assert utc(body["opened_at"]) >= utc(body["created_at"])
    assert body["version"] == 2
    assert event_types(api_database, created["id"]) == ["PositionOpened", "PositionFilled"]


def test_open_without_a_price_fills_at_the_ordered_price(user: Caller) -> None:
    created = user.open(status="pending", entry_price="101.25")

    response = user.http.post(f"/positions/{created['id']}/open")

    assert response.status_code == 200, response.text
    assert exact(response)["entry_price"] == Decimal("101.25")
    assert response.json()["status"] == "open"


def test_open_takes_the_price_as_a_query_parameter_too(user: Caller) -> None:
    created = user.open(status="pending")

    response = user.http.post(f"/positions/{created['id']}/open", params={"entry_price": "98"})

    assert response.status_code == 200, response.text
    assert response.json()["entry_price"] == 98


def test_open_refuses_a_fill_price_that_breaks_the_stop(user: Caller) -> None:
    created = user.open(status="pending", entry_price=100, stop_loss=90)
    path = f"/positions/{created['id']}/open"

    response = user.http.post(path, json={"entry_price": 85})

    assert_error(response, 422, path)
    assert user.http.get(f"/positions/{created['id']}").json()["status"] == "pending"


@pytest.mark.parametrize("body", [{"entry_price": 0}, {"entry_price": -1}, {"price": 10}])
def test_open_refuses_a_bad_body(user: Caller, body: dict) -> None:
    created = user.open(status="pending")

    assert user.http.post(f"/positions/{created['id']}/open", json=body).status_code == 422
    assert user.http.get(f"/positions/{created['id']}").json()["status"] == "pending"


def test_open_on_a_position_that_is_not_pending_answers_409(user: Caller) -> None:
    opened = user.open()
    closed = user.open()
    assert close(user, closed["id"], exit_price=100).status_code == 200

    for position in (opened, closed):
        path = f"/positions/{position['id']}/open"
        assert_error(user.http.post(path, json={"entry_price": 100}), 409, path)


# -- POST /positions/{id}/increase ---------------------------------------------------------------


def test_increase_averages_the_entry_price(user: Caller, api_database: str) -> None:
    created = user.open(quantity=10, entry_price=100)
    path = f"/positions/{created['id']}/increase"

    response = user.http.post(path, json={"quantity": 30, "price": "104"})

    assert response.status_code == 200, response.text
    body = exact(response)
    assert body["quantity"] == 40
    assert body["entry_price"] == 103  # (10*100 + 30*104) / 40
    assert body["version"] == 2
    assert event_types(api_database, created["id"]) == ["PositionOpened", "PositionIncreased"]

    body = exact(user.http.post(path, json={"quantity": "0.5", "price": "0.1"}))
    # (40*103 + 0.5*0.1) / 40.5 = 4120.05 / 40.5 = 101.7296296296...: eight places, half to even
    assert body["quantity"] == Decimal("40.5")
    assert body["entry_price"] == Decimal("101.72962963")


def test_a_close_after_an_increase_realizes_against_the_average(user: Caller) -> None:
    created = user.open(side="short", quantity=2, entry_price=50)
    user.http.post(f"/positions/{created['id']}/increase", json={"quantity": 2, "price": 60})

    body = exact(close(user, created["id"], exit_price=40))

    assert body["realized_pnl"] == 60  # 4 * (55 - 40)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"quantity": 0, "price": 10}, "quantity"),
        ({"quantity": 1, "price": -1}, "price"),
        ({"quantity": 1}, "price"),
        ({"quantity": 1, "price": 10, "side": "short"}, "side"),
    ],
)
def test_increase_refuses_a_bad_body(user: Caller, body: dict, field: str) -> None:
    created = user.open()

    response = user.http.post(f"/positions/{created['id']}/increase", json=body)

    assert ["body", field] in error_locs(response)
    assert user.http.get(f"/positions/{created['id']}").json()["quantity"] == 10


def test_increase_on_a_pending_or_closed_position_answers_409(user: Caller) -> None:
    pending = user.open(status="pending")
    closed = user.open()
    close(user, closed["id"], exit_price=100)

    for position in (pending, closed):
        path = f"/positions/{position['id']}/increase"
        assert_error(user.http.post(path, json={"quantity": 1, "price": 100}), 409, path)


# -- POST /positions/{id}/close ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "exit_price", "realized"),
    [
        ("long", "110", "100"),
        ("long", "95.5", "-45"),
        ("short", "90", "100"),
        ("short", "110.25", "-102.5"),
        ("long", "0", "-1000"),
        ("short", "100", "0"),
    ],
)
def test_close_realizes_the_pnl_of_its_side(
    user: Caller, api_database: str, side: str, exit_price: str, realized: str
) -> None:
    created = user.open(side=side, quantity=10, entry_price=100)

    response = close(user, created["id"], exit_price=exit_price)

    assert response.status_code == 200, response.text
    body = exact(response)
    assert body["status"] == "closed"
    assert body["realized_pnl"] == Decimal(realized)
    assert body["exit_price"] == Decimal(exit_price)
    assert body["quantity"] == 0
    assert body["unrealized_pnl"] == 0
    assert body["unrealized_pnl_pct"] is None  # nothing held: the cost is 0
    assert body["market_value"] == 0
    assert utc(body["closed_at"]) >= utc(body["opened_at"])
    assert event_types(api_database, created["id"]) == ["PositionOpened", "PositionClosed"]


def test_partial_closes_accumulate_and_the_exit_price_is_their_weighted_average(
    user: Caller, api_database: str
) -> None:
    created = user.open(side="long", quantity=10, entry_price=100)

    first = exact(close(user, created["id"], exit_price=110, quantity=4))
    assert first["status"] == "open"
    assert first["quantity"] == 6
    assert first["entry_price"] == 100
    assert first["realized_pnl"] == 40
    assert first["exit_price"] == 110  # the average of every closing price so far

    second = exact(close(user, created["id"], exit_price=95, quantity="1.5"))
    assert second["quantity"] == Decimal("4.5")
    assert second["realized_pnl"] == Decimal("32.5")
    # (4*110 + 1.5*95) / 5.5 = 582.5 / 5.5, to 8 places
    assert second["exit_price"] == Decimal("105.90909091")

    last = exact(close(user, created["id"], exit_price="97"))
    assert last["status"] == "closed"
    assert last["quantity"] == 0
    assert last["realized_pnl"] == Decimal("19")  # 40 - 7.5 - 13.5
    # (4*110 + 1.5*95 + 4.5*97) / 10 = (440 + 142.5 + 436.5) / 10
    assert last["exit_price"] == Decimal("101.9")
    assert event_types(api_database, created["id"]) == [
        "PositionOpened",
        "PositionReduced",
        "PositionReduced",
        "PositionClosed",
    ]


def test_closing_exactly_what_is_open_closes_the_position(user: Caller) -> None:
    created = user.open(side="short", quantity="2.5", entry_price=100)

    body = exact(close(user, created["id"], exit_price=80, quantity="2.5"))

    assert body["status"] == "closed" and body["realized_pnl"] == 50 and body["exit_price"] == 80


def test_close_without_a_price_uses_the_market_price(user: Caller, admin: Caller) -> None:
    symbol = fresh_symbol()
    long = user.open(symbol=symbol, side="long", quantity=10, entry_price=100)
    short = user.open(symbol=symbol, side="short", quantity=4, entry_price=100)
    assert set_prices(admin, {symbol: "112.5"}).status_code == 200

    long_closed = exact(close(user, long["id"]))
    short_closed = exact(close(user, short["id"], quantity=1))

    assert long_closed["status"] == "closed"
    assert long_closed["exit_price"] == Decimal("112.5")
    assert long_closed["realized_pnl"] == 125
    assert short_closed["quantity"] == 3
    assert short_closed["realized_pnl"] == Decimal("-12.5")


def test_close_without_any_price_answers_409(user: Caller, api_database: str) -> None:
    created = user.open(symbol=fresh_symbol())
    path = f"/positions/{created['id']}/close"

    assert_error(user.http.post(path), 409, path)
    assert user.http.get(f"/positions/{created['id']}").json()["status"] == "open"
    assert event_types(api_database, created["id"]) == ["PositionOpened"]


def test_a_position_filled_after_a_market_price_closes_at_that_price(
    user: Caller, admin: Caller
) -> None:
    symbol = fresh_symbol()
    pending = user.open(symbol=symbol, status="pending", entry_price=100)
    assert set_prices(admin, {symbol: 120}).status_code == 200
    filled = user.http.post(f"/positions/{pending['id']}/open")
    assert filled.status_code == 200

    assert filled.json()["current_price"] == 120
    response = close(user, pending["id"])
    assert response.status_code == 200, response.text
    assert response.json()["exit_price"] == 120


def test_closing_more_than_is_open_answers_422(user: Caller, api_database: str) -> None:
    created = user.open(quantity=10)
    path = f"/positions/{created['id']}/close"

    response = user.http.post(path, params={"exit_price": 100, "quantity": "10.00000001"})

    assert_error(response, 422, path)
    assert any(loc[-1] == "quantity" for loc in error_locs(response))
    assert user.http.get(f"/positions/{created['id']}").json()["quantity"] == 10
    assert event_types(api_database, created["id"]) == ["PositionOpened"]


def test_closing_more_than_is_open_names_the_query_parameter(user: Caller) -> None:
    created = user.open(quantity=1)

    response = close(user, created["id"], exit_price=100, quantity=2)

    assert error_locs(response) == [["query", "quantity"]]


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"exit_price": -1}, "exit_price"),
        ({"exit_price": "abc"}, "exit_price"),
        ({"exit_price": "NaN"}, "exit_price"),
        ({"exit_price": "1.000000001"}, "exit_price"),
        ({"exit_price": 100, "quantity": 0}, "quantity"),
        ({"exit_price": 100, "quantity": -1}, "quantity"),
        ({"exit_price": 100, "quantity": "x"}, "quantity"),
    ],
)
def test_close_refuses_bad_parameters(user: Caller, params: dict, name: str) -> None:
    created = user.open()
    path = f"/positions/{created['id']}/close"

    response = user.http.post(path, params=params)

    assert_error(response, 422, path)
    assert ["query", name] in error_locs(response)
    assert user.http.get(f"/positions/{created['id']}").json()["status"] == "open"


def test_a_closed_position_can_be_neither_closed_nor_changed(
    user: Caller, api_database: str
) -> None:
    created = user.open(stop_loss=90)
    position = f"/positions/{created['id']}"
    assert close(user, created["id"], exit_price=105).status_code == 200
    closed = user.http.get(position).json()

    assert_error(
        user.http.post(f"{position}/close", params={"exit_price": 100}), 409, f"{position}/close"
    )
    assert_error(user.http.post(f"{position}/close"), 409, f"{position}/close")
    assert_error(user.http.put(position, json={"notes": "late"}), 409, position)
    assert_error(user.http.put(position, json={"stop_loss": None}), 409, position)
    assert_error(user.http.put(position, json={"current_price": 1}), 409, position)
    assert user.http.get(position).json() == closed
    assert event_types(api_database, created["id"]) == ["PositionOpened", "PositionClosed"]


def test_closing_a_pending_position_cancels_it(user: Caller, api_database: str) -> None:
    created = user.open(status="pending", entry_price=100)

    response = close(user, created["id"], exit_price=150)

    assert response.status_code == 200, response.text
    body = exact(response)
    assert body["status"] == "closed"
    assert body["realized_pnl"] == 0
    assert body["exit_price"] is None
    assert body["opened_at"] is None
    assert body["closed_at"] is not None
    assert event_types(api_database, created["id"]) == ["PositionOpened", "PositionCancelled"]


def test_closing_a_pending_position_needs_no_price(user: Caller) -> None:
    created = user.open(symbol=fresh_symbol(), status="pending")

    response = close(user, created["id"])

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "closed" and response.json()["realized_pnl"] == 0


# -- DELETE /positions/{id} ----------------------------------------------------------------------


def test_delete_by_an_admin_removes_the_position_but_keeps_its_history(
    user: Caller, admin: Caller, api_database: str
) -> None:
    created = user.open()
    kept = user.open()
    path = f"/positions/{created['id']}"

    response = admin.http.delete(path)

    assert response.status_code == 204
    assert response.content == b""
    assert_error(user.http.get(path), 404, path)
    assert_error(admin.http.get(path), 404, path)
    assert [p["id"] for p in user.http.get("/positions").json()] == [kept["id"]]
    assert user.http.get("/positions").headers["x-total-count"] == "1"
    assert event_types(api_database, created["id"]) == ["PositionOpened", "PositionDeleted"]
    deleted = events_of(api_database, created["id"])[-1]
    assert deleted["metadata"]["actor"] == admin.subject
    assert_error(admin.http.delete(path), 404, path)
    assert_error(user.http.put(path, json={"notes": "x"}), 404, path)
    assert_error(user.http.post(f"{path}/close", params={"exit_price": 1}), 404, f"{path}/close")


def test_only_an_admin_may_delete(user: Caller, service: Caller, api_database: str) -> None:
    created = user.open()
    path = f"/positions/{created['id']}"

    assert_error(user.http.delete(path), 403, path)
    assert_error(service.http.delete(path), 403, path)
    assert user.http.get(path).status_code == 200
    assert event_types(api_database, created["id"]) == ["PositionOpened"]


# -- POST /positions/update-prices and the figures -----------------------------------------------


def test_update_prices_remarks_every_open_position_of_the_symbols(
    user: Caller, other_user: Caller, admin: Caller
) -> None:
    symbol, untouched = fresh_symbol(), fresh_symbol()
    long = user.open(symbol=symbol, side="long", quantity=10, entry_price=100)
    short = other_user.open(symbol=symbol, side="short", quantity=4, entry_price="50")
    pending = user.open(symbol=symbol, status="pending")
    closed = user.open(symbol=symbol)
    close(user, closed["id"], exit_price=100)
    elsewhere = user.open(symbol=untouched)

    response = set_prices(admin, {symbol.lower(): "80.5"})

    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["symbols"] == answer["symbols_updated"] == [symbol]
    assert answer["positions_updated"] == 2

    body = exact(user.http.get(f"/positions/{long['id']}"))
    assert body["current_price"] == Decimal("80.5")
    assert body["market_value"] == Decimal("805")
    assert body["unrealized_pnl"] == Decimal("-195")  # (80.5 - 100) * 10
    assert body["unrealized_pnl_pct"] == Decimal("-19.5")  # -195 / 1000 * 100

    body = exact(other_user.http.get(f"/positions/{short['id']}"))
    assert body["current_price"] == Decimal("80.5")
    assert body["market_value"] == Decimal("322")  # a size, never negative
    assert body["unrealized_pnl"] == Decimal("-122")  # (80.5 - 50) * -4
    assert body["unrealized_pnl_pct"] == Decimal("-61")

    assert user.http.get(f"/positions/{pending['id']}").json()["status"] == "pending"
    closed_body = exact(user.http.get(f"/positions/{closed['id']}"))
    assert closed_body["unrealized_pnl"] == 0 and closed_body["market_value"] == 0
    assert user.http.get(f"/positions/{elsewhere['id']}").json()["current_price"] is None


def test_a_service_may_post_prices_and_a_user_may_not(service: Caller, user: Caller) -> None:
    symbol = fresh_symbol()
    position = user.open(symbol=symbol)

    assert_error(set_prices(user, {symbol: 1}), 403, "/positions/update-prices")
    assert user.http.get(f"/positions/{position['id']}").json()["current_price"] is None

    response = set_prices(service, {symbol: 101})
    assert response.status_code == 200, response.text
    assert response.json()["positions_updated"] == 1
    assert user.http.get(f"/positions/{position['id']}").json()["current_price"] == 101


def test_a_position_opened_after_a_price_is_priced_at_once(user: Caller, admin: Caller) -> None:
    symbol = fresh_symbol()
    set_prices(admin, {symbol: 110})

    body = exact(user.http.post("/positions", json={**VALID, "symbol": symbol}))

    assert body["current_price"] == 110
    assert body["market_value"] == 1100
    assert body["unrealized_pnl"] == 100
    assert body["unrealized_pnl_pct"] == 10


def test_the_latest_price_wins_over_a_mark_and_a_mark_over_an_older_price(
    user: Caller, admin: Caller
) -> None:
    symbol = fresh_symbol()
    created = user.open(symbol=symbol)
    path = f"/positions/{created['id']}"
    set_prices(admin, {symbol: 110})

    assert user.http.put(path, json={"current_price": 105}).json()["current_price"] == 105
    set_prices(admin, {symbol: 120})
    assert user.http.get(path).json()["current_price"] == 120


@pytest.mark.parametrize(
    "prices",
    [
        {},
        {"AAPL": 0},
        {"AAPL": -1},
        {"AAPL": "abc"},
        {"NOT VALID": 1},
        {"AAPL": "1.000000001"},
        {"AAPL": None},
        {"AAPL": 1, "aapl": 2},
    ],
)
def test_update_prices_refuses_bad_prices(admin: Caller, prices: dict) -> None:
    response = set_prices(admin, prices)

    assert_error(response, 422, "/positions/update-prices")
    assert response.json()["errors"]


def test_update_prices_refuses_more_than_1000_symbols(admin: Caller) -> None:
    response = set_prices(admin, {f"S{n}": 1 for n in range(1001)})

    assert_error(response, 422, "/positions/update-prices")


def test_an_unpriced_position_is_valued_at_its_entry(user: Caller) -> None:
    body = exact(
        user.http.post(
            "/positions",
            json={
                **VALID,
                "symbol": fresh_symbol(),
                "side": "short",
                "quantity": 3,
                "entry_price": "7.25",
            },
        )
    )

    assert body["current_price"] is None
    assert body["market_value"] == Decimal("21.75")
    assert body["unrealized_pnl"] == 0
    assert body["unrealized_pnl_pct"] == 0


def test_figures_never_show_a_binary_float_artefact(user: Caller, admin: Caller) -> None:
    symbol = fresh_symbol()
    created = user.http.post(
        "/positions",
        json={
            "symbol": symbol,
            "side": "long",
            "quantity": 3,
            "entry_price": "0.1",
        },
    )
    assert '"market_value":0.3,' in created.text
    path = f"/positions/{created.json()['id']}"

    set_prices(admin, {symbol: "0.2"})
    marked = user.http.get(path)
    assert '"market_value":0.6,' in marked.text
    assert '"unrealized_pnl":0.3,' in marked.text

    closed = close(user, created.json()["id"], exit_price="0.3", quantity="1.5")
    assert '"realized_pnl":0.3,' in closed.text  # 1.5 * (0.3 - 0.1)
    assert '"quantity":1.5,' in closed.text
    for text in (created.text, marked.text, closed.text):
        for number in re.findall(r'":(-?[0-9][0-9.eE+-]*)[,}]', text):
            assert re.fullmatch(r"-?\d+(\.\d+)?", number), number
            assert "00000000" not in number and "99999999" not in number, number


def test_numbers_given_with_an_exponent_come_back_in_plain_notation(user: Caller) -> None:
    response = user.http.post(
        "/positions",
        content=b'{"symbol": "%s", "side": "long", "quantity": 1e2, "entry_price": "2.5E-3",'
        b' "take_profit": 1000000000000}' % fresh_symbol().encode(),
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 201, response.text
    assert '"quantity":100,' in response.text
    assert '"entry_price":0.0025,' in response.text
    assert '"take_profit":1000000000000,' in response.text
    assert '"market_value":0.25,' in response.text


def test_realized_pnl_is_exact(user: Caller) -> None:
    created = user.open(quantity=3, entry_price="0.1")

    body = close(user, created["id"], exit_price="0.2")

    assert '"realized_pnl":0.3,' in body.text
    assert exact(body)["realized_pnl"] == Decimal("0.3")


# -- POST /positions/bulk-update -----------------------------------------------------------------


def test_a_bulk_update_answers_each_id_on_its_own(
    user: Caller, other_user: Caller, api_database: str
) -> None:
    good = user.open()
    also_good = user.open(status="pending")
    closed = user.open()
    close(user, closed["id"], exit_price=100)
    foreign = other_user.open()
    missing = str(uuid.uuid4())

    response = user.http.post(
        "/positions/bulk-update",
        json={
            "position_ids": [good["id"], closed["id"], foreign["id"], missing, also_good["id"]],
            "updates": {"notes": "bulk", "strategy": "s"},
        },
    )

    assert response.status_code == 200, response.text
    answer = response.json()
    assert [p["id"] for p in answer["updated"]] == [good["id"], also_good["id"]]
    assert all(p["notes"] == "bulk" and p["strategy"] == "s" for p in answer["updated"])
    failed = {f["id"]: f["status"] for f in answer["failed"]}
    assert failed == {closed["id"]: 409, foreign["id"]: 404, missing: 404}
    assert all(f["detail"] for f in answer["failed"])
    assert user.http.get(f"/positions/{good['id']}").json()["notes"] == "bulk"
    assert other_user.http.get(f"/positions/{foreign['id']}").json()["notes"] is None
    assert event_types(api_database, foreign["id"]) == ["PositionOpened"]


def test_an_admin_bulk_updates_the_positions_of_any_owner(
    user: Caller, other_user: Caller, admin: Caller
) -> None:
    mine, theirs = user.open(), other_user.open()

    response = admin.http.post(
        "/positions/bulk-update",
        json={
            "position_ids": [mine["id"], theirs["id"]],
            "updates": {"notes": "desk"},
            "atomic": True,
        },
    )

    assert response.status_code == 200, response.text
    assert user.http.get(f"/positions/{mine['id']}").json()["notes"] == "desk"
    assert other_user.http.get(f"/positions/{theirs['id']}").json()["notes"] == "desk"


def test_a_bulk_update_checks_levels_against_each_position(user: Caller) -> None:
    low = user.open(entry_price=50)
    high = user.open(entry_price=150)

    response = user.http.post(
        "/positions/bulk-update",
        json={
            "position_ids": [low["id"], high["id"]],
            "updates": {"stop_loss": 100},
        },
    )

    assert response.status_code == 200, response.text
    assert [p["id"] for p in response.json()["updated"]] == [high["id"]]
    assert [(f["id"], f["status"]) for f in response.json()["failed"]] == [(low["id"], 422)]


def test_an_atomic_bulk_update_applies_to_all(user: Caller) -> None:
    ids = [user.open()["id"] for _ in range(3)]

    response = user.http.post(
        "/positions/bulk-update",
        json={
            "position_ids": ids,
            "updates": {"take_profit": 150},
            "atomic": True,
        },
    )

    assert response.status_code == 200, response.text
    assert [p["id"] for p in response.json()["updated"]] == ids
    assert response.json()["failed"] == []
    assert all(user.http.get(f"/positions/{i}").json()["take_profit"] == 150 for i in ids)


def test_an_atomic_bulk_update_with_one_bad_id_changes_nothing(
    user: Caller, other_user: Caller, api_database: str
) -> None:
    good = [user.open()["id"] for _ in range(2)]
    closed = user.open()
    close(user, closed["id"], exit_price=100)
    foreign = other_user.open()["id"]

    for bad in (closed["id"], foreign, str(uuid.uuid4())):
        response = user.http.post(
            "/positions/bulk-update",
            json={
                "position_ids": [good[0], bad, good[1]],
                "updates": {"notes": "all"},
                "atomic": True,
            },
        )

        assert_error(response, 409, "/positions/bulk-update")
        assert [f["id"] for f in response.json()["failed"]] == [bad]
        for position_id in good:
            assert user.http.get(f"/positions/{position_id}").json()["notes"] is None
            assert event_types(api_database, position_id) == ["PositionOpened"]


@pytest.mark.parametrize("atomic", [False, True])
def test_a_bulk_update_of_more_than_1000_ids_answers_422(user: Caller, atomic: bool) -> None:
    created = user.open()
    ids = [created["id"]] + [str(uuid.uuid4()) for _ in range(1000)]

    response = user.http.post(
        "/positions/bulk-update",
        json={
            "position_ids": ids,
            "updates": {"notes": "x"},
            "atomic": atomic,
        },
    )

    assert_error(response, 422, "/positions/bulk-update")
    assert ["body", "position_ids"] in error_locs(response)
    assert user.http.get(f"/positions/{created['id']}").json()["notes"] is None


@pytest.mark.parametrize(
    "body",
    [
        {"position_ids": [], "updates": {"quantity": 1}},
        {"position_ids": ["nope"], "updates": {"notes": "x"}},
        {"updates": {"notes": "x"}},
        {"position_ids": [], "updates": {"notes": "x"}, "extra": 1},
        {"position_ids": [], "updates": {"notes": "x"}, "atomic": "maybe"},
    ],
)
def test_a_bad_bulk_body_answers_422(user: Caller, body: dict) -> None:
    assert_error(user.http.post("/positions/bulk-update", json=body), 422, "/positions/bulk-update")


def test_exactly_1000_ids_are_accepted(user: Caller) -> None:
    created = user.open()
    ids = [created["id"]] + [str(uuid.uuid4()) for _ in range(999)]

    response = user.http.post(
        "/positions/bulk-update", json={"position_ids": ids, "updates": {"notes": "x"}}
    )

    assert response.status_code == 200, response.text
    assert len(response.json()["updated"]) == 1 and len(response.json()["failed"]) == 999


# -- errors --------------------------------------------------------------------------------------


def test_error_bodies_carry_the_correlation_id_sent(user: Caller) -> None:
    created = user.open()
    close(user, created["id"], exit_price=100)
    cases = [
        ("GET", f"/positions/{uuid.uuid4()}", None, 404),
        ("POST", f"/positions/{created['id']}/close", None, 409),
        ("POST", "/positions", {"symbol": "AAPL"}, 422),
    ]
    for method, path, body, status in cases:
        correlation = f"corr-{uuid.uuid4().hex}"
        response = user.http.request(
            method, path, json=body, headers={"X-Correlation-ID": correlation}
        )

        error = assert_error(response, status, path)
        assert response.headers["x-correlation-id"] == correlation
        assert error["correlation_id"] == correlation


def test_x_request_id_is_taken_as_the_correlation_id(user: Caller) -> None:
    path = f"/positions/{uuid.uuid4()}"

    response = user.http.get(path, headers={"X-Request-ID": "req-42"})

    assert response.headers["x-correlation-id"] == "req-42"
    assert assert_error(response, 404, path)["correlation_id"] == "req-42"


def test_a_correlation_id_is_made_when_none_is_sent(user: Caller) -> None:
    first = user.http.get(f"/positions/{uuid.uuid4()}")
    second = user.http.get(f"/positions/{uuid.uuid4()}")

    assert first.headers["x-correlation-id"] != second.headers["x-correlation-id"]
    assert first.json()["correlation_id"] == first.headers["x-correlation-id"]
    assert re.fullmatch("[0-9a-f]{32}", first.headers["x-correlation-id"])  # 128 random bits


def test_a_request_without_a_correlation_id_records_made_ids_with_its_events(
    user: Caller, api_database: str
) -> None:
    response = user.http.post("/positions", json=VALID)

    (event,) = events_of(api_database, response.json()["id"])
    made = event["metadata"]
    assert made["correlation_id"] == response.headers["x-correlation-id"]
    assert re.fullmatch("[0-9a-f]{32}", made["causation_id"])
    assert made["causation_id"] != made["correlation_id"]


def test_the_correlation_id_is_recorded_with_the_events(user: Caller, api_database: str) -> None:
    correlation = f"corr-{uuid.uuid4().hex}"

    response = user.http.post("/positions", json=VALID, headers={"X-Correlation-ID": correlation})

    assert response.headers["x-correlation-id"] == correlation
    (event,) = events_of(api_database, response.json()["id"])
    assert event["metadata"]["correlation_id"] == correlation
    assert event["metadata"]["actor"] == user.subject
