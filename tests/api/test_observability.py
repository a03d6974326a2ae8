"""What operators watch: health, readiness and metrics, over real sockets."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
from websockets.asyncio.client import connect

from api.database import with_database
from api.metrics import Metrics

from .conftest import Caller, free_port, running_service, token


def test_health_reports_the_database_redis_and_the_live_feed(
    api_database: str, redis_url: str
) -> None:
    env = {
        "DATABASE_URL": api_database,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": uuid.uuid4().hex,
    }
    with running_service(env) as url:
        health = httpx.get(f"{url}/health")
        live = httpx.get(f"{url}/health/live")
        ready = httpx.get(f"{url}/health/ready")

    body = health.json()
    assert health.status_code == 200 and body["status"] == "healthy", body
    assert body["database"]["reachable"] and body["database"]["latency_ms"] >= 0
    assert body["redis"] == {
        "configured": True,
        "reachable": True,
        "latency_ms": body["redis"]["latency_ms"],
    }
    assert body["projections"]["live_feed"]["lag_events"] == 0
    assert body["version"] and body["uptime_seconds"] >= 0
    assert body["service"] == "position-service"  # kept for clients of the original API
    assert abs(datetime.fromisoformat(body["timestamp"]) - datetime.now(UTC)) < timedelta(minutes=1)
    assert live.json() == {"status": "alive"} and ready.json() == {"status": "ready"}


def test_without_redis_the_service_is_degraded_but_serves(api_database: str, user: Caller) -> None:
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    with running_service({"DATABASE_URL": api_database, "REDIS_URL": nobody}) as url:
        health = httpx.get(f"{url}/health")
        served = httpx.get(
            f"{url}/positions", headers={"Authorization": f"Bearer {token(user.subject)}"}
        )

    assert health.status_code == 200
    assert health.json()["status"] == "degraded"
    assert health.json()["redis"] == {"configured": True, "reachable": False}
    assert served.status_code == 200


def test_without_the_database_health_is_503_and_the_service_not_ready(
    pg_server: str, template_database: str
) -> None:
    name = f"pms_gone_{uuid.uuid4().hex[:8]}"

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect(pg_server)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"'))
    with running_service({"DATABASE_URL": with_database(pg_server, name)}) as url:
        assert httpx.get(f"{url}/health").status_code == 200
        asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))
        health = httpx.get(f"{url}/health", timeout=10)
        ready = httpx.get(f"{url}/health/ready", timeout=10)
        live = httpx.get(f"{url}/health/live", timeout=10)

    assert health.status_code == 503
    assert health.json()["status"] == "unhealthy"
    assert health.json()["database"] == {"reachable": False}
    assert ready.status_code == 503 and live.status_code == 200


def _samples(text: str, name: str) -> dict[str, float]:
    return {
        labels: float(value)
        for labels, value in re.findall(rf"^{name}(\{{.*\}})? (\S+)$", text, re.MULTILINE)
    }


async def test_metrics_count_by_route_template_and_event_type(
    service_url: str, user: Caller
) -> None:
    def scrape() -> str:
        response = httpx.get(f"{service_url}/metrics")  # no token needed
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return response.text

    before = await asyncio.to_thread(scrape)
    opened = [await asyncio.to_thread(user.open) for _ in range(2)]
    for position in opened:
        await asyncio.to_thread(user.http.get, f"/positions/{position['id']}")
    async with connect(
        service_url.replace("http", "ws") + f"/ws/positions?token={token(user.subject)}"
    ) as ws:
        await ws.recv()
        during = await asyncio.to_thread(scrape)
    after = await asyncio.to_thread(scrape)

    key = '{method="GET",route="/positions/{position_id}",status="200"}'
    gets = _samples(after, "http_requests_total")
    assert gets[key] - _samples(before, "http_requests_total").get(key, 0) == 2
    assert not any(position["id"] in after for position in opened), "a raw path became a label"
    opened_key = '{type="PositionOpened"}'
    appended = _samples(after, "events_appended_total")[opened_key]
    assert appended - _samples(before, "events_appended_total").get(opened_key, 0) == 2
    assert _samples(during, "live_connections")['{channel="websocket"}'] >= 1
    assert _samples(after, "live_connections")['{channel="websocket"}'] == (
        _samples(during, "live_connections")['{channel="websocket"}'] - 1
    )
    assert 'le="0.1",method="GET",route="/positions/{position_id}"}' in after
    assert _samples(after, "db_pool_connections")['{state="idle"}'] >= 0
    assert "live_feed_lag_events " in after
    # What every Python exporter has, beside the service's own series.
    assert _samples(after, "process_resident_memory_bytes")[""] > 10_000_000
    assert _samples(after, "process_cpu_seconds_total")[""] > 0
    assert _samples(after, "process_open_fds")[""] > 0
    assert _samples(after, "python_gc_collections_total")['{generation="0"}'] >= 0
    assert "python_info{" in after


def test_request_latencies_fall_in_prometheus_buckets_upper_bound_included() -> None:
    metrics = Metrics()
    route = "/positions/{position_id}"
    for seconds in (0.0004, 0.001, 0.0011, 0.3, 11.0):
        metrics.requests.record("GET", route, 200, seconds)
    metrics.requests.record("GET", route, 404, 0.002)
    text = metrics.render().decode()

    buckets = _samples(text, "http_request_duration_seconds_bucket")
    where = 'method="GET",route="/positions/{position_id}"}'
    assert buckets['{le="0.001",' + where] == 2  # a bucket counts what is <= its bound
    assert buckets['{le="0.0025",' + where] == 4
    assert buckets['{le="0.25",' + where] == 4
    assert buckets['{le="0.5",' + where] == 5
    assert buckets['{le="10.0",' + where] == 5
    assert buckets['{le="+Inf",' + where] == 6
    assert _samples(text, "http_request_duration_seconds_count")["{" + where] == 6
    total = _samples(text, "http_request_duration_seconds_sum")["{" + where]
    assert abs(total - 11.3045) < 1e-9
    answered = _samples(text, "http_requests_total")
    assert answered['{method="GET",route="/positions/{position_id}",status="200"}'] == 5
    assert answered['{method="GET",route="/positions/{position_id}",status="404"}'] == 1
