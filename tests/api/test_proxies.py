"""The client's address: forwarding headers believed from TRUSTED_PROXIES only."""

from __future__ import annotations

import logging
import uuid

import httpx
import pytest

from api.config import ConfigError, Settings
from api.proxies import TrustedProxies, parse_networks

from .conftest import running_service, token
from .support import db_fetch

PROXY = "10.0.0.2"


def _client(peer: str, trusted: str, header: str = "x-forwarded-for", **headers: str) -> str:
    proxies = TrustedProxies(parse_networks(trusted), header)
    return proxies.client(
        peer, [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]
    )


def test_without_trusted_proxies_a_forwarding_header_is_ignored() -> None:
    assert _client(PROXY, "", x_forwarded_for="203.0.113.7") == PROXY
    assert _client(PROXY, "", "forwarded", forwarded="for=203.0.113.7") == PROXY


def test_from_a_peer_that_is_not_a_trusted_proxy_the_header_is_ignored() -> None:
    assert _client("198.51.100.4", "10.0.0.0/8", x_forwarded_for="203.0.113.7") == "198.51.100.4"


def test_behind_a_trusted_proxy_the_client_is_the_rightmost_untrusted_hop() -> None:
    # Everything left of the hop the proxy appended is whatever the client wrote.
    forged = "6.6.6.6, 203.0.113.7"
    assert _client(PROXY, "10.0.0.0/8", x_forwarded_for=forged) == "203.0.113.7"
    through_two = "6.6.6.6, 203.0.113.7, 10.1.2.3"
    assert _client(PROXY, "10.0.0.0/8", x_forwarded_for=through_two) == "203.0.113.7"


def test_when_every_hop_is_trusted_the_client_is_the_leftmost() -> None:
    assert _client(PROXY, "10.0.0.0/8", x_forwarded_for="10.9.9.9, 10.1.1.1") == "10.9.9.9"
    assert _client(PROXY, "10.0.0.0/8") == PROXY  # no header at all


def test_an_unreadable_hop_ends_the_walk_at_the_nearest_proxy() -> None:
    assert _client(PROXY, "10.0.0.0/8", x_forwarded_for="203.0.113.7, unknown") == PROXY
    assert _client(PROXY, "10.0.0.0/8", x_forwarded_for="203.0.113.7, <script>") == PROXY


def test_header_lines_are_read_in_order_and_ports_and_brackets_dropped() -> None:
    proxies = TrustedProxies(parse_networks("10.0.0.0/8, ::1"))
    headers = [
        (b"x-forwarded-for", b"6.6.6.6"),
        (b"x-forwarded-for", b"[2001:db8::17]:4711, 10.0.0.9:80"),
    ]
    assert proxies.client("::1", headers) == "2001:db8::17"


def test_the_forwarded_header_is_read_when_it_is_the_one_the_proxies_keep() -> None:
    value = 'for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, for=10.0.0.9;by=10.0.0.2'
    assert _client(PROXY, "10.0.0.0/8", "forwarded", forwarded=value) == "2001:db8:cafe::17"
    # The other header is the client's own words, passed on by the proxy untouched.
    both = {"forwarded": "for=203.0.113.7", "x_forwarded_for": "6.6.6.6"}
    assert _client(PROXY, "10.0.0.0/8", **both) == "6.6.6.6"
    assert _client(PROXY, "10.0.0.0/8", "forwarded", **both) == "203.0.113.7"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TRUSTED_PROXIES": "10.0.0.0/8, nginx"}, "TRUSTED_PROXIES: 'nginx'"),
        ({"TRUSTED_PROXY_HEADER": "X-Real-IP"}, "TRUSTED_PROXY_HEADER"),
    ],
)
def test_a_malformed_setting_is_refused_naming_it(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


# -- through the service's socket ----------------------------------------------------------------


def _create(url: str, subject: str, local_address: str, **headers: str) -> str:
    """Open a position from `local_address`; the client address its event recorded."""
    transport = httpx.HTTPTransport(local_address=local_address)
    with httpx.Client(base_url=url, transport=transport, timeout=30) as client:
        response = client.post(
            "/positions",
            json={"symbol": "AAPL", "side": "long", "quantity": 1, "entry_price": 10},
            headers={"Authorization": f"Bearer {token(subject)}", **headers},
        )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _recorded_client(dsn: str, position_id: str) -> str:
    [row] = db_fetch(
        dsn,
        "SELECT metadata->>'client_ip' AS ip FROM events WHERE stream_id = $1",
        f"position-{position_id}",
    )
    return row["ip"]


def test_by_default_the_audit_trail_records_the_peer_whatever_it_sends(
    service_url: str, api_database: str
) -> None:
    forged = {"X-Forwarded-For": "203.0.113.66", "Forwarded": "for=203.0.113.67"}
    position_id = _create(service_url, f"u-{uuid.uuid4().hex[:8]}", "127.0.0.1", **forged)
    assert _recorded_client(api_database, position_id) == "127.0.0.1"


def test_behind_a_trusted_proxy_the_audit_trail_and_access_log_record_the_client(
    api_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    env = {"DATABASE_URL": api_database, "TRUSTED_PROXIES": "127.0.0.1/32"}
    with running_service(env) as url, caplog.at_level(logging.INFO, logger="api.access"):
        proxied = _create(url, "proxied", "127.0.0.1", **{"X-Forwarded-For": "203.0.113.9"})
        direct = _create(url, "direct", "127.0.0.2", **{"X-Forwarded-For": "203.0.113.10"})

    assert _recorded_client(api_database, proxied) == "203.0.113.9"
    assert _recorded_client(api_database, direct) == "127.0.0.2"  # not a proxy: not believed
    logged = {r.user: r.client for r in caplog.records if getattr(r, "route", "") == "/positions"}
    assert logged == {"proxied": "203.0.113.9", "direct": "127.0.0.2"}


def test_behind_a_trusted_proxy_anonymous_clients_have_budgets_of_their_own(
    api_database: str,
) -> None:
    env = {
        "DATABASE_URL": api_database,
        "TRUSTED_PROXIES": "127.0.0.1",
        "RATE_LIMIT_PER_SECOND": "0.5",
        "RATE_LIMIT_BURST": "2",
    }
    with running_service(env) as url:

        def get(client: str) -> int:
            return httpx.get(f"{url}/positions", headers={"X-Forwarded-For": client}).status_code

        first = [get("203.0.113.21") for _ in range(3)]
        second = [get("203.0.113.22") for _ in range(2)]

    assert first == [401, 401, 429]
    assert second == [401, 401]
