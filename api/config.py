"""Configuration, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

from .proxies import HEADERS, Network, parse_networks

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = PROJECT_ROOT / "migrations"


class ConfigError(Exception):
    """A setting is missing or malformed, or what it names cannot be reached; the message says
    which, in one line."""


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    redis_url: str | None
    redis_key_prefix: str
    host: str
    port: int
    workers: int
    log_level: str
    sql_echo: bool
    db_pool_size: int
    db_max_overflow: int
    data_dir: Path
    risk_stop_proximity_pct: Decimal
    idempotency_ttl_hours: int
    live_queue_limit: int
    rate_limit_per_second: float
    rate_limit_burst: int
    read_deadline_seconds: float
    """A read's deadline (GET, HEAD); 0: none."""
    audit_deadline_seconds: float
    """The deadline of the audit trail's searches and histories; 0: none."""
    db_statement_timeout_seconds: float
    """PostgreSQL's statement_timeout on the service's connections, a backstop; 0: none."""
    trusted_proxies: tuple[Network, ...]
    """Peers whose forwarding header names the client (see api/proxies.py); none by default."""
    trusted_proxy_header: str
    environment: dict[str, str] = field(repr=False)
    """All variables, for the parts that read their own (authentication)."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            redis_url=env.get("REDIS_URL") or None,
            redis_key_prefix=env.get("REDIS_KEY_PREFIX") or "positions",
            host=env.get("HOST", "127.0.0.1"),
            port=_int(env, "PORT", 8002),
            workers=_int(env, "WORKERS", 1),
            log_level=env.get("LOG_LEVEL", "INFO").upper(),
            sql_echo=_bool(env, "SQL_ECHO", False),
            db_pool_size=_int(env, "DB_POOL_SIZE", 20),
            db_max_overflow=_int(env, "DB_MAX_OVERFLOW", 40),
            data_dir=Path(env.get("DATA_DIR", str(PROJECT_ROOT / ".data"))),
            risk_stop_proximity_pct=_decimal(env, "RISK_STOP_PROXIMITY_PCT", Decimal(2)),
            idempotency_ttl_hours=_int(env, "IDEMPOTENCY_TTL_HOURS", 24),
            live_queue_limit=_int(env, "LIVE_QUEUE_LIMIT", 1000),
            rate_limit_per_second=float(_decimal(env, "RATE_LIMIT_PER_SECOND", Decimal(0))),
            rate_limit_burst=_int(env, "RATE_LIMIT_BURST", 0),
            read_deadline_seconds=float(_decimal(env, "READ_DEADLINE_SECONDS", Decimal(10))),
            audit_deadline_seconds=float(_decimal(env, "AUDIT_DEADLINE_SECONDS", Decimal(30))),
            db_statement_timeout_seconds=float(
                _decimal(env, "DB_STATEMENT_TIMEOUT_SECONDS", Decimal(60))
            ),
            trusted_proxies=_networks(env, "TRUSTED_PROXIES"),
            trusted_proxy_header=_choice(env, "TRUSTED_PROXY_HEADER", HEADERS),
            environment=env,
        )


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative")
    return value


def _decimal(env: dict[str, str], name: str, default: Decimal) -> Decimal:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None
    if not value.is_finite() or value < 0:
        raise ConfigError(f"{name} must be a number of 0 or more")
    return value


def _bool(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def _networks(env: dict[str, str], name: str) -> tuple[Network, ...]:
    try:
        return parse_networks(env.get(name, ""))
    except ValueError as error:
        raise ConfigError(f"{name}: {error}") from None


def _choice(env: dict[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (any case); the first when unset."""
    raw = (env.get(name) or choices[0]).lower()
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    return raw
