"""Failure paths of commands: races, retries and Idempotency-Key (docs/api.md, "Idempotency
and concurrency").

Races are real: each racer has its own connection, opened beforehand, and they all send at once
(a barrier releases them together). Outcomes are checked on the answers and on the `events` table.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal

import asyncpg
import httpx
import pytest

from commands.idempotency import forget_expired
from eventstore import create_pool

from .conftest import Caller
from .support import db_execute, db_fetch, event_types, events_of, fresh_symbol

Request = Callable[[httpx.Client], httpx.Response]


# -- helpers -------------------------------------------------------------------------------------


def events_with_key(dsn: str, key: str) -> list[asyncpg.Record]:
    return db_fetch(
        dsn,
        "SELECT stream_id, event_type FROM events WHERE metadata->>'idempotency_key' = $1",
        key,
    )


def race(caller: Caller, requests: list[Request]) -> list[httpx.Response]:
    """Send every request at the same moment, each on a connection of its own; answers in order."""
    clients = [
        httpx.Client(base_url=caller.http.base_url, headers=caller.http.headers, timeout=60)
        for _ in requests
    ]
    for client in clients:  # open the connections before the start
        client.get("/health/live")
    start = threading.Barrier(len(requests))
    answers: list[httpx.Response | BaseException | None] = [None] * len(requests)

    def run(index: int) -> None:
        start.wait()
        try:
            answers[index] = requests[index](clients[index])
        except BaseException as error:  # noqa: BLE001 - reported below
            answers[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for client in clients:
        client.close()
    for answer in answers:
        if not isinstance(answer, httpx.Response):
            raise AssertionError(f"a racer did not answer: {answer!r}")
    return answers  # type: ignore[return-value]


def key() -> str:
    return f"key-{uuid.uuid4()}"


BODY = {"symbol": "AAPL", "side": "long", "quantity": 10, "entry_price": 100}


# -- concurrent closes ---------------------------------------------------------------------------


@pytest.mark.parametrize("round_", range(5))
def test_two_concurrent_closes_close_once(user: Caller, api_database: str, round_: int) -> None:
    created = user.open()
    path = f"/positions/{created['id']}/close"

    answers = race(user, [lambda c: c.post(path, params={"exit_price": 110})] * 2)

    assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
    winner = next(a for a in answers if a.status_code == 200)
    loser = next(a for a in answers if a.status_code == 409)
    assert winner.json()["status"] == "closed" and winner.json()["realized_pnl"] == 100
    assert loser.json()["detail"]
    assert event_types(api_database, created["id"]) == ["PositionOpened", "PositionClosed"]
    assert user.http.get(f"/positions/{created['id']}").json()["realized_pnl"] == 100


def test_concurrent_closes_at_different_prices_realize_one_of_them(
    user: Caller, api_database: str
) -> None:
    created = user.open()
    path = f"/positions/{created['id']}/close"

    answers = race(
        user, [lambda c, p=p: c.post(path, params={"exit_price": p}) for p in (90, 110, 120)]
    )

    assert sorted(a.status_code for a in answers) == [200, 409, 409]
    winner = next(a for a in answers if a.status_code == 200).json()
    assert user.http.get(f"/positions/{created['id']}").json() == winner
    assert event_types(api_database, created["id"]).count("PositionClosed") == 1


def test_concurrent_partial_closes_never_close_more_than_is_open(
    user: Caller, api_database: str
) -> None:
    created = user.open(quantity=10)
    path = f"/positions/{created['id']}/close"

    answers = race(user, [lambda c: c.post(path, params={"exit_price": 100, "quantity": 6})] * 2)

    assert sorted(a.status_code for a in answers) == [200, 422], [a.text for a in answers]
    position = user.http.get(f"/positions/{created['id']}").json()
    assert position["quantity"] == 4 and position["status"] == "open"
    assert event_types(api_database, created["id"]) == ["PositionOpened", "PositionReduced"]


def test_a_close_racing_a_delete_leaves_a_deleted_position(
    user: Caller, admin: Caller, api_database: str
) -> None:
    created = user.open()
    path = f"/positions/{created['id']}"

    closing, deleting = race(
        admin,
        [
            lambda c: c.post(f"{path}/close", params={"exit_price": 100}),
            lambda c: c.delete(path),
        ],
    )

    assert deleting.status_code == 204
    assert closing.status_code in (200, 404), closing.text
    assert user.http.get(path).status_code == 404
    types = event_types(api_database, created["id"])
    assert types[-1] == "PositionDeleted"
    assert types.count("PositionClosed") <= 1
    if closing.status_code == 200:
        assert types == ["PositionOpened", "PositionClosed", "PositionDeleted"]
    # (A close recorded an instant before the delete may be answered 404: see the next test.)


def test_the_answer_to_a_close_racing_a_delete_always_agrees_with_the_log(
    user: Caller, admin: Caller, api_database: str
) -> None:
    """The answer is read in the command's own transaction: a close answered 200 is recorded
    (before the delete), a close answered 404 is not recorded at all."""
    for _ in range(12):
        created = user.open()
        path = f"/positions/{created['id']}"
        with ThreadPoolExecutor(2) as pool:
            closing = pool.submit(user.http.post, f"{path}/close", params={"exit_price": 100})
            deleting = pool.submit(admin.http.delete, path)
            closed, deleted = closing.result(), deleting.result()

        assert deleted.status_code == 204
        recorded = event_types(api_database, created["id"])
        if closed.status_code == 200:
            assert closed.json()["status"] == "closed"
            assert recorded == ["PositionOpened", "PositionClosed", "PositionDeleted"]
        else:
            assert closed.status_code == 404, closed.text
            assert recorded == ["PositionOpened", "PositionDeleted"]


# -- concurrent creates (recorded together: commands/group_commit.py) --------------------


def test_concurrent_creates_each_open_their_own_position_with_their_own_metadata(
    user: Caller, api_database: str
) -> None:
    symbol = fresh_symbol()
    requests = [
        lambda client, n=n: client.post(
            "/positions",
            json={**BODY, "symbol": symbol, "quantity": n, "notes": f"racer {n}"},
            headers={"X-Correlation-ID": f"create-{symbol}-{n}"},
        )
        for n in range(1, 17)
    ]

    answers = race(user, requests)

    assert [answer.status_code for answer in answers] == [201] * 16
    for n, answer in enumerate(answers, 1):
        body = answer.json()
        assert (body["quantity"], body["notes"], body["version"]) == (n, f"racer {n}", 1)
        assert answer.headers["location"] == f"/positions/{body['id']}"
        assert answer.headers["x-correlation-id"] == f"create-{symbol}-{n}"
        ((opened, metadata),) = [
            (e["data"], e["metadata"]) for e in events_of(api_database, body["id"])
        ]
        assert (opened["quantity"], opened["notes"]) == (n, f"racer {n}")
        assert metadata["correlation_id"] == f"create-{symbol}-{n}"
        assert metadata["actor"] == user.subject
        assert user.http.get(f"/positions/{body['id']}").json() == body
    assert len({answer.json()["id"] for answer in answers}) == 16


def test_a_create_the_domain_refuses_among_concurrent_ones_is_refused_alone(
    user: Caller, api_database: str
) -> None:
    symbol = fresh_symbol()
    good = {**BODY, "symbol": symbol}
    bad = {**good, "stop_loss": 150}  # above the entry of a long: refused by the domain
    requests = [
        lambda client, body=body: client.post("/positions", json=body)
        for body in (good, good, bad, good, good, bad, good, good)
    ]

    answers = race(user, requests)

    assert [answer.status_code for answer in answers] == [201, 201, 422, 201, 201, 422, 201, 201]
    for refused in (answers[2], answers[5]):
        assert [error["loc"] for error in refused.json()["errors"]] == [["body", "stop_loss"]]
    opened = db_fetch(
        api_database,
        "SELECT count(*) AS n FROM events WHERE event_type = 'PositionOpened' "
        "AND data->>'symbol' = $1",
        symbol,
    )
    assert opened[0]["n"] == 6


@contextmanager
def refused_rows(dsn: str, table: str, events: str) -> Iterator[str]:
    """A symbol whose rows of `table` the database refuses (a trigger), as a fault would."""
    symbol = fresh_symbol()
    db_execute(
        dsn,
        f"""
        CREATE FUNCTION refuse_{symbol}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'refused for the test'; END $$;
        CREATE TRIGGER refuse_{symbol} BEFORE {events} ON {table} FOR EACH ROW
        WHEN (NEW.symbol = '{symbol}') EXECUTE FUNCTION refuse_{symbol}();
        """,
    )
    try:
        yield symbol
    finally:
        db_execute(
            dsn, f"DROP TRIGGER refuse_{symbol} ON {table}; DROP FUNCTION refuse_{symbol}();"
        )


@pytest.fixture
def refused_symbol(api_database: str) -> Iterator[str]:
    with refused_rows(api_database, "positions", "INSERT") as symbol:
        yield symbol


@pytest.fixture
def refused_price(api_database: str) -> Iterator[str]:
    with refused_rows(api_database, "market_prices", "INSERT OR UPDATE") as symbol:
        yield symbol


def test_creates_sharing_a_transaction_the_database_refuses_are_recorded_alone(
    user: Caller, api_database: str, refused_symbol: str
) -> None:
    symbol = fresh_symbol()
    bodies = [{**BODY, "symbol": refused_symbol if n % 4 == 1 else symbol} for n in range(12)]
    requests = [lambda client, body=body: client.post("/positions", json=body) for body in bodies]

    answers = race(user, requests)

    assert [answer.status_code for answer in answers] == [
        500 if body["symbol"] == refused_symbol else 201 for body in bodies
    ]
    counts = {
        row["symbol"]: row["n"]
        for row in db_fetch(
            api_database,
            "SELECT data->>'symbol' AS symbol, count(*) AS n FROM events "
            "WHERE event_type = 'PositionOpened' AND data->>'symbol' = ANY ($1) GROUP BY 1",
            [symbol, refused_symbol],
        )
    }
    assert counts == {symbol: 9}  # each accepted one once; nothing of the refused ones
    for answer in answers:
        if answer.status_code == 201:
            assert user.http.get(answer.headers["location"]).json() == answer.json()


def _market_events(dsn: str, symbols: list[str]) -> list[asyncpg.Record]:
    return db_fetch(
        dsn,
        "SELECT global_position, tx_id, data FROM events WHERE event_type = 'MarketPricesUpdated' "
        "AND data->'prices' ?| $1 ORDER BY tx_id, global_position",
        symbols,
    )


def test_concurrent_price_updates_share_transactions_each_recorded_as_its_own_event(
    user: Caller, admin: Caller, api_database: str
) -> None:
    first, second = fresh_symbol(), fresh_symbol()
    for symbol, count in ((first, 2), (second, 3)):
        for _ in range(count):
            user.open(symbol=symbol)
    bodies = [{first: 100 + n, second: 200 + n} if n % 2 else {second: 300 + n} for n in range(16)]
    requests = [
        lambda client, body=body: client.post("/positions/update-prices", json=body)
        for body in bodies
    ]

    answers = race(admin, requests)

    assert [answer.status_code for answer in answers] == [200] * 16
    for body, answer in zip(bodies, answers, strict=True):
        assert answer.json()["symbols"] == sorted(body)
        assert answer.json()["positions_updated"] == (5 if first in body else 3)
    stored = _market_events(api_database, [first, second])
    assert sorted(row["global_position"] for row in stored) == sorted(
        answer.json()["position"] for answer in answers
    )
    assert len({row["tx_id"] for row in stored}) < 16  # some requests shared a transaction
    # The read model keeps the price of each symbol's last event in the log.
    last = {}
    for row in stored:
        last.update(json.loads(row["data"])["prices"])
    assert db_fetch(
        api_database,
        "SELECT symbol, price FROM market_prices WHERE symbol = ANY ($1) ORDER BY symbol",
        [first, second],
    ) == [(s, Decimal(str(last[s]))) for s in sorted((first, second))]


def test_a_price_update_refused_among_concurrent_ones_is_refused_alone(
    admin: Caller, api_database: str, refused_price: str
) -> None:
    symbol = fresh_symbol()
    bodies = [
        {"not a symbol": 10} if n % 5 == 2 else {refused_price if n % 5 == 4 else symbol: 10 + n}
        for n in range(15)
    ]
    requests = [
        lambda client, body=body: client.post("/positions/update-prices", json=body)
        for body in bodies
    ]

    answers = race(admin, requests)

    expected = [422 if n % 5 == 2 else 500 if n % 5 == 4 else 200 for n in range(15)]
    assert [answer.status_code for answer in answers] == expected
    for n, answer in enumerate(answers):
        if n % 5 == 2:
            assert [e["loc"] for e in answer.json()["errors"]] == [["body", "not a symbol"]]
    stored = _market_events(api_database, [symbol, refused_price])
    assert sorted(row["global_position"] for row in stored) == sorted(
        answer.json()["position"] for answer in answers if answer.status_code == 200
    )


# -- Idempotency-Key -----------------------------------------------------------------------------


def test_a_retried_create_returns_the_first_answer_and_opens_once(
    user: Caller, api_database: str
) -> None:
    k = key()

    first = user.http.post("/positions", json=BODY, headers={"Idempotency-Key": k})
    again = user.http.post("/positions", json=BODY, headers={"Idempotency-Key": k})

    assert first.status_code == again.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["etag"] == first.headers["etag"]
    assert user.http.get("/positions").headers["x-total-count"] == "1"
    (opened,) = events_with_key(api_database, k)
    assert opened["event_type"] == "PositionOpened"


def test_a_replay_answers_as_the_first_time_even_after_later_changes(user: Caller) -> None:
    k = key()
    first = user.http.post("/positions", json=BODY, headers={"Idempotency-Key": k})
    user.http.put(first.headers["location"], json={"notes": "later"})

    again = user.http.post("/positions", json=BODY, headers={"Idempotency-Key": k})

    assert again.content == first.content
    assert again.json()["notes"] is None and again.json()["version"] == 1


@pytest.mark.parametrize(
    "other",
    [
        {"json": {**BODY, "quantity": 11}},
        {"json": {**BODY, "notes": "x"}},
        {"json": BODY, "params": {"dry_run": "1"}},
    ],
)
def test_the_same_key_with_another_request_is_refused(
    user: Caller, api_database: str, other: dict
) -> None:
    k = key()
    first = user.http.post("/positions", json=BODY, headers={"Idempotency-Key": k})

    response = user.http.post("/positions", headers={"Idempotency-Key": k}, **other)

    assert response.status_code == 422, response.text
    assert response.json()["path"] == "/positions"
    assert ["header", "Idempotency-Key"] in [e["loc"] for e in response.json()["errors"]]
    assert [p["id"] for p in user.http.get("/positions").json()] == [first.json()["id"]]
    assert len(events_with_key(api_database, k)) == 1


def test_the_same_key_on_another_endpoint_is_refused(user: Caller, api_database: str) -> None:
    a, b = user.open(), user.open()
    k = key()
    assert (
        user.http.put(
            f"/positions/{a['id']}", json={"notes": "n"}, headers={"Idempotency-Key": k}
        ).status_code
        == 200
    )

    response = user.http.put(
        f"/positions/{b['id']}", json={"notes": "n"}, headers={"Idempotency-Key": k}
    )

    assert response.status_code == 422, response.text
    assert user.http.get(f"/positions/{b['id']}").json()["notes"] is None
    assert event_types(api_database, b["id"]) == ["PositionOpened"]


def test_the_same_key_by_another_caller_is_independent(
    user: Caller, other_user: Caller, api_database: str
) -> None:
    k = key()

    mine = user.http.post("/positions", json=BODY, headers={"Idempotency-Key": k})
    theirs = other_user.http.post("/positions", json=BODY, headers={"Idempotency-Key": k})

    assert mine.status_code == theirs.status_code == 201
    assert "idempotent-replayed" not in theirs.headers
    assert mine.json()["id"] != theirs.json()["id"]
    assert theirs.json()["owner"] == other_user.subject
    assert other_user.http.get("/positions").headers["x-total-count"] == "1"
    assert len(events_with_key(api_database, k)) == 2


def test_concurrent_requests_with_one_key_open_one_position(
    user: Caller, api_database: str
) -> None:
    k = key()

    answers = race(
        user, [lambda c: c.post("/positions", json=BODY, headers={"Idempotency-Key": k})] * 8
    )

    assert [a.status_code for a in answers] == [201] * 8, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert len({a.content for a in answers}) == 1
    assert Counter(a.headers.get("idempotent-replayed") for a in answers) == {None: 1, "true": 7}
    assert user.http.get("/positions").headers["x-total-count"] == "1"
    assert len(events_with_key(api_database, k)) == 1


def test_a_retried_close_closes_once_and_answers_200_again(user: Caller, api_database: str) -> None:
    created = user.open()
    path = f"/positions/{created['id']}/close"
    k = key()

    first = user.http.post(path, params={"exit_price": 105}, headers={"Idempotency-Key": k})
    again = user.http.post(path, params={"exit_price": 105}, headers={"Idempotency-Key": k})

    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert event_types(api_database, created["id"]) == ["PositionOpened", "PositionClosed"]
    # Without the key the same request is new, and refused: the position is closed.
    assert user.http.post(path, params={"exit_price": 105}).status_code == 409


def test_a_refused_command_retried_with_its_key_is_refused_the_same_way(
    user: Caller, admin: Caller, api_database: str
) -> None:
    symbol = fresh_symbol()
    created = user.open(symbol=symbol)
    path = f"/positions/{created['id']}/close"
    k = key()

    refused = user.http.post(path, headers={"Idempotency-Key": k})
    assert refused.status_code == 409, refused.text
    assert admin.http.post("/positions/update-prices", json={symbol: 120}).status_code == 200

    again = user.http.post(path, headers={"Idempotency-Key": k})

    assert again.status_code == 409
    assert again.content == refused.content
    assert again.headers["idempotent-replayed"] == "true"
    assert user.http.get(f"/positions/{created['id']}").json()["status"] == "open"
    assert event_types(api_database, created["id"]) == ["PositionOpened"]
    # A new key is a new command, decided on today's state.
    closed = user.http.post(path, headers={"Idempotency-Key": key()})
    assert closed.status_code == 200 and closed.json()["exit_price"] == 120


def test_a_refused_422_from_the_domain_is_replayed_too(user: Caller) -> None:
    created = user.open(quantity=10)
    path = f"/positions/{created['id']}/close"
    k = key()

    refused = user.http.post(
        path, params={"exit_price": 1, "quantity": 11}, headers={"Idempotency-Key": k}
    )
    again = user.http.post(
        path, params={"exit_price": 1, "quantity": 11}, headers={"Idempotency-Key": k}
    )

    assert refused.status_code == again.status_code == 422
    assert again.content == refused.content
    assert again.headers["idempotent-replayed"] == "true"


def test_retried_price_updates_and_bulk_updates_record_nothing_new(
    user: Caller, admin: Caller, api_database: str
) -> None:
    symbol = fresh_symbol()
    ids = [user.open(symbol=symbol)["id"] for _ in range(2)]
    price_key, bulk_key = key(), key()

    for _ in range(2):
        prices = admin.http.post(
            "/positions/update-prices", json={symbol: 101}, headers={"Idempotency-Key": price_key}
        )
        bulk = user.http.post(
            "/positions/bulk-update",
            json={"position_ids": ids, "updates": {"current_price": 102}},
            headers={"Idempotency-Key": bulk_key},
        )
        assert prices.status_code == bulk.status_code == 200, (prices.text, bulk.text)

    assert [e["event_type"] for e in events_with_key(api_database, price_key)] == [
        "MarketPricesUpdated"
    ]
    assert Counter(e["event_type"] for e in events_with_key(api_database, bulk_key)) == {
        "PositionMarked": 2
    }
    assert prices.headers["idempotent-replayed"] == bulk.headers["idempotent-replayed"] == "true"


def test_a_retried_delete_deletes_once(user: Caller, admin: Caller, api_database: str) -> None:
    created = user.open()
    k = key()

    answers = [
        admin.http.delete(f"/positions/{created['id']}", headers={"Idempotency-Key": k})
        for _ in range(2)
    ]

    assert [a.status_code for a in answers] == [204, 204]
    assert answers[1].headers["idempotent-replayed"] == "true"
    assert event_types(api_database, created["id"]) == ["PositionOpened", "PositionDeleted"]


@pytest.mark.parametrize("bad", ["", "k" * 256])
def test_an_idempotency_key_of_a_bad_length_is_refused(user: Caller, bad: str) -> None:
    response = user.http.post("/positions", json=BODY, headers={"Idempotency-Key": bad})

    assert response.status_code == 422, response.text
    assert user.http.get("/positions").json() == []


def test_the_key_is_recorded_in_the_events_metadata(user: Caller, api_database: str) -> None:
    k = key()

    created = user.http.post("/positions", json=BODY, headers={"Idempotency-Key": k}).json()

    (event,) = events_of(api_database, created["id"])
    assert event["metadata"]["idempotency_key"] == k
    assert event["metadata"]["actor"] == user.subject


# -- concurrent amendments -----------------------------------------------------------------------


def test_concurrent_puts_without_if_match_all_succeed(user: Caller, api_database: str) -> None:
    created = user.open()
    path = f"/positions/{created['id']}"
    notes = [f"note {n}" for n in range(5)]

    answers = race(user, [lambda c, n=n: c.put(path, json={"notes": n}) for n in notes])

    assert [a.status_code for a in answers] == [200] * len(notes), [a.text for a in answers]
    for answer in answers:  # the position after the command (perhaps after later ones too)
        assert answer.json()["version"] >= 2
        assert answer.headers["etag"] == f'"{answer.json()["version"]}"'
    final = user.http.get(path).json()
    assert final["version"] == 1 + len(notes)
    recorded = events_of(api_database, created["id"])
    assert [e["event_type"] for e in recorded] == ["PositionOpened"] + ["NotesChanged"] * len(notes)
    assert sorted(e["data"]["notes"] for e in recorded[1:]) == notes
    assert final["notes"] == recorded[-1]["data"]["notes"]


def test_many_concurrent_puts_without_if_match_all_succeed(user: Caller, api_database: str) -> None:
    created = user.open()
    path = f"/positions/{created['id']}"
    notes = [f"note {n}" for n in range(16)]

    answers = race(user, [lambda c, n=n: c.put(path, json={"notes": n}) for n in notes])

    assert [a.status_code for a in answers] == [200] * len(notes), [a.text for a in answers]
    assert user.http.get(path).json()["version"] == 1 + len(notes)
    assert event_types(api_database, created["id"]).count("NotesChanged") == len(notes)


def test_concurrent_puts_of_different_fields_all_apply(user: Caller) -> None:
    created = user.open(symbol=fresh_symbol())
    path = f"/positions/{created['id']}"
    changes = [
        {"notes": "n"},
        {"strategy": "s"},
        {"stop_loss": 90},
        {"take_profit": 110},
        {"current_price": 101},
    ]

    answers = race(user, [lambda c, b=b: c.put(path, json=b) for b in changes])

    assert [a.status_code for a in answers] == [200] * len(changes)
    final = user.http.get(path).json()
    assert (
        final["notes"],
        final["strategy"],
        final["stop_loss"],
        final["take_profit"],
        final["current_price"],
    ) == ("n", "s", 90, 110, 101)
    assert final["version"] == 1 + len(changes)


def test_concurrent_puts_with_if_match_let_one_win(user: Caller, api_database: str) -> None:
    created = user.open(symbol=fresh_symbol())
    path = f"/positions/{created['id']}"

    answers = race(
        user,
        [
            lambda c, n=n: c.put(path, json={"notes": f"note {n}"}, headers={"If-Match": '"1"'})
            for n in range(8)
        ],
    )

    statuses = Counter(a.status_code for a in answers)
    assert statuses == {200: 1, 412: 7}, [a.text for a in answers]
    winner = next(a for a in answers if a.status_code == 200).json()
    assert all(a.headers["etag"] == '"2"' for a in answers)
    assert user.http.get(path).json() == winner
    assert event_types(api_database, created["id"]) == ["PositionOpened", "NotesChanged"]


# -- atomic bulk updates racing single commands --------------------------------------------------


@pytest.mark.parametrize("round_", range(6))
def test_an_atomic_bulk_update_racing_a_close_never_half_applies(
    user: Caller, api_database: str, round_: int
) -> None:
    ids = [user.open()["id"] for _ in range(3)]
    victim = ids[round_ % 3]

    bulk, closing = race(
        user,
        [
            lambda c: c.post(
                "/positions/bulk-update",
                json={
                    "position_ids": ids,
                    "updates": {"stop_loss": 90, "notes": "bulk"},
                    "atomic": True,
                },
            ),
            lambda c: c.post(f"/positions/{victim}/close", params={"exit_price": 100}),
        ],
    )

    assert closing.status_code in (200, 409), closing.text
    assert bulk.status_code in (200, 409), bulk.text
    moved = {i for i in ids if "StopLossMoved" in event_types(api_database, i)}
    noted = {i for i in ids if "NotesChanged" in event_types(api_database, i)}
    if bulk.status_code == 200:
        assert moved == noted == set(ids)
        assert [p["id"] for p in bulk.json()["updated"]] == ids
        assert closing.status_code == 200  # after the bulk: the position was open
    else:
        assert moved == noted == set()
        assert [f["id"] for f in bulk.json()["failed"]] == [victim]
        assert closing.status_code == 200
    for position_id in ids:
        stop = user.http.get(f"/positions/{position_id}").json()["stop_loss"]
        assert stop == (90 if bulk.status_code == 200 else None)


@pytest.mark.parametrize("round_", range(3))
def test_an_atomic_bulk_update_racing_single_updates_applies_whole(
    user: Caller, api_database: str, round_: int
) -> None:
    ids = [user.open()["id"] for _ in range(4)]

    answers = race(
        user,
        [
            lambda c: c.post(
                "/positions/bulk-update",
                json={
                    "position_ids": ids,
                    "updates": {"take_profit": 150},
                    "atomic": True,
                },
            ),
            *[lambda c, i=i: c.put(f"/positions/{i}", json={"notes": "single"}) for i in ids],
        ],
    )

    assert [a.status_code for a in answers] == [200] * (1 + len(ids)), [a.text for a in answers]
    for position_id in ids:
        position = user.http.get(f"/positions/{position_id}").json()
        assert (position["take_profit"], position["notes"]) == (150, "single")
        assert sorted(event_types(api_database, position_id)) == [
            "NotesChanged",
            "PositionOpened",
            "TakeProfitMoved",
        ]


def test_two_atomic_bulk_updates_racing_apply_one_after_the_other(
    user: Caller, api_database: str
) -> None:
    ids = [user.open()["id"] for _ in range(3)]

    answers = race(
        user,
        [
            lambda c, n=n: c.post(
                "/positions/bulk-update",
                json={
                    "position_ids": ids if n == 0 else ids[::-1],
                    "updates": {"notes": f"bulk {n}"},
                    "atomic": True,
                },
            )
            for n in range(2)
        ],
    )

    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    finals = {user.http.get(f"/positions/{i}").json()["notes"] for i in ids}
    assert len(finals) == 1  # every position got the same last writer
    for position_id in ids:
        assert event_types(api_database, position_id).count("NotesChanged") == 2


def test_a_non_atomic_bulk_update_racing_a_close_applies_to_the_others(
    user: Caller, api_database: str
) -> None:
    ids = [user.open()["id"] for _ in range(3)]

    bulk, closing = race(
        user,
        [
            lambda c: c.post(
                "/positions/bulk-update", json={"position_ids": ids, "updates": {"notes": "bulk"}}
            ),
            lambda c: c.post(f"/positions/{ids[1]}/close", params={"exit_price": 100}),
        ],
    )

    assert bulk.status_code == closing.status_code == 200
    updated = {p["id"] for p in bulk.json()["updated"]}
    failed = {f["id"]: f["status"] for f in bulk.json()["failed"]}
    assert {ids[0], ids[2]} <= updated
    assert updated | set(failed) == set(ids) and not updated & set(failed)
    assert set(failed.values()) <= {409}
    for position_id in ids:
        noted = "NotesChanged" in event_types(api_database, position_id)
        assert noted == (position_id in updated)


def test_exact_figures_survive_a_race(user: Caller) -> None:
    created = user.open(quantity="0.3", entry_price="0.1")
    path = f"/positions/{created['id']}"

    answers = race(
        user,
        [
            lambda c: c.post(f"{path}/increase", json={"quantity": "0.1", "price": "0.2"}),
            lambda c: c.post(f"{path}/increase", json={"quantity": "0.2", "price": "0.3"}),
        ],
    )

    assert [a.status_code for a in answers] == [200, 200]
    final = user.http.get(path).json(parse_float=Decimal)
    assert final["quantity"] == Decimal("0.6")
    assert final["entry_price"] == Decimal("0.18333333")  # (0.03 + 0.02 + 0.06) / 0.6


def test_an_expired_idempotency_key_is_forgotten_and_its_retry_runs_anew(
    user: Caller, api_database: str
) -> None:
    k = key()
    first = user.http.post("/positions", json=BODY, headers={"Idempotency-Key": k})
    db_fetch(
        api_database,
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' "
        "WHERE caller = $1 AND key = $2",
        user.subject,
        k,
    )

    async def forget() -> int:
        pool = await create_pool(api_database, min_size=1, max_size=1)
        try:
            return await forget_expired(pool, timedelta(hours=24))
        finally:
            await pool.close()

    assert asyncio.run(forget()) >= 1
    again = user.http.post("/positions", json=BODY, headers={"Idempotency-Key": k})

    assert first.status_code == again.status_code == 201
    assert again.json()["id"] != first.json()["id"]
    assert "idempotent-replayed" not in again.headers
