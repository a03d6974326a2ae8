"""The audit trail through the API: history, the admin's search, and reads as of the past."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from .conftest import Caller
from .support import assert_error, fresh_symbol

# -- history --------------------------------------------------------------------------------------


def test_history_lists_every_event_with_who_when_and_from_where(user: Caller) -> None:
    requests = [
        (
            "post",
            "/positions",
            {"symbol": "AAPL", "side": "long", "quantity": 5, "entry_price": 10},
        ),
        ("put", "/positions/{id}", {"stop_loss": 9, "notes": "tight"}),
        ("post", "/positions/{id}/close?exit_price=12", None),
    ]
    position_id = None
    for n, (method, path, body) in enumerate(requests):
        response = user.http.request(
            method,
            path.format(id=position_id),
            json=body,
            headers={
                "X-Correlation-ID": f"audit-{n}",
                "User-Agent": f"desk/{n}",
                "Idempotency-Key": f"key-{uuid.uuid4()}-{n}",
            },
        )
        assert response.status_code in {200, 201}, response.text
        position_id = position_id or response.json()["id"]

    history = user.http.get(f"/positions/{position_id}/history")

    assert history.status_code == 200
    entries = history.json()
    assert [e["type"] for e in entries] == [
        "PositionOpened",
        "StopLossMoved",
        "NotesChanged",
        "PositionClosed",
    ]
    assert [e["version"] for e in entries] == [1, 2, 3, 4]
    assert [e["position"] for e in entries] == sorted(e["position"] for e in entries)
    made_by = [0, 1, 1, 2]  # the request behind each event
    for entry, n in zip(entries, made_by, strict=True):
        assert entry["actor"] == user.subject and entry["role"] == "user"
        assert entry["correlation_id"] == f"audit-{n}"
        assert entry["user_agent"] == f"desk/{n}"
        assert entry["client_ip"] == "127.0.0.1"
        assert entry["idempotency_key"].endswith(f"-{n}")
        uuid.UUID(entry["causation_id"])
        assert datetime.fromisoformat(entry["recorded_at"]).utcoffset().total_seconds() == 0
    assert entries[1]["data"]["stop_loss"] == 9 and entries[2]["data"]["notes"] == "tight"
    # One request, one causation: the events it recorded share it.
    assert entries[1]["causation_id"] == entries[2]["causation_id"] != entries[0]["causation_id"]


def test_history_is_for_the_owner_admins_and_services(
    user: Caller, other_user: Caller, admin: Caller, service: Caller
) -> None:
    position = user.open()
    path = f"/positions/{position['id']}/history"

    assert_error(other_user.http.get(path), 404, path)
    assert service.http.get(path).status_code == 200
    assert admin.http.get(path).status_code == 200
    missing = f"/positions/{uuid.uuid4()}/history"
    assert_error(admin.http.get(missing), 404, missing)
    assert_error(admin.http.get("/positions/nope/history"), 404, "/positions/nope/history")


def test_a_deleted_position_keeps_its_history(user: Caller, admin: Caller) -> None:
    position = user.open()
    assert admin.http.delete(f"/positions/{position['id']}").status_code == 204

    assert user.http.get(f"/positions/{position['id']}").status_code == 404
    history = user.http.get(f"/positions/{position['id']}/history").json()
    assert [e["type"] for e in history] == ["PositionOpened", "PositionDeleted"]
    assert history[1]["actor"] == admin.subject and history[1]["role"] == "admin"


# -- the admin's search ---------------------------------------------------------------------------


def _all_pages(admin: Caller, **params: Any) -> list[dict]:
    events, cursor = [], None
    while True:
        page = admin.http.get(
            "/audit/events", params={**params, **({"cursor": cursor} if cursor else {})}
        )
        assert page.status_code == 200, page.text
        events += page.json()["events"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return events


def test_only_admins_search_the_audit_trail(user: Caller, service: Caller) -> None:
    assert_error(user.http.get("/audit/events"), 403, "/audit/events")
    assert_error(service.http.get("/audit/events"), 403, "/audit/events")


def test_the_search_filters_and_pages_with_a_cursor(
    user: Caller, other_user: Caller, admin: Caller
) -> None:
    first = user.open()
    other_user.open()
    before_second = datetime.now(UTC).isoformat()
    time.sleep(0.01)
    second = user.open()
    for n in range(3):
        user.http.put(f"/positions/{second['id']}", json={"notes": f"n{n}"})
    admin.http.put(f"/positions/{first['id']}", json={"notes": "by admin"})

    everything = _all_pages(admin, owner=user.subject, limit=2, order="oldest")
    newest_first = _all_pages(admin, owner=user.subject, limit=3)
    by_admin = _all_pages(admin, owner=user.subject, actor=admin.subject)
    notes_of_second = _all_pages(admin, position_id=second["id"], type="NotesChanged")
    since = _all_pages(admin, owner=user.subject, **{"from": before_second}, order="oldest")
    positions = [e["position"] for e in everything]
    window = _all_pages(
        admin, owner=user.subject, from_position=positions[1], to_position=positions[3]
    )

    assert [e["type"] for e in everything] == ["PositionOpened"] * 2 + ["NotesChanged"] * 4
    assert {e["data"].get("owner") for e in everything[:2]} == {user.subject}
    assert newest_first == everything[::-1]
    assert [(e["actor"], e["data"]["notes"]) for e in by_admin] == [(admin.subject, "by admin")]
    assert [e["data"]["notes"] for e in notes_of_second] == ["n2", "n1", "n0"]
    assert since == everything[1:]
    assert [e["position"] for e in window] == positions[3:0:-1]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"cursor": "not-ours"}, "cursor"),
        ({"type": "Whatever"}, "type"),
        ({"from": "2026-01-01T00:00:00"}, "from"),
        ({"order": "sideways"}, "order"),
        ({"limit": "0"}, "limit"),
    ],
)
def test_bad_search_parameters_are_422(admin: Caller, params: dict, field: str) -> None:
    body = assert_error(admin.http.get("/audit/events", params=params), 422, "/audit/events")
    assert [e["loc"] for e in body["errors"]] == [["query", field]]


# -- as of a moment, or of an event position ------------------------------------------------------


def _observe(caller: Caller, position_id: str) -> dict[str, Any]:
    """What the caller sees now: its position, its book and its summary."""
    summary = caller.http.get("/portfolio/summary").json()
    summary.pop("calculated_at")
    return {
        "position": caller.http.get(f"/positions/{position_id}").json(),
        "book": caller.http.get("/positions").json(),
        "summary": summary,
    }


def _asked(caller: Caller, position_id: str, **point: Any) -> dict[str, Any]:
    """The same, asked of the past."""
    position = caller.http.get(f"/positions/{position_id}", params=point)
    book = caller.http.get("/positions", params=point)
    summary = caller.http.get("/portfolio/summary", params=point)
    for response in (position, book, summary):
        assert response.status_code == 200, response.text
        assert int(response.headers["x-as-of-position"]) > 0
    figures = summary.json()
    figures.pop("calculated_at")
    return {"position": position.json(), "book": book.json(), "summary": figures}


def test_the_state_asked_as_of_a_moment_is_the_state_seen_then(user: Caller, admin: Caller) -> None:
    symbol = fresh_symbol()
    opened = user.open(symbol=symbol, stop_loss=90, take_profit=130)
    path = f"/positions/{opened['id']}"
    steps = [
        lambda: admin.http.post("/positions/update-prices", json={symbol: 104}),
        lambda: user.http.put(path, json={"notes": "watching", "stop_loss": 95}),
        lambda: user.open(symbol=symbol, side="short", entry_price=105),
        lambda: admin.http.post("/positions/update-prices", json={symbol: 108}),
        lambda: user.http.post(f"{path}/close?exit_price=110&quantity=4"),
        lambda: user.http.put(path, json={"current_price": 111}),
        lambda: user.http.post(f"{path}/close?exit_price=112"),
    ]
    seen: list[tuple[str, dict]] = [(datetime.now(UTC).isoformat(), _observe(user, opened["id"]))]
    for step in steps:
        time.sleep(0.005)
        response = step()
        assert isinstance(response, dict) or response.status_code == 200, response.text
        time.sleep(0.005)
        seen.append((datetime.now(UTC).isoformat(), _observe(user, opened["id"])))

    for moment, observed in seen:
        assert _asked(user, opened["id"], as_of=moment) == observed, moment


def test_the_state_at_an_event_position_is_the_state_after_that_event(user: Caller) -> None:
    position = user.open()
    path = f"/positions/{position['id']}"
    user.http.put(path, json={"notes": "first"})
    after_note = _observe(user, position["id"])
    user.http.put(path, json={"notes": "second"})
    noted = user.http.get(f"{path}/history").json()[1]["position"]

    assert _asked(user, position["id"], at=noted) == after_note


def test_before_a_position_existed_it_is_not_found(user: Caller) -> None:
    moment = datetime.now(UTC).isoformat()
    time.sleep(0.01)
    position = user.open()

    then = user.http.get(f"/positions/{position['id']}", params={"as_of": moment})
    assert_error(then, 404, f"/positions/{position['id']}")
    assert user.http.get("/positions", params={"as_of": moment}).json() == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"as_of": "2026-01-01T00:00:00"}, "as_of"),
        ({"as_of": "yesterday"}, "as_of"),
        ({"at": "-1"}, "at"),
        ({"at": "999999999"}, "at"),
        ({"at": "1", "as_of": "2026-01-01T00:00:00Z"}, "at"),
    ],
)
@pytest.mark.parametrize("path", ["/positions", "/portfolio/summary"])
def test_bad_points_in_time_are_422(
    user: Caller, params: dict, field: str, path: str, anonymous: httpx.Client
) -> None:
    body = assert_error(user.http.get(path, params=params), 422, path)
    assert [e["loc"] for e in body["errors"]] == [["query", field]]
