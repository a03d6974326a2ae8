"""Who may do what: the caller's principal, role checks, and whose positions they see."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from .auth import AuthError, Principal, Role, TokenVerifier
from .errors import ApiError

READERS_OF_EVERYTHING = {Role.ADMIN, Role.SERVICE}
POSITION_WRITERS = {Role.ADMIN, Role.USER}
PRICE_WRITERS = {Role.ADMIN, Role.SERVICE}


def authenticate(connection: HTTPConnection) -> Principal:
    verifier: TokenVerifier = connection.app.state.verifier
    principal = verifier.principal_from_header(connection.headers.get("authorization"))
    refuse_if_revoked(connection, principal)
    connection.scope["state"]["principal"] = principal
    return principal


def refuse_if_revoked(connection: HTTPConnection, principal: Principal) -> None:
    """A valid signature is not enough once an administrator has revoked the token's id."""
    if connection.app.state.services.revocations.is_revoked(principal.token_id):
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
