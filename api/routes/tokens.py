"""Token revocation: an administrator makes a token id (`jti`) worthless on every instance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..auth import Role
from ..bodies import RevokeTokenBody, decode_object, parse_object, read_body
from ..errors import ApiError
from ..json import JSONResponse
from ..query import in_range
from ..security import authenticate
from ..services import services_of

UNKNOWN_EXPIRY = timedelta(days=30)
"""How long a revocation is kept when the caller does not say when the token expires."""


async def revoke_token(request: Request) -> Response:
    authenticate(request, {Role.ADMIN})
    body = parse_object(decode_object(await read_body(request)), RevokeTokenBody)
    problems = []
    if not 0 < len(body.jti.strip()) <= 255:
        problems.append({"loc": ["body", "jti"], "msg": "must be 1-255 characters"})
    if body.expires_at is not None and not in_range(body.expires_at):
        problems.append({"loc": ["body", "expires_at"], "msg": "must be before the year 10000"})
    if problems:
        raise ApiError(422, "validation failed", problems)
    until = body.expires_at or datetime.now(UTC) + UNKNOWN_EXPIRY
    try:
        await services_of(request).revocations.revoke(body.jti, until)
    except (RedisError, OSError) as error:
        raise ApiError(503, "the revocation list cannot be reached; try again") from error
    return JSONResponse({"jti": body.jti, "revoked_until": until})


routes = [Route("/auth/revoke", revoke_token, methods=["POST"])]
