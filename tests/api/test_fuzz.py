"""Fuzzing the HTTP API: schemathesis over the OpenAPI document, then hostile inputs by hand.

Two generated runs, each once per role (user, admin, service) with a valid token:

- `test_fuzz_conformance`: the document as served, schema-valid and schema-violating requests.
  No 5xx anywhere; every answer has a documented status, content type and body; auth is enforced;
  undocumented methods answer 405; what violates the document is refused.
- `test_fuzz_deep`: schema-valid requests only, from a copy of the document whose request bodies
  are narrowed to values the domain rules accept (README: symbols, 8 places, 10^12), so that
  openings, amendments, fills, increases, closes and bulk updates actually succeed on real
  positions and fuzzed text reaches the database. The answers are still checked against the
  document as served.

The document fuzzed is `api.openapi.document()`, loaded at import: schemathesis's lazy
`schemathesis.pytest.from_fixture` fails on pytest 9.2 (`'Function' object has no attribute
'_nodeid'`). `test_the_fuzzed_document_is_the_one_served` checks that it is exactly what the
running test server answers at `/openapi.json`.

Each generated run is bounded (25 examples per operation and phase, a fixed seed, derandomized,
no example database) so that it is the same in CI and on a laptop. `/events/stream` (endless) is
left out of both.

The hand-written cases after them assert exact statuses and the error body; several began as
bugs this file found (500s on a NUL byte, on non-UTF-8 bodies, on numbers and times beyond what
PostgreSQL holds; a wrong `Allow`; a document that did not say unknown fields are refused).
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks
from schemathesis.generation.modes import GenerationMode

from api.openapi import document

from .conftest import Caller, token

ROLES = ("user", "admin", "service")
SEED = 20261124
EXAMPLES = 25

SERVED = document()
"""What `GET /openapi.json` answers (the app serves `openapi.document()`; checked below)."""

# -- the generated runs --------------------------------------------------------------------------

conformance = schemathesis.openapi.from_dict(SERVED).exclude(path="/events/stream")
conformance.config.seed = SEED


_AMOUNT = {
    "anyOf": [
        {"type": "integer", "minimum": 1, "maximum": 1_000_000},
        {"type": "string", "pattern": r"^[1-9][0-9]{0,5}(\.[0-9]{1,8})?$"},
    ]
}
_NULLABLE_AMOUNT = {"anyOf": [_AMOUNT, {"type": "null"}]}
_TEXT_64 = {"anyOf": [{"type": "string", "maxLength": 64}, {"type": "null"}]}
_TEXT_2000 = {"anyOf": [{"type": "string", "maxLength": 2000}, {"type": "null"}]}
_FUZZ_SYMBOL = {"type": "string", "pattern": r"^FZ[A-Z]{1,4}$"}
"""Only symbols no other test uses: a market price fuzzed here must not re-mark their positions."""


_BODIES = [
    "OpenPositionBody",
    "AmendPositionBody",
    "FillPositionBody",
    "IncreasePositionBody",
    "BulkUpdateBody",
    "RevokeTokenBody",
]
SERVED_DECIMAL_QUERY = r"^-?\d+(\.\d+)?$"


def _narrowed(served: dict[str, Any]) -> dict[str, Any]:
    """The document with request bodies narrowed to what the domain accepts (generation only)."""
    doc = copy.deepcopy(served)
    schemas = doc["components"]["schemas"]
    opening = schemas["OpenPositionBody"]["properties"]
    opening |= {
        "symbol": _FUZZ_SYMBOL,
        "quantity": _AMOUNT,
        "entry_price": _AMOUNT,
        "stop_loss": _NULLABLE_AMOUNT,
        "take_profit": _NULLABLE_AMOUNT,
        "strategy": _TEXT_64,
        "notes": _TEXT_2000,
    }
    schemas["AmendPositionBody"]["properties"] |= {
        "current_price": _AMOUNT,
        "stop_loss": _NULLABLE_AMOUNT,
        "take_profit": _NULLABLE_AMOUNT,
        "strategy": _TEXT_64,
        "notes": _TEXT_2000,
    }
    schemas["FillPositionBody"]["properties"]["entry_price"] = _NULLABLE_AMOUNT
    schemas["IncreasePositionBody"]["properties"] |= {"quantity": _AMOUNT, "price": _AMOUNT}
    bulk = schemas["BulkUpdateBody"]["properties"]
    bulk["updates"] = {"$ref": "#/components/schemas/AmendPositionBody"}
    bulk["position_ids"]["maxItems"] = 20
    schemas["Prices"] |= {
        "propertyNames": _FUZZ_SYMBOL,
        "additionalProperties": _AMOUNT,
        "maxProperties": 5,
    }
    if "RevokeTokenBody" in schemas:
        schemas["RevokeTokenBody"]["properties"]["jti"] = {
            "type": "string",
            "minLength": 1,
            "maxLength": 255,
        }
        schemas["RevokeTokenBody"]["properties"]["expires_at"] = {"type": "null"}
    for name in _BODIES:
        if name in schemas:
            schemas[name]["additionalProperties"] = False
    for item in doc["paths"].values():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                schema = parameter["schema"]
                if parameter["name"] == "If-Match":
                    schema["pattern"] = r'^(W/)?"?[1-9]?[0-9]"?$'
                elif schema.get("pattern") == SERVED_DECIMAL_QUERY:
                    schema["pattern"] = r"^[1-9][0-9]{0,5}(\.[0-9]{1,8})?$"
    return doc


deep = schemathesis.openapi.from_dict(_narrowed(SERVED)).exclude(path="/events/stream")
deep.config.seed = SEED
deep.config.generation.update(modes=[GenerationMode.POSITIVE])

BOUNDED = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)

CONFORMANCE_CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
    checks.ignored_auth,
    checks.unsupported_method,
    checks.missing_required_header,
    checks.negative_data_rejection,
    checks.allow_header_conformance,
    # Not here, and why:
    # - positive_data_acceptance: the domain's rules (symbol pattern, stop below entry, 8 places,
    #   "as_of or at, not both") are not in the document, so schema-valid requests get a
    #   documented 422.
]


@dataclass
class Fuzzer:
    role: str
    headers: dict[str, str]
    position_ids: list[str]
    """Positions that exist, visible to the fuzzing role: open long, open short, pending, closed."""


def _seed_book(service_url: str, owner: str) -> list[str]:
    symbol = f"FZ{uuid.uuid4().hex[:4].upper()}"
    headers = {"Authorization": f"Bearer {token(owner, 'user')}"}
    bodies = [
        {"side": "long", "quantity": 10, "entry_price": 100, "stop_loss": 90, "take_profit": 120},
        {"side": "short", "quantity": 5, "entry_price": 50, "stop_loss": 60, "take_profit": 40},
        {"side": "long", "quantity": 3, "entry_price": 10, "status": "pending"},
        {"side": "long", "quantity": 2, "entry_price": 7, "strategy": "fuzz", "notes": "seed"},
    ]
    ids = []
    with httpx.Client(base_url=service_url, timeout=30, headers=headers) as http:
        for body in bodies:
            answer = http.post("/positions", json={"symbol": symbol, **body})
            assert answer.status_code == 201, answer.text
            ids.append(answer.json()["id"])
        closed = http.post(f"/positions/{ids[-1]}/close", params={"exit_price": 8})
        assert closed.status_code == 200, closed.text
    return ids


@pytest.fixture(params=ROLES)
def fuzzer(request: pytest.FixtureRequest, service_url: str) -> Fuzzer:
    """A role's token, and a fresh book of positions it can see (a user: its own)."""
    role = request.param
    owner = f"fuzz-user-{uuid.uuid4().hex[:10]}"
    subject = owner if role == "user" else f"fuzz-{role}-{uuid.uuid4().hex[:10]}"
    ids = _seed_book(service_url, owner)
    return Fuzzer(role, {"Authorization": f"Bearer {token(subject, role)}"}, ids)


