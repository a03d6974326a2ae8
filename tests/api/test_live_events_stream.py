"""`GET /events/stream` through a real socket: the log as Server-Sent Events, resumable exactly."""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from api.auth import Role
from api.routes import events_stream

from .conftest import Caller, token
from .support import assert_error, db_fetch, fresh_symbol

TIMEOUT = 10


class EventStream:
    """An open stream, read event by event."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self._next(), TIMEOUT)

    async def take(self, count: int) -> list[dict[str, Any]]:
        return [await self.next() for _ in range(count)]

    async def _next(self) -> dict[str, Any]:
        fields: dict[str, str] = {}
        async for line in self._lines:
            if not line:
                if "data" in fields:
                    return {
                        "id": int(fields["id"]),
                        "event": fields["event"],
                        "data": json.loads(fields["data"]),
                    }
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
        raise EOFError("the stream ended")


@asynccontextmanager
async def event_stream(service_url: str, bearer: str, headers: dict | None = None, **params):
    async with (
        httpx.AsyncClient(base_url=service_url, timeout=TIMEOUT) as http,
        http.stream(
            "GET",
            "/events/stream",
            params=params,
            headers={"Authorization": f"Bearer {bearer}", **(headers or {})},
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        yield EventStream(response)


def in_thread(call, *arguments, **keywords):
    return asyncio.to_thread(call, *arguments, **keywords)


async def test_without_a_token_the_stream_is_refused(anonymous: httpx.Client) -> None:
    assert_error(anonymous.get("/events/stream"), 401, "/events/stream")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"after": "-1"}, "after"),
        ({"after": "x"}, "after"),
        ({"after": "999999999"}, "after"),
        ({"type": "PositionOpened,Nonsense"}, "type"),
        ({"position_id": "not-a-uuid"}, "position_id"),
    ],
)
def test_bad_parameters_are_422_naming_the_field(
    user: Caller, params: dict[str, str], field: str
) -> None:
    body = assert_error(user.http.get("/events/stream", params=params), 422, "/events/stream")
    assert [e["loc"] for e in body["errors"]] == [["query", field]]


@pytest.mark.parametrize("last", ["999999999", "x"])
def test_a_bad_last_event_id_is_422_naming_the_header(user: Caller, last: str) -> None:
    answer = user.http.get("/events/stream", headers={"Last-Event-ID": last})
    body = assert_error(answer, 422, "/events/stream")
    assert [e["loc"] for e in body["errors"]] == [["header", "Last-Event-ID"]]


async def test_each_event_has_its_position_type_data_and_metadata(
    service_url: str, user: Caller, other_user: Caller
) -> None:
    async with (
        event_stream(service_url, token(user.subject)) as mine,
        event_stream(service_url, token("root", Role.ADMIN)) as everything,
    ):
        await in_thread(other_user.open)
        opened = await in_thread(
            lambda: user.http.post(
                "/positions",
                json={"symbol": "AAPL", "side": "long", "quantity": 1, "entry_price": 10},
                headers={"X-Correlation-ID": "corr-sse-1", "User-Agent": "desk/1"},
            ).json()
        )
        event = await mine.next()
        seen_by_admin = await everything.take(2)

    assert event["event"] == "PositionOpened"
    data = event["data"]
    assert data["position"] == event["id"]
    assert data["position_id"] == opened["id"] and data["version"] == 1
    assert data["data"]["symbol"] == "AAPL" and data["data"]["owner"] == user.subject
    assert data["metadata"]["actor"] == user.subject
    assert data["metadata"]["correlation_id"] == "corr-sse-1"
    assert data["metadata"]["user_agent"] == "desk/1" and data["metadata"]["client_ip"]
    assert seen_by_admin[1]["data"] == data
    assert seen_by_admin[0]["data"]["data"]["owner"] == other_user.subject


async def test_a_user_follows_only_its_own_positions_and_market_prices(
    service_url: str, user: Caller, other_user: Caller, admin: Caller
) -> None:
    symbol = fresh_symbol()
    async with event_stream(service_url, token(user.subject)) as stream:
        await in_thread(other_user.open, symbol=symbol)
        await in_thread(lambda: admin.http.post("/positions/update-prices", json={symbol: 5}))
        own = await in_thread(user.open, symbol=symbol)
        received = await stream.take(2)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stream.next(), 0.5)

    assert [e["event"] for e in received] == ["MarketPricesUpdated", "PositionOpened"]
    assert received[0]["data"]["data"]["prices"] == {symbol: 5}
    assert received[1]["data"]["position_id"] == own["id"]


async def test_filters_by_event_type_and_position(
    service_url: str, api_database: str, user: Caller
) -> None:
    first, second = user.open(), user.open()
    [opened] = await in_thread(
        db_fetch,
        api_database,
        "SELECT global_position FROM events WHERE stream_id = $1",
        f"position-{second['id']}",
    )
    after = opened["global_position"]
    async with (
        event_stream(
            service_url, token(user.subject), position_id=second["id"], after=after
        ) as by_id,
        event_stream(
            service_url, token(user.subject), type="StopLossMoved,NotesChanged"
        ) as by_type,
    ):
        for position in (first, second):
            await in_thread(
                lambda p=position: user.http.put(
                    f"/positions/{p['id']}", json={"notes": "x", "take_profit": 150}
                )
            )
            await in_thread(
                lambda p=position: user.http.post(f"/positions/{p['id']}/close?exit_price=120")
            )
        only_second = await by_id.take(3)
        notes = await by_type.take(2)

    assert {e["data"]["position_id"] for e in only_second} == {second["id"]}
    assert [e["event"] for e in only_second] == [
        "TakeProfitMoved",
        "NotesChanged",
        "PositionClosed",
    ]
    assert [(e["event"], e["data"]["position_id"]) for e in notes] == [
        ("NotesChanged", first["id"]),
        ("NotesChanged", second["id"]),
    ]


@pytest.mark.parametrize("how", ["Last-Event-ID", "after"])
async def test_resuming_gives_every_later_event_exactly_once(
    service_url: str, user: Caller, how: str
) -> None:
    position = user.open()
    bearer = token(user.subject)
    async with event_stream(service_url, bearer, position_id=position["id"]) as stream:
        for n in range(5):
            await in_thread(
                lambda n=n: user.http.put(f"/positions/{position['id']}", json={"notes": f"{n}"})
            )
        first_two = await stream.take(2)
    for n in range(5, 10):  # while disconnected
        user.http.put(f"/positions/{position['id']}", json={"notes": f"{n}"})

    last = str(first_two[-1]["id"])
    resume = {"headers": {"Last-Event-ID": last}} if how == "Last-Event-ID" else {"after": last}
    async with event_stream(service_url, bearer, position_id=position["id"], **resume) as stream:
        rest = await stream.take(8)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stream.next(), 0.5)

    notes = [e["data"]["data"]["notes"] for e in first_two + rest]
    assert notes == [str(n) for n in range(10)]
    ids = [e["id"] for e in first_two + rest]
    assert len(set(ids)) == 10


async def test_a_quiet_stream_gets_keep_alives_and_then_its_events(
    service_url: str, user: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Comment lines keep proxies from closing a quiet stream, and never stand in an event's way."""
    monkeypatch.setattr(events_stream, "KEEPALIVE_SECONDS", 0.2)
    position = user.open()
    async with event_stream(service_url, token(user.subject), position_id=position["id"]) as stream:
        lines = stream.response.aiter_lines()

        async def until(wanted: str) -> None:
            async for line in lines:
                if line.startswith(wanted):
                    return

        await asyncio.wait_for(until("retry:"), TIMEOUT)
        for _ in range(2):
            await asyncio.wait_for(until(": keep-alive"), TIMEOUT)
        await in_thread(lambda: user.http.put(f"/positions/{position['id']}", json={"notes": "k"}))
        await asyncio.wait_for(until("event: NotesChanged"), TIMEOUT)
        await asyncio.wait_for(until(": keep-alive"), TIMEOUT)
