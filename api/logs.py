"""Logging that never writes a secret: the WebSocket takes its token in the URL."""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

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


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's own logging setup, with secrets masked on every handler."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact"] = {"()": f"{__name__}.RedactSecrets"}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact")
    return config
