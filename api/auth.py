"""Bearer-token verification (docs/api.md, "Authentication and roles").

Pure functions over strings: the route layer reads the header (or `?token=`) and turns
`AuthError` into 401. The accepted algorithm comes from configuration only; a token's own
`alg` header never chooses it, so `none` and HS/RS confusion cannot pass.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .config import ConfigError

ALGORITHMS = ("HS256", "RS256", "ES256")
MIN_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key at least as long as the hash output
MIN_RSA_BITS = 2048  # NIST SP 800-131A; also pyjwt's own warning threshold
MAX_SUBJECT_LENGTH = 255
"""A subject is stored as an owner and an actor: no NUL (PostgreSQL text cannot hold it)."""
MAX_TOKEN_BYTES = 8 * 1024  # refuse before any base64/JSON work on attacker-sized input


class Role(StrEnum):
    ADMIN = "admin"
    USER = "user"
    SERVICE = "service"


_ROLES = frozenset(role.value for role in Role)


class Principal(msgspec.Struct, frozen=True):
    subject: str  # the JWT `sub`
    role: Role
    token_id: str | None  # `jti` if present
    expires_at: datetime  # from `exp`, UTC


class AuthError(Exception):
    """401: missing, malformed, wrongly signed or expired token.

    `.reason` is short, fixed text safe to send to the client: never the token or a key.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class AuthSettings:
    algorithm: str  # "HS256", "RS256" or "ES256"
    secret: str | None  # HS256 only
    public_key: str | None  # PEM, RS256/ES256 only
    issuer: str | None = None
    audience: str | None = None
    leeway_seconds: int = 0

    def __post_init__(self) -> None:
        # Checked here rather than in from_env so that no code path builds a weak verifier.
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"JWT_ALGORITHM must be one of {', '.join(ALGORITHMS)}")
        if self.secret and self.public_key:
            raise ConfigError("set either JWT_SECRET or JWT_PUBLIC_KEY, not both")
        if self.algorithm == "HS256":
            if not self.secret:
                raise ConfigError("JWT_ALGORITHM=HS256 needs JWT_SECRET")
            if len(self.secret.encode()) < MIN_SECRET_BYTES:
                raise ConfigError(f"JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")
        else:
            if not self.public_key:
                raise ConfigError(
                    f"JWT_ALGORITHM={self.algorithm} needs JWT_PUBLIC_KEY or JWT_PUBLIC_KEY_FILE"
                )
            _load_public_key(self.algorithm, self.public_key)
        if self.leeway_seconds < 0:
            raise ConfigError("the JWT leeway must not be negative")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AuthSettings:
        def get(name: str) -> str | None:
            return env.get(name) or None  # an empty variable counts as unset

        secret, public_key = get("JWT_SECRET"), get("JWT_PUBLIC_KEY")
        key_file = get("JWT_PUBLIC_KEY_FILE")
        if public_key and key_file:
            raise ConfigError("set either JWT_PUBLIC_KEY or JWT_PUBLIC_KEY_FILE, not both")
        if key_file:
            try:
                public_key = Path(key_file).read_text()
            except (OSError, UnicodeDecodeError) as error:
                reason = type(error).__name__
                message = f"JWT_PUBLIC_KEY_FILE {key_file} is unreadable ({reason})"
                raise ConfigError(message) from None
        algorithm = get("JWT_ALGORITHM")
        if algorithm is None:
            if not secret and not public_key:
                raise ConfigError("JWT_SECRET or JWT_PUBLIC_KEY(_FILE) is required")
            algorithm = "HS256" if secret else "RS256"
        return cls(
            algorithm=algorithm.upper(),
            secret=secret,
            public_key=public_key,
            issuer=get("JWT_ISSUER"),
            audience=get("JWT_AUDIENCE"),
        )


def _load_public_key(algorithm: str, pem: str) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError):  # also a private key or a certificate pasted by mistake
        raise ConfigError("JWT_PUBLIC_KEY is not a PEM public key") from None
    if algorithm == "RS256":
        if not isinstance(key, rsa.RSAPublicKey):
            raise ConfigError("JWT_ALGORITHM=RS256 needs an RSA public key")
        if key.key_size < MIN_RSA_BITS:
            raise ConfigError(f"the RSA public key must have at least {MIN_RSA_BITS} bits")
        return key
    if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
        raise ConfigError("JWT_ALGORITHM=ES256 needs a P-256 (secp256r1) EC public key")
    return key


