"""Token verification (docs/api.md, "Authentication and roles"): pure, no database."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from api.auth import (
    MAX_TOKEN_BYTES,
    AuthError,
    AuthSettings,
    Principal,
    Role,
    TokenVerifier,
    mint_token,
)
from api.config import ConfigError

from .support import b64url

SECRET = "s" * 32 + "-test-secret"
OTHER_SECRET = "o" * 32 + "-another-secret"
HOUR = timedelta(hours=1)


# --- keys and helpers -------------------------------------------------------------------------


def _private_pem(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _public_pem(key) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def now() -> datetime:
    # Real time to the second: pyjwt checks exp/nbf against the clock, we assert exact values.
    return datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def hs256() -> TokenVerifier:
    return TokenVerifier(AuthSettings(algorithm="HS256", secret=SECRET, public_key=None))


@pytest.fixture
def rs256(rsa_key) -> TokenVerifier:
    return TokenVerifier(
        AuthSettings(algorithm="RS256", secret=None, public_key=_public_pem(rsa_key))
    )


def segment(value: dict) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def hs256_by_hand(claims: dict, key: bytes) -> str:
    """An HS256 token built without pyjwt, which refuses some keys we need to attack with."""
    signing_input = f"{segment({'alg': 'HS256', 'typ': 'JWT'})}.{segment(claims)}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def claims(now: datetime, **extra) -> dict:
    base = {"sub": "alice", "exp": int((now + HOUR).timestamp())}
    return {**base, **extra}


def hs(payload: dict, secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def rejected(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(AuthError) as caught:
        verifier.verify(token)
    return caught.value.reason


# --- valid tokens -----------------------------------------------------------------------------


@pytest.mark.parametrize("role", list(Role))
def test_a_valid_hs256_token_gives_its_principal(hs256, now, role) -> None:
    token = mint_token(
        secret_or_private_key=SECRET,
        algorithm="HS256",
        subject="alice",
        role=role,
        ttl=HOUR,
        now=now,
        token_id="t-1",
    )

    assert hs256.verify(token) == Principal(
        subject="alice", role=role, token_id="t-1", expires_at=now + HOUR
    )


def test_role_defaults_to_user_and_jti_is_optional(hs256, now) -> None:
    principal = hs256.verify(hs(claims(now)))

    assert principal.role is Role.USER
    assert principal.token_id is None
    assert principal.expires_at.tzinfo is UTC


def test_rs256_with_a_generated_key(rsa_key, rs256, now) -> None:
    token = mint_token(
        secret_or_private_key=_private_pem(rsa_key),
        algorithm="RS256",
        subject="svc",
        role=Role.SERVICE,
        ttl=HOUR,
        now=now,
    )

    assert rs256.verify(token).role is Role.SERVICE


def test_es256_with_a_generated_key(ec_key, now) -> None:
    verifier = TokenVerifier(
        AuthSettings(algorithm="ES256", secret=None, public_key=_public_pem(ec_key))
    )
    token = mint_token(
        secret_or_private_key=_private_pem(ec_key),
        algorithm="ES256",
        subject="bob",
        role=Role.ADMIN,
        ttl=HOUR,
        now=now,
    )

    assert verifier.verify(token).subject == "bob"


# --- claims -----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["root", "Admin", "", ["admin"], None])
def test_an_unknown_role_is_refused(hs256, now, role) -> None:
    assert rejected(hs256, hs(claims(now, role=role))) == "unknown role"


def test_a_missing_sub_is_refused(hs256, now) -> None:
    payload = claims(now)
    del payload["sub"]

    assert rejected(hs256, hs(payload)) == "token lacks the sub claim"


@pytest.mark.parametrize("sub", ["", "   "])
def test_an_empty_sub_is_refused(hs256, now, sub) -> None:
    assert rejected(hs256, hs(claims(now, sub=sub))) == "token subject must be a non-empty string"


def test_a_non_string_sub_is_refused(hs256, now) -> None:
    rejected(hs256, hs(claims(now, sub=42)))


def test_a_missing_exp_is_refused(hs256, now) -> None:
    payload = claims(now)
    del payload["exp"]

    assert rejected(hs256, hs(payload)) == "token lacks the exp claim"


@pytest.mark.parametrize("exp", ["9999999999", 10**15])
def test_an_exp_that_is_not_a_usable_timestamp_is_refused(hs256, now, exp) -> None:
    # pyjwt takes int("9999999999") as valid and 10**15 is past year 9999.
    assert rejected(hs256, hs(claims(now, exp=exp))) == "malformed exp claim"


def test_an_expired_token_is_refused(hs256, now) -> None:
    token = mint_token(
        secret_or_private_key=SECRET,
        algorithm="HS256",
        subject="alice",
        role=Role.USER,
        ttl=HOUR,
        now=now - 2 * HOUR,
    )

    assert rejected(hs256, token) == "token expired"


def test_leeway_admits_a_token_just_expired(now) -> None:
    verifier = TokenVerifier(
        AuthSettings(algorithm="HS256", secret=SECRET, public_key=None, leeway_seconds=120)
    )
    token = hs(claims(now, exp=int(now.timestamp()) - 60))

    assert verifier.verify(token).subject == "alice"


def test_a_token_not_yet_valid_is_refused(hs256, now) -> None:
    token = hs(claims(now, nbf=int((now + timedelta(minutes=5)).timestamp())))

    assert rejected(hs256, token) == "token not yet valid"


def test_a_past_nbf_is_accepted(hs256, now) -> None:
    token = hs(claims(now, nbf=int((now - timedelta(minutes=5)).timestamp())))

    assert hs256.verify(token).subject == "alice"


# --- signatures and algorithms ----------------------------------------------------------------


def test_a_wrong_signature_is_refused(hs256, now) -> None:
    assert rejected(hs256, hs(claims(now), secret=OTHER_SECRET)) == "invalid signature"


def test_a_tampered_payload_is_refused(hs256, now) -> None:
    header, _, signature = hs(claims(now)).split(".")
    forged = f"{header}.{segment(claims(now, role='admin'))}.{signature}"

    assert rejected(hs256, forged) == "invalid signature"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
@pytest.mark.parametrize("signature", ["", "c2ln"])
def test_alg_none_never_passes(hs256, rs256, now, alg, signature) -> None:
    header = segment({"alg": alg, "typ": "JWT"})
    token = f"{header}.{segment(claims(now, role='admin'))}.{signature}"

    for verifier in (hs256, rs256):
        rejected(verifier, token)


def test_a_header_without_alg_is_refused(hs256, now) -> None:
    token = f"{segment({'typ': 'JWT'})}.{segment(claims(now))}.c2ln"

    assert rejected(hs256, token) == "token algorithm not accepted"


def test_the_hand_made_hs256_tokens_are_well_formed(hs256, now) -> None:
    # Shows the next test's refusal is about the key, not about hs256_by_hand.
    assert hs256.verify(hs256_by_hand(claims(now), SECRET.encode())).subject == "alice"


def test_hs256_signed_with_the_rs256_public_key_is_refused(rsa_key, rs256, now) -> None:
    token = hs256_by_hand(claims(now, role="admin"), _public_pem(rsa_key).encode())

    assert rejected(rs256, token) == "token algorithm not accepted"


def test_an_rs256_token_is_refused_when_hs256_is_configured(rsa_key, hs256, now) -> None:
    token = jwt.encode(claims(now), _private_pem(rsa_key), algorithm="RS256")

    assert rejected(hs256, token) == "token algorithm not accepted"


def test_an_es256_token_is_refused_when_rs256_is_configured(ec_key, rs256, now) -> None:
    token = jwt.encode(claims(now), _private_pem(ec_key), algorithm="ES256")

    assert rejected(rs256, token) == "token algorithm not accepted"


def test_an_rs256_token_from_another_key_is_refused(rs256, now) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(now), _private_pem(stranger), algorithm="RS256")

    assert rejected(rs256, token) == "invalid signature"


# --- issuer and audience ----------------------------------------------------------------------


@pytest.fixture
def strict() -> TokenVerifier:
    return TokenVerifier(
        AuthSettings(
            algorithm="HS256",
            secret=SECRET,
            public_key=None,
            issuer="https://idp.example",
            audience="positions",
        )
    )


def test_the_right_issuer_and_audience_pass(strict, now) -> None:
    token = hs(claims(now, iss="https://idp.example", aud="positions"))

    assert strict.verify(token).subject == "alice"


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"iss": "https://evil.example", "aud": "positions"}, "wrong issuer"),
        ({"aud": "positions"}, "token lacks the iss claim"),
        ({"iss": "https://idp.example", "aud": "billing"}, "wrong audience"),
        ({"iss": "https://idp.example"}, "token lacks the aud claim"),
    ],
)
def test_a_wrong_or_missing_issuer_or_audience_is_refused(strict, now, extra, reason) -> None:
    assert rejected(strict, hs(claims(now, **extra))) == reason


def test_issuer_and_audience_are_ignored_when_not_configured(hs256, now) -> None:
    token = hs(claims(now, iss="https://anyone.example", aud=["whatever", "else"]))

    assert hs256.verify(token).subject == "alice"


# --- malformed input --------------------------------------------------------------------------


def _padded(now: datetime, size: int) -> str:
    return hs(claims(now, pad="x" * size))


def test_tokens_up_to_8_kib_pass_and_larger_ones_are_refused(hs256, now) -> None:
    size = 6000
    while len(_padded(now, size + 1)) <= MAX_TOKEN_BYTES:
        size += 1
    largest, too_large = _padded(now, size), _padded(now, size + 1)
    assert len(largest) <= MAX_TOKEN_BYTES < len(too_large)

    assert hs256.verify(largest).subject == "alice"
    assert rejected(hs256, too_large) == "token too large"


@pytest.mark.parametrize(
    "token", ["abc", "a.b.c", "ü.ü.ü", "\ud800.e30.e30", "..", "e30.e30", "eyJ.e30.e30"]
)
def test_garbage_is_refused_as_malformed(hs256, token) -> None:
    assert rejected(hs256, token) == "malformed token"


def test_reasons_never_echo_the_token_or_the_secret(hs256, now) -> None:
    payload = claims(now, role="superuser-" + "q" * 20)
    tokens = [
        hs(payload),
        hs(claims(now), secret=OTHER_SECRET),
        hs(claims(now, exp=int(now.timestamp()) - 10)),
        "not-a-jwt-" + "z" * 30,
    ]
    for token in tokens:
        reason = rejected(hs256, token)
        assert all(part not in reason for part in token.split(".") if len(part) > 8)
        assert "q" * 20 not in reason and SECRET not in reason and OTHER_SECRET not in reason


# --- Authorization header ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing bearer token"),
        ("", "missing bearer token"),
        ("   ", "missing bearer token"),
        ("Basic dXNlcjpwYXNz", "authorization scheme must be Bearer"),
        ("Token abc", "authorization scheme must be Bearer"),
        ("Bearer", "malformed bearer token"),
        ("Bearer   ", "malformed bearer token"),
        ("Bearer a b", "malformed bearer token"),
    ],
)
def test_bad_authorization_headers_are_refused(hs256, header, reason) -> None:
    with pytest.raises(AuthError) as caught:
        hs256.principal_from_header(header)

    assert caught.value.reason == reason


@pytest.mark.parametrize("template", ["Bearer {}", "bearer {}", "  Bearer   {}  ", "BEARER\t{}"])
def test_a_bearer_header_tolerates_case_and_extra_spaces(hs256, now, template) -> None:
    header = template.format(hs(claims(now)))

    assert hs256.principal_from_header(header).subject == "alice"


def test_a_bearer_header_still_verifies_the_token(hs256, now) -> None:
    with pytest.raises(AuthError):
        hs256.principal_from_header(f"Bearer {hs(claims(now), secret=OTHER_SECRET)}")


# --- configuration ----------------------------------------------------------------------------


def test_from_env_defaults_to_hs256_with_a_secret() -> None:
    settings = AuthSettings.from_env({"JWT_SECRET": SECRET, "JWT_ISSUER": "", "JWT_AUDIENCE": "a"})

    assert (settings.algorithm, settings.secret, settings.public_key) == ("HS256", SECRET, None)
    assert (settings.issuer, settings.audience) == (None, "a")


def test_from_env_defaults_to_rs256_with_a_public_key(rsa_key) -> None:
    settings = AuthSettings.from_env({"JWT_PUBLIC_KEY": _public_pem(rsa_key), "JWT_ISSUER": "i"})

    assert (settings.algorithm, settings.issuer) == ("RS256", "i")


def test_from_env_reads_es256_from_a_key_file(tmp_path: Path, ec_key, now) -> None:
    key_file = tmp_path / "jwt.pub"
    key_file.write_text(_public_pem(ec_key))

    env = {"JWT_PUBLIC_KEY_FILE": str(key_file), "JWT_ALGORITHM": "es256"}
    settings = AuthSettings.from_env(env)
    token = jwt.encode(claims(now), _private_pem(ec_key), algorithm="ES256")

    assert settings.algorithm == "ES256"
    assert TokenVerifier(settings).verify(token).subject == "alice"


@pytest.fixture(scope="module")
def pems(rsa_key, ec_key) -> dict[str, str]:
    """Stand-ins used in the parametrised environments below."""
    weak_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return {
        "<rsa>": _public_pem(rsa_key),
        "<ec>": _public_pem(ec_key),
        "<rsa-private>": _private_pem(rsa_key),
        "<rsa-1024>": _public_pem(weak_rsa),
        "<p-384>": _public_pem(ec.generate_private_key(ec.SECP384R1())),
    }


NEEDS_KEY = "needs JWT_PUBLIC_KEY or JWT_PUBLIC_KEY_FILE"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "JWT_SECRET or JWT_PUBLIC_KEY(_FILE) is required"),
        ({"JWT_SECRET": ""}, "JWT_SECRET or JWT_PUBLIC_KEY(_FILE) is required"),
        ({"JWT_SECRET": "short-secret"}, "JWT_SECRET must be at least 32 bytes"),
        ({"JWT_SECRET": SECRET, "JWT_ALGORITHM": "PS256"}, "JWT_ALGORITHM must be one of"),
        ({"JWT_SECRET": SECRET, "JWT_ALGORITHM": "none"}, "JWT_ALGORITHM must be one of"),
        ({"JWT_SECRET": SECRET, "JWT_ALGORITHM": "RS256"}, f"JWT_ALGORITHM=RS256 {NEEDS_KEY}"),
        ({"JWT_ALGORITHM": "ES256"}, f"JWT_ALGORITHM=ES256 {NEEDS_KEY}"),
        ({"JWT_PUBLIC_KEY": "<rsa>", "JWT_ALGORITHM": "HS256"}, "HS256 needs JWT_SECRET"),
        ({"JWT_PUBLIC_KEY": "<rsa>", "JWT_SECRET": SECRET}, "either JWT_SECRET or JWT_PUBLIC_KEY"),
        ({"JWT_PUBLIC_KEY": "<rsa>", "JWT_PUBLIC_KEY_FILE": "/x"}, "_KEY_FILE, not both"),
        ({"JWT_PUBLIC_KEY_FILE": "/no/k.pub"}, "JWT_PUBLIC_KEY_FILE /no/k.pub is unreadable"),
        ({"JWT_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----\nnope\n"}, "not a PEM public key"),
        ({"JWT_PUBLIC_KEY": "<rsa-private>"}, "not a PEM public key"),
        ({"JWT_PUBLIC_KEY": "<ec>"}, "JWT_ALGORITHM=RS256 needs an RSA public key"),
        ({"JWT_PUBLIC_KEY": "<rsa>", "JWT_ALGORITHM": "ES256"}, "needs a P-256 (secp256r1)"),
        ({"JWT_PUBLIC_KEY": "<p-384>", "JWT_ALGORITHM": "ES256"}, "needs a P-256 (secp256r1)"),
        ({"JWT_PUBLIC_KEY": "<rsa-1024>"}, "the RSA public key must have at least 2048 bits"),
    ],
)
def test_from_env_refuses_inconsistent_settings(pems, env, message) -> None:
    with pytest.raises(ConfigError) as caught:
        AuthSettings.from_env({name: pems.get(value, value) for name, value in env.items()})

    text = str(caught.value)
    assert message in text
    assert "\n" not in text and "short-secret" not in text and SECRET not in text


def test_direct_settings_are_checked_too() -> None:
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        AuthSettings(algorithm="HS256", secret="short", public_key=None)
    with pytest.raises(ConfigError, match="leeway"):
        AuthSettings(algorithm="HS256", secret=SECRET, public_key=None, leeway_seconds=-1)


def test_mint_token_refuses_an_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="algorithm"):
        mint_token(
            secret_or_private_key=SECRET, algorithm="none", subject="a", role=Role.USER, ttl=HOUR
        )


def test_a_remembered_token_is_still_refused_once_it_expires(hs256: TokenVerifier) -> None:
    verifier = hs256
    token = mint_token(
        secret_or_private_key=SECRET,
        algorithm="HS256",
        subject="alice",
        role=Role.USER,
        ttl=timedelta(seconds=1),
    )
    assert verifier.verify(token).subject == "alice"
    assert verifier.verify(token).subject == "alice"  # from memory

    time.sleep(1.1)

    with pytest.raises(AuthError, match="expired"):
        verifier.verify(token)


def test_the_memory_of_verified_tokens_is_bounded(hs256: TokenVerifier) -> None:
    verifier = hs256
    verifier.REMEMBERED = 3
    tokens = [
        mint_token(
            secret_or_private_key=SECRET,
            algorithm="HS256",
            subject=f"u{i}",
            role=Role.USER,
            ttl=timedelta(hours=1),
        )
        for i in range(5)
    ]
    for token in tokens:
        verifier.verify(token)
    assert list(verifier._verified) == tokens[2:]


def test_a_refused_token_is_not_remembered(hs256: TokenVerifier) -> None:
    verifier = hs256
    forged = mint_token(
        secret_or_private_key="x" * 40,
        algorithm="HS256",
        subject="mallory",
        role=Role.ADMIN,
        ttl=timedelta(hours=1),
    )
    for _ in range(2):
        with pytest.raises(AuthError):
            verifier.verify(forged)
    assert forged not in verifier._verified
