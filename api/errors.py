"""Every error answers with one body shape, and a 500 never shows a stack, SQL or a secret.

{"detail": "...", "timestamp": "...", "path": "/positions/123", "correlation_id": "...",
 "errors": [{"loc": ["body", "quantity"], "msg": "must be greater than 0"}]}   (422 only)
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from commands import AtomicFailure, KeyReused, StalePosition, TooMuchContention
from domain.errors import Conflict, DomainError, InvalidCommand, PositionNotFound

from .auth import AuthError
from .json import JSONResponse

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        detail: str,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status, self.detail, self.errors, self.headers = status, detail, errors, headers
        super().__init__(detail)


def field_errors(errors: list[Any], location: str = "body") -> list[dict[str, Any]]:
    """Domain FieldErrors as `loc`/`msg` pairs."""
    return [{"loc": [location, e.field], "msg": e.message} for e in errors]


def correlation_id(connection: HTTPConnection) -> str:
    return connection.scope.get("state", {}).get("correlation_id", "")


def error_body(
    connection: HTTPConnection, status: int, detail: str, errors: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "detail": detail,
        "timestamp": datetime.now(UTC).isoformat(),
        "path": connection.url.path,
        "correlation_id": correlation_id(connection),
    }
    if errors is not None:
        body["errors"] = errors
    return body


def as_api_error(error: Exception) -> ApiError | None:
    """The HTTP meaning of a failure the service expects; None for a genuine fault."""
    match error:
        case ApiError():
            return error
        case InvalidCommand():
            return ApiError(422, "validation failed", field_errors(error.errors))
        case PositionNotFound():
            return ApiError(404, str(error))
        case Conflict():
            return ApiError(409, str(error))
        case StalePosition():
            return ApiError(412, str(error), headers={"ETag": f'"{error.actual}"'})
        case TooMuchContention():
            return ApiError(409, str(error))
        case AtomicFailure():
            return ApiError(409, str(error))
        case KeyReused():
            return ApiError(
                422,
                str(error),
                [{"loc": ["header", "Idempotency-Key"], "msg": "used for a different request"}],
            )
        case AuthError():
            return ApiError(401, error.reason, headers={"WWW-Authenticate": "Bearer"})
        case HTTPException():
            return ApiError(error.status_code, error.detail, headers=error.headers)
    if isinstance(error, asyncpg.exceptions.QueryCanceledError):
        log.warning("statement cancelled by the database: %s", error)
        return ApiError(503, "the database took too long; try again", headers={"Retry-After": "1"})
    if database_unreachable(error):
        log.warning("database unreachable: %s", error)
        return ApiError(503, "the database is unreachable; try again", headers={"Retry-After": "1"})
    return None


DATABASE_OUTAGES = (
    OSError,  # refused, reset, unreachable
    asyncpg.PostgresConnectionError,  # the connection is gone
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up, crashed
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.InterfaceError,  # only "connection is closed": see below
)


def database_unreachable(error: Exception) -> bool:
    """The database cannot be reached now; the request can be tried again."""
    if isinstance(error, asyncpg.InterfaceError):
        return "closed" in str(error)  # other InterfaceErrors are misuse, not outage
    return isinstance(error, DATABASE_OUTAGES)


def error_response(request: Request, error: Exception) -> Response:
    api_error = as_api_error(error)
    if api_error is None:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
        api_error = ApiError(500, "internal error; quote the correlation id when reporting it")
    body = error_body(request, api_error.status, api_error.detail, api_error.errors)
    if isinstance(error, AtomicFailure):
        body["failed"] = refusals_by_id(error.failures)
    return JSONResponse(body, status_code=api_error.status, headers=api_error.headers)


def refusals_by_id(refusals: dict[UUID, DomainError]) -> list[dict[str, Any]]:
    """Each refused position with the status and reason it would have had on its own."""
    answer = []
    for position_id, refusal in refusals.items():
        error = as_api_error(refusal)
        if error is None:
            raise refusal
        answer.append(
            {
                "id": position_id,
                "status": error.status,
                "detail": error.detail,
                **({"errors": error.errors} if error.errors else {}),
            }
        )
    return answer


async def handle_error(request: Request, error: Exception) -> Response:
    """Starlette exception handler for everything above."""
    return error_response(request, error)
