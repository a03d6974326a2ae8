"""Per-caller rate limits: 429 with Retry-After, one budget across instances with Redis."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from api.auth import Principal, TokenVerifier

from .conftest import running_service, token
from .support import assert_error


def _get(url: str, subject: str, path: str = "/positions") -> httpx.Response:
    return httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {token(subject)}"})


def test_a_caller_beyond_its_burst_gets_429_with_retry_after(api_database: str) -> None:
    env = {"DATABASE_URL": api_database, "RATE_LIMIT_PER_SECOND": "2", "RATE_LIMIT_BURST": "3"}
    with running_service(env) as url:
        allowed = [_get(url, "greedy").status_code for _ in range(3)]
        refused = _get(url, "greedy")
        someone_else = _get(url, "patient")
        probes = [httpx.get(f"{url}{path}") for path in ["/health", "/metrics"] * 5]
        time.sleep(1.1)  # two more tokens
        later = _get(url, "greedy")

    assert allowed == [200, 200, 200]
    assert_error(refused, 429, "/positions")
    assert int(refused.headers["retry-after"]) >= 1
    assert someone_else.status_code == 200
    assert {probe.status_code for probe in probes} == {200}
    assert later.status_code == 200


def test_requests_without_a_token_are_limited_by_address(api_database: str) -> None:
    env = {"DATABASE_URL": api_database, "RATE_LIMIT_PER_SECOND": "1", "RATE_LIMIT_BURST": "2"}
    with running_service(env) as url:
        answers = [httpx.get(f"{url}/positions").status_code for _ in range(3)]

    assert answers == [401, 401, 429]


def test_with_redis_a_caller_has_one_budget_across_instances(
    api_database: str, redis_url: str
) -> None:
    env = {
        "DATABASE_URL": api_database,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": f"test-{uuid.uuid4().hex}",
        "RATE_LIMIT_PER_SECOND": "0.5",
        "RATE_LIMIT_BURST": "4",
    }
    with running_service(env) as first, running_service(env) as second:
        spread = [_get(url, "roamer").status_code for url in (first, second, first, second)]
        refused = [_get(url, "roamer").status_code for url in (first, second)]

    assert spread == [200, 200, 200, 200]
    assert refused == [429, 429]


def test_a_token_is_verified_once_per_request_though_the_limiter_reads_it_too(
    api_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str | None] = []
    check = TokenVerifier.principal_from_header

    def counted(verifier: TokenVerifier, header: str | None) -> Principal:
        checked.append(header)
        return check(verifier, header)

    monkeypatch.setattr(TokenVerifier, "principal_from_header", counted)
    env = {"DATABASE_URL": api_database, "RATE_LIMIT_PER_SECOND": "100"}
    with running_service(env) as url:
        checked.clear()
        answer = _get(url, "counted")
        with_bad_token = httpx.get(f"{url}/positions", headers={"Authorization": "Bearer x.y.z"})

    assert answer.status_code == 200 and with_bad_token.status_code == 401
    assert len(checked) == 2  # one per request
