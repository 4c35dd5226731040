"""stacks.backends.haproxy.HAProxyRouter against a real HAProxy (scripts/haproxy.sh, a small pool
on ports and in a folder of its own) and real upstreams: small HTTP servers in subprocesses on
loopback that answer their own name. No Docker engine.

The key property: a route change is runtime commands only, never a reload, so keep-alive
clients of other routes see no error at all while domains come and go.
"""

from __future__ import annotations

import datetime
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stacks.backends.edge import MAINTENANCE_PAGE_MAX_LENGTH, NOT_FOUND_BODY, EdgeError, Route
from stacks.backends.haproxy import HAProxyRouter
from tests.stacks.conftest import fetch, unused_loopback_port, wait_until
from tests.stacks.test_edge import UPSTREAM_SERVER

pytestmark = [pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
BACKENDS, SLOTS = 6, 3


@dataclass
class Edge:
    directory: Path
    host: str
    port: int
    https_port: int
    env: dict[str, str]

    def script(self, action: str = "start") -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(REPO_ROOT / "scripts" / "haproxy.sh"), action],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"scripts/haproxy.sh {action}:\n{result.stdout}\n{result.stderr}"
        return result

    @property
    def edge_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @classmethod
    def on_free_ports(cls, directory: Path, backends: int = BACKENDS, slots: int = SLOTS) -> Edge:
        """An HAProxy (not started yet: ``script()``) of ``backends`` backends of ``slots``
        slots in ``directory`` (short: a unix socket path has at most 107 bytes), listening
        on free loopback ports."""
        port, https_port = unused_loopback_port(), unused_loopback_port()
        env = {
            **os.environ,
            "STACKPORT_HAPROXY_DIR": str(directory),
            "STACKPORT_HAPROXY_LISTEN": f"127.0.0.1:{port}",
            "STACKPORT_HAPROXY_HTTPS_LISTEN": f"127.0.0.1:{https_port}",
            "STACKPORT_HAPROXY_LOG": str(directory / "haproxy.log"),
            "STACKPORT_HAPROXY_BACKENDS": str(backends),
            "STACKPORT_HAPROXY_SLOTS": str(slots),
        }
        return cls(directory, "127.0.0.1", port, https_port, env)

    def pid(self) -> int:
        return int((self.directory / "haproxy.pid").read_text())

    def get(self, host: str, path: str = "/", method: str = "GET") -> tuple[int, str]:
        response = fetch(method, f"http://{self.host}:{self.port}{path}", headers={"Host": host})
        return response.status_code, response.text


@contextmanager
def running_edge(backends: int = BACKENDS, slots: int = SLOTS) -> Iterator[Edge]:
    """An HAProxy of our own (``backends`` backends of ``slots`` slots) on free loopback
    ports, in a temporary folder. Stopped and removed at the end."""
    directory = Path(tempfile.mkdtemp(prefix="stackport-haproxy-"))
    running = Edge.on_free_ports(directory, backends, slots)
    running.script()
    try:
        yield running
    finally:
        running.script("stop")
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def edge() -> Iterator[Edge]:
    with running_edge() as running:
        yield running


@pytest.fixture
def router(edge: Edge) -> Iterator[HAProxyRouter]:
    with HAProxyRouter(edge.directory) as client:
        yield client


@pytest.fixture
def upstream() -> Iterator[Callable[..., tuple[str, subprocess.Popen[bytes]]]]:
    """Start an upstream: ``upstream(name, health="/healthz", host="-", port=None,
    ip="127.0.0.1")`` -> (ip:port, process), on a free port unless ``port`` is given."""
    started: list[subprocess.Popen[bytes]] = []

    def start(
        name: str, health: str = "/healthz", host: str = "-", port: int | None = None, ip: str = "127.0.0.1"
    ) -> tuple[str, subprocess.Popen[bytes]]:
        port = port or unused_loopback_port()
        process = subprocess.Popen(
            [sys.executable, "-c", UPSTREAM_SERVER, str(port), name, health, host, "prefix"],
            env={**os.environ, "UPSTREAM_IP": ip},
        )
        started.append(process)
        wait_until(lambda: _answers(ip, port), 10, f"upstream {name}")
        return f"{ip}:{port}", process

    yield start
    for process in started:
        process.kill()
        process.wait()


