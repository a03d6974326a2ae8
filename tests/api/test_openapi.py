"""The API's own description: valid OpenAPI 3.1, complete, true to what the routes answer."""

from __future__ import annotations

import httpx
import jsonschema
import msgspec
import pytest
from openapi_spec_validator import validate
from starlette.routing import Mount, Route

from api import parameters
from api.app import create_app
from api.auth import AuthSettings

from .conftest import Caller


@pytest.fixture(scope="module")
def spec(service_url: str) -> dict:
    response = httpx.get(f"{service_url}/openapi.json")  # no token needed
    assert response.status_code == 200
    return response.json()


def test_the_document_is_valid_openapi_3_1(spec: dict) -> None:
    assert spec["openapi"] == "3.1.0"
    validate(spec)  # raises on any violation of the OpenAPI 3.1 schema


def test_every_http_route_is_described_with_its_methods(spec: dict) -> None:
    app = create_app(auth=AuthSettings(algorithm="HS256", secret="x" * 32, public_key=None))
    served = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route) and route.path not in {"/openapi.json", "/docs"}
        for method in route.methods - {"HEAD"}
    }
    described = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert served == described
    assert any(isinstance(route, Mount) and route.path == "/docs/assets" for route in app.routes)


def test_request_bodies_are_the_types_that_validate_them(spec: dict) -> None:
    opening = spec["components"]["schemas"]["OpenPositionBody"]
    assert set(opening["required"]) == {"symbol", "side", "quantity", "entry_price"}
    assert opening["properties"]["side"]["enum"] == ["long", "short"]
    body = spec["paths"]["/positions"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/OpenPositionBody"}
    assert spec["security"] == [{"bearer": []}]
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def _check(spec: dict, path: str, method: str, response: httpx.Response) -> None:
    described = spec["paths"][path][method]["responses"][str(response.status_code)]
    schema = described["content"]["application/json"]["schema"]
    jsonschema.validate(
        response.json(),
        {**schema, "components": spec["components"]},
        cls=jsonschema.Draft202012Validator,
    )


def test_real_answers_match_their_descriptions(spec: dict, user: Caller, admin: Caller) -> None:
    opened = user.http.post(
        "/positions", json={"symbol": "AAPL", "side": "long", "quantity": 2, "entry_price": "10.5"}
    )
    path = f"/positions/{opened.json()['id']}"
    checks = [
        ("/positions", "post", opened),
        ("/positions", "get", user.http.get("/positions")),
        ("/positions/{position_id}", "get", user.http.get(path)),
        ("/positions/{position_id}", "put", user.http.put(path, json={"notes": "n"})),
        ("/positions/{position_id}/history", "get", user.http.get(f"{path}/history")),
        ("/portfolio/summary", "get", user.http.get("/portfolio/summary")),
        ("/audit/events", "get", admin.http.get("/audit/events", params={"limit": 3})),
        (
            "/positions/update-prices",
            "post",
            admin.http.post("/positions/update-prices", json={"AAPL": 11}),
        ),
        ("/positions/{position_id}", "get", user.http.get(f"/positions/{'0' * 32}")),
        ("/positions", "post", user.http.post("/positions", json={"symbol": ""})),
    ]
    for template, method, response in checks:
        _check(spec, template, method, response)


def test_the_interactive_docs_come_with_their_assets(service_url: str) -> None:
    page = httpx.get(f"{service_url}/docs")
    script = httpx.get(f"{service_url}/docs/assets/swagger-ui-bundle.js")
    style = httpx.get(f"{service_url}/docs/assets/swagger-ui.css")

    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/openapi.json" in page.text and "http" not in page.text  # nothing from the internet
    assert script.status_code == 200 and "SwaggerUIBundle" in script.text
    assert style.status_code == 200


def _bad_value(schema: dict) -> str:
    """A value the parameter's declared type refuses."""
    if schema.get("type") == "array":
        return "not-a-uuid" if schema["items"].get("format") == "uuid" else "NoSuchType"
    if "enum" in schema:
        return "nonsense"
    if schema.get("type") == "integer":
        return "x"
    if schema.get("format") == "date-time":
        return "yesterday"
    if "pattern" in schema:
        return "twelve"
    return "a\x00b"  # any text: but never a NUL, which PostgreSQL cannot hold


def test_every_query_parameter_is_read_by_its_route_as_its_declared_type(
    spec: dict, admin: Caller
) -> None:
    """Each parameter of every operation, given a value of the wrong type, answers 422 naming
    that parameter: the route reads what the document says, as the type says."""
    position = admin.open()
    declared = [
        (path, method, parameter)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        for parameter in operation.get("parameters", [])
        if parameter["in"] == "query"
    ]
    assert len(declared) >= 30
    for path, method, parameter in declared:
        url = path.replace("{position_id}", position["id"])
        response = admin.http.request(
            method.upper(), url, params={parameter["name"]: _bad_value(parameter["schema"])}
        )
        assert response.status_code == 422, (path, method, parameter["name"], response.text)
        assert ["query", parameter["name"]] in [e["loc"] for e in response.json()["errors"]], (
            path,
            parameter["name"],
        )


def test_each_operation_documents_exactly_the_parameters_its_type_declares(spec: dict) -> None:
    declared = {
        ("/positions", "get"): parameters.PositionListQuery,
        ("/positions/{position_id}", "get"): parameters.PositionQuery,
        ("/positions/{position_id}/open", "post"): parameters.FillQuery,
        ("/positions/{position_id}/close", "post"): parameters.CloseQuery,
        ("/portfolio/summary", "get"): parameters.SummaryQuery,
        ("/audit/events", "get"): parameters.AuditQuery,
        ("/events/stream", "get"): parameters.EventsQuery,
    }
    documented = {
        (path, method): [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    }
    for operation, names in documented.items():
        kind = declared.get(operation)
        expected = [] if kind is None else [f.encode_name for f in msgspec.structs.fields(kind)]
        assert names == expected, operation
