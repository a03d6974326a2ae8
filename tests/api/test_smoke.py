"""The service answers over its socket: a first position end to end."""

from __future__ import annotations

from .conftest import Caller


def test_a_position_opened_is_read_back_with_its_figures(user: Caller) -> None:
    created = user.open(symbol="msft", quantity="2.5", entry_price="0.1")

    fetched = user.http.get(f"/positions/{created['id']}")

    assert fetched.status_code == 200
    assert fetched.headers["etag"] == '"1"'
    body = fetched.json()
    assert body == created
    assert (body["symbol"], body["quantity"], body["entry_price"]) == ("MSFT", 2.5, 0.1)
    assert body["current_price"] is None
    assert body["market_value"] == 0.25  # unpriced: quantity x entry price
