"""Every command kind under 64 concurrent connections, sustained, against the service's socket.

The answers may only be successes or the documented refusals (404, 409, 412, 422): requests
arriving together are never a fault. Afterwards the log is checked: everything acknowledged is
recorded, nothing twice, every stream's versions gap-free, and the read models equal a rebuild
from the log (`verify`).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

import httpx

from eventstore import EventStore, create_pool
from projections.runner import verify

from .conftest import running_service, token
from .support import fresh_symbol

CONNECTIONS = 64
SECONDS = 3.0
"""Each of the two phases: price updates alone, then every command kind at once."""
ALLOWED = {200, 201, 204, 404, 409, 412, 422}


@dataclass
class Tally:
    """What the racers were answered, and what they were told was recorded."""

    statuses: Counter = field(default_factory=Counter)
    faults: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    keyed: dict[str, set[str]] = field(default_factory=dict)
    price_events: list[int] = field(default_factory=list)
    closes: Counter = field(default_factory=Counter)
    if_match_wins: Counter = field(default_factory=Counter)

    def answered(self, kind: str, response: httpx.Response) -> httpx.Response:
        self.statuses[kind, response.status_code] += 1
        if response.status_code not in ALLOWED:
            self.faults.append(f"{kind}: {response.status_code} {response.text[:300]}")
        return response


def _client(base_url: str, subject: str, role: str = "user") -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=60,
        headers={"Authorization": f"Bearer {token(subject, role)}"},
        limits=httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS),
    )


async def _open(client: httpx.AsyncClient, symbol: str, quantity: int = 10) -> dict:
    body = {"symbol": symbol, "side": "long", "quantity": quantity, "entry_price": 100}
    response = await client.post("/positions", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def test_no_command_kind_answers_a_fault_under_sustained_contention(
    database_url: str,
) -> None:
    # A service and a database of its own: thousands of positions, which other tests' whole-book
    # reads should not have to carry.
    service = running_service({"DATABASE_URL": database_url})
    service_url = await asyncio.to_thread(service.__enter__)
    try:
        await _race(service_url, database_url)
    finally:
        await asyncio.to_thread(service.__exit__, None, None, None)


async def _race(service_url: str, api_database: str) -> None:
    user = f"racer-{uuid.uuid4().hex[:10]}"
    tally = Tally()
    symbols = [fresh_symbol() for _ in range(3)]
    async with (
        _client(service_url, user) as trader,
        _client(service_url, "racing-admin", "admin") as admin,
        _client(service_url, "racing-feed", "service") as feed,
    ):
        bulk_set = [(await _open(trader, symbols[0]))["id"] for _ in range(8)]
        big = await _open(trader, symbols[1], quantity=100_000)
        contested = [(await _open(trader, symbols[2]))["id"] for _ in range(4)]
        deadline = time.monotonic() + SECONDS

        async def prices() -> None:
            while time.monotonic() < deadline:
                order = random.sample(symbols, len(symbols))
                body = {s: str(Decimal(random.randint(9_000, 11_000)) / 100) for s in order}
                answer = tally.answered(
                    "prices", await feed.post("/positions/update-prices", json=body)
                )
                if answer.status_code == 200:
                    tally.price_events.append(answer.json()["position"])

        async def creates() -> None:
            while time.monotonic() < deadline:
                body = {"symbol": symbols[0], "side": "short", "quantity": 1, "entry_price": 50}
                answer = tally.answered("create", await trader.post("/positions", json=body))
                if answer.status_code == 201:
                    tally.created.append(answer.json()["id"])

        async def keyed_creates(worker: int) -> None:
            while time.monotonic() < deadline:
                key = f"shared-{worker % 4}-{int(time.monotonic() * 4)}"  # a new key 4x a second
                body = {"symbol": symbols[1], "side": "long", "quantity": 2, "entry_price": 70}
                answer = tally.answered(
                    "keyed create",
                    await trader.post("/positions", json=body, headers={"Idempotency-Key": key}),
                )
                if answer.status_code == 201:
                    tally.keyed.setdefault(key, set()).add(answer.json()["id"])

        async def bulk(atomic: bool) -> None:
            while time.monotonic() < deadline:
                ids = random.sample(bulk_set, 5)
                body = {
                    "position_ids": ids,
                    "updates": {"notes": uuid.uuid4().hex},
                    "atomic": atomic,
                }
                tally.answered(
                    "atomic bulk" if atomic else "bulk",
                    await trader.post("/positions/bulk-update", json=body),
                )

        async def partial_closes() -> None:
            while time.monotonic() < deadline:
                answer = tally.answered(
                    "partial close",
                    await trader.post(
                        f"/positions/{big['id']}/close", params={"quantity": 1, "exit_price": 101}
                    ),
                )
                tally.closes[answer.status_code] += 1

        async def if_match(position_id: str) -> None:
            while time.monotonic() < deadline:
                current = await trader.get(f"/positions/{position_id}")
                if current.status_code == 404:
                    return  # deleted by the racer below
                etag = current.headers["etag"]
                answers = await asyncio.gather(
                    *(
                        trader.put(
                            f"/positions/{position_id}",
                            json={"notes": uuid.uuid4().hex},
                            headers={"If-Match": etag},
                        )
                        for _ in range(3)
                    )
                )
                for answer in answers:
                    tally.answered("if-match put", answer)
                tally.if_match_wins[sum(a.status_code == 200 for a in answers)] += 1

        async def deletes_racing_updates() -> None:
            doomed = contested[-1]
            await asyncio.sleep(SECONDS / 2)
            tally.answered("delete", await admin.delete(f"/positions/{doomed}"))
            tally.answered("delete again", await admin.delete(f"/positions/{doomed}"))

        async def updates_of_the_doomed() -> None:
            while time.monotonic() < deadline:
                tally.answered(
                    "update racing a delete",
                    await trader.put(f"/positions/{contested[-1]}", json={"take_profit": 150}),
                )

        racers = [
            *(prices() for _ in range(16)),
            *(creates() for _ in range(12)),
            *(keyed_creates(i) for i in range(8)),
            *(bulk(atomic=True) for _ in range(4)),
            *(bulk(atomic=False) for _ in range(4)),
            *(partial_closes() for _ in range(8)),
            *(if_match(position_id) for position_id in contested[:3]),  # 3 PUTs each at once
            deletes_racing_updates(),
            *(updates_of_the_doomed() for _ in range(2)),
        ]
        # First the market-data feeds alone, as many as there are connections; then everyone.
        await asyncio.gather(*(prices() for _ in range(CONNECTIONS)))
        deadline = time.monotonic() + SECONDS
        await asyncio.gather(*racers)

    assert not tally.faults, tally.faults[:5]
    for kind in ("prices", "create", "keyed create", "bulk", "atomic bulk", "partial close"):
        assert tally.statuses[kind, 200] + tally.statuses[kind, 201] > 0, (kind, tally.statuses)
    assert tally.if_match_wins and set(tally.if_match_wins) == {1}, tally.if_match_wins
    assert tally.statuses["delete", 204] == 1 and tally.statuses["delete again", 404] == 1

    pool = await create_pool(api_database, min_size=1, max_size=2)
    try:
        await _check_the_log(pool, tally, symbols, big["id"])
        store = EventStore(pool)
        try:
            assert await verify(pool, store) == {"positions": [], "market_prices": []}
        finally:
            await store.close()
    finally:
        await pool.close()


async def _check_the_log(pool, tally: Tally, symbols: list[str], big_id: str) -> None:
    async with pool.acquire() as connection:
        gaps = await connection.fetchval(
            "SELECT count(*) FROM (SELECT stream_id, count(*) AS n, max(stream_version) AS top "
            "FROM events GROUP BY stream_id) s WHERE n <> top"
        )
        assert gaps == 0, "a stream's versions have a gap"
        opened = Counter(
            row["stream_id"]
            for row in await connection.fetch(
                "SELECT stream_id FROM events WHERE event_type = 'PositionOpened' "
                "AND stream_id = ANY ($1)",
                [f"position-{i}" for i in tally.created],
            )
        )
        assert len(tally.created) == len(set(tally.created)) == len(opened)
        assert set(opened.values()) == {1}

        for key, ids in tally.keyed.items():
            assert len(ids) == 1, (key, ids)  # every answer to one key names one position
            recorded = await connection.fetchval(
                "SELECT count(*) FROM events WHERE event_type = 'PositionOpened' "
                "AND metadata->>'idempotency_key' = $1 AND metadata->>'actor' LIKE 'racer-%'",
                key,
            )
            assert recorded == 1, (key, recorded)

        # Every acknowledged price update is its own event of the market stream, and there is
        # no other event carrying these (fresh) symbols.
        acknowledged = sorted(tally.price_events)
        assert len(acknowledged) == len(set(acknowledged))
        stored = await connection.fetch(
            "SELECT global_position FROM events WHERE event_type = 'MarketPricesUpdated' "
            "AND data->'prices' ? $1 ORDER BY global_position",
            symbols[0],
        )
        assert [row["global_position"] for row in stored] == acknowledged

        closes = await connection.fetchval(
            "SELECT count(*) FROM events WHERE stream_id = $1 "
            "AND event_type IN ('PositionReduced', 'PositionClosed')",
            f"position-{big_id}",
        )
        assert closes == tally.closes[200]
