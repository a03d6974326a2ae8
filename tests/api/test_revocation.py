"""Revoked token ids: refused by every instance, on every channel, kept where configured."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from api.auth import Role

from .conftest import Caller, running_service, token
from .support import assert_error, db_fetch

DEADLINE = 5.0  # seconds: every instance reloads the list every second


def _status(url: str, bearer: str) -> int:
    return httpx.get(f"{url}/positions", headers={"Authorization": f"Bearer {bearer}"}).status_code


def _revoke(url: str, jti: str, **extra: object) -> httpx.Response:
    admin = token("root", Role.ADMIN)
    return httpx.post(
        f"{url}/auth/revoke",
        json={"jti": jti, **extra},
        headers={"Authorization": f"Bearer {admin}"},
    )


def _until_refused(url: str, bearer: str) -> float:
    started = time.monotonic()
    while _status(url, bearer) != 401:
        assert time.monotonic() - started < DEADLINE, "the revocation did not reach this instance"
        time.sleep(0.1)
    return time.monotonic() - started


@pytest.mark.parametrize("with_redis", [False, True], ids=["database", "redis"])
def test_a_revoked_token_is_refused_by_every_instance_on_every_channel(
    database_url: str, redis_url: str, with_redis: bool
) -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    env = {"DATABASE_URL": database_url}
    if with_redis:
        env |= {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": prefix}
    jti = str(uuid.uuid4())
    revoked = token("victim", token_id=jti)
    other = token("victim", token_id=str(uuid.uuid4()))
    with running_service(env) as first, running_service(env) as second:
        assert _status(first, revoked) == _status(second, revoked) == 200
        answer = _revoke(
            first, jti, expires_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat()
        )
        assert answer.status_code == 200 and answer.json()["jti"] == jti

        refused_here = httpx.get(
            f"{first}/positions", headers={"Authorization": f"Bearer {revoked}"}
        )
        _until_refused(second, revoked)
        events = httpx.get(
            f"{second}/events/stream", headers={"Authorization": f"Bearer {revoked}"}
        )
        with connect(second.replace("http", "ws") + f"/ws/positions?token={revoked}") as ws:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
        still_fine = [_status(url, other) for url in (first, second)]

    assert_error(refused_here, 401, "/positions")
    assert refused_here.json()["detail"] == "token revoked"
    assert events.status_code == 401
    assert closed.value.rcvd.code == 4401
    assert still_fine == [200, 200]
    stored = db_fetch(database_url, "SELECT jti FROM revoked_tokens")
    if with_redis:
        assert stored == []
        client = redis.Redis.from_url(redis_url)
        assert client.zscore(f"{prefix}:revoked", jti) is not None
        client.close()
    else:
        assert [row["jti"] for row in stored] == [jti]


@pytest.mark.parametrize("with_redis", [False, True], ids=["database", "redis"])
def test_revoking_a_token_ends_its_live_connections_on_every_instance(
    database_url: str, redis_url: str, with_redis: bool
) -> None:
    env = {"DATABASE_URL": database_url}
    if with_redis:
        env |= {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": f"test-{uuid.uuid4().hex}"}
    jti = str(uuid.uuid4())
    revoked = token("victim", token_id=jti)
    other = token("victim", token_id=str(uuid.uuid4()))
    with running_service(env) as first, running_service(env) as second:
        sockets = second.replace("http", "ws") + "/ws/positions?token="
        with (
            connect(sockets + revoked) as doomed,
            connect(sockets + other) as spared,
            httpx.stream(
                "GET",
                f"{second}/events/stream",
                headers={"Authorization": f"Bearer {revoked}"},
                timeout=DEADLINE,
            ) as events,
        ):
            assert json.loads(doomed.recv(timeout=10))["type"] == "initial_data"
            assert json.loads(spared.recv(timeout=10))["type"] == "initial_data"
            lines = events.iter_lines()
            assert next(lines) == "retry: 1000"
            started = time.monotonic()

            revoking = _revoke(
                first, jti, expires_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat()
            )

            with pytest.raises(ConnectionClosed) as closed:
                doomed.recv(timeout=DEADLINE)
            socket_closed_after = time.monotonic() - started
            rest = list(lines)  # ends when the stream does (a read timeout fails the test)
            stream_ended_after = time.monotonic() - started
            spared_answers = spared.ping().wait(2)

    assert revoking.status_code == 200
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4401, "token revoked")
    assert socket_closed_after < DEADLINE and stream_ended_after < DEADLINE
    assert all(line in ("", ": keep-alive") for line in rest), rest
    assert spared_answers  # another token of the same user keeps its socket


def test_only_admins_revoke_and_bodies_are_checked(
    user: Caller, service: Caller, admin: Caller
) -> None:
    for caller in (user, service):
        assert_error(caller.http.post("/auth/revoke", json={"jti": "x"}), 403, "/auth/revoke")
    bad = admin.http.post(
        "/auth/revoke", json={"jti": "", "expires_at": "2030-01-01T00:00:00", "x": 1}
    )
    body = assert_error(bad, 422, "/auth/revoke")
    assert sorted(e["loc"][-1] for e in body["errors"]) == ["expires_at", "x"]
    blank = assert_error(admin.http.post("/auth/revoke", json={"jti": " "}), 422, "/auth/revoke")
    assert blank["errors"] == [{"loc": ["body", "jti"], "msg": "must be 1-255 characters"}]
    default = admin.http.post("/auth/revoke", json={"jti": str(uuid.uuid4())})
    until = datetime.fromisoformat(default.json()["revoked_until"])
    assert timedelta(days=29) < until - datetime.now(UTC) <= timedelta(days=30)
