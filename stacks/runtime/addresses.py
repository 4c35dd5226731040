"""Which network addresses the worker may connect to on a customer's behalf.

The worker holds the encryption keys and sits next to the portal's database, broker, engine
APIs, registry and edge admin. Anything it fetches for a customer (a git repository today) must
go to a public address, checked once and then used (pinned), so a name cannot point inward
between the check and the connection. No database, no settings: callers pass the operator's
trusted hosts (their own git mirror on the LAN, or the tests' server on loopback).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Collection

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Names that mean "this machine" or "this network" whatever the resolver says.
_LOCAL_NAME = re.compile(r"^(localhost|ip6-localhost|ip6-loopback)$|\.(localhost|local|internal|arpa)$")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressRefused(Exception):
    """The address is not one we connect to. ``message`` is fit for the customer."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def is_public(ip: IPAddress) -> bool:
    """A globally routed unicast address: not loopback, private, link-local (cloud metadata),
    shared (CGNAT), reserved, multicast or unspecified; IPv6 forms that carry an IPv4 address
    (mapped, 6to4, NAT64) are judged by that address, Teredo is refused."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            return is_public(ip.sixtofour)
        if ip in _NAT64:
            return is_public(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.teredo is not None or ip.scope_id:
            return False
    return ip.is_global and not ip.is_multicast


def literal_address(host: str) -> IPAddress | None:
    """The address a host written as a number stands for, in any spelling the C library
    accepts (``127.1``, ``2130706433``, ``0x7f.0.0.1``, ``[::1]``), or None for a name."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _trusted(host: str, port: int, trusted: Collection[str]) -> bool:
    return host in trusted or f"{host}:{port}" in trusted


def check_host(host: str, port: int, *, trusted: Collection[str] = ()) -> None:
    """Refuse, without touching the network, a host that is visibly not public (for the
    request: the worker resolves and checks again before it connects)."""
    host = host.lower().rstrip(".")
    if _trusted(host, port, trusted):
        return
    literal = literal_address(host)
    if literal is not None:
        if not is_public(literal):
            raise AddressRefused(f"{host} is not a public address; only public hosts can be fetched from.")
        return
    if _LOCAL_NAME.search(host) or "." not in host:
        raise AddressRefused(f"{host} is not a public host name; use the repository's full public address.")


def resolve_public(host: str, port: int, *, trusted: Collection[str] = ()) -> str:
    """Resolve ``host`` once and return the one address to connect to. Every address the name
    has must be public (a name with one private answer is refused: the client might pick it)."""
    check_host(host, port, trusted=trusted)
    host = host.lower().rstrip(".").strip("[]")
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise AddressRefused(f"The host name {host} could not be resolved.") from None
    addresses = [ipaddress.ip_address(str(sockaddr[0]).partition("%")[0]) for *_, sockaddr in answers]
    if not addresses:
        raise AddressRefused(f"The host name {host} could not be resolved.")
    if not _trusted(host, port, trusted) and not all(is_public(a) for a in addresses):
        raise AddressRefused(
            f"{host} points to an address that is not public; only public hosts can be fetched from."
        )
    return str(addresses[0])
