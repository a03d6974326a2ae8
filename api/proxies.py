"""The client's address behind trusted proxies: what the audit trail, access log and limiter use.

A request's peer is believed about the client only when it is a proxy named in TRUSTED_PROXIES;
from anyone else a forwarding header is ignored, since anyone can send one. Behind trusted proxies
the client is the right-most hop that is not itself a trusted proxy: each proxy appends the
address it was reached from, so everything left of that hop is whatever the client wrote.

Only the header the proxies maintain is read (TRUSTED_PROXY_HEADER): a proxy that appends to
X-Forwarded-For passes a `Forwarded` header on as the client sent it, and the reverse.
uvicorn's own proxy support is turned off (see api/cli.py): it trusts 127.0.0.1 by default and
reads X-Forwarded-For only.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
HEADERS = ("x-forwarded-for", "forwarded")

# RFC 7239: `for=` in each comma-separated element, a token or a quoted string.
_FORWARDED_FOR = re.compile(r'(?:^|;)\s*for\s*=\s*("[^"]*"|[^;,\s]*)', re.IGNORECASE)


def parse_networks(text: str) -> tuple[Network, ...]:
    """`10.0.0.0/8, 192.168.1.7, ::1`: addresses and networks, comma-separated; ValueError
    naming the entry that is neither."""
    networks = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or network") from None
    return tuple(networks)


class TrustedProxies:
    def __init__(self, networks: Iterable[Network], header: str = "x-forwarded-for") -> None:
        self.networks = tuple(networks)
        self.header = header.lower()
        if self.header not in HEADERS:
            raise ValueError(f"the forwarding header is one of {', '.join(HEADERS)}")

    def trusts(self, host: str) -> bool:
        address = _address(host)
        return address is not None and any(address in network for network in self.networks)

    def client(self, peer: str, headers: Iterable[tuple[bytes, bytes]]) -> str:
        """The client's address, given the peer's and the request's headers."""
        if not self.trusts(peer):
            return peer
        name = self.header.encode()
        values = [value.decode("latin-1") for key, value in headers if key == name]
        hops = _forwarded_hops(values) if self.header == "forwarded" else _listed_hops(values)
        client = peer
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:
                break  # unreadable (or "unknown"): the nearest proxy is all that is known
            client = str(address)
            if not self.trusts(client):
                break
        return client


class ClientAddressMiddleware:
    """Rewrites the connection's client address before anything reads it."""

    def __init__(self, app: ASGIApp, proxies: TrustedProxies) -> None:
        self.app = app
        self.proxies = proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        peer = scope.get("client")
        if scope["type"] in {"http", "websocket"} and peer:
            client = self.proxies.client(peer[0], scope["headers"])
            if client != peer[0]:
                scope["client"] = (client, 0)  # the port was the proxy's
        await self.app(scope, receive, send)


def _listed_hops(values: list[str]) -> list[str]:
    return [hop.strip() for value in values for hop in value.split(",")]


def _forwarded_hops(values: list[str]) -> list[str]:
    return [
        match.group(1).strip('"') if (match := _FORWARDED_FOR.search(element)) else ""
        for value in values
        for element in value.split(",")
    ]


def _address(hop: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address from `1.2.3.4`, `1.2.3.4:5678`, `::1` or `[::1]:5678`; None if it is none."""
    hop = hop.strip()
    if hop.startswith("["):
        hop = hop[1:].partition("]")[0]
    elif hop.count(":") == 1:
        hop = hop.partition(":")[0]
    try:
        return ipaddress.ip_address(hop)
    except ValueError:
        return None
