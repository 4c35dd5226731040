"""The egress proxy of a dependency build (docs/builds.md, "Isolation").

A build container sits on an internal network of its own (no route out). The only way out is
this proxy, which the Docker backend starts per build on that network and on the build
network that reaches the internet. It lets through only:

- ``CONNECT host:port`` to a host name and port of ``tunnels`` (the registries on 443, or the
  mirror's port): TLS end to end, the proxy sees only the name;
- ``GET``/``HEAD http://host:port/...`` to a host name and port of ``plain`` (an ``http://``
  mirror only).

Everything else is answered ``403``/``405`` with a reason phrase that says why (pip, npm and
composer print it; the refusals are also printed on the proxy's output, which the backend
adds to the build's log): an IP address, a name or port not allowed, another method. The
proxy resolves the allowed names itself; the build has no resolver.

The allowed names' addresses come in the config (the portal's worker resolves them: the
build network may reach no resolver, e.g. when the host's resolver has a private address,
which the hosts' egress rules refuse); a name without any is resolved here.

This file runs as ``python3 -c <this source> <config JSON>`` in a container of a catalog
runtime image that has Python (standard library only, Python 3.11+): the backend sends it as
is. The decision (``decide``) is a pure function, tested without a network.
"""

from __future__ import annotations

import ipaddress
import json
import re
import select
import socket
import socketserver
import sys
from dataclasses import dataclass

PORT = 3128
READY = "stackport build proxy: listening"
MAX_HEAD = 16384  # the request line and headers
HEAD_TIMEOUT = 30.0  # seconds for a client to send its request head
CONNECT_TIMEOUT = 30.0
IDLE_TIMEOUT = 300.0  # a tunnel with no traffic either way this long is closed
CHUNK = 65536
_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
_NUMERIC_RE = re.compile(r"[0-9.]+|0x[0-9a-f.x]+|[0-9a-f:.]*:[0-9a-f:.]*")
_SAFE_RE = re.compile(r"[^A-Za-z0-9._:/\[\]@%+=~-]")


class Refused(Exception):
    """The request is not let through: ``status`` and the reason (one printable line)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class Route:
    """Where an allowed request goes: ``path`` is None for a tunnel (CONNECT)."""

    host: str
    port: int
    path: str | None = None


def shown(text: str, limit: int = 120) -> str:
    """``text`` safe in a status line and a log line (no spaces, controls or quotes)."""
    return _SAFE_RE.sub("?", text[:limit])


def split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    """(host, port) of ``host[:port]`` (``[v6]:port`` too); the host lower case, without a
    trailing dot. Refused when it cannot be read."""
    host, port_text = authority, ""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise Refused(400, f"bad address {shown(authority)}")
        host, rest = authority[1:end], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            raise Refused(400, f"bad address {shown(authority)}")
        port_text = rest[1:]
    elif ":" in authority:
        host, port_text = authority.rsplit(":", 1)
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise Refused(400, f"bad port in {shown(authority)}")
        port = int(port_text)
    elif default_port is None:
        raise Refused(400, f"no port in {shown(authority)}")
    else:
        port = default_port
    return host.lower().rstrip("."), port


def is_address(host: str) -> bool:
    """An IP literal in any spelling a resolver accepts (``1.2.3.4``, ``::1``, ``127.1``,
    ``0x7f.1``, ``2130706433``)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_NUMERIC_RE.fullmatch(host))


def decide(
    method: str, target: str, tunnels: frozenset[tuple[str, int]], plain: frozenset[tuple[str, int]]
) -> Route:
    """The route of a request (its method and request target), or Refused saying why."""
    method = method.upper()
    if method == "CONNECT":
        host, port = split_authority(target, None)
        allowed = tunnels
        what = f"{shown(host)}:{port}"
    elif method in ("GET", "HEAD"):
        if not target.lower().startswith("http://"):
            raise Refused(
                403,
                f"{method} {shown(target, 60)}: only CONNECT (https) to the package registries "
                "passes this proxy, and GET from an http:// mirror",
            )
        rest = target[len("http://") :]
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            raise Refused(403, "credentials in a proxied address are not allowed")
        host, port = split_authority(authority, 80)
        allowed = plain
        what = f"http://{shown(host)}:{port}"
        target = "/" + path if slash else "/"
    else:
        raise Refused(
            405,
            f"method {shown(method, 20)} is not allowed: only CONNECT to the package registries "
            "(and GET from an http:// mirror)",
        )
    if not host:
        raise Refused(400, "no host name")
    if is_address(host):
        raise Refused(403, f"{what} is an IP address: only the package registries, by name, are reachable")
    if not _NAME_RE.fullmatch(host):
        raise Refused(403, f"{what} is not a host name")
    if (host, port) not in allowed:
        names = sorted({h for h, _ in tunnels | plain})
        if any(h == host for h, _ in allowed):
            raise Refused(403, f"{what}: port {port} of {shown(host)} is not allowed")
        raise Refused(
            403, f"{what} is not a package registry of this build (allowed: {', '.join(names) or 'none'})"
        )
    return Route(host, port, None if method == "CONNECT" else target)


