"""`GET /openapi.json` (OpenAPI 3.1) and `GET /docs`, from the types that validate requests.

Request bodies are the msgspec types of bodies.py; answers are the types the routes return. The
schemas come from msgspec; the table below adds what only the routes know (paths, parameters,
statuses). Decimals travel as JSON numbers (requests may also send numeric strings).
"""

from __future__ import annotations

import typing
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from projections.queries import PositionView

from . import __version__
from .bodies import (
    AmendPositionBody,
    BulkUpdateBody,
    FillPositionBody,
    IncreasePositionBody,
    OpenPositionBody,
    RevokeTokenBody,
)
from .json import JSONResponse
from .parameters import (
    AuditQuery,
    CloseQuery,
    EventsQuery,
    FillQuery,
    PositionListQuery,
    PositionQuery,
    Query,
    SummaryQuery,
)

# -- what the routes answer (for the document only: the routes build these as plain data) --------


class FieldError(msgspec.Struct):
    loc: list[str | int]
    msg: str


class Error(msgspec.Struct):
    detail: str
    timestamp: datetime
    path: str
    correlation_id: str
    errors: list[FieldError] | msgspec.UnsetType = msgspec.UNSET


class RefusedId(msgspec.Struct):
    id: UUID
    status: int
    detail: str
    errors: list[FieldError] | msgspec.UnsetType = msgspec.UNSET


class BulkAnswer(msgspec.Struct):
    updated: list[PositionView]
    failed: list[RefusedId]


class PricesAnswer(msgspec.Struct):
    symbols: list[str]
    symbols_updated: list[str]
    """The same as `symbols`, under the name clients of the original API read."""
    positions_updated: int
    position: int


class HistoryEntry(msgspec.Struct):
    position: int
    stream_id: str
    version: int
    type: str
    schema_version: int
    event_id: UUID
    recorded_at: datetime
    data: dict[str, Any]
    actor: str | None
    role: str | None
    client_ip: str | None
    user_agent: str | None
    correlation_id: str | None
    causation_id: str | None
    idempotency_key: str | None


class AuditPage(msgspec.Struct):
    events: list[HistoryEntry]
    next_cursor: str | None


class Figures(msgspec.Struct):
    """The summary's figures (docs/domain.md); money and percentages are exact decimals."""

    total_positions: int
    open_positions: int


class Summary(Figures):
    by_symbol: dict[str, dict[str, Any]]
    by_strategy: dict[str, dict[str, Any]]
    as_of_position: int
    calculated_at: datetime


class Revoked(msgspec.Struct):
    jti: str
    revoked_until: datetime


class Health(msgspec.Struct):
    status: str


_REQUESTS = [OpenPositionBody, AmendPositionBody, FillPositionBody, IncreasePositionBody]
_REQUESTS += [BulkUpdateBody, RevokeTokenBody]
_ANSWERS = [PositionView, Error, BulkAnswer, PricesAnswer, HistoryEntry, AuditPage, Summary]
_ANSWERS += [Health, Revoked]

_DECIMAL = {"type": "string", "format": "decimal"}
_DECIMAL_IN = {"anyOf": [{"type": "number"}, {"type": "string", "pattern": r"^-?\d+(\.\d+)?$"}]}


def _replace(schema: Any, old: dict, new: dict) -> Any:
    if schema == old:
        return dict(new)
    if isinstance(schema, dict):
        return {key: _replace(value, old, new) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_replace(value, old, new) for value in schema]
    return schema


def _components() -> dict[str, Any]:
    template = "#/components/schemas/{name}"
    _, requests = msgspec.json.schema_components(_REQUESTS, ref_template=template)
    _, answers = msgspec.json.schema_components(_ANSWERS, ref_template=template)
    schemas = _replace(answers, _DECIMAL, {"type": "number"})
    # The service refuses unknown fields (422), whatever msgspec's defaults say.
    schemas |= {
        name: {**schema, "additionalProperties": False}
        for name, schema in _replace(requests, _DECIMAL, _DECIMAL_IN).items()
    }
    schemas["Summary"]["additionalProperties"] = True  # every figure of docs/domain.md
    schemas["Prices"] = {
        "type": "object",
        "additionalProperties": _DECIMAL_IN,
        "minProperties": 1,
        "maxProperties": 1000,
    }
    return schemas


