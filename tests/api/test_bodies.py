"""Request bodies as a client gets them wrong: each mistake named where it is."""

from __future__ import annotations

import uuid

import pytest

from .conftest import Caller
from .support import assert_error, fresh_symbol


@pytest.mark.parametrize(
    ("path", "raw", "loc"),
    [
        ("/positions/update-prices", '{"AAPL": 155.5, "AAPL": 156}', ["body", "AAPL"]),
        (
            "/positions",
            '{"symbol": "AAPL", "side": "long", "quantity": 1, "quantity": 5, "entry_price": 1}',
            ["body", "quantity"],
        ),
        (
            "/positions/bulk-update",
            '{"position_ids": [], "updates": {"notes": "a", "notes": "b"}}',
            ["body", "notes"],
        ),
    ],
    ids=["prices", "create", "nested"],
)
def test_a_key_given_twice_is_refused_naming_it(
    admin: Caller, path: str, raw: str, loc: list[str]
) -> None:
    answer = admin.http.post(path, content=raw, headers={"Content-Type": "application/json"})
    body = assert_error(answer, 422, path)
    assert body["errors"] == [{"loc": loc, "msg": "is given more than once"}]


def test_the_same_key_in_two_objects_is_not_a_duplicate(user: Caller) -> None:
    position = user.open(symbol=fresh_symbol())
    raw = f'{{"position_ids": ["{position["id"]}"], "updates": {{"atomic": 1}}, "atomic": true}}'
    answer = user.http.post(
        "/positions/bulk-update", content=raw, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 422  # "atomic" is no field of an update: refused for that only
    assert [e["loc"] for e in answer.json()["errors"]] == [["updates", "atomic"]]


def test_each_malformed_id_of_a_bulk_update_is_named_by_its_index(user: Caller) -> None:
    ids = [str(uuid.uuid4()), str(uuid.uuid4()), "nope", str(uuid.uuid4()), 7]
    answer = user.http.post(
        "/positions/bulk-update", json={"position_ids": ids, "updates": {"notes": "x"}}
    )
    body = assert_error(answer, 422, "/positions/bulk-update")
    assert [e["loc"] for e in body["errors"]] == [
        ["body", "position_ids", 2],
        ["body", "position_ids", 4],
    ]
