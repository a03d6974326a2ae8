"""HTTP routes, one module per resource."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Endpoint = Callable[[Request], Awaitable[Response]]


def resource(path: str, **by_method: Endpoint) -> Route:
    """One route for every method of a path, so that a 405 names all of them in `Allow`."""
    endpoints = {method.upper(): endpoint for method, endpoint in by_method.items()}
    if "GET" in endpoints:
        endpoints["HEAD"] = endpoints["GET"]

    async def dispatch(request: Request) -> Response:
        return await endpoints[request.method](request)

    return Route(path, dispatch, methods=list(endpoints))
