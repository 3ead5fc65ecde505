"""The client's address behind reverse proxies: the right-most untrusted hop of
`X-Forwarded-For`.

Every proxy appends the address it received the request from, so whatever a client writes into
the header itself comes first (left) and can never be trusted. Two ways to say which hops are
the platform's own:

- `TRUSTED_PROXY_HOPS=n`: exactly n proxies stand in front and each appends one entry; the
  client is the n-th entry from the right (for a platform whose proxy addresses change);
- `TRUSTED_PROXIES=cidr,...`: the proxies' networks; a request from one of them is attributed
  to the right-most entry outside them.

Without either, `X-Forwarded-For` is ignored and the peer address is the client's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Bounds on the header read: its size (a proxy chain of a few hops is well under this) and the
# right-most entries looked at.
MAX_FORWARDED_BYTES = 2048
MAX_FORWARDED_HOPS = 16


def parse_networks(values: Sequence[str]) -> tuple[IpNetwork, ...]:
    return tuple(ipaddress.ip_network(value, strict=False) for value in values)


def _hops(headers: Sequence[tuple[bytes, bytes]]) -> list[str]:
    """The right-most entries of every `X-Forwarded-For` line (in order), within the bounds."""
    lines = [value for name, value in headers if name == b"x-forwarded-for"]
    joined = b",".join(lines)[-MAX_FORWARDED_BYTES:].decode("latin-1")
    entries = [entry.strip() for entry in joined.split(",")]
    return [entry for entry in entries if entry][-MAX_FORWARDED_HOPS:]


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if value.startswith("[") and "]" in value:  # [v6]:port
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # v4:port
        value = value.partition(":")[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def client_address(
    peer: str,
    headers: Sequence[tuple[bytes, bytes]],
    *,
    hops: int,
    networks: Sequence[IpNetwork],
) -> str:
    """The client's address of a request from `peer` (see the module docstring)."""
    if networks:
        peer_address = _address(peer)
        if peer_address is None or not any(peer_address in net for net in networks):
            return peer  # not from a proxy: its header is the client's own words
        entries = _hops(headers)
        for entry in reversed(entries):
            address = _address(entry)
            if address is None:
                return peer  # a hop nobody vouches for: no further left is trustworthy
            if not any(address in net for net in networks):
                return str(address)
        first = _address(entries[0]) if entries else None
        return str(first) if first is not None else peer
    entries = _hops(headers)
    if hops <= 0 or len(entries) < hops:
        return peer  # fewer hops than proxies: not a request that came through them
    address = _address(entries[-hops])
    return str(address) if address is not None else peer


class ClientAddressMiddleware:
    """Sets the ASGI scope's `client` to the address `client_address` finds."""

    def __init__(self, app: ASGIApp, *, hops: int, networks: Sequence[IpNetwork]) -> None:
        self.app = app
        self.hops = hops
        self.networks = tuple(networks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("client"):
            host = scope["client"][0]
            address = client_address(host, scope["headers"], hops=self.hops, networks=self.networks)
            if address != host:
                scope["client"] = (address, 0)
        await self.app(scope, receive, send)
