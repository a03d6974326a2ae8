"""GET /portfolio/summary: the figures of DOMAIN.md over the caller's positions (or the book)."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from projections import queries

from ..json import JSONResponse
from ..security import authenticate, visible_owner


async def summary(request: Request) -> Response:
    principal = authenticate(request)
    owner = visible_owner(principal, request.query_params.get("owner"))
    services = request.app.state.services
    figures = await queries.portfolio_summary(
        services.pool, owner, services.settings.risk_stop_proximity_pct
    )
    figures["calculated_at"] = datetime.now(UTC)
    return JSONResponse(figures)


routes = [Route("/portfolio/summary", summary, methods=["GET"])]