# -- the operations ------------------------------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str | dict, description: str) -> dict[str, Any]:
    schema = _ref(name) if isinstance(name, str) else name
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def query_parameters(kind: type[Query]) -> list[dict[str, Any]]:
    """The query parameters `kind` declares, described from their types (api/parameters.py)."""
    hints = typing.get_type_hints(kind, include_extras=True)
    described = []
    for field in msgspec.structs.fields(kind):
        schema = msgspec.json.schema(hints[field.name])
        # X | None: absent is None, which a query string cannot say anyway.
        schema = next((s for s in schema.get("anyOf", []) if s.get("type") != "null"), schema)
        description = schema.pop("description", "")
        if "default" in schema or field.default not in (None, msgspec.NODEFAULT):
            schema["default"] = field.default
        parameter = {"name": field.encode_name, "in": "query", "required": False, "schema": schema}
        if schema.get("type") == "array":  # comma-separated, or the parameter repeated
            parameter |= {"style": "form", "explode": False}
        described.append(parameter | _text(description))
    return described


def _text(description: str) -> dict[str, str]:
    return {"description": description} if description else {}


_ID = {"name": "position_id", "in": "path", "required": True, "schema": {"type": "string"}}
_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": 'the version the change was decided on, e.g. "3": 412 when stale',
}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": "a retry with the same key returns the first answer and records nothing",
}
_ERRORS = {
    str(status): _json("Error", description)
    for status, description in {
        401: "missing, malformed, wrongly signed or expired token",
        403: "the role may not do this",
        404: "no such position (or not yours)",
        409: "conflict: closed, changed meanwhile, or nothing to close at",
        412: "If-Match names an older version",
        413: "body larger than 1 MiB",
        422: "invalid input: every field error in `errors`",
    }.items()
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): _ERRORS[str(status)] for status in statuses}


def _position(status: int, description: str) -> dict[str, Any]:
    return {str(status): _json("PositionView", description)}


_COMMAND = (401, 403, 404, 409, 412, 413, 422)

_OPERATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "/positions": {
        "get": {
            "summary": "The caller's positions, newest first (X-Total-Count: how many match)",
            "parameters": [
                *query_parameters(PositionListQuery),
            ],
            "responses": {
                "200": _json({"type": "array", "items": _ref("PositionView")}, "the page"),
                **_errors(401, 403, 422),
            },
        },
        "post": {
            "summary": "Open a position (status pending: an order not yet filled)",
            "parameters": [_IDEMPOTENCY_KEY],
            "requestBody": {"required": True, **_json("OpenPositionBody", "the position")},
            "responses": {**_position(201, "opened"), **_errors(401, 403, 409, 413, 422)},
        },
    },
    "/positions/bulk-update": {
        "post": {
            "summary": "One change on many positions; atomic: all or nothing",
            "parameters": [_IDEMPOTENCY_KEY],
            "requestBody": {"required": True, **_json("BulkUpdateBody", "ids and the change")},
            "responses": {
                "200": _json("BulkAnswer", "each id updated or refused"),
                **_errors(401, 403, 409, 413, 422),
            },
        }
    },
    "/positions/update-prices": {
        "post": {
            "summary": "Market prices: re-marks every open position of these symbols",
            "parameters": [_IDEMPOTENCY_KEY],
            "requestBody": {"required": True, **_json("Prices", "symbol to price")},
            "responses": {
                "200": _json("PricesAnswer", "the symbols and how many positions"),
                **_errors(401, 403, 413, 422),
            },
        }
    },
    "/positions/{position_id}": {
        "get": {
            "summary": "One position (ETag: its version)",
            "parameters": [_ID, *query_parameters(PositionQuery)],
            "responses": {**_position(200, "the position"), **_errors(401, 404, 422)},
        },
        "put": {
            "summary": "Change current price, stop loss, take profit, notes, strategy",
            "parameters": [_ID, _IF_MATCH, _IDEMPOTENCY_KEY],
            "requestBody": {"required": True, **_json("AmendPositionBody", "the changes")},
            "responses": {**_position(200, "changed"), **_errors(*_COMMAND)},
        },
        "delete": {
            "summary": "Admin only: later reads answer 404; the history stays",
            "parameters": [_ID, _IF_MATCH, _IDEMPOTENCY_KEY],
            "responses": {"204": {"description": "deleted"}, **_errors(*_COMMAND)},
        },
    },
    "/positions/{position_id}/open": {
        "post": {
            "summary": "Fill a pending position, at entry_price (query or body) or as ordered",
            "parameters": [
                _ID,
                *query_parameters(FillQuery),
                _IF_MATCH,
                _IDEMPOTENCY_KEY,
            ],
            "requestBody": {"required": False, **_json("FillPositionBody", "optional price")},
            "responses": {**_position(200, "filled"), **_errors(*_COMMAND)},
        }
    },
    "/positions/{position_id}/increase": {
        "post": {
            "summary": "Add quantity at a price: the entry becomes the average",
            "parameters": [_ID, _IF_MATCH, _IDEMPOTENCY_KEY],
            "requestBody": {"required": True, **_json("IncreasePositionBody", "how much")},
            "responses": {**_position(200, "increased"), **_errors(*_COMMAND)},
        }
    },
    "/positions/{position_id}/close": {
        "post": {
            "summary": "Close at exit_price (else the current price); quantity closes part",
            "parameters": [
                _ID,
                *query_parameters(CloseQuery),
                _IF_MATCH,
                _IDEMPOTENCY_KEY,
            ],
            "responses": {**_position(200, "closed"), **_errors(*_COMMAND)},
        }
    },
    "/positions/{position_id}/history": {
        "get": {
            "summary": "Every event of the position: who, when, from where",
            "parameters": [_ID],
            "responses": {
                "200": _json({"type": "array", "items": _ref("HistoryEntry")}, "oldest first"),
                **_errors(401, 404),
            },
        }
    },
    "/audit/events": {
        "get": {
            "summary": "Admin: the log searched, a page at a time",
            "parameters": [
                *query_parameters(AuditQuery),
            ],
            "responses": {"200": _json("AuditPage", "a page"), **_errors(401, 403, 422)},
        }
    },
    "/portfolio/summary": {
        "get": {
            "summary": "The portfolio figures (docs/domain.md): the caller's positions or the book",
            "parameters": query_parameters(SummaryQuery),
            "responses": {"200": _json("Summary", "the figures"), **_errors(401, 403, 422)},
        }
    },
    "/auth/revoke": {
        "post": {
            "summary": "Admin: refuse a token id (jti) on every instance from now on",
            "requestBody": {"required": True, **_json("RevokeTokenBody", "the token id")},
            "responses": {
                "200": _json("Revoked", "revoked"),
                **_errors(401, 403, 413, 422),
                "503": _json("Error", "the revocation list cannot be reached"),
            },
        }
    },
    "/events/stream": {
        "get": {
            "summary": "Server-Sent Events: the log, resumable with Last-Event-ID or after",
            "parameters": [
                *query_parameters(EventsQuery),
                {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {
                    "description": "id: event position, event: type, data: the event (JSON)",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                **_errors(401, 422),
            },
        }
    },
}

_PUBLIC = {
    "/health": "Status, database, Redis, live feed lag, version, uptime (503: no database)",
    "/health/live": "The process answers",
    "/health/ready": "Ready to serve (503 while starting, stopping or without a database)",
}


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, operations in _OPERATIONS.items():
        paths[path] = {
            method: {**operation, "operationId": f"{method}{_name(path)}"}
            for method, operation in operations.items()
        }
    for path, summary in _PUBLIC.items():
        paths[path] = {
            "get": {
                "summary": summary,
                "operationId": f"get{_name(path)}",
                "security": [],
                "responses": {
                    "200": _json("Health", "answered"),
                    "503": _json("Health", "not now"),
                },
            }
        }
    paths["/metrics"] = {
        "get": {
            "summary": "Prometheus text",
            "operationId": "getMetrics",
            "security": [],
            "responses": {
                "200": {
                    "description": "metrics",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Position service",
            "version": __version__,
            "description": "Positions, exact P&L, live updates and a replayable audit trail. "
            "The WebSocket `/ws/positions?token=...` is described in docs/api.md.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": _components(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def _name(path: str) -> str:
    words = path.replace("{", "").replace("}", "").replace("-", "/").replace("_", "/").split("/")
    return "".join(word.capitalize() for word in words if word)


async def openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)


_DOCS = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Position service: API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="docs"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#docs"});</script>
</body></html>"""


async def docs(request: Request) -> Response:
    return HTMLResponse(_DOCS)


def routes() -> list[Route | Mount]:
    import swagger_ui_bundle  # the assets are installed with it: no internet at run time

    return [
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        Mount("/docs/assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path)),
    ]
