"""An unexpected fault answers a bare 500: the correlation id, never a stack, SQL or secret."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from api.context import RequestContextMiddleware


async def fault(request):
    raise RuntimeError("SELECT secret FROM vault WHERE password = 'hunter2'")


app = Starlette(
    routes=[Route("/fault", fault)],
    middleware=[Middleware(RequestContextMiddleware)],
)


async def test_a_fault_answers_500_without_its_details_but_with_the_correlation_id(caplog) -> None:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/fault", headers={"X-Correlation-ID": "trace-42"})

    assert response.status_code == 500
    assert response.headers["x-correlation-id"] == "trace-42"
    body = response.json()
    assert body["correlation_id"] == "trace-42"
    assert body["path"] == "/fault"
    assert "hunter2" not in response.text and "SELECT" not in response.text
    assert "Traceback" not in response.text
    assert "hunter2" in caplog.text  # the stack is in the log, for the operator