def _aim(case: Any, position_ids: list[str]) -> None:
    """Point three cases in four at positions that exist (random ids only ever find a 404).

    The choice is a hash of the case, so a run is reproducible. Cases may be shared between the
    runs of each role: their parts are replaced, never edited in place.
    """
    pick = zlib.crc32(repr((case.query, case.headers, case.body)).encode()) % 4
    if pick == 3:
        return
    if case.path_parameters and "position_id" in case.path_parameters:
        case.path_parameters = {**case.path_parameters, "position_id": position_ids[pick]}
    if isinstance(case.body, dict) and isinstance(case.body.get("position_ids"), list):
        given = case.body["position_ids"]
        if all(isinstance(i, str) for i in given):
            case.body = {**case.body, "position_ids": [*position_ids[: pick + 1], *given]}


@conformance.parametrize()
@BOUNDED
def test_fuzz_conformance(case: Any, service_url: str, fuzzer: Fuzzer) -> None:
    _aim(case, fuzzer.position_ids)
    case.call_and_validate(
        base_url=service_url,
        headers=fuzzer.headers,
        checks=CONFORMANCE_CHECKS,
    )


def _one_key_per_request(case: Any) -> None:
    """Generated Idempotency-Keys repeat ("0" with another body: a documented 422); make each
    request's key its own, so that the commands run."""
    if case.headers and "Idempotency-Key" in case.headers:
        digest = zlib.crc32(repr((case.path_parameters, case.query, case.body)).encode())
        key = f"{case.headers['Idempotency-Key'][:200]}-{digest:08x}"
        case.headers = {**case.headers, "Idempotency-Key": key}


