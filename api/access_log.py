"""One log line and one metrics sample per HTTP request, labelled by route template."""

from __future__ import annotations

import logging

from prometheus_client.metrics import Counter, Histogram
from starlette.types import Scope

from .metrics import Metrics

log = logging.getLogger("api.access")


class AccessLog:
    """Told of each answered request by RequestContextMiddleware (one layer for both)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        # Each label set's series, found once: prometheus-client's lookup takes a lock each time.
        self._counts: dict[tuple[str, str, int], Counter] = {}
        self._latencies: dict[tuple[str, str], Histogram] = {}

    def record(self, scope: Scope, status: int, elapsed: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope["method"]
        if (count := self._counts.get((method, route, status))) is None:
            count = self._metrics.requests.labels(method, route, str(status))
            self._counts[method, route, status] = count
        count.inc()
        if (latency := self._latencies.get((method, route))) is None:
            latency = self._latencies[method, route] = self._metrics.latency.labels(method, route)
        latency.observe(elapsed)
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
                },
            )
