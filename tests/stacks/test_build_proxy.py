"""The builds' egress proxy (stacks/backends/build_proxy.py, docs/builds.md "Isolation"), fast:
what it lets through and what it refuses (with what reason), a real round trip on loopback
(CONNECT to an allowed name, a refusal for anything else), and the allow-list each build gets
(``builds.egress``). The proxy on the real engine is in test_build_egress."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from stacks.backends import build_proxy
from stacks.backends.build_proxy import Refused, Route, decide
from stacks.runtime import builds

TUNNELS = frozenset({("pypi.org", 443), ("files.pythonhosted.org", 443), ("mirror.example", 8443)})
PLAIN = frozenset({("plain.example", 8080)})


def refused(method: str, target: str) -> Refused:
    with pytest.raises(Refused) as caught:
        decide(method, target, TUNNELS, PLAIN)
    return caught.value


def test_connect_to_a_registry_by_name_on_its_port_passes() -> None:
    assert decide("CONNECT", "pypi.org:443", TUNNELS, PLAIN) == Route("pypi.org", 443)
    assert decide("connect", "PyPI.org.:443", TUNNELS, PLAIN) == Route("pypi.org", 443)
    assert decide("CONNECT", "mirror.example:8443", TUNNELS, PLAIN) == Route("mirror.example", 8443)


def test_a_plain_get_passes_only_to_an_http_mirror() -> None:
    route = decide("GET", "http://plain.example:8080/simple/flask/", TUNNELS, PLAIN)
    assert route == Route("plain.example", 8080, "/simple/flask/")
    assert decide("HEAD", "http://plain.example:8080", TUNNELS, PLAIN).path == "/"
    assert (
        "not a package registry" in refused("GET", "http://pypi.org/simple/").reason
    )  # port 80: not allowed
    assert "only CONNECT" in refused("GET", "https://pypi.org/simple/").reason
    assert "credentials" in refused("GET", "http://user:pw@plain.example:8080/").reason


@pytest.mark.parametrize(
    "target",
    [
        "198.51.100.2:443",
        "[2001:db8::1]:443",
        "127.1:443",
        "2130706433:443",
        "0x7f.0.0.1:443",
        "10.0.0.1:8099",
    ],
)
def test_ip_addresses_are_refused_whatever_the_spelling(target: str) -> None:
    error = refused("CONNECT", target)
    assert error.status == 403 and "is an IP address" in error.reason


def test_other_hosts_ports_and_methods_are_refused_saying_why() -> None:
    other = refused("CONNECT", "evil.example:443")
    assert other.status == 403 and "evil.example:443 is not a package registry of this build" in other.reason
    assert "allowed: files.pythonhosted.org, mirror.example, plain.example, pypi.org" in other.reason
    assert "port 22 of pypi.org is not allowed" in refused("CONNECT", "pypi.org:22").reason
    assert refused("CONNECT", "pypi.org").status == 400  # no port
    assert refused("CONNECT", "pypi.org:99999").status == 400
    assert refused("POST", "http://plain.example:8080/").status == 405
    assert "not a host name" in refused("CONNECT", "pypi_org!:443").reason
    assert "not a package registry" in refused("CONNECT", "pypi.org.evil.example:443").reason


def test_the_refusal_is_one_safe_status_line_that_clients_print() -> None:
    response = build_proxy.refusal(403, "x\r\nSet-Cookie: a")
    status, rest = response.split(b"\r\n", 1)
    assert status.startswith(b"HTTP/1.1 403 Forbidden by the Stackport build proxy: ")
    assert b"Set-Cookie" not in rest.split(b"\r\n\r\n", 1)[0]
    assert build_proxy.shown("a b\r\n'\"c") == "a?b????c"


@pytest.fixture
def loopback_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, int]]:
    """The proxy on loopback, allowing CONNECT to "upstream.test" (given the address of an echo
    server on loopback): (the proxy's port, the echo server's port)."""
    echo = socket.create_server(("127.0.0.1", 0))
    echo_port = echo.getsockname()[1]

    def serve_echo() -> None:
        while True:
            try:
                conn, _ = echo.accept()
            except OSError:
                return
            with conn:
                conn.sendall(conn.recv(100).upper())

    threading.Thread(target=serve_echo, daemon=True).start()
    # The name's address as the worker resolved it: the proxy connects there, never asking DNS.
    monkeypatch.setattr(build_proxy.Handler, "addresses", {"upstream.test": ("127.0.0.1",)})
    monkeypatch.setattr(build_proxy.Handler, "tunnels", frozenset({("upstream.test", echo_port)}))
    server = build_proxy.Server(("127.0.0.1", 0), build_proxy.Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], echo_port
    finally:
        server.shutdown()
        server.server_close()
        echo.close()


def ask(port: int, request: bytes, then: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request)
        answer = conn.recv(4096)
        if then:
            conn.sendall(then)
            answer += b"|" + conn.recv(4096)
        return answer


def test_the_proxy_tunnels_to_an_allowed_name_and_refuses_the_rest(loopback_proxy: tuple[int, int]) -> None:
    port, echo_port = loopback_proxy
    answer = ask(port, f"CONNECT upstream.test:{echo_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), b"hello")
    assert answer == b"HTTP/1.1 200 Connection established\r\n\r\n|HELLO"
    answer = ask(port, f"CONNECT 127.0.0.1:{echo_port} HTTP/1.1\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 403 Forbidden by the Stackport build proxy: 127.0.0.1:")
    assert b"is an IP address" in answer
    answer = ask(port, b"GET http://example.org/ HTTP/1.1\r\nHost: example.org\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403 ") and b"not a package registry" in answer
    assert ask(port, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")


def test_each_build_may_reach_its_registries_or_else_the_mirror_and_the_extra_hosts() -> None:
    pip = builds.REGISTRY_HOSTS["pip"]
    assert builds.egress("", pip, []) == (("files.pythonhosted.org:443", "pypi.org:443"), ())
    assert builds.egress("https://Mirror.example/simple", pip, []) == (("mirror.example:443",), ())
    assert builds.egress("https://mirror.example:8443/simple", pip, ["git.example", "x.example:8080"]) == (
        ("git.example:443", "mirror.example:8443", "x.example:8080"),
        (),
    )
    assert builds.egress("http://devpi.lan:3141/root/pypi/+simple/", pip, []) == ((), ("devpi.lan:3141",))
    assert builds.egress("http://devpi.lan/simple/", pip, []) == ((), ("devpi.lan:80",))
