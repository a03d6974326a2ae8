"""Each command request runs in one transaction, and once per Idempotency-Key.

The transaction holds the command's events, its read-model changes and the answer read back from
them, so the answer always shows what this command did. With an Idempotency-Key the answer is
stored in that same transaction: there is no moment where the events exist but the answer does
not (or the reverse). Concurrent requests with one key queue on a transaction-level advisory
lock; the later ones find the stored answer. The same key with a different request is 422.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import timedelta

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from .errors import ApiError, error_response
from .transactions import command_transaction

MAX_KEY_LENGTH = 255
REPLAYED_HEADER = "idempotent-replayed"
_KEPT_HEADERS = ("location", "etag", "content-type")

Operation = Callable[[asyncpg.Connection], Awaitable[Response]]


async def run_command(request: Request, caller: str, body: bytes, operation: Operation) -> Response:
    """Run `operation` on a connection in a transaction of its own, once per Idempotency-Key."""
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= MAX_KEY_LENGTH:
        raise ApiError(
            422,
            "validation failed",
            [
                {
                    "loc": ["header", "Idempotency-Key"],
                    "msg": f"must be 1-{MAX_KEY_LENGTH} characters",
                }
            ],
        )
    async with command_transaction(request.app.state.services) as connection:
        if key is None:
            return await operation(connection)
        return await _once(request, caller, key, body, operation, connection)


async def _once(
    request: Request,
    caller: str,
    key: str,
    body: bytes,
    operation: Operation,
    connection: asyncpg.Connection,
) -> Response:
    fingerprint = _fingerprint(request, body)
    await connection.execute("SELECT pg_advisory_xact_lock($1)", _lock_id(caller, key))
    stored = await connection.fetchrow(
        "SELECT fingerprint, status_code, headers, body FROM idempotency_keys "
        "WHERE caller = $1 AND key = $2",
        caller,
        key,
    )
    if stored is not None:
        if stored["fingerprint"] != fingerprint:
            raise ApiError(
                422,
                "this Idempotency-Key was used for a different request",
                [{"loc": ["header", "Idempotency-Key"], "msg": "used for a different request"}],
            )
        return Response(
            stored["body"],
            status_code=stored["status_code"],
            headers={**stored["headers"], REPLAYED_HEADER: "true"},
        )
    try:
        response = await operation(connection)
    except Exception as error:  # the refusal is the first answer too, unless it is a fault
        response = error_response(request, error)
        if response.status_code >= 500:
            raise
    headers = {k: v for k, v in response.headers.items() if k in _KEPT_HEADERS}
    await connection.execute(
        "INSERT INTO idempotency_keys (caller, key, fingerprint, status_code, headers, body) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        caller,
        key,
        fingerprint,
        response.status_code,
        headers,
        response.body,
    )
    return response


async def forget_expired(pool: asyncpg.Pool, kept: timedelta) -> int:
    """Drop answers older than `kept`: a retry after that runs as a new request."""
    deleted = await pool.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - $1::interval", kept
    )
    return int(deleted.split()[-1])


def _lock_id(caller: str, key: str) -> int:
    """A 64-bit lock id for (caller, key): collisions only make unrelated requests wait."""
    digest = hashlib.sha256(len(caller).to_bytes(8, "big") + (caller + key).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _fingerprint(request: Request, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (
        request.method.encode(),
        request.url.path.encode(),
        request.url.query.encode(),
        body,
    ):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()
