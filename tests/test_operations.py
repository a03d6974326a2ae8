"""The operators' commands: verify, rebuild and export, as processes and as functions."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import asyncpg

from commands import PositionHandlers
from eventstore import EventStore
from projections.positions import TABLES, project_positions
from projections.runner import rebuild, verify

from .eventstore.factories import settled
from .projections.test_rebuild import AT, random_workload
from .test_service import run_cli, service_env


async def _tables(pool: asyncpg.Pool) -> dict[str, list]:
    return {
        table: [tuple(r) for r in await pool.fetch(f"TABLE {table} ORDER BY {key}")]
        for table, key in TABLES.items()
    }


async def _workload(pool: asyncpg.Pool, steps: int = 60) -> None:
    store = EventStore(pool, inline_projectors=[project_positions])
    try:
        await random_workload(PositionHandlers(store), seed=5, steps=steps)
    finally:
        await store.close()


async def test_verify_exits_0_when_the_read_models_agree_and_1_naming_each_row_that_does_not(
    pool: asyncpg.Pool, database_url: str
) -> None:
    await _workload(pool)
    env = service_env(DATABASE_URL=database_url)

    agreeing = await asyncio.to_thread(run_cli, "verify", env=env)
    tampered = await pool.fetchval(
        "UPDATE positions SET quantity = quantity + 1 WHERE position_id = "
        "(SELECT position_id FROM positions ORDER BY position_id LIMIT 1) RETURNING position_id"
    )
    await pool.execute("DELETE FROM market_prices WHERE symbol = 'MSFT'")
    disagreeing = await asyncio.to_thread(run_cli, "verify", env=env)

    assert agreeing.returncode == 0, agreeing.stderr
    assert "agree" in agreeing.stdout and "replayed" in agreeing.stderr
    assert disagreeing.returncode == 1
    assert disagreeing.stdout.splitlines() == [
        f"positions: {tampered} differs from the log",
        "market_prices: MSFT differs from the log",
    ]
    assert not await pool.fetchval(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'verify_%'"
    ), "the scratch tables are left behind"


async def test_rebuild_swaps_in_identical_tables_under_the_same_names(
    pool: asyncpg.Pool, database_url: str
) -> None:
    await _workload(pool)
    indexes = "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
    tables_before, indexes_before = await _tables(pool), await pool.fetch(indexes)

    result = await asyncio.to_thread(run_cli, "rebuild", env=service_env(DATABASE_URL=database_url))

    assert result.returncode == 0, result.stderr
    assert "rebuilt" in result.stderr
    assert await _tables(pool) == tables_before
    assert await pool.fetch(indexes) == indexes_before
    assert not await pool.fetchval(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'rebuild_%'"
    )


async def test_a_rebuild_under_load_loses_nothing_and_holds_no_subscriber_back(
    pool: asyncpg.Pool,
) -> None:
    """Writers keep writing through the rebuild and its swap; a subscriber keeps receiving."""
    await _workload(pool, steps=600)
    live = EventStore(pool, inline_projectors=[project_positions])
    rebuilding = asyncio.Event()
    delivered_while_rebuilding: list[int] = []

    async def follow() -> None:
        async for event in live.subscribe(await live.head()):
            if rebuilding.is_set():
                delivered_while_rebuilding.append(event.global_position)

    async def write() -> int:
        written = 0
        handlers = PositionHandlers(live)
        while rebuilding.is_set():
            await random_workload(handlers, seed=written, steps=5)
            written += 1
        return written

    follower = asyncio.create_task(follow())
    try:
        rebuilding.set()
        writer = asyncio.create_task(write())
        await rebuild(pool, live)
        rebuilding.clear()
        assert await writer > 0
        await settled(live)
        assert delivered_while_rebuilding, "the subscriber got nothing during the rebuild"
        different = await verify(pool, live)
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await live.close()
    assert different == {table: [] for table in TABLES}


async def test_export_writes_the_events_asked_for_as_json_lines(
    pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    await _workload(pool)
    position_id, owner = await pool.fetchrow(
        "SELECT position_id, owner FROM positions ORDER BY position_id LIMIT 1"
    )
    env = service_env(DATABASE_URL=database_url)
    output = tmp_path / "events.jsonl"

    one = await asyncio.to_thread(run_cli, "export", "--position", str(position_id), env=env)
    owned = await asyncio.to_thread(
        run_cli, "export", "--owner", owner, "--output", str(output), env=env
    )
    late = await asyncio.to_thread(
        run_cli, "export", "--from", AT.replace(year=2030).isoformat(), env=env
    )

    assert one.returncode == owned.returncode == late.returncode == 0, one.stderr + owned.stderr
    lines = [json.loads(line) for line in one.stdout.splitlines()]
    stored = await pool.fetch(
        "SELECT global_position, event_type FROM events WHERE stream_id = $1 "
        "ORDER BY stream_version",
        f"position-{position_id}",
    )
    assert [(e["position"], e["type"]) for e in lines] == [tuple(r) for r in stored]
    assert lines[0]["data"]["owner"] == owner and lines[0]["actor"] == "workload"
    exported = [json.loads(line) for line in output.read_text().splitlines()]
    streams = {e["stream_id"] for e in exported}
    owned_streams = await pool.fetch(
        "SELECT stream_id FROM events WHERE event_type = 'PositionOpened' AND data->>'owner' = $1",
        owner,
    )
    assert streams == {r["stream_id"] for r in owned_streams}
    assert late.stdout == ""  # nothing was recorded after 2030
    assert uuid.UUID(lines[0]["event_id"])
