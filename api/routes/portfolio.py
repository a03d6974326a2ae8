"""GET /portfolio/summary: the figures of docs/domain.md over the caller's positions (or book)."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from projections import queries
from projections.as_of import read_models_at

from ..as_of import AS_OF_HEADER, log_position
from ..json import JSONResponse
from ..parameters import SummaryQuery
from ..query import parse_query
from ..security import authenticate, visible_owner
from ..services import services_of


async def summary(request: Request) -> Response:
    principal = authenticate(request)
    query = parse_query(request, SummaryQuery)
    owner, point = visible_owner(principal, query.owner), query.point
    services = services_of(request)
    proximity = services.settings.risk_stop_proximity_pct
    if point is None:
        figures = await queries.portfolio_summary(services.pool, owner, proximity)
        figures["calculated_at"] = datetime.now(UTC)
        return JSONResponse(figures)
    at = await log_position(point, services.store)
    async with read_models_at(services.pool, services.store, at, owner=owner) as then:
        figures = await queries.portfolio_summary(then, owner, proximity)
    figures["as_of_position"] = at.global_position
    figures["calculated_at"] = datetime.now(UTC)
    return JSONResponse(figures, headers={AS_OF_HEADER: str(at.global_position)})


routes = [Route("/portfolio/summary", summary, methods=["GET"])]
