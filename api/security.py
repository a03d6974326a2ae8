"""Who may do what: the caller's principal, role checks, and whose positions they see."""

from __future__ import annotations

from starlette.requests import HTTPConnection
from starlette.types import Scope

from .auth import AuthError, Principal, Role, TokenVerifier
from .errors import ApiError
from .services import services_of

READERS_OF_EVERYTHING = {Role.ADMIN, Role.SERVICE}
POSITION_WRITERS = {Role.ADMIN, Role.USER}
PRICE_WRITERS = {Role.ADMIN, Role.SERVICE}


def authenticate(connection: HTTPConnection, roles: set[Role] | None = None) -> Principal:
    """The caller, whose role must be one of `roles` (when given)."""
    result = verified(connection.scope, connection.app.state.verifier)
    if isinstance(result, AuthError):
        raise result
    refuse_if_revoked(connection, result)
    connection.scope["state"]["principal"] = result
    if roles is not None:
        require(result, roles)
    return result


def verified(scope: Scope, verifier: TokenVerifier) -> Principal | AuthError:
    """The request's bearer token, checked once however many layers ask (the rate limiter, then
    the route): its principal, or why it was refused."""
    state = scope.setdefault("state", {})
    result = state.get("verified")
    if result is None:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        try:
            result = verifier.principal_from_header(None if header is None else header.decode())
        except AuthError as refusal:
            result = refusal
        state["verified"] = result
    return result


def refuse_if_revoked(connection: HTTPConnection, principal: Principal) -> None:
    """A valid signature is not enough once an administrator has revoked the token's id."""
    if services_of(connection).revocations.is_revoked(principal.token_id):
        raise AuthError("token revoked")


def require(principal: Principal, roles: set[Role]) -> None:
    if principal.role not in roles:
        raise ApiError(403, f"the {principal.role} role may not do this")


def visible_owner(principal: Principal, requested_owner: str | None = None) -> str | None:
    """Whose positions the caller sees: a user only its own; admin and service anyone's."""
    if principal.role in READERS_OF_EVERYTHING:
        return requested_owner
    if requested_owner is not None and requested_owner != principal.subject:
        raise ApiError(403, "a user sees only its own positions")
    return principal.subject