@deep.parametrize()
@BOUNDED
def test_fuzz_deep(case: Any, service_url: str, fuzzer: Fuzzer) -> None:
    _aim(case, fuzzer.position_ids)
    _one_key_per_request(case)
    response = case.call(base_url=service_url, headers=fuzzer.headers)
    # The answer is judged by the document as served, not by the narrowed copy.
    served_case = conformance[case.operation.path][case.method].Case(
        path_parameters=case.path_parameters,
        query=case.query,
        headers=case.headers,
        body=case.body,
        media_type=case.media_type,
    )
    served_case.validate_response(
        response,
        checks=[
            checks.not_a_server_error,
            checks.status_code_conformance,
            checks.content_type_conformance,
            checks.response_schema_conformance,
        ],
    )


def test_the_fuzzed_document_is_the_one_served(service_url: str) -> None:
    served = httpx.get(f"{service_url}/openapi.json")
    assert served.status_code == 200
    assert served.json() == json.loads(json.dumps(SERVED))


# -- hand-written cases: helpers -----------------------------------------------------------------

ERROR_KEYS = {"detail", "timestamp", "path", "correlation_id"}


def assert_error(response: httpx.Response, status: int, path: str) -> dict[str, Any]:
    """The exact status, and the one error body every error has."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) in (ERROR_KEYS, ERROR_KEYS | {"errors"}), body
    assert isinstance(body["detail"], str) and body["detail"]
    assert datetime.fromisoformat(body["timestamp"]).utcoffset() == timedelta(0)
    assert body["path"] == path
    assert body["correlation_id"] == response.headers["x-correlation-id"]
    return body


def assert_refused(response: httpx.Response, path: str, *locations: list[str]) -> None:
    """422 with a field error at each of `locations` (and nothing but field errors)."""
    body = assert_error(response, 422, path)
    assert isinstance(body.get("errors"), list) and body["errors"], body
    for error in body["errors"]:
        assert set(error) == {"loc", "msg"} and error["msg"], error
    found = [error["loc"] for error in body["errors"]]
    for location in locations:
        assert location in found, found


def opening(**fields: Any) -> dict[str, Any]:
    return {"symbol": "HAND1", "side": "long", "quantity": 1, "entry_price": 10, **fields}


def raw_json(template: str, literal: str) -> bytes:
    """A JSON body with `literal` written verbatim where the template says NUMBER."""
    return template.replace("NUMBER", literal).encode()


JSON = {"Content-Type": "application/json"}


# -- size and depth ------------------------------------------------------------------------------


def test_a_body_over_1_mib_is_refused_with_413(user: Caller) -> None:
    body = json.dumps(opening(notes="x" * (1 << 20))).encode()
    assert_error(user.http.post("/positions", content=body, headers=JSON), 413, "/positions")


def test_a_streamed_body_over_1_mib_without_a_length_is_refused_with_413(user: Caller) -> None:
    def chunks():
        yield b'{"symbol": "HAND1", "side": "long", "quantity": 1, "entry_price": 10, "notes": "'
        for _ in range(80):
            yield b"x" * 16384
        yield b'"}'

    response = user.http.post("/positions", content=chunks(), headers=JSON)
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "/positions")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 10_000 + b"]" * 10_000, id="10k-arrays"),
        pytest.param(b'{"a":' * 10_000 + b"1" + b"}" * 10_000, id="10k-objects"),
        pytest.param(b"[" * 200_000 + b"]" * 200_000, id="200k-arrays"),
        pytest.param(
            b'{"symbol": "HAND1", "side": "long", "quantity": 1, "entry_price": 10, "notes": '
            + b"[" * 10_000
            + b"]" * 10_000
            + b"}",
            id="10k-arrays-in-a-field",
        ),
    ],
)
def test_deeply_nested_json_is_a_clean_422(user: Caller, body: bytes) -> None:
    response = user.http.post("/positions", content=body, headers=JSON)
    assert_refused(response, "/positions", ["body"])
    assert user.http.get("/health/live").status_code == 200  # and the service is still there


def test_deeply_nested_json_in_an_amendment_is_a_clean_422(user: Caller) -> None:
    path = f"/positions/{user.open(symbol='HAND1')['id']}"
    body = b'{"notes": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    assert_refused(user.http.put(path, content=body, headers=JSON), path, ["body"])


# -- numbers -------------------------------------------------------------------------------------

OUT_OF_RANGE = {
    "1e400": "must be at most 1000000000000",
    "-1e400": "must be greater than 0",
    "1234567890123456789012345678901234567890": "must be at most 1000000000000",
    "-1234567890123456789012345678901234567890": "must be greater than 0",
    "0.1234567890123456789012345678901234567890": "must have at most 8 decimal places",
    "1e-400": "must have at most 8 decimal places",
    "1000000000000.00000001": "must be at most 1000000000000",
    "0.000000001": "must have at most 8 decimal places",
}
NOT_FINITE = ["NaN", "Infinity", "-Infinity", "nan", "inf", "sNaN"]


@pytest.mark.parametrize("field", ["quantity", "entry_price", "stop_loss"])
@pytest.mark.parametrize("literal", list(OUT_OF_RANGE))
def test_an_opening_with_an_out_of_range_number_is_refused_naming_the_field(
    user: Caller, field: str, literal: str
) -> None:
    fields = {"symbol": "HAND1", "side": "short", "quantity": 1, "entry_price": 10, field: 0}
    template = json.dumps(fields).replace(f'"{field}": 0', f'"{field}": NUMBER')
    for body in (raw_json(template, literal), raw_json(template, f'"{literal}"')):
        response = user.http.post("/positions", content=body, headers=JSON)
        assert_refused(response, "/positions", ["body", field])
        messages = [e["msg"] for e in response.json()["errors"] if e["loc"] == ["body", field]]
        assert OUT_OF_RANGE[literal] in messages


@pytest.mark.parametrize("literal", NOT_FINITE)
def test_a_number_that_is_not_finite_is_refused(user: Caller, literal: str) -> None:
    # As a JSON string: a field error. Bare, it is not JSON at all: the body is refused.
    quoted = user.http.post("/positions", json=opening(quantity=literal))
    assert_refused(quoted, "/positions", ["body", "quantity"])
    assert "must be a finite number" in quoted.text
    bare = user.http.post(
        "/positions",
        content=raw_json(
            '{"symbol": "HAND1", "side": "long", "quantity": NUMBER, "entry_price": 10}', literal
        ),
        headers=JSON,
    )
    assert_refused(bare, "/positions", ["body"])


@pytest.mark.parametrize("literal", ["1e400", "-1e400", "NaN", "Infinity", "1" * 40, "1e-400"])
def test_other_prices_out_of_range_are_refused_naming_the_field(
    user: Caller, admin: Caller, literal: str
) -> None:
    path = f"/positions/{user.open(symbol='HAND1')['id']}"
    as_text = f'"{literal}"'
    amend = user.http.put(
        path, content=raw_json('{"current_price": NUMBER}', as_text), headers=JSON
    )
    assert_refused(amend, path, ["body", "current_price"])
    increase = user.http.post(f"{path}/increase", json={"quantity": literal, "price": literal})
    assert_refused(increase, f"{path}/increase", ["body", "quantity"], ["body", "price"])
    close = user.http.post(f"{path}/close", params={"exit_price": literal, "quantity": literal})
    assert_refused(close, f"{path}/close", ["query", "exit_price"], ["query", "quantity"])
    prices = admin.http.post(
        "/positions/update-prices", content=raw_json('{"HAND1": NUMBER}', as_text), headers=JSON
    )
    assert_refused(prices, "/positions/update-prices", ["body", "HAND1"])
    unchanged = user.http.get(path).json()
    assert unchanged["version"] == 1 and unchanged["quantity"] == 10


@pytest.mark.parametrize(
    ("literal", "stored"),
    [
        ("1e12", 1_000_000_000_000),
        ('"1E12"', 1_000_000_000_000),
        ("999999999999.99999999", "999999999999.99999999"),
        ("0.00000001", "0.00000001"),
        ('"0.10000000000"', "0.1"),
        ("1E-8", "0.00000001"),
    ],
)
def test_numbers_at_the_documented_limits_are_accepted_exactly(
    user: Caller, literal: str, stored: Any
) -> None:
    body = raw_json(
        '{"symbol": "HAND1", "side": "long", "quantity": NUMBER, "entry_price": 1}', literal
    )
    response = user.http.post("/positions", content=body, headers=JSON)
    assert response.status_code == 201, response.text
    written = response.content.decode()
    assert f'"quantity":{stored}' in written  # every digit, plain notation, never a float
    assert f'"quantity":{stored}' in user.http.get(f"/positions/{response.json()['id']}").text


# -- text ----------------------------------------------------------------------------------------

TEXTS = {
    "emoji": "📈 long 🚀, family: 👨‍👩‍👧‍👦, flag: 🇯🇵",
    "rtl": "שלום עולם مرحبا \u202eRTL override\u202c and \u200fmark",
    "combining": "e\u0301 a\u0308 Z\u0335\u0321\u0358a\u0336\u0322lgo n\u0303",
    "escape": "red \u001b[31malert\u001b[0m, bell \u0007, tab \t, newline \n, cr \r, del \u007f",
    "controls": "".join(chr(c) for c in range(1, 32)),
    "invisible": "zero\u200bwidth\ufeffbom\u2028line\u2029para",
    "astral": "\U0001d54f\U0001f600\U00010348",
}


@pytest.mark.parametrize("text", list(TEXTS.values()), ids=list(TEXTS))
def test_unicode_and_control_characters_in_text_are_stored_exactly(user: Caller, text: str) -> None:
    opened = user.http.post("/positions", json=opening(notes=text, strategy=text[:64]))
    assert opened.status_code == 201, opened.text
    position = opened.json()
    assert position["notes"] == text and position["strategy"] == text[:64]
    path = f"/positions/{position['id']}"
    amended = user.http.put(path, json={"notes": text[::-1]})
    assert amended.status_code == 200, amended.text
    again = user.http.get(path).json()
    assert again["notes"] == text[::-1] and again["strategy"] == text[:64]
    listed = user.http.get("/positions", params={"strategy": text[:64]})
    assert [p["id"] for p in listed.json()] == [position["id"]]
    history = user.http.get(f"{path}/history").json()
    assert [e["data"].get("notes") for e in history] == [text, text[::-1]]


def test_notes_of_exactly_2000_characters_pass_and_2001_are_refused(user: Caller) -> None:
    emoji = "😀" * 2000  # characters, not bytes: 8000 bytes of UTF-8
    assert user.http.post("/positions", json=opening(notes=emoji)).status_code == 201
    refused = user.http.post("/positions", json=opening(notes=emoji + "x", strategy="s" * 65))
    assert_refused(refused, "/positions", ["body", "notes"], ["body", "strategy"])


NUL = "nul \u0000 byte"


@pytest.mark.parametrize("field", ["notes", "strategy"])
def test_a_nul_byte_in_an_opening_is_refused_naming_the_field(user: Caller, field: str) -> None:
    response = user.http.post("/positions", json=opening(**{field: NUL}))
    assert_refused(response, "/positions", ["body", field])


def test_a_nul_byte_in_the_owner_of_an_opening_is_refused(admin: Caller) -> None:
    response = admin.http.post("/positions", json=opening(owner=NUL))
    assert_refused(response, "/positions", ["body", "owner"])


@pytest.mark.parametrize("field", ["notes", "strategy"])
def test_a_nul_byte_in_an_amendment_is_refused_naming_the_field(user: Caller, field: str) -> None:
    position = user.open(symbol="HAND1")
    path = f"/positions/{position['id']}"
    assert_refused(user.http.put(path, json={field: NUL}), path, ["body", field])
    assert user.http.get(path).json()["version"] == position["version"]


def test_a_nul_byte_in_a_bulk_update_is_refused_naming_the_field(user: Caller) -> None:
    ids = [user.open(symbol="HAND1")["id"]]
    response = user.http.post(
        "/positions/bulk-update", json={"position_ids": ids, "updates": {"notes": NUL}}
    )
    assert_refused(response, "/positions/bulk-update", ["updates", "notes"])


def test_a_nul_byte_in_a_revoked_token_id_is_refused(admin: Caller) -> None:
    response = admin.http.post("/auth/revoke", json={"jti": NUL})
    assert_refused(response, "/auth/revoke", ["body", "jti"])


@pytest.mark.parametrize(
    ("role", "path", "name"),
    [
        ("user", "/positions", "symbol"),
        ("user", "/positions", "strategy"),
        ("admin", "/positions", "owner"),
        ("admin", "/portfolio/summary", "owner"),
        ("admin", "/audit/events", "owner"),
        ("admin", "/audit/events", "actor"),
    ],
)
def test_a_nul_byte_in_a_query_filter_is_refused_naming_it(
    make_caller, role: str, path: str, name: str
) -> None:
    caller = make_caller(role)
    assert_refused(caller.http.get(path, params={name: NUL}), path, ["query", name])


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_a_body_that_is_not_utf8_is_refused_as_not_json(user: Caller, method: str) -> None:
    path = "/positions" if method == "POST" else f"/positions/{user.open(symbol='HAND1')['id']}"
    body = json.dumps(opening(notes="NOTES")).encode().replace(b"NOTES", b"\xff\xfe")
    response = user.http.request(method, path, content=body, headers=JSON)
    assert_refused(response, path, ["body"])


TEXT_AS_CODE = [
    "'; DROP TABLE events; --",
    "<script>alert(1)</script>",
    "' OR '1'='1",
    "%s %(x)s $1",
]


def _tables(url: str) -> set[str]:
    async def fetch() -> set[str]:
        connection = await asyncpg.connect(url)
        try:
            rows = await connection.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        finally:
            await connection.close()
        return {row["tablename"] for row in rows}

    return asyncio.run(fetch())


@pytest.mark.parametrize("text", TEXT_AS_CODE)
def test_sql_and_html_in_text_are_data(
    user: Caller, admin: Caller, api_database: str, text: str
) -> None:
    opened = user.http.post("/positions", json=opening(notes=text, strategy=text))
    assert opened.status_code == 201, opened.text
    position = opened.json()
    path = f"/positions/{position['id']}"
    assert (position["notes"], position["strategy"]) == (text, text)

    for response in (
        user.http.get(path),
        user.http.put(path, json={"notes": text + text}),
        user.http.get("/positions", params={"strategy": text, "symbol": "HAND1"}),
        user.http.get(f"{path}/history"),
        admin.http.get("/audit/events", params={"owner": user.subject, "actor": text}),
    ):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"  # never rendered as HTML
    listed = user.http.get("/positions", params={"strategy": text}).json()
    assert [(p["id"], p["strategy"], p["notes"]) for p in listed] == [
        (position["id"], text, text + text)
    ]
    assert {"events", "positions", "idempotency_keys"} <= _tables(api_database)
    history = admin.http.get("/audit/events", params={"position_id": position["id"]}).json()
    assert len(history["events"]) == 2


# -- integers and times past what PostgreSQL holds -----------------------------------------------

BEYOND_INT64 = str(2**63)


@pytest.mark.parametrize(
    ("role", "path", "name"),
    [
        ("user", "/positions", "at"),
        ("user", "/positions", "offset"),
        ("user", "/portfolio/summary", "at"),
        ("admin", "/audit/events", "from_position"),
        ("admin", "/audit/events", "to_position"),
        ("service", "/events/stream", "after"),
    ],
)
def test_an_integer_past_int64_is_refused_naming_it(
    make_caller, role: str, path: str, name: str
) -> None:
    caller = make_caller(role)
    assert_refused(caller.http.get(path, params={name: BEYOND_INT64}), path, ["query", name])


def test_an_event_position_past_int64_on_one_position_is_refused(user: Caller) -> None:
    path = f"/positions/{user.open(symbol='HAND1')['id']}"
    assert_refused(user.http.get(path, params={"at": BEYOND_INT64}), path, ["query", "at"])


def test_a_forged_cursor_past_int64_is_refused(admin: Caller) -> None:
    import base64

    forged = base64.urlsafe_b64encode(f"{10**20}:{10**20}".encode()).decode().rstrip("=")
    response = admin.http.get("/audit/events", params={"cursor": forged})
    assert_refused(response, "/audit/events", ["query", "cursor"])


@pytest.mark.parametrize(
    ("role", "path", "name", "moment"),
    [
        ("user", "/positions", "as_of", "0001-01-01T00:00:00+14:00"),
        ("user", "/portfolio/summary", "as_of", "0001-01-01T00:00:00+14:00"),
        ("admin", "/audit/events", "from", "0001-01-01T00:00:00+14:00"),
        ("admin", "/audit/events", "to", "9999-12-31T23:59:59-14:00"),
    ],
)
def test_a_time_outside_what_postgresql_holds_is_refused_naming_it(
    make_caller, role: str, path: str, name: str, moment: str
) -> None:
    caller = make_caller(role)
    assert_refused(caller.http.get(path, params={name: moment}), path, ["query", name])


def test_a_revocation_expiring_after_9999_is_refused_naming_it(admin: Caller) -> None:
    response = admin.http.post(
        "/auth/revoke",
        json={"jti": f"fz-{uuid.uuid4()}", "expires_at": "9999-12-31T23:59:59-14:00"},
    )
    assert_refused(response, "/auth/revoke", ["body", "expires_at"])


# -- what the document says and the service does -------------------------------------------------


@pytest.mark.parametrize("method", ["PATCH", "OPTIONS"])
@pytest.mark.parametrize(
    ("path", "allowed"),
    [("/positions", {"GET", "POST"}), ("/positions/{id}", {"GET", "PUT", "DELETE"})],
)
def test_a_405_lists_every_method_of_the_resource(
    user: Caller, method: str, path: str, allowed: set[str]
) -> None:
    path = path.replace("{id}", user.open(symbol="HAND1")["id"])
    response = user.http.request(method, path)
    assert_error(response, 405, path)
    assert {m.strip() for m in response.headers["allow"].split(",")} - {"HEAD"} == allowed


@pytest.mark.parametrize("name", _BODIES)
def test_the_document_says_request_bodies_take_no_unknown_fields(user: Caller, name: str) -> None:
    refused = user.http.post("/positions", json=opening(colour="blue"))
    assert_refused(refused, "/positions", ["body", "colour"])
    assert SERVED["components"]["schemas"][name].get("additionalProperties") is False


@pytest.mark.parametrize("atomic", [0, 1, "true", "false"])
def test_bulk_update_refuses_an_atomic_that_is_not_a_boolean(user: Caller, atomic: Any) -> None:
    ids = [user.open(symbol="HAND1")["id"]]
    response = user.http.post(
        "/positions/bulk-update",
        json={"position_ids": ids, "updates": {"notes": "n"}, "atomic": atomic},
    )
    assert_refused(response, "/positions/bulk-update", ["body", "atomic"])
