"""Who may do what, over every route (docs/api.md, "Authentication and roles", "Positions").

Three parts:

1. Authentication: every route but /health refuses a missing, malformed, forged or expired token
   with 401, the standard error body and `WWW-Authenticate: Bearer`, and records nothing.
2. The role matrix: route x role -> status, on a position owned by `owner`, looked at by its owner,
   another user, an admin and a service; each cell also checks what the call did (or did not do).
3. Focused isolation tests: lists and summaries confined to the caller, another user's position
   indistinguishable from a missing one (also where its state would otherwise show through: a
   conflict, a stale version, a closed position), bulk updates over mixed ids, opening for another
   owner, deletion, prices, idempotency keys kept per caller.

Decisions of this codebase stated in docs/api.md (asserted here, so a change is noticed):
- the service role reads everything and posts prices but may not create or change positions (403);
- a user's DELETE is 403 whoever owns the position (the role may never delete; nothing leaks);
- a user naming itself in `?owner=` is allowed; anyone else is 403, not an empty answer;
- a token with an unknown role, or without `exp`, is 401 (not 403): the token itself is invalid;
- HTTP routes never take the token from `?token=` (only the WebSocket does);
- /health ignores whatever Authorization header it is given.
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning

from api.auth import Role

from .conftest import SECRET, Caller, token
from .support import assert_error, b64url, fresh_symbol

# --- helpers ----------------------------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def unique_symbol() -> str:
    """A symbol no other test uses: market prices are global."""
    return "T" + uuid.uuid4().hex[:10].upper()


def ids(positions: list[dict]) -> list[str]:
    return [p["id"] for p in positions]


def hour_from_now() -> int:
    return int((datetime.now(UTC) + timedelta(hours=1)).timestamp())


def signed(claims: dict, *, key: str = SECRET, algorithm: str = "HS256") -> str:
    with warnings.catch_warnings():  # HS384 with the tests' HS256 secret: short, on purpose
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, key, algorithm=algorithm)


def unsigned(claims: dict) -> str:
    """`alg: none`: a header, the claims, and no signature."""
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(claims).encode())}."


def tampered(subject: str) -> str:
    """A genuine user token with its claims rewritten to say admin; the old signature."""
    header, _, signature = token(subject, Role.USER).split(".")
    claims = {"sub": subject, "role": "admin", "exp": hour_from_now()}
    return f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"


@pytest.fixture
def observer(make_caller) -> Caller:
    """A service caller: reads any position without being able to change one."""
    return make_caller(Role.SERVICE)


def seen(observer: Caller, position_id: str) -> dict | None:
    """The position as it stands, or None when it answers 404."""
    response = observer.http.get(f"/positions/{position_id}")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return response.json()


# --- 1. authentication ------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """A route and a request to it that would succeed for an allowed caller."""

    method: str
    path: str  # "{id}" stands for a position's id
    json: Any = None
    params: dict[str, Any] = field(default_factory=dict)
    pending: bool = False  # the position must be a pending order (POST /open)

    def url(self, position_id: str) -> str:
        return self.path.replace("{id}", position_id)

    def call(
        self, client: httpx.Client, position_id: str, symbol: str, **extra: Any
    ) -> httpx.Response:
        body = self.json(position_id, symbol) if callable(self.json) else self.json
        params = {**self.params, **extra.pop("params", {})}
        return client.request(
            self.method, self.url(position_id), json=body, params=params or None, **extra
        )

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


ROUTES: dict[str, Route] = {
    route_.__str__(): route_
    for route_ in (
        Route("GET", "/positions"),
        Route("GET", "/positions/{id}"),
        Route(
            "POST",
            "/positions",
            json=lambda _, symbol: {
                "symbol": symbol,
                "side": "long",
                "quantity": 1,
                "entry_price": 100,
            },
        ),
        Route("PUT", "/positions/{id}", json={"notes": "changed"}),
        Route("POST", "/positions/{id}/open", json={"entry_price": 101}, pending=True),
        Route("POST", "/positions/{id}/increase", json={"quantity": 5, "price": 110}),
        Route("POST", "/positions/{id}/close", params={"exit_price": 120}),
        Route("DELETE", "/positions/{id}"),
        Route(
            "POST",
            "/positions/bulk-update",
            json=lambda position_id, _: {
                "position_ids": [position_id],
                "updates": {"notes": "bulk"},
            },
        ),
        Route("POST", "/positions/update-prices", json=lambda _, symbol: {symbol: 150}),
        Route("GET", "/portfolio/summary"),
    )
}

# How an intruder (with a fresh subject, claiming admin where a token carries claims) calls.
BAD_CREDENTIALS: dict[str, Callable[[str], tuple[dict[str, str], dict[str, str]]]] = {
    "no Authorization header": lambda s: ({}, {}),
    "empty Authorization header": lambda s: ({"Authorization": ""}, {}),
    "Bearer without a token": lambda s: ({"Authorization": "Bearer"}, {}),
    "Basic scheme": lambda s: ({"Authorization": "Basic " + b64url(f"{s}:pw".encode())}, {}),
    "token without the Bearer scheme": lambda s: ({"Authorization": token(s, Role.ADMIN)}, {}),
    "Bearer with two tokens": lambda s: (
        {"Authorization": f"Bearer {token(s, Role.ADMIN)} {token(s, Role.ADMIN)}"},
        {},
    ),
    "not a JWT": lambda s: ({"Authorization": "Bearer not-a-jwt"}, {}),
    "wrong signature": lambda s: (
        {
            "Authorization": "Bearer "
            + signed(
                {"sub": s, "role": "admin", "exp": hour_from_now()},
                key="another-secret-that-is-also-long-enough-for-hs256",
            )
        },
        {},
    ),
    "tampered claims": lambda s: ({"Authorization": f"Bearer {tampered(s)}"}, {}),
    "expired": lambda s: (
        {"Authorization": f"Bearer {token(s, Role.ADMIN, ttl=timedelta(seconds=-30))}"},
        {},
    ),
    "alg none": lambda s: (
        {
            "Authorization": "Bearer "
            + unsigned({"sub": s, "role": "admin", "exp": hour_from_now()})
        },
        {},
    ),
    "alg HS384 with the right secret": lambda s: (
        {
            "Authorization": "Bearer "
            + signed({"sub": s, "role": "admin", "exp": hour_from_now()}, algorithm="HS384")
        },
        {},
    ),
    "no sub": lambda s: (
        {"Authorization": "Bearer " + signed({"role": "admin", "exp": hour_from_now()})},
        {},
    ),
    "empty sub": lambda s: (
        {"Authorization": "Bearer " + signed({"sub": "", "role": "admin", "exp": hour_from_now()})},
        {},
    ),
    "no exp": lambda s: ({"Authorization": "Bearer " + signed({"sub": s, "role": "admin"})}, {}),
    "unknown role": lambda s: (
        {"Authorization": "Bearer " + signed({"sub": s, "role": "root", "exp": hour_from_now()})},
        {},
    ),
    "valid token in ?token= instead of the header": lambda s: ({}, {"token": token(s, Role.ADMIN)}),
}


@pytest.mark.parametrize("credentials", BAD_CREDENTIALS)
@pytest.mark.parametrize("route", ROUTES)
def test_a_bad_or_missing_token_is_401_and_records_nothing(
    route: str, credentials: str, anonymous: httpx.Client, user: Caller, observer: Caller
) -> None:
    the_route = ROUTES[route]
    symbol = unique_symbol()
    victim = user.open(symbol=symbol, status="pending" if the_route.pending else "open")
    intruder = unique("intruder")
    headers, params = BAD_CREDENTIALS[credentials](intruder)
    correlation_id = unique("corr")

    response = the_route.call(
        anonymous,
        victim["id"],
        symbol,
        params=params,
        headers={**headers, "X-Correlation-ID": correlation_id},
    )

    assert_error(response, 401, the_route.url(victim["id"]), correlation_id)
    assert response.headers["www-authenticate"].split()[0] == "Bearer"
    for secret_part in headers.get("Authorization", "").split()[1:]:
        assert secret_part not in response.text  # the token is never echoed
    # Nothing happened: the victim is as it was, no price was posted, nothing opened for anyone.
    assert seen(observer, victim["id"]) == victim
    assert observer.http.get("/positions", params={"symbol": symbol}).json() == [victim]


@pytest.mark.parametrize("credentials", ["no Authorization header", "not a JWT", "expired"])
def test_health_needs_no_token_and_ignores_a_bad_one(
    credentials: str, anonymous: httpx.Client
) -> None:
    headers, _ = BAD_CREDENTIALS[credentials](unique("anyone"))

    response = anonymous.get("/health", headers=headers)

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "healthy"
    assert "www-authenticate" not in response.headers


def test_the_bearer_scheme_is_case_insensitive(user: Caller, anonymous: httpx.Client) -> None:
    """RFC 6750/7235: the scheme name is case-insensitive; the token is what matters."""
    mine = user.open()

    response = anonymous.get(
        f"/positions/{mine['id']}", headers={"Authorization": f"bearer {token(user.subject)}"}
    )

    assert response.status_code == 200, response.text
    assert response.json() == mine


# --- 2. the role matrix ------------------------------------------------------------------------

# Who calls, on a position owned by `owner` (a user): the owner itself, another user, an admin,
# a service. `?owner=` names the position's owner.
ROLES = ("owner", "other_user", "admin", "service")

MATRIX: dict[str, dict[str, int]] = {
    #                                 owner  other_user  admin  service
    "GET /positions": dict(owner=200, other_user=200, admin=200, service=200),
    "GET /positions?owner=": dict(owner=200, other_user=403, admin=200, service=200),
    "GET /positions/{id}": dict(owner=200, other_user=404, admin=200, service=200),
    "POST /positions": dict(owner=201, other_user=201, admin=201, service=403),
    "PUT /positions/{id}": dict(owner=200, other_user=404, admin=200, service=403),
    "POST /positions/{id}/open": dict(owner=200, other_user=404, admin=200, service=403),
    "POST /positions/{id}/increase": dict(owner=200, other_user=404, admin=200, service=403),
    "POST /positions/{id}/close": dict(owner=200, other_user=404, admin=200, service=403),
    "DELETE /positions/{id}": dict(owner=403, other_user=403, admin=204, service=403),
    "POST /positions/bulk-update": dict(owner=200, other_user=200, admin=200, service=403),
    "POST /positions/update-prices": dict(owner=403, other_user=403, admin=200, service=200),
    "GET /portfolio/summary": dict(owner=200, other_user=200, admin=200, service=200),
    "GET /portfolio/summary?owner=": dict(owner=200, other_user=403, admin=200, service=200),
}
assert set(MATRIX) >= set(ROUTES), "every route is in the matrix"

CASES = [
    pytest.param(route, role, MATRIX[route][role], id=f"{route} as {role}")
    for route in MATRIX
    for role in ROLES
]


@pytest.fixture
def callers(user: Caller, other_user: Caller, admin: Caller, service: Caller) -> dict[str, Caller]:
    return {"owner": user, "other_user": other_user, "admin": admin, "service": service}


@pytest.mark.parametrize(("route", "role", "status"), CASES)
def test_role_matrix(
    route: str, role: str, status: int, callers: dict[str, Caller], observer: Caller
) -> None:
    owner, caller = callers["owner"], callers[role]
    base, _, owner_filter = route.partition("?")
    the_route = ROUTES[base]
    symbol = unique_symbol()
    before = owner.open(
        symbol=symbol,
        strategy=unique("strategy"),
        status="pending" if the_route.pending else "open",
    )
    position_id = before["id"]
    params = {"owner": owner.subject} if owner_filter else {}
    if base == "GET /positions" and not owner_filter:
        params = {"strategy": before["strategy"]}  # this test's position only, whoever looks

    response = the_route.call(caller.http, position_id, symbol, params=params)

    if status >= 400:
        assert_error(response, status, the_route.url(position_id))
    else:
        assert response.status_code == status, response.text
    after = seen(observer, position_id)
    changes_it = status < 400 and the_route.method != "GET" and "{id}" in the_route.path
    if base == "POST /positions/bulk-update" and status == 200:
        body = response.json()
        if role == "other_user":  # not its position: refused for that id alone, as if missing
            assert body["updated"] == []
            assert [(f["id"], f["status"]) for f in body["failed"]] == [(position_id, 404)]
        else:
            assert ids(body["updated"]) == [position_id] and body["failed"] == []
            changes_it = True
    if base == "DELETE /positions/{id}" and status == 204:
        assert after is None
        assert response.content == b""
        return
    if base == "POST /positions/update-prices" and status == 200:
        # Prices are global: the position is re-marked, nothing else about it changes.
        assert after["current_price"] == 150
        assert {
            **after,
            "current_price": None,
            "market_value": None,
            "unrealized_pnl": None,
            "unrealized_pnl_pct": None,
            "updated_at": None,
        } == {
            **before,
            "current_price": None,
            "market_value": None,
            "unrealized_pnl": None,
            "unrealized_pnl_pct": None,
            "updated_at": None,
        }
    elif not changes_it:
        assert after == before, "a refused or read-only call changed nothing"
    else:
        assert after["version"] == before["version"] + 1
        assert after["owner"] == owner.subject, "changing a position never moves it"

    if status >= 400:
        return
    answer = response.json()
    match base:
        case "GET /positions/{id}":
            assert answer == before
            assert response.headers["etag"] == f'"{before["version"]}"'
        case "GET /positions":
            # Only the caller's own positions for a user, anyone's for admin and service.
            expected = [] if role == "other_user" else [before]
            assert answer == expected
            assert response.headers["x-total-count"] == str(len(expected))
        case "GET /portfolio/summary":
            book_of_one = role == "owner" or owner_filter
            if role == "other_user":
                assert answer["total_positions"] == 0 and answer["by_symbol"] == {}
            elif book_of_one:
                assert answer["total_positions"] == 1
                assert list(answer["by_symbol"]) == [symbol]
            else:  # the whole book
                assert answer["total_positions"] >= 1 and symbol in answer["by_symbol"]
        case "POST /positions":
            assert answer["owner"] == caller.subject
            assert response.headers["location"] == f"/positions/{answer['id']}"
            assert seen(observer, answer["id"]) == answer
        case "POST /positions/update-prices":
            assert answer["symbols"] == [symbol] and answer["positions_updated"] == 1
        case "POST /positions/bulk-update":
            if role != "other_user":
                assert answer["updated"] == [after]
        case _:  # a command on the position: the answer is the position as it now is
            assert answer == after


def test_a_refused_price_update_marks_nothing(user: Caller, observer: Caller) -> None:
    symbol = unique_symbol()
    mine = user.open(symbol=symbol)

    response = user.http.post("/positions/update-prices", json={symbol: 150})

    assert_error(response, 403, "/positions/update-prices")
    assert seen(observer, mine["id"])["current_price"] is None


@pytest.mark.parametrize("role", [Role.ADMIN, Role.SERVICE])
def test_admin_and_service_prices_mark_every_users_positions(
    role: Role, make_caller, user: Caller, other_user: Caller, observer: Caller
) -> None:
    symbol = unique_symbol()
    positions = [user.open(symbol=symbol), other_user.open(symbol=symbol)]

    response = make_caller(role).http.post("/positions/update-prices", json={symbol: "150.5"})

    assert response.status_code == 200, response.text
    assert response.json()["positions_updated"] == 2
    for position in positions:
        assert seen(observer, position["id"])["current_price"] == 150.5


# --- 3. isolation -------------------------------------------------------------------------------


def test_a_user_lists_only_its_own_positions(user: Caller, other_user: Caller) -> None:
    strategy = unique("shared")
    mine = [user.open(strategy=strategy), user.open(strategy=strategy, symbol="MSFT")]
    theirs = other_user.open(strategy=strategy)

    for params in (
        {},
        {"strategy": strategy},
        {"symbol": "AAPL"},
        {"status": "open"},
        {"owner": user.subject},
    ):
        response = user.http.get("/positions", params=params)
        assert response.status_code == 200, (params, response.text)
        listed = response.json()
        assert theirs["id"] not in ids(listed), params
        assert {p["owner"] for p in listed} <= {user.subject}, params
        expected = [p for p in reversed(mine) if p["symbol"] == params.get("symbol", p["symbol"])]
        assert ids(listed) == ids(expected), params  # newest first
        assert response.headers["x-total-count"] == str(len(expected)), params

    assert other_user.http.get("/positions").json() == [theirs]


def test_a_users_summary_counts_only_its_own_book(user: Caller, other_user: Caller) -> None:
    symbol = fresh_symbol()  # unpriced by the market: other tests post prices for common symbols
    user.open(symbol=symbol, quantity=10, entry_price=100)
    other_user.open(symbol="MSFT", quantity=5, entry_price=300)
    other_user.open(symbol="TSLA", side="short", quantity=1, entry_price=50)

    for params in ({}, {"owner": user.subject}):
        response = user.http.get("/portfolio/summary", params=params)
        assert response.status_code == 200, response.text
        summary = response.json()
        assert summary["total_positions"] == 1
        assert summary["total_market_value"] == 1000
        assert summary["short_positions"] == 0
        assert list(summary["by_symbol"]) == [symbol]


@pytest.mark.parametrize("path", ["/positions", "/portfolio/summary"])
def test_a_user_naming_another_owner_is_403(path: str, user: Caller, other_user: Caller) -> None:
    other_user.open()
    user.open()

    for owner in (other_user.subject, unique("nobody"), ""):
        response = user.http.get(path, params={"owner": owner})
        body = assert_error(response, 403, path)
        assert other_user.subject not in body["detail"]


@pytest.mark.parametrize("role", [Role.ADMIN, Role.SERVICE])
def test_admin_and_service_filter_by_owner(
    role: Role, make_caller, user: Caller, other_user: Caller
) -> None:
    reader = make_caller(role)
    strategy = unique("shared")
    mine = [user.open(strategy=strategy), user.open(strategy=strategy, symbol="MSFT")]
    theirs = other_user.open(strategy=strategy)

    everyone = reader.http.get("/positions", params={"strategy": strategy})
    only_user = reader.http.get("/positions", params={"owner": user.subject})
    nobody = reader.http.get("/positions", params={"owner": unique("nobody")})
    summary = reader.http.get("/portfolio/summary", params={"owner": user.subject})

    assert ids(everyone.json()) == [theirs["id"], *ids(reversed(mine))]
    assert only_user.json() == list(reversed(mine))
    assert only_user.headers["x-total-count"] == "2"
    assert (nobody.status_code, nobody.json()) == (200, [])
    users_own = user.http.get("/portfolio/summary").json()
    assert summary.status_code == 200
    assert {**summary.json(), "calculated_at": None} == {**users_own, "calculated_at": None}
    whole_book = reader.http.get("/portfolio/summary").json()
    assert whole_book["total_positions"] >= 3


@pytest.mark.parametrize("role", [Role.ADMIN, Role.SERVICE])
def test_admin_and_service_read_anyones_position(role: Role, make_caller, user: Caller) -> None:
    mine = user.open(notes="private")

    response = make_caller(role).http.get(f"/positions/{mine['id']}")

    assert response.status_code == 200, response.text
    assert response.json() == mine


# Routes that name a position, each with a request that would succeed on one's own position.
NAMING = {
    name: route_
    for name, route_ in ROUTES.items()
    if "{id}" in route_.path and route_.method != "DELETE"
}


@pytest.mark.parametrize("route", NAMING)
def test_another_users_position_answers_exactly_like_a_missing_one(
    route: str, user: Caller, other_user: Caller, observer: Caller
) -> None:
    the_route = NAMING[route]
    theirs = other_user.open(status="pending" if the_route.pending else "open")
    missing = str(uuid.uuid4())

    as_theirs = the_route.call(user.http, theirs["id"], "AAPL")
    as_missing = the_route.call(user.http, missing, "AAPL")

    body = assert_error(as_theirs, 404, the_route.url(theirs["id"]))
    assert body["detail"] == assert_error(as_missing, 404, the_route.url(missing))["detail"]
    assert "etag" not in as_theirs.headers
    assert seen(observer, theirs["id"]) == theirs
    # ... and the owner can do it: the 404 is about who asks, not about the request.
    assert the_route.call(other_user.http, theirs["id"], "AAPL").status_code == 200


@dataclass(frozen=True)
class Probe:
    """A request whose answer on one's own position would reveal the position's state."""

    own_status: int
    prepare: Callable[[Caller, dict], None]  # bring the (owner's) position into that state
    request: Callable[[httpx.Client, dict], httpx.Response]
    fields: dict = field(default_factory=dict)


def _close(owner: Caller, position: dict) -> None:
    assert (
        owner.http.post(f"/positions/{position['id']}/close", params={"exit_price": 90}).status_code
        == 200
    )


def _nothing(owner: Caller, position: dict) -> None:
    pass


PROBES = {
    "close with no exit price and no market price (409)": Probe(
        409, _nothing, lambda c, p: c.post(f"/positions/{p['id']}/close")
    ),
    "close more than is open (422)": Probe(
        422,
        _nothing,
        lambda c, p: c.post(
            f"/positions/{p['id']}/close", params={"exit_price": 100, "quantity": 1000}
        ),
    ),
    "stale If-Match (412)": Probe(
        412,
        _nothing,
        lambda c, p: c.put(
            f"/positions/{p['id']}", json={"notes": "x"}, headers={"If-Match": '"7"'}
        ),
    ),
    "change a closed position (409)": Probe(
        409, _close, lambda c, p: c.put(f"/positions/{p['id']}", json={"notes": "x"})
    ),
    "close a closed position (409)": Probe(
        409, _close, lambda c, p: c.post(f"/positions/{p['id']}/close", params={"exit_price": 100})
    ),
    "increase a closed position (409)": Probe(
        409,
        _close,
        lambda c, p: c.post(f"/positions/{p['id']}/increase", json={"quantity": 1, "price": 100}),
    ),
    "fill an open position (409)": Probe(
        409, _nothing, lambda c, p: c.post(f"/positions/{p['id']}/open")
    ),
    "take profit below the entry (422)": Probe(
        422, _nothing, lambda c, p: c.put(f"/positions/{p['id']}", json={"take_profit": 50})
    ),
}


@pytest.mark.parametrize("probe", list(PROBES))
def test_another_users_position_state_never_shows_through(
    probe: str, user: Caller, other_user: Caller, observer: Caller
) -> None:
    """What would be a 409/412/422 on one's own position is a plain 404 on another's."""
    the_probe = PROBES[probe]
    theirs = other_user.open()
    the_probe.prepare(other_user, theirs)
    theirs = seen(observer, theirs["id"])
    missing = {"id": str(uuid.uuid4())}

    as_theirs = the_probe.request(user.http, theirs)
    as_missing = the_probe.request(user.http, missing)
    as_owner = the_probe.request(other_user.http, theirs)

    assert as_owner.status_code == the_probe.own_status, as_owner.text  # the state is real
    assert as_theirs.status_code == 404, as_theirs.text
    assert as_theirs.json()["detail"] == as_missing.json()["detail"]
    assert seen(observer, theirs["id"]) == theirs


IF_MATCH_ROUTES = {
    "PUT /positions/{id}": (
        Role.USER,
        lambda c, i, h: c.put(f"/positions/{i}", json={"notes": "x"}, headers=h),
    ),
    "POST /positions/{id}/open": (
        Role.USER,
        lambda c, i, h: c.post(f"/positions/{i}/open", headers=h),
    ),
    "POST /positions/{id}/increase": (
        Role.USER,
        lambda c, i, h: c.post(
            f"/positions/{i}/increase", json={"quantity": 1, "price": 100}, headers=h
        ),
    ),
    "POST /positions/{id}/close": (
        Role.USER,
        lambda c, i, h: c.post(f"/positions/{i}/close", params={"exit_price": 100}, headers=h),
    ),
    "DELETE /positions/{id} (admin)": (
        Role.ADMIN,
        lambda c, i, h: c.delete(f"/positions/{i}", headers=h),
    ),
}


def _if_match_cases() -> list:
    cases = []
    for route, (role, _) in IF_MATCH_ROUTES.items():
        if role == Role.USER:  # an admin sees every position: a 412 there is right
            cases.append(pytest.param(route, "another user's", id=f"{route}-another user's"))
        cases.append(pytest.param(route, "missing", id=f"{route}-missing"))
        cases.append(pytest.param(route, "deleted", id=f"{route}-deleted"))
    return cases


@pytest.mark.parametrize(("route", "target"), _if_match_cases())
def test_a_stale_if_match_on_a_position_the_caller_cannot_see_is_404(
    route: str, target: str, make_caller, other_user: Caller, admin: Caller
) -> None:
    """404 comes before 412: a version check on what you cannot see would tell you it exists."""
    role, call = IF_MATCH_ROUTES[route]
    caller = make_caller(role)
    if target == "missing":
        position_id = str(uuid.uuid4())
    else:
        position_id = other_user.open()["id"]
    if target == "deleted":
        assert admin.http.delete(f"/positions/{position_id}").status_code == 204
        caller = admin if role == Role.ADMIN else other_user  # those who once could see it

    response = call(caller.http, position_id, {"If-Match": '"7"'})

    body = assert_error(response, 404, response.request.url.path)
    assert body["detail"] == "position not found"
    assert "etag" not in response.headers


def test_bulk_update_fails_another_users_ids_alone(
    user: Caller, other_user: Caller, observer: Caller
) -> None:
    first, second = user.open(), user.open(symbol="MSFT")
    theirs = other_user.open()
    missing = str(uuid.uuid4())

    response = user.http.post(
        "/positions/bulk-update",
        json={
            "position_ids": [first["id"], theirs["id"], missing, second["id"]],
            "updates": {"notes": "mine"},
        },
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert ids(body["updated"]) == [first["id"], second["id"]]
    assert all(p["notes"] == "mine" and p["owner"] == user.subject for p in body["updated"])
    failed = {f["id"]: f for f in body["failed"]}
    assert set(failed) == {theirs["id"], missing}
    assert failed[theirs["id"]]["status"] == 404
    # Indistinguishable from an id that exists nowhere.
    assert {k: v for k, v in failed[theirs["id"]].items() if k != "id"} == {
        k: v for k, v in failed[missing].items() if k != "id"
    }
    assert seen(observer, theirs["id"]) == theirs


def test_an_atomic_bulk_update_with_another_users_id_changes_nothing(
    user: Caller, other_user: Caller, observer: Caller
) -> None:
    mine = user.open()
    theirs = other_user.open()

    response = user.http.post(
        "/positions/bulk-update",
        json={
            "position_ids": [mine["id"], theirs["id"]],
            "updates": {"notes": "all or nothing"},
            "atomic": True,
        },
    )

    assert_error(response, 409, "/positions/bulk-update")
    assert [(f["id"], f["status"]) for f in response.json()["failed"]] == [(theirs["id"], 404)]
    assert seen(observer, mine["id"]) == mine
    assert seen(observer, theirs["id"]) == theirs


@pytest.mark.parametrize("atomic", [False, True])
def test_admin_bulk_updates_anyones_positions(
    atomic: bool, admin: Caller, user: Caller, other_user: Caller
) -> None:
    positions = [user.open(), other_user.open()]

    response = admin.http.post(
        "/positions/bulk-update",
        json={
            "position_ids": ids(positions),
            "updates": {"notes": "desk"},
            "atomic": atomic,
        },
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["failed"] == []
    assert [(p["id"], p["owner"], p["notes"]) for p in body["updated"]] == [
        (p["id"], p["owner"], "desk") for p in positions
    ]


def test_ownership_cannot_be_changed_through_an_update(
    user: Caller, other_user: Caller, admin: Caller, observer: Caller
) -> None:
    mine = user.open()

    for caller in (user, admin):
        put = caller.http.put(f"/positions/{mine['id']}", json={"owner": other_user.subject})
        bulk = caller.http.post(
            "/positions/bulk-update",
            json={"position_ids": [mine["id"]], "updates": {"owner": other_user.subject}},
        )
        assert_error(put, 422, f"/positions/{mine['id']}")
        assert_error(bulk, 422, "/positions/bulk-update")

    assert seen(observer, mine["id"]) == mine
    assert other_user.http.get("/positions").json() == []


def test_a_user_may_not_open_a_position_for_someone_else(
    user: Caller, other_user: Caller, observer: Caller
) -> None:
    symbol = unique_symbol()

    response = user.http.post(
        "/positions",
        json={
            "symbol": symbol,
            "side": "long",
            "quantity": 1,
            "entry_price": 100,
            "owner": other_user.subject,
        },
    )

    assert_error(response, 403, "/positions")
    assert observer.http.get("/positions", params={"symbol": symbol}).json() == []
    # Naming itself is no different from naming no one.
    assert user.open(symbol=symbol, owner=user.subject)["owner"] == user.subject


def test_an_admin_opens_a_position_that_belongs_to_the_named_owner(
    admin: Caller, user: Caller, other_user: Caller
) -> None:
    opened = admin.open(owner=user.subject)

    assert opened["owner"] == user.subject
    assert user.http.get("/positions").json() == [opened]
    assert admin.http.get("/positions", params={"owner": admin.subject}).json() == []
    assert (
        user.http.put(f"/positions/{opened['id']}", json={"notes": "mine now"}).status_code == 200
    )
    assert other_user.http.get(f"/positions/{opened['id']}").status_code == 404


def test_a_service_may_not_open_a_position_even_for_a_named_owner(
    service: Caller, user: Caller
) -> None:
    for extra in ({}, {"owner": user.subject}, {"owner": service.subject}):
        response = service.http.post(
            "/positions",
            json={"symbol": "AAPL", "side": "long", "quantity": 1, "entry_price": 100, **extra},
        )
        assert_error(response, 403, "/positions")
    assert user.http.get("/positions").json() == []
    assert service.http.get("/positions", params={"owner": service.subject}).json() == []


def test_an_admin_delete_hides_the_position_from_everyone(
    admin: Caller, user: Caller, service: Caller
) -> None:
    kept, deleted = user.open(), user.open(symbol="MSFT")

    response = admin.http.delete(f"/positions/{deleted['id']}")

    assert response.status_code == 204, response.text
    path = f"/positions/{deleted['id']}"
    for caller in (admin, user, service):
        assert_error(caller.http.get(path), 404, path)
    assert user.http.get("/positions").json() == [kept]
    assert admin.http.get("/positions", params={"owner": user.subject}).json() == [kept]
    assert user.http.get("/portfolio/summary").json()["total_positions"] == 1
    assert_error(user.http.put(path, json={"notes": "x"}), 404, path)
    assert_error(admin.http.put(path, json={"notes": "x"}), 404, path)
    assert_error(admin.http.delete(path), 404, path)


@pytest.mark.parametrize("role", [Role.USER, Role.SERVICE])
def test_only_an_admin_may_delete_even_its_own_position(
    role: Role, make_caller, admin: Caller, observer: Caller
) -> None:
    caller = make_caller(role)
    position = (caller if role == Role.USER else admin).open(owner=caller.subject)

    response = caller.http.delete(f"/positions/{position['id']}")

    assert_error(response, 403, f"/positions/{position['id']}")
    assert seen(observer, position["id"]) == position


def test_an_admin_delete_of_a_missing_position_is_404(admin: Caller) -> None:
    missing = f"/positions/{uuid.uuid4()}"

    assert_error(admin.http.delete(missing), 404, missing)


def test_idempotency_keys_belong_to_their_caller(
    user: Caller, other_user: Caller, observer: Caller
) -> None:
    key = unique("key")
    body = {"symbol": "AAPL", "side": "long", "quantity": 1, "entry_price": 100}
    first = user.http.post("/positions", json=body, headers={"Idempotency-Key": key})

    second = other_user.http.post("/positions", json=body, headers={"Idempotency-Key": key})

    assert (first.status_code, second.status_code) == (201, 201), second.text
    assert "idempotent-replayed" not in second.headers
    assert second.json()["id"] != first.json()["id"]
    assert second.json()["owner"] == other_user.subject
    # Another caller's key never replays that caller's answer, not even on its position.
    close = f"/positions/{first.json()['id']}/close"
    assert (
        user.http.post(
            close, params={"exit_price": 1}, headers={"Idempotency-Key": key + "c"}
        ).status_code
        == 200
    )
    replay = other_user.http.post(
        close, params={"exit_price": 1}, headers={"Idempotency-Key": key + "c"}
    )
    assert_error(replay, 404, close)
    assert "idempotent-replayed" not in replay.headers
    assert seen(observer, first.json()["id"])["status"] == "closed"


def test_a_users_identity_comes_from_the_token_alone(
    make_caller, other_user: Caller, observer: Caller
) -> None:
    """Two tokens with the same `sub` are one user: the subject, not the token, owns."""
    first = make_caller(Role.USER)
    second_token = make_caller(Role.USER, subject=first.subject)
    opened = first.open()

    assert second_token.http.get(f"/positions/{opened['id']}").json() == opened
    assert other_user.http.get(f"/positions/{opened['id']}").status_code == 404
    assert seen(observer, opened["id"]) == opened
