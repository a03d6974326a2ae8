"""The Idempotency-Key header: read from a request, and a stored answer given back as a response.

The mechanism (once per key, the answer stored in the command's transaction) is the command
service's: commands/idempotency.py.
"""

from __future__ import annotations

from typing import cast

from starlette.requests import Request
from starlette.responses import Response

from commands import Answer, IdempotencyKey, StoredAnswer
from commands.idempotency import fingerprint

from .errors import ApiError

MAX_KEY_LENGTH = 255
REPLAYED_HEADER = "idempotent-replayed"


def idempotency_key(request: Request, caller: str, body: bytes) -> IdempotencyKey | None:
    """The request's key (None without one), with what identifies the request it was used for."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 0 < len(key) <= MAX_KEY_LENGTH:
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
    url = request.url
    return IdempotencyKey(
        caller,
        key,
        fingerprint(request.method.encode(), url.path.encode(), url.query.encode(), body),
    )


def as_response(answer: Answer) -> Response:
    """The response a command's answer is: a stored one is marked as replayed."""
    if isinstance(answer, StoredAnswer):
        return Response(
            answer.body,
            status_code=answer.status_code,
            headers={**answer.headers, REPLAYED_HEADER: "true"},
        )
    return cast(Response, answer)  # the routes render every other answer as a Response
