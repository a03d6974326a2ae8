"""A command runs once per idempotency key: a retry gets the first answer, and records nothing.

The answer is stored in the command's own transaction: there is no moment where the events exist
but the answer does not (or the reverse). Concurrent requests with one key queue on a
transaction-level advisory lock; the later ones find the stored answer. The key is the caller's:
two callers may use the same one. The same key with a different request is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import timedelta
from typing import NamedTuple, Protocol

import asyncpg


class Answer(Protocol):
    """What a transport answered, as it is stored: a status, the headers kept, the body."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def body(self) -> bytes: ...


class StoredAnswer(NamedTuple):
    status_code: int
    headers: dict[str, str]
    body: bytes


class IdempotencyKey(NamedTuple):
    caller: str
    key: str
    fingerprint: str
    """What the request was: the same key with another fingerprint is KeyReused."""


class KeyReused(Exception):
    def __init__(self) -> None:
        super().__init__("this Idempotency-Key was used for a different request")


KEPT_HEADERS = ("location", "etag", "content-type")


async def recall(connection: asyncpg.Connection, key: IdempotencyKey) -> StoredAnswer | None:
    """The answer stored for `key`, after waiting for any request running with it."""
    await connection.execute("SELECT pg_advisory_xact_lock($1)", _lock_id(key.caller, key.key))
    stored = await connection.fetchrow(
        "SELECT fingerprint, status_code, headers, body FROM idempotency_keys "
        "WHERE caller = $1 AND key = $2",
        key.caller,
        key.key,
    )
    if stored is None:
        return None
    if stored["fingerprint"] != key.fingerprint:
        raise KeyReused()
    return StoredAnswer(stored["status_code"], stored["headers"], stored["body"])


async def remember(connection: asyncpg.Connection, key: IdempotencyKey, answer: Answer) -> None:
    headers = {k: v for k, v in answer.headers.items() if k in KEPT_HEADERS}
    await connection.execute(
        "INSERT INTO idempotency_keys (caller, key, fingerprint, status_code, headers, body) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        key.caller,
        key.key,
        key.fingerprint,
        answer.status_code,
        headers,
        answer.body,
    )


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


def fingerprint(*parts: bytes) -> str:
    """A digest of a request's parts, each length-prefixed so that no two splits collide."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()
