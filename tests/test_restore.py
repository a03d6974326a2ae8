"""A logical backup (pg_dump) restored into another PostgreSQL cluster whose transaction counter
is behind the source's: the service refuses it in one line, `reclock` repairs it, and then the
restored log is served whole and in its original order, with new events after it."""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest

from api.auth import Role
from api.database import apply_migrations, ensure_database
from commands import PositionHandlers
from domain.position import decide
from domain.streams import position_stream
from eventstore import EventStore, NewEvent, create_pool
from projections.positions import project_positions

from .api.conftest import SECRET, token
from .domain.given import open_position
from .projections.test_rebuild import AT, random_workload
from .test_service import free_port, run_cli, service_env, start_service

LOG_ORDER = "SELECT event_id, global_position FROM events ORDER BY tx_id, global_position"
_BINARIES = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))  # Debian's layout


def _postgres_tool(name: str) -> str:
    if _BINARIES:
        return str(Path(_BINARIES[-1]).with_name(name))
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"the restore test needs PostgreSQL's {name} (apt-get install postgresql)")
    return found


def _as_owner(*argv: str) -> None:
    """PostgreSQL's tools refuse to run as root: as root, run them as the postgres user."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    done = subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{argv[0]} failed: {done.stdout}{done.stderr}"


@contextmanager
def cluster(folder: Path, epoch: int = 0) -> Iterator[str]:
    """A PostgreSQL cluster of its own on a free port; its admin URL. With `epoch`, its
    transaction counter starts `epoch` * 2**32 ids ahead (as an old, busy server's would)."""
    folder.mkdir()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    data = str(folder / "data")
    _as_owner(_postgres_tool("initdb"), "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
    if epoch:
        _as_owner(_postgres_tool("pg_resetwal"), "-e", str(epoch), "-D", data)
    port = free_port()
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {folder} -F"
    pg_ctl = _postgres_tool("pg_ctl")
    _as_owner(pg_ctl, "-D", data, "-l", str(folder / "log"), "-w", "-o", options, "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        _as_owner(pg_ctl, "-D", data, "-m", "immediate", "-w", "stop")


async def _history(dsn: str) -> uuid.UUID:
    """A log whose order differs from its identity order: a transaction that began first (and
    so sorts first) appends after others have. The id of the position it opens."""
    await apply_migrations(dsn)
    pool = await create_pool(dsn, min_size=2, max_size=4)
    store = EventStore(pool, inline_projectors=[project_positions])
    try:
        early = uuid.uuid4()
        async with pool.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_current_xact_id()")  # its id is taken now
            await random_workload(PositionHandlers(store), seed=11, steps=40)
            opened = open_position(position_id=early, owner="ann", symbol="RSTR", at=AT)
            events = [
                NewEvent(uuid.uuid4(), type(e).__name__, e, {"actor": "ann"}, e.SCHEMA_VERSION)
                for e in decide(opened, None)
            ]
            await store.append(position_stream(early), events, 0, connection=connection)
        await random_workload(PositionHandlers(store), seed=12, steps=20)
        return early
    finally:
        await store.close()
        await pool.close()


def _fetch(dsn: str, statement: str, *arguments: object) -> list[asyncpg.Record]:
    async def fetch() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(dsn)
        try:
            return await connection.fetch(statement, *arguments)
        finally:
            await connection.close()

    return asyncio.run(fetch())


def _audit_trail(base: str, headers: dict[str, str]) -> list[str]:
    ids, cursor = [], None
    while True:
        params = {"limit": 100, "order": "oldest", **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{base}/audit/events", params=params, headers=headers, timeout=10)
        assert page.status_code == 200, page.text
        ids += [entry["event_id"] for entry in page.json()["events"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return ids


def _stream_ids(base: str, headers: dict[str, str], count: int) -> list[int]:
    """The first `count` event ids of the Server-Sent Events stream from the log's start."""
    ids: list[int] = []
    url, params = f"{base}/events/stream", {"after": 0}
    with httpx.stream("GET", url, params=params, headers=headers, timeout=10) as response:
        for line in response.iter_lines():
            if line.startswith("id: "):
                ids.append(int(line[4:]))
                if len(ids) == count:
                    return ids
    raise AssertionError(f"the stream ended after {len(ids)} events")


@pytest.fixture
def clusters_path() -> Iterator[Path]:
    """Outside pytest's own folders, which the postgres user cannot enter."""
    path = Path(tempfile.mkdtemp(prefix="restore-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_a_log_restored_into_a_cluster_behind_is_refused_then_reclocked_and_served_in_order(
    clusters_path: Path,
) -> None:
    tmp_path = clusters_path
    with cluster(tmp_path / "source", epoch=2) as source, cluster(tmp_path / "target") as target:
        source_db = asyncio.run(ensure_database(source, "positions"))
        early = asyncio.run(_history(source_db))
        original = _fetch(source_db, LOG_ORDER)
        positions = [row["global_position"] for row in original]
        assert positions != sorted(positions), "the source log should hold a reordering"
        dump = tmp_path / "positions.dump"
        subprocess.run([_postgres_tool("pg_dump"), "-Fc", "-f", dump, source_db], check=True)
        target_db = asyncio.run(ensure_database(target, "positions"))
        restore = [_postgres_tool("pg_restore"), "--no-owner", "-d", target_db, dump]
        subprocess.run(restore, check=True)
        env = service_env(DATABASE_URL=target_db, JWT_SECRET=SECRET, DATA_DIR=str(tmp_path))

        refusals = [run_cli("serve", "--production", env=env), run_cli("serve", env=env)]
        repaired = run_cli("reclock", env=env)
        again = run_cli("reclock", env=env)
        verified = run_cli("verify", env=env)

        for refused in refusals:
            assert refused.returncode == 2
            [line] = refused.stderr.strip().splitlines()
            assert "restored from another cluster" in line and "python -m api reclock" in line
        assert repaired.returncode == 0, repaired.stderr
        assert f"renumbered the transaction ids of {len(original):,} events" in repaired.stdout
        assert "nothing to do" in again.stdout
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert _fetch(target_db, LOG_ORDER) == original

        process, base = start_service(env)
        try:
            admin = token("auditor", Role.ADMIN)
            headers = {"Authorization": f"Bearer {admin}"}
            restored_ids = [str(row["event_id"]) for row in original]
            assert _audit_trail(base, headers) == restored_ids
            assert _stream_ids(base, headers, len(original)) == positions
            stream = position_stream(early)
            [(opened_at,)] = _fetch(
                target_db, "SELECT global_position FROM events WHERE stream_id = $1", stream
            )
            then = httpx.get(f"{base}/positions/{early}", params={"at": opened_at}, headers=headers)
            now = httpx.get(f"{base}/positions/{early}", headers=headers)
            created = httpx.post(
                f"{base}/positions",
                json={"symbol": "NEW", "side": "long", "quantity": 1, "entry_price": 10},
                headers=headers,
            )

            assert then.status_code == 200 and then.json() == now.json()
            assert created.status_code == 201, created.text
            trail = _audit_trail(base, headers)
            assert trail[: len(original)] == restored_ids and len(trail) == len(original) + 1
            assert _stream_ids(base, headers, len(original) + 1)[-1] > max(positions)
        finally:
            process.terminate()
            process.wait(10)