def _tls_context() -> ssl.SSLContext:
    # The edge's certificates are self-signed here: what is served is checked by the tests.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


def https_connection(edge: Edge, host: str) -> http.client.HTTPSConnection:
    """An HTTPS connection to the edge sending ``host`` as SNI name and Host header."""
    context = _tls_context()
    context.set_alpn_protocols(["http/1.1"])
    connection = http.client.HTTPSConnection(host, edge.https_port, timeout=10, context=context)
    address = (edge.host, edge.https_port)
    connection._create_connection = lambda _address, *args, **kwargs: socket.create_connection(  # type: ignore[attr-defined]
        address, *args, **kwargs
    )
    return connection


def served_certificate(edge: Edge, sni: str) -> tuple[x509.Certificate, str | None]:
    """The certificate the edge's HTTPS listener serves for ``sni``, and the ALPN protocol
    it picks among h2 and http/1.1."""
    with (
        socket.create_connection((edge.host, edge.https_port), timeout=10) as raw,
        _tls_context().wrap_socket(raw, server_hostname=sni) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der), tls.selected_alpn_protocol()


def make_certificate(host: str) -> tuple[str, str]:
    """A self-signed certificate for ``host`` and its key, PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


def https_get(edge: Edge, host: str, path: str = "/") -> tuple[int, dict[str, str], str]:
    connection = https_connection(edge, host)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
    finally:
        connection.close()


def http_get(edge: Edge, host: str, path: str = "/") -> tuple[int, dict[str, str], str]:
    connection = http.client.HTTPConnection(edge.host, edge.port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
    finally:
        connection.close()


def _answers(host: str, port: int) -> bool:
    connection = http.client.HTTPConnection(host, port, timeout=2)
    try:
        connection.request("GET", "/ping")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _serves(edge: Edge, host: str, name: str, path: str = "/") -> Callable[[], bool]:
    def check() -> bool:
        status, text = edge.get(host, path)
        return status == 200 and text.startswith(f"{name} ")

    return check


def test_a_route_answers_and_unknown_hosts_get_404(edge: Edge, router: HAProxyRouter, upstream) -> None:
    assert router.ping()
    address, _ = upstream("alpha")
    assert router.set_route("site-a", ["Alpha.Example", "www.alpha.example"], [address])
    wait_until(_serves(edge, "alpha.example", "alpha", "/hello"), 10, "the route to answer")
    assert edge.get("www.alpha.example:80", "/x?y=1") == (200, "alpha /x?y=1 -\n")
    assert edge.get("other.example") == (404, NOT_FOUND_BODY)
    assert router.routes() == {
        "site-a": Route("site-a", ["alpha.example", "www.alpha.example"], [address], None, "/healthz")
    }
    # The same route again sends nothing; removing it twice is fine.
    assert not router.set_route("site-a", ["www.alpha.example", "alpha.example"], [address])
    assert router.remove_route("site-a")
    assert not router.remove_route("site-a")
    assert edge.get("alpha.example") == (404, NOT_FOUND_BODY)
    assert router.routes() == {}


def test_domains_come_and_go_under_keep_alive_load_without_a_failed_request(
    edge: Edge, router: HAProxyRouter, upstream
) -> None:
    address, _ = upstream("steady")
    other, _ = upstream("other")
    router.set_route("steady", ["steady.example"], [address])
    wait_until(_serves(edge, "steady.example", "steady"), 10, "the steady route")
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def client(method: str) -> None:
        connection = http.client.HTTPConnection(edge.host, edge.port, timeout=10)
        body = b"form=data" if method == "POST" else None
        while not stop.is_set():
            try:
                connection.request(method, "/load", body=body, headers={"Host": "steady.example"})
                response = connection.getresponse()
                text = response.read()
                ok = response.status == 200 and text == b"steady /load -\n" and not response.will_close
                outcome = "ok" if ok else f"failed: {response.status} {text[:40]!r}"
            except (OSError, http.client.HTTPException) as exc:
                outcome = f"connection error: {type(exc).__name__}"
                connection.close()
                connection = http.client.HTTPConnection(edge.host, edge.port, timeout=10)
            with lock:
                outcomes[outcome] += 1
        connection.close()

    threads = [
        threading.Thread(target=client, args=(method,)) for method in ("GET", "POST") for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    try:
        for n in range(10):
            host = f"d{n}.churn.example"
            assert router.set_route(f"churn-{n}", [host], [other])
            wait_until(_serves(edge, host, "other"), 10, f"{host} to answer")
            assert router.set_routes([Route(f"churn-{n}", [host, f"www.{host}"], [other])])
            assert router.remove_route(f"churn-{n}")
            assert edge.get(host)[0] == 404
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert outcomes["ok"] > 0
    assert {outcome: n for outcome, n in outcomes.items() if outcome != "ok"} == {}


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_request_to_a_gone_slot_is_retried_on_the_healthy_one(
    edge: Edge, router: HAProxyRouter, upstream, method: str
) -> None:
    live, _ = upstream("live")
    doomed, process = upstream("doomed")
    router.set_route("pair", ["pair.example"], [live, doomed])
    for name in ("live", "doomed"):
        wait_until(_serves(edge, "pair.example", name), 10, f"the {name} slot to get requests")
    process.kill()  # gone: its slot now refuses connections
    process.wait()
    # Right away, while the slot still counts as up: every request reaches the live one.
    answers = [edge.get("pair.example", f"/r{n}", method) for n in range(20)]
    assert answers == [(200, f"live /r{n} -\n") for n in range(20)]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_request_waits_for_a_route_whose_only_slot_comes_up_later(
    edge: Edge, router: HAProxyRouter, upstream, method: str
) -> None:
    # Like the Caddy edge: a deploy's first replica that is not up yet is waited for (up to
    # 5 s), not answered with a 503.
    port = unused_loopback_port()
    router.set_route("late", ["late.example"], [f"127.0.0.1:{port}"])
    answers: list[tuple[int, str]] = []
    request = threading.Thread(target=lambda: answers.append(edge.get("late.example", "/first", method)))
    request.start()
    time.sleep(1.5)  # the request is at the edge, with no usable slot
    assert not answers
    upstream("late", port=port)
    request.join()
    assert answers == [(200, "late /first -\n")]


def test_a_route_without_a_healthy_slot_answers_503_after_the_wait(edge: Edge, router: HAProxyRouter) -> None:
    router.set_route("never", ["never.example"], [f"127.0.0.1:{unused_loopback_port()}"])
    assert edge.get("never.example")[0] == 503
    assert edge.get("never.example", "/form", "POST")[0] == 503


def test_slots_are_checked_on_the_health_path_with_the_routes_host(
    edge: Edge, router: HAProxyRouter, upstream
) -> None:
    first, _ = upstream("first", "/ready?deep=1", "checked.example")
    second, second_process = upstream("second", "/ready?deep=1", "checked.example")
    router.set_route(
        "checked", ["www.checked.example", "checked.example"], [first, second], None, "/ready?deep=1"
    )
    # Both pass their check (sent with the route's first host name), so both get requests.
    for name in ("first", "second"):
        wait_until(_serves(edge, "www.checked.example", name), 10, f"{name} to get requests")
    second_process.send_signal(signal.SIGUSR1)  # draining: its check fails from now on

    def only_first() -> bool:
        return all(_serves(edge, "checked.example", "first")() for _ in range(6))

    wait_until(only_first, 15, "the draining slot to be taken out")


def test_a_prefix_route_wins_over_its_hosts_route_and_strips_when_asked(
    edge: Edge, router: HAProxyRouter, upstream
) -> None:
    site, _ = upstream("site")
    api, _ = upstream("api")
    shop, _ = upstream("shop")
    router.set_routes(
        [
            Route("web", ["web.example"], [site]),
            Route("web-d1", ["web.example"], [api], "/api"),
            Route("web-d2", ["web.example"], [shop], "/shop/v2/", strip_prefix=True),
        ]
    )
    wait_until(_serves(edge, "web.example", "shop", "/shop/v2"), 10, "the prefix routes")
    wait_until(_serves(edge, "web.example", "api", "/api"), 10, "the prefix routes")
    assert edge.get("web.example", "/api/users?q=1") == (200, "api /api/users?q=1 -\n")
    assert edge.get("web.example", "/API/x") == (200, "api /API/x -\n")
    assert edge.get("web.example", "/apix")[1] == "site /apix -\n"
    assert edge.get("web.example", "/")[1] == "site / -\n"
    assert edge.get("web.example", "/shop/v2/cart?id=3", "POST") == (200, "shop /cart?id=3 /shop/v2\n")
    assert edge.get("web.example", "/shop/v2") == (200, "shop / /shop/v2\n")
    assert edge.get("web.example", "/shop/v3")[1] == "site /shop/v3 -\n"
    # A prefix route for another host does not apply here.
    assert edge.get("other.example", "/api")[0] == 404
    assert router.routes()["web-d2"] == Route(
        "web-d2", ["web.example"], [shop], "/shop/v2", strip_prefix=True
    )
    # Without strip_prefix now: the path arrives whole.
    assert router.set_route("web-d2", ["web.example"], [shop], "/shop/v2")
    assert edge.get("web.example", "/shop/v2/cart") == (200, "shop /shop/v2/cart -\n")


@pytest.mark.parametrize(
    "route",
    [
        Route("Bad_Id", ["a.example"], ["127.0.0.1:9000"]),
        Route("ok", ["*.example.com"], ["127.0.0.1:9000"]),
        Route("ok", ["10.0.0.1"], ["127.0.0.1:9000"]),
        Route("ok", [], ["127.0.0.1:9000"]),
        Route("ok", ["a.example"], []),
        Route("ok", ["a.example"], ["backend.internal:80"]),
        Route("ok", ["a.example"], ["127.0.0.1:9000", "127.0.0.1:9000"]),
        Route("ok", ["a.example"], ["127.0.0.1:9000"], "/a/../b"),
        Route("ok", ["a.example"], ["127.0.0.1:9000"], "/a b"),
        Route("ok", ["a.example"], ["127.0.0.1:9000"], None, "healthz"),
        Route("ok", ["a.example"], ["127.0.0.1:9000"], None, "/h;disable server r0/s1"),
        Route("ok", ["a.example"], [], page="x" * (MAINTENANCE_PAGE_MAX_LENGTH + 1)),
        Route("ok", ["a.example"], [], page="é" * (MAINTENANCE_PAGE_MAX_LENGTH // 2 + 1)),
        Route("ok", ["a.example"], [f"127.0.0.1:{9000 + n}" for n in range(SLOTS + 1)]),
    ],
)
def test_invalid_input_is_refused_before_anything_is_sent(router: HAProxyRouter, route: Route) -> None:
    router.set_route("kept", ["kept.example"], ["127.0.0.1:9999"])
    before = router.routes()
    with pytest.raises(EdgeError) as caught:
        # One valid route beside it: nothing of the call is applied.
        router.set_routes([Route("fine", ["fine.example"], ["127.0.0.1:9998"]), route], remove=["kept"])
    assert caught.value.permanent
    assert router.routes() == before


def test_a_restart_keeps_every_route(edge: Edge, router: HAProxyRouter, upstream) -> None:
    # Not on 127.0.0.1, the address of an unused slot: a slot's address must come back from
    # the saved state, not only its port (the containers' addresses are 10.x).
    site, _ = upstream("site", ip="127.0.0.2")
    api, _ = upstream("api", ip="127.0.0.3")
    router.set_routes(
        [
            Route("keep", ["keep.example"], [site], health_path="/healthz"),
            Route("keep-d1", ["keep.example"], [api], "/api", strip_prefix=True),
        ]
    )
    wait_until(_serves(edge, "keep.example", "api", "/api/x"), 10, "the routes")
    before, pid = router.routes(), edge.pid()
    edge.script()  # running with this config: nothing to do
    assert edge.pid() == pid
    edge.script("stop")
    assert not router.ping()
    with pytest.raises(EdgeError) as caught:
        router.routes()
    assert not caught.value.permanent
    edge.script()
    assert edge.pid() != pid
    assert router.routes() == before
    wait_until(_serves(edge, "keep.example", "site", "/"), 10, "the host route after the restart")
    assert edge.get("keep.example", "/api/x") == (200, "api /x /api\n")
    # A crash (no state saved at the stop) keeps them too: every change was mirrored.
    router.remove_route("keep-d1")
    os.kill(edge.pid(), signal.SIGKILL)
    wait_until(lambda: not router.ping(), 10, "haproxy to be gone")
    edge.script()
    assert set(router.routes()) == {"keep"}
    wait_until(_serves(edge, "keep.example", "site", "/api/x"), 10, "the host route after a crash")


class Load:
    """Keep-alive clients sending GET and POST to ``host`` until stopped; counts the answers
    by upstream name, and every failure by kind."""

    def __init__(
        self,
        edge: Edge,
        host: str,
        names: set[str],
        clients: int = 3,
        *,
        https: bool = False,
        closing_ok: bool = False,
    ) -> None:
        """``closing_ok``: an answer that closes its connection (``Connection: close``, the
        client opens another) is not a failure; ``closed`` counts them."""
        self.edge, self.host, self.names, self.https = edge, host, names, https
        self.closing_ok, self.closed = closing_ok, 0
        self.outcomes: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._client, args=(method,))
            for method in ("GET", "POST")
            for _ in range(clients)
        ]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()

    def count(self, name: str) -> int:
        with self.lock:
            return self.outcomes[name]

    def failures(self) -> dict[str, int]:
        with self.lock:
            return {key: n for key, n in self.outcomes.items() if key not in self.names}

    def _connect(self) -> http.client.HTTPConnection:
        if self.https:
            return https_connection(self.edge, self.host)
        return http.client.HTTPConnection(self.edge.host, self.edge.port, timeout=10)

    def _client(self, method: str) -> None:
        connection = self._connect()
        body = b"form=data" if method == "POST" else None
        while not self.stopping.is_set():
            try:
                connection.request(method, "/load", body=body, headers={"Host": self.host})
                response = connection.getresponse()
                text = response.read().decode()
                name, _, rest = text.partition(" ")
                ok = response.status == 200 and rest == "/load -\n" and name in self.names
                closing = ok and response.will_close
                outcome = (
                    name
                    if ok and (self.closing_ok or not closing)
                    else f"failed: {response.status} {text[:40]!r}"
                )
                if closing:
                    with self.lock:
                        self.closed += 1
            except (OSError, http.client.HTTPException) as exc:
                outcome = f"connection error: {type(exc).__name__}"
                connection.close()
                connection = self._connect()
            with self.lock:
                self.outcomes[outcome] += 1
        connection.close()


def test_a_drained_slot_gets_no_new_request_and_can_be_stopped_without_a_failed_request(
    edge: Edge, router: HAProxyRouter, upstream
) -> None:
    blue, blue_process = upstream("blue")
    green, _ = upstream("green")
    router.set_route("swap", ["swap.example"], [blue, green])
    for name in ("blue", "green"):
        wait_until(_serves(edge, "swap.example", name), 10, f"the {name} slot to get requests")
    with Load(edge, "swap.example", {"blue", "green"}) as load:
        wait_until(lambda: load.count("blue") > 50 and load.count("green") > 50, 30, "load on both")
        assert router.drain("swap", [blue])
        assert not router.drain("swap", [blue])  # draining already
        # Still checked, out of the route until the next set_route says: only new requests stop.
        assert router.routes()["swap"].upstreams == [green]
        assert router.wait_drained("swap", [blue])
        # A health interval and more: green takes every request, blue none.
        before, green_before = load.count("blue"), load.count("green")
        wait_until(lambda: load.count("green") > green_before + 300, 30, "requests to green")
        assert load.count("blue") == before
        # Stopped the hard way, with its connections (idle ones from HAProxy's pool) open.
        blue_process.kill()
        blue_process.wait()
        green_before = load.count("green")
        wait_until(lambda: load.count("green") > green_before + 300, 30, "requests after the stop")
    assert load.failures() == {}
    # A route keeping the drained slot puts it back in rotation: blue, started again, serves.
    assert router.set_route("swap", ["swap.example"], [blue, green])
    assert not router.set_route("swap", ["swap.example"], [blue, green])
    upstream("blue", port=int(blue.rsplit(":", 1)[1]))
    wait_until(_serves(edge, "swap.example", "blue"), 10, "the drained slot to serve again")
    assert router.set_route("swap", ["swap.example"], [green])
    # The slot is reused clean: a new upstream on it is not draining.
    blue2, _ = upstream("blue2")
    assert router.set_route("swap", ["swap.example"], [green, blue2])
    wait_until(_serves(edge, "swap.example", "blue2"), 10, "the reused slot to get requests")


def test_a_bigger_pool_is_loaded_under_load_without_a_failed_request(
    edge: Edge, router: HAProxyRouter, upstream
) -> None:
    site, _ = upstream("site")
    router.set_route("grow", ["grow.example"], [site])
    wait_until(_serves(edge, "grow.example", "site"), 10, "the route")
    router.set_routes([Route(f"fill-{n}", [f"fill{n}.example"], [site]) for n in range(BACKENDS - 1)])
    with pytest.raises(EdgeError, match="no free backend"):
        router.set_route("more", ["more.example"], [site])
    before, master = router.routes(), edge.pid()
    # The operator raises STACKPORT_HAPROXY_BACKENDS and runs the script again, under load.
    with Load(edge, "grow.example", {"site"}, closing_ok=True) as load:
        wait_until(lambda: load.count("site") > 100, 30, "load")
        edge.env["STACKPORT_HAPROXY_BACKENDS"] = str(BACKENDS * 2)
        result = edge.script()
        reloaded = load.count("site")
        wait_until(lambda: load.count("site") > reloaded + 300, 30, "requests after the reload")
    assert "reloading haproxy" in result.stdout, result.stdout
    assert edge.pid() == master  # the same master, a new worker
    assert router.routes() == before
    # No request got an error answer and no connection was refused: the new worker took the
    # listeners. The old worker closes its keep-alive connections: after an answer
    # (Connection: close), or, when idle, at once, and a request sent on one at that very
    # moment meets a closed connection (HTTP/1.1's keep-alive race; HAProxy 2.6 has no
    # idle-close-on-response). At most one such error a client connection (6 here), which a
    # browser resends.
    failures = load.failures()
    assert all(kind.startswith("connection error: ") for kind in failures), failures
    assert sum(failures.values()) <= len(load.threads), failures
    print(f"\n{load.count('site')} requests, {load.closed} connections closed after an answer, {failures}")
    router.set_route("more", ["more.example"], [site])
    wait_until(_serves(edge, "more.example", "site"), 10, "a route of the bigger pool")
    edge.script()  # the same config again: nothing to do
    assert edge.pid() == master


def test_drain_refuses_what_the_route_does_not_have(router: HAProxyRouter) -> None:
    router.set_route("kept", ["kept.example"], ["127.0.0.1:9999"])
    for route_id, upstreams in [("kept", ["127.0.0.1:9998"]), ("absent", ["127.0.0.1:9999"])]:
        with pytest.raises(EdgeError) as caught:
            router.drain(route_id, upstreams)
        assert caught.value.permanent
    assert router.in_flight("absent") == {}
    assert router.in_flight("kept") == {"127.0.0.1:9999": 0}


def _common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_each_sni_name_gets_its_certificate_and_a_new_one_is_served_without_a_reload(
    edge: Edge, router: HAProxyRouter, upstream
) -> None:
    address, _ = upstream("secure")
    router.set_route("secure", ["secure.example", "other.example"], [address])
    wait_until(_serves(edge, "secure.example", "secure"), 10, "the route")
    cert_pem, key_pem = make_certificate("secure.example")
    assert router.set_certificate("Secure.Example", cert_pem, key_pem)
    assert not router.set_certificate("secure.example", cert_pem, key_pem)
    served, alpn = served_certificate(edge, "secure.example")
    assert served == x509.load_pem_x509_certificate(cert_pem.encode())
    assert alpn == "h2"
    # Another name (routed, no certificate of its own) gets the default one.
    assert _common_name(served_certificate(edge, "other.example")[0]) == "stackport-default"
    status, headers, text = https_get(edge, "secure.example", "/x")
    assert (status, text) == (200, "secure /x -\n")
    assert "strict-transport-security" not in headers
    assert set(router.certificates()) == {"secure.example"}
    # A new certificate under keep-alive HTTPS load: served to new connections, no error,
    # no reload.
    pid = edge.pid()
    with Load(edge, "secure.example", {"secure"}, https=True) as load:
        wait_until(lambda: load.count("secure") > 50, 30, "HTTPS load")
        new_cert, new_key = make_certificate("secure.example")
        assert router.set_certificate("secure.example", new_cert, new_key)
        assert served_certificate(edge, "secure.example")[0] == x509.load_pem_x509_certificate(
            new_cert.encode()
        )
        before = load.count("secure")
        wait_until(lambda: load.count("secure") > before + 100, 30, "HTTPS load after the change")
    assert load.failures() == {}
    assert edge.pid() == pid
    # Refused before anything is sent: a key that is not the certificate's, or no PEM.
    for bad_cert, bad_key in [(new_cert, key_pem), ("not a certificate", new_key)]:
        with pytest.raises(EdgeError) as caught:
            router.set_certificate("secure.example", bad_cert, bad_key)
        assert caught.value.permanent
    assert served_certificate(edge, "secure.example")[0] == x509.load_pem_x509_certificate(new_cert.encode())
    assert router.remove_certificate("secure.example")
    assert not router.remove_certificate("secure.example")
    assert _common_name(served_certificate(edge, "secure.example")[0]) == "stackport-default"
    assert router.certificates() == {}


def test_redirects_to_https_and_hsts_are_per_host(edge: Edge, router: HAProxyRouter, upstream) -> None:
    address, _ = upstream("site")
    router.set_route("site", ["moved.example", "strict.example", "plain.example"], [address])
    wait_until(_serves(edge, "plain.example", "site"), 10, "the route")
    assert router.set_host_policies(redirect_hosts=["moved.example"], hsts_hosts=["strict.example"])
    assert not router.set_host_policies(redirect_hosts=["moved.example"], hsts_hosts=["strict.example"])
    status, headers, _ = http_get(edge, "Moved.example:80", "/a/b?c=1")
    assert (status, headers["location"]) == (308, "https://moved.example/a/b?c=1")
    assert http_get(edge, "strict.example")[0] == 200
    assert https_get(edge, "moved.example")[0] == 200
    assert https_get(edge, "strict.example")[1]["strict-transport-security"] == "max-age=31536000"
    assert "strict-transport-security" not in https_get(edge, "plain.example")[1]
    assert "strict-transport-security" not in http_get(edge, "strict.example")[1]
    # Another public HTTPS port is in the Location; the sets are replaced, not added to.
    with HAProxyRouter(edge.directory, public_https_port=8443) as other_port:
        assert other_port.set_host_policies(redirect_hosts=["plain.example"])
    assert http_get(edge, "plain.example", "/p")[1]["location"] == "https://plain.example:8443/p"
    assert http_get(edge, "moved.example")[0] == 200
    assert "strict-transport-security" not in https_get(edge, "strict.example")[1]


def test_http01_tokens_are_answered_until_removed(edge: Edge, router: HAProxyRouter) -> None:
    router.set_host_policies(redirect_hosts=["pending.example"])
    assert router.set_challenge("tok_EN-1", "tok_EN-1.thumb_print")
    assert not router.set_challenge("tok_EN-1", "tok_EN-1.thumb_print")
    path = "/.well-known/acme-challenge/tok_EN-1"
    # On any host, over HTTP even where HTTP is redirected, and over HTTPS.
    for host in ("pending.example", "unrouted.example"):
        status, headers, text = http_get(edge, host, path)
        assert (status, text) == (200, "tok_EN-1.thumb_print")
        assert headers["content-type"] == "text/plain"
    assert https_get(edge, "pending.example", path)[::2] == (200, "tok_EN-1.thumb_print")
    assert http_get(edge, "unrouted.example", path + "/x")[0] == 404
    assert http_get(edge, "unrouted.example", "/.well-known/acme-challenge/other")[0] == 404
    assert router.remove_challenge("tok_EN-1")
    assert not router.remove_challenge("tok_EN-1")
    assert http_get(edge, "unrouted.example", path)[0] == 404
    # ACME's path is never redirected (like the Caddy edge): an unknown token is a 404 here.
    assert http_get(edge, "pending.example", path)[::2] == (404, NOT_FOUND_BODY)
    assert http_get(edge, "pending.example", "/other")[0] == 308
    for token, authorization in [("a b", "a b.c"), ("tok", "tok.x y"), ("tok", "no-dot"), ("", "x.y")]:
        with pytest.raises(EdgeError) as caught:
            router.set_challenge(token, authorization)
        assert caught.value.permanent


def test_a_restart_keeps_certificates_tokens_and_policies(edge: Edge, router: HAProxyRouter) -> None:
    kept_cert, kept_key = make_certificate("kept.example")
    gone_cert, gone_key = make_certificate("gone.example")
    router.set_certificate("kept.example", kept_cert, kept_key)
    router.set_certificate("gone.example", gone_cert, gone_key)
    router.remove_certificate("gone.example")
    router.set_challenge("tok", "tok.print")
    router.set_host_policies(redirect_hosts=["kept.example"], hsts_hosts=["kept.example"])
    certificates = router.certificates()
    default = served_certificate(edge, "nothing.example")[0]
    edge.script("stop")
    edge.script()
    assert router.certificates() == certificates
    assert served_certificate(edge, "kept.example")[0] == x509.load_pem_x509_certificate(kept_cert.encode())
    assert served_certificate(edge, "gone.example")[0] == default  # the default made once
    assert http_get(edge, "any.example", "/.well-known/acme-challenge/tok")[2] == "tok.print"
    assert http_get(edge, "kept.example")[1]["location"] == "https://kept.example/"
    assert https_get(edge, "kept.example")[1]["strict-transport-security"] == "max-age=31536000"
