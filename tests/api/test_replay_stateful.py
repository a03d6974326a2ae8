"""Random command sequences through the API, then the log is asked to tell the same story.

Hypothesis drives commands of two users, an admin and a price feed against a service of its own.
Afterwards: `verify` finds no row the log disagrees with, a full `rebuild` gives identical tables,
and the book asked `as_of` each moment of the run is the book that was seen at that moment.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from api.auth import Role
from eventstore import EventStore, create_pool
from projections.positions import TABLES
from projections.runner import rebuild, verify

from .conftest import running_service, token

USERS = ("ann", "bob")
SYMBOLS = ("AAA", "BBB", "CCC")
prices = st.decimals(min_value=Decimal("1"), max_value=Decimal("500"), places=2)
quantities = st.integers(min_value=1, max_value=20)


def _client(url: str, subject: str, role: Role = Role.USER) -> httpx.Client:
    return httpx.Client(
        base_url=url, timeout=30, headers={"Authorization": f"Bearer {token(subject, role)}"}
    )


async def _tables(dsn: str) -> dict[str, list[tuple]]:
    connection = await asyncpg.connect(dsn)
    try:
        return {
            table: [tuple(row) for row in await connection.fetch(f"TABLE {table} ORDER BY {key}")]
            for table, key in TABLES.items()
        }
    finally:
        await connection.close()


async def _verify_then_rebuild(dsn: str) -> tuple[dict, dict, dict]:
    before = await _tables(dsn)
    pool = await create_pool(dsn, min_size=1, max_size=4)
    store = EventStore(pool)
    try:
        different = await verify(pool, store)
        await rebuild(pool, store)
    finally:
        await store.close()
        await pool.close()
    return different, before, await _tables(dsn)


def test_random_commands_replay_to_the_same_read_models(database_url: str) -> None:
    seen: list[tuple[str, dict[str, list]]] = []

    with running_service({"DATABASE_URL": database_url}) as url:
        users = {subject: _client(url, subject) for subject in USERS}
        admin = _client(url, "root", Role.ADMIN)
        feed = _client(url, "feed", Role.SERVICE)

        class Trading(RuleBasedStateMachine):
            def __init__(self) -> None:
                super().__init__()
                self.ids: list[tuple[str, str]] = []  # (owner, position id)

            def _pick(self, data: st.DataObject) -> tuple[httpx.Client, str]:
                owner, position_id = data.draw(st.sampled_from(self.ids))
                return users[owner], position_id

            @rule(
                owner=st.sampled_from(USERS),
                symbol=st.sampled_from(SYMBOLS),
                side=st.sampled_from(["long", "short"]),
                quantity=quantities,
                entry=prices,
                pending=st.booleans(),
            )
            def open(self, owner, symbol, side, quantity, entry, pending) -> None:
                body: dict[str, Any] = {
                    "symbol": symbol,
                    "side": side,
                    "quantity": quantity,
                    "entry_price": str(entry),
                }
                if pending:
                    body["status"] = "pending"
                response = users[owner].post("/positions", json=body)
                assert response.status_code == 201, response.text
                self.ids.append((owner, response.json()["id"]))

            @rule(data=st.data(), notes=st.text(max_size=20), price=prices)
            def amend(self, data, notes, price) -> None:
                if self.ids:
                    client, position_id = self._pick(data)
                    body = {"notes": notes, "current_price": str(price)}
                    response = client.put(f"/positions/{position_id}", json=body)
                    assert response.status_code in {200, 404, 409, 422}, response.text

            @rule(data=st.data(), quantity=quantities, price=prices)
            def increase(self, data, quantity, price) -> None:
                if self.ids:
                    client, position_id = self._pick(data)
                    body = {"quantity": quantity, "price": str(price)}
                    response = client.post(f"/positions/{position_id}/increase", json=body)
                    assert response.status_code in {200, 404, 409, 422}, response.text

            @rule(data=st.data())
            def fill(self, data) -> None:
                if self.ids:
                    client, position_id = self._pick(data)
                    response = client.post(f"/positions/{position_id}/open")
                    assert response.status_code in {200, 404, 409}, response.text

            @rule(data=st.data(), price=prices, part=st.one_of(st.none(), quantities))
            def close(self, data, price, part) -> None:
                if self.ids:
                    client, position_id = self._pick(data)
                    params = {"exit_price": str(price)}
                    if part is not None:
                        params["quantity"] = str(part)
                    response = client.post(f"/positions/{position_id}/close", params=params)
                    assert response.status_code in {200, 404, 409, 422}, response.text

            @rule(marks=st.dictionaries(st.sampled_from(SYMBOLS), prices, min_size=1))
            def prices_move(self, marks) -> None:
                body = {symbol: str(price) for symbol, price in marks.items()}
                response = feed.post("/positions/update-prices", json=body)
                assert response.status_code == 200, response.text

            @rule(data=st.data())
            def delete(self, data) -> None:
                if self.ids:
                    _, position_id = self._pick(data)
                    assert admin.delete(f"/positions/{position_id}").status_code in {204, 404}

            @invariant()
            def remember_what_is_seen(self) -> None:
                books = {s: client.get("/positions").json() for s, client in users.items()}
                seen.append((datetime.now(UTC).isoformat(), books))
                time.sleep(0.002)  # the next command starts strictly later

        run_state_machine_as_test(
            Trading,
            settings=settings(
                max_examples=6,
                stateful_step_count=20,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )

        for moment, books in seen[::4]:
            for subject, client in users.items():
                then = client.get("/positions", params={"as_of": moment})
                assert then.status_code == 200, then.text
                assert then.json() == books[subject], moment
        for client in [*users.values(), admin, feed]:
            client.close()

    different, before, after = asyncio.run(_verify_then_rebuild(database_url))
    assert different == {table: [] for table in TABLES}
    assert after == before
    assert seen and any(books.values() for _, books in seen), "the run never held a position"