def read_head(sock: socket.socket) -> bytes:
    """The request line and headers (up to the blank line), at most MAX_HEAD bytes."""
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_HEAD:
            raise Refused(431, "request head too large")
    return data


def refusal(status: int, reason: str) -> bytes:
    """The response of a refused request: the reason in the status line (clients print it)
    and in the body."""
    titles = {
        400: "Bad Request",
        403: "Forbidden",
        405: "Method Not Allowed",
        431: "Too Large",
        502: "Bad Gateway",
    }
    reason = re.sub(r"[^\x20-\x7e]", "?", reason)  # one line, whatever went into it
    line = f"{titles.get(status, 'Refused')} by the Stackport build proxy: {reason}"
    body = (line + "\n").encode()
    head = f"HTTP/1.1 {status} {line}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
    return (head + "Connection: close\r\n\r\n").encode() + body


def relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until one side closes or nothing moves for IDLE_TIMEOUT."""
    sockets = [a, b]
    while True:
        readable, _, _ = select.select(sockets, [], [], IDLE_TIMEOUT)
        if not readable:
            return
        for source in readable:
            data = source.recv(CHUNK)
            if not data:
                return
            (b if source is a else a).sendall(data)


def forwarded_head(head: bytes, method: str, path: str, host: str, port: int) -> bytes:
    """A plain request as the origin wants it: origin-form, no proxy headers, one request."""
    lines = head.decode("latin-1").split("\r\n" if b"\r\n" in head else "\n")
    kept = [
        line
        for line in lines[1:]
        if line
        and line.split(":", 1)[0].strip().lower()
        not in ("proxy-authorization", "proxy-connection", "connection", "host")
    ]
    version = lines[0].rsplit(" ", 1)[-1]
    host_header = host if port == 80 else f"{host}:{port}"
    out = [f"{method} {path} {version}", f"Host: {host_header}", *kept, "Connection: close", "", ""]
    return "\r\n".join(out).encode("latin-1")


def open_upstream(route: Route, addresses: tuple[str, ...]) -> socket.socket:
    """A connection to the route's host: at the addresses given for its name (resolved by the
    portal's worker, as the build network may reach no resolver), each in turn; else by
    resolving the name here."""
    error: OSError = OSError(f"{route.host} has no address")
    for address in addresses:
        try:
            return socket.create_connection((address, route.port), timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            error = exc
    if addresses:
        raise error
    return socket.create_connection((route.host, route.port), timeout=CONNECT_TIMEOUT)


class Handler(socketserver.BaseRequestHandler):
    tunnels: frozenset[tuple[str, int]] = frozenset()
    plain: frozenset[tuple[str, int]] = frozenset()
    addresses: dict[str, tuple[str, ...]] = {}  # set once by main()

    def handle(self) -> None:
        client: socket.socket = self.request
        client.settimeout(HEAD_TIMEOUT)
        method = target = "?"
        try:
            head = read_head(client)
            if not head:
                return
            first = head.split(b"\n", 1)[0].decode("latin-1").strip()
            parts = first.split(" ")
            if len(parts) != 3:
                raise Refused(400, "bad request line")
            method, target = parts[0], parts[1]
            route = decide(method, target, self.tunnels, self.plain)
            try:
                upstream = open_upstream(route, self.addresses.get(route.host, ()))
            except OSError as exc:
                raise Refused(
                    502, f"{route.host}:{route.port} cannot be reached ({shown(str(exc), 80)})"
                ) from None
            with upstream:
                client.settimeout(None)
                upstream.settimeout(None)
                if route.path is None:
                    client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    rest = head.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in head else b""
                else:
                    upstream.sendall(forwarded_head(head, method.upper(), route.path, route.host, route.port))
                    rest = b""  # GET and HEAD carry no body
                if rest:
                    upstream.sendall(rest)
                relay(client, upstream)
        except Refused as exc:
            print(
                f"stackport build proxy: refused {shown(method, 20)} {shown(target)}: {exc.reason}",
                flush=True,
            )
            try:
                client.sendall(refusal(exc.status, exc.reason))
            except OSError:
                pass
        except OSError:
            pass


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main(argv: list[str]) -> None:
    config = json.loads(argv[1]) if len(argv) > 1 else {}
    Handler.tunnels = frozenset((str(h).lower(), int(p)) for h, p in config.get("tunnels", []))
    Handler.plain = frozenset((str(h).lower(), int(p)) for h, p in config.get("plain", []))
    Handler.addresses = {str(h).lower(): tuple(map(str, a)) for h, a in config.get("addresses", {}).items()}
    with Server(("0.0.0.0", PORT), Handler) as server:  # noqa: S104 - the build's own networks only
        print(READY, flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main(sys.argv)