# pyjwt's own messages are not promised to be free of token content: map to fixed texts.
_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidSignatureError, "invalid signature"),
    (jwt.InvalidAlgorithmError, "token algorithm not accepted"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAudienceError, "wrong audience"),
)


class TokenVerifier:
    REMEMBERED = 10_000
    """Verified tokens kept, least recently used first out."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        # Parse a PEM once here; given text, pyjwt would parse it again on every request.
        self._key: Any = (
            settings.secret
            if settings.algorithm == "HS256"
            else _load_public_key(settings.algorithm, settings.public_key or "")
        )
        # A client sends the same token many times: its signature is checked once, and the
        # principal is reused until the token expires (the only check that changes with time).
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        """By token: its principal, and the epoch second (leeway included) when it expires."""

    def verify(self, token: str) -> Principal:
        remembered = self._verified.get(token)
        if remembered is not None:
            principal, expires = remembered
            if expires > time.time():
                self._verified.move_to_end(token)
                return principal
            del self._verified[token]
        principal = self._verify(token)
        expires = principal.expires_at.timestamp() + self.settings.leeway_seconds
        self._verified[token] = (principal, expires)
        if len(self._verified) > self.REMEMBERED:
            self._verified.popitem(last=False)
        return principal

    def _verify(self, token: str) -> Principal:
        if not isinstance(token, str) or not token:
            raise AuthError("missing token")
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError("token too large")
        # A compact JWT is base64url and dots; pyjwt would crash (not refuse) on a lone surrogate.
        if not token.isascii():
            raise AuthError("malformed token")
        s = self.settings
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[s.algorithm],
                issuer=s.issuer,
                audience=s.audience,
                leeway=s.leeway_seconds,
                # pyjwt rejects any `aud` when given no audience; docs/api.md checks it only if set.
                options={"require": ["exp", "sub"], "verify_aud": s.audience is not None},
            )
        except jwt.MissingRequiredClaimError as error:
            raise AuthError(f"token lacks the {error.claim} claim") from None
        except jwt.PyJWTError as error:
            known = (text for kind, text in _REASONS if isinstance(error, kind))
            raise AuthError(next(known, "malformed token")) from None
        return _principal(claims)

    def principal_from_header(self, authorization: str | None) -> Principal:
        if not authorization or not authorization.strip():
            raise AuthError("missing bearer token")
        # RFC 6750: `Bearer 1*SP token`, scheme case-insensitive; surrounding whitespace is OWS.
        parts = authorization.split()
        if parts[0].lower() != "bearer":
            raise AuthError("authorization scheme must be Bearer")
        if len(parts) != 2:
            raise AuthError("malformed bearer token")
        return self.verify(parts[1])


def _principal(claims: dict[str, Any]) -> Principal:
    subject = claims["sub"]
    if not isinstance(subject, str) or not subject.strip():
        raise AuthError("token subject must be a non-empty string")
    if "\x00" in subject or len(subject) > MAX_SUBJECT_LENGTH:
        raise AuthError("malformed token subject")
    role = claims.get("role", Role.USER.value)
    if not isinstance(role, str) or role not in _ROLES:
        raise AuthError("unknown role")
    exp = claims["exp"]
    # pyjwt accepts anything int() accepts (e.g. the string "123"); a timestamp must be a number.
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise AuthError("malformed exp claim")
    try:
        expires_at = datetime.fromtimestamp(exp, tz=UTC)
    except (OverflowError, ValueError, OSError):  # beyond year 9999
        raise AuthError("malformed exp claim") from None
    return Principal(subject, Role(role), token_id=claims.get("jti"), expires_at=expires_at)


def mint_token(
    *,
    secret_or_private_key: str,
    algorithm: str,
    subject: str,
    role: Role,
    ttl: timedelta,
    issuer: str | None = None,
    audience: str | None = None,
    now: datetime | None = None,
    token_id: str | None = None,
) -> str:
    """A signed token for dev tooling and tests (real clients get theirs from the issuer)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}")
    issued = now or datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": subject,
        "role": Role(role).value,
        "iat": int(issued.timestamp()),
        "exp": int((issued + ttl).timestamp()),
    }
    optional = {"iss": issuer, "aud": audience, "jti": token_id}
    claims.update({name: value for name, value in optional.items() if value is not None})
    return jwt.encode(claims, secret_or_private_key, algorithm=algorithm)
