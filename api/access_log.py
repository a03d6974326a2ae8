"""One log line and one metrics sample per HTTP request, labelled by route template."""

from __future__ import annotations

import logging

from starlette.types import Scope

from .metrics import Metrics

log = logging.getLogger("api.access")


class AccessLog:
    """Told of each answered request by RequestContextMiddleware (one layer for both)."""

    def __init__(self, metrics: Metrics) -> None:
        self._requests = metrics.requests

    def record(self, scope: Scope, status: int, elapsed: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope["method"]
        self._requests.record(method, route, status, elapsed)
        if log.isEnabledFor(logging.INFO):  # not even the record's fields otherwise
            principal = scope.get("state", {}).get("principal")
            log.info(
                "%s %s %d",
                method,
                route,
                status,
                extra={
                    "method": method,
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "user": None if principal is None else principal.subject,
                    "client": client[0] if (client := scope.get("client")) else None,
                },
            )
