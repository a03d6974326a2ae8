"""Helpers shared by the API tests: exact JSON, unique symbols, the event log, error bodies."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import httpx


def fresh_symbol() -> str:
    """A symbol no other test uses: market prices are global."""
    return "T" + uuid.uuid4().hex[:8].upper()


def exact(response: httpx.Response) -> Any:
    """The JSON body with every non-integer number as an exact Decimal."""
    return response.json(parse_float=Decimal)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def db_fetch(dsn: str, statement: str, *arguments: object) -> list[asyncpg.Record]:
    return asyncio.run(
        _on_connection(dsn, lambda connection: connection.fetch(statement, *arguments))
    )


def db_execute(dsn: str, statements: str) -> None:
    """Run SQL of one or more statements (no parameters: the test's own SQL)."""
    asyncio.run(_on_connection(dsn, lambda connection: connection.execute(statements)))


async def _on_connection(dsn: str, use: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
    connection = await asyncpg.connect(dsn)
    try:
        return await use(connection)
    finally:
        await connection.close()


def events_of(dsn: str, position_id: str) -> list[dict[str, Any]]:
    """The position's events as stored, in stream order."""
    rows = db_fetch(
        dsn,
        "SELECT event_type, data::text AS data, metadata::text AS metadata, stream_version "
        "FROM events WHERE stream_id = $1 ORDER BY stream_version",
        f"position-{position_id}",
    )
    return [
        {**row, "data": json.loads(row["data"]), "metadata": json.loads(row["metadata"])}
        for row in rows
    ]


def event_types(dsn: str, position_id: str) -> list[str]:
    return [e["event_type"] for e in events_of(dsn, position_id)]


def assert_error(
    response: httpx.Response, status: int, path: str, correlation_id: str | None = None
) -> dict:
    """The status, and the error body of docs/api.md: detail, timestamp, path, correlation_id."""
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"], body
    stamp = datetime.fromisoformat(body["timestamp"])
    assert stamp.utcoffset() == timedelta(0), body
    assert body["path"] == path, body
    assert body["correlation_id"], body
    assert body["correlation_id"] == response.headers["x-correlation-id"]
    if correlation_id is not None:
        assert body["correlation_id"] == correlation_id
    return body
