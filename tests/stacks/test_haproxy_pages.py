"""Maintenance pages on the HAProxy edge (``set_route(..., page=...)``) against a real HAProxy
and real upstreams, with the fixtures of tests/stacks/test_haproxy_edge.py: the page is
answered byte for byte (503, Retry-After, HTML), set, replaced and removed at run time with
no failed request on open keep-alive connections, and kept across a restart. No Docker
engine."""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from pathlib import Path

import pytest

from stacks.backends.edge import (
    MAINTENANCE_PAGE_MAX_LENGTH,
    MAINTENANCE_RETRY_AFTER,
    NOT_FOUND_BODY,
    EdgeError,
    Route,
)
from stacks.backends.haproxy import HAProxyRouter
from tests.stacks import test_haproxy_edge
from tests.stacks.conftest import wait_until
from tests.stacks.test_haproxy_edge import Edge, _serves

pytestmark = [pytest.mark.slow]
edge, router, upstream = test_haproxy_edge.edge, test_haproxy_edge.router, test_haproxy_edge.upstream

# What HAProxy's log-format or a shell would interpret, control characters and UTF-8.
TRICKY = (
    "<!doctype html>\n<h1>Stopped</h1>\r\n%[var(txn.be)] %{+Q}o %% \\ \\n \"'` [ ] { } $HOME ;# \t"
    "\x01\x7f é € 😀 +\n"
)


def raw_get(edge: Edge, host: str, path: str = "/") -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(edge.host, edge.port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _shows(edge: Edge, host: str, page: str) -> bool:
    status, _, body = raw_get(edge, host)
    return status == 503 and body == page.encode()


def test_a_page_is_answered_byte_for_byte_replaced_and_removed(
    edge: Edge, router: HAProxyRouter, upstream
) -> None:
    assert router.set_route("shut", ["shut.example", "www.shut.example"], [], page=TRICKY)
    status, headers, body = raw_get(edge, "www.shut.example", "/any/path?x=1")
    assert (status, body) == (503, TRICKY.encode())
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["retry-after"] == MAINTENANCE_RETRY_AFTER
    assert headers["cache-control"] == "no-store"
    assert headers["content-length"] == str(len(TRICKY.encode()))
    assert router.routes()["shut"] == Route(
        "shut", ["shut.example", "www.shut.example"], [], None, "/healthz", page=TRICKY
    )
    assert not router.set_route("shut", ["shut.example", "www.shut.example"], [], page=TRICKY)
    # The largest page allowed, then an empty one; another route's page beside it.
    largest = ("é" * (MAINTENANCE_PAGE_MAX_LENGTH // 2 - 1)) + "ab"
    assert len(largest.encode()) == MAINTENANCE_PAGE_MAX_LENGTH
    assert router.set_route("shut", ["shut.example"], ["127.0.0.1:9"], page=largest)
    assert raw_get(edge, "shut.example")[2] == largest.encode()
    assert raw_get(edge, "www.shut.example")[2] == NOT_FOUND_BODY.encode()
    router.set_route("other", ["other.example"], [], "/down", page="<p>other</p>")
    assert raw_get(edge, "other.example", "/down/x")[:3:2] == (503, b"<p>other</p>")
    assert router.set_route("shut", ["shut.example"], [], page="")
    assert raw_get(edge, "shut.example")[::2] == (503, b"")
    # Over the limit: refused before anything is sent.
    with pytest.raises(EdgeError) as caught:
        router.set_route("shut", ["shut.example"], [], page=largest + "x")
    assert caught.value.permanent
    assert raw_get(edge, "shut.example")[::2] == (503, b"")
    # Unused page files go; the route's removal ends its page.
    assert len(list((edge.directory / "pages").glob("*.html"))) == 2
    assert router.remove_route("shut")
    assert raw_get(edge, "shut.example")[0] == 404
    assert [p.read_text() for p in Path(edge.directory / "pages").glob("*.html")] == ["<p>other</p>"]


def test_a_route_switches_to_its_page_and_back_under_keep_alive_load(
    edge: Edge, router: HAProxyRouter, upstream
) -> None:
    address, _ = upstream("app")
    router.set_route("site", ["site.example"], [address])
    wait_until(_serves(edge, "site.example", "app"), 10, "the route")
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def client(method: str) -> None:
        connection = http.client.HTTPConnection(edge.host, edge.port, timeout=10)
        body = b"form=data" if method == "POST" else None
        while not stop.is_set():
            try:
                connection.request(method, "/load", body=body, headers={"Host": "site.example"})
                response = connection.getresponse()
                text = response.read()
                if (response.status, text) == (200, b"app /load -\n"):
                    outcome = "app"
                elif (response.status, text) == (503, TRICKY.encode()):
                    outcome = "page"
                else:
                    outcome = f"failed: {response.status} {text[:40]!r}"
                if response.will_close:
                    outcome += " (closed)"
            except (OSError, http.client.HTTPException) as exc:
                outcome = f"connection error: {type(exc).__name__}"
                connection.close()
                connection = http.client.HTTPConnection(edge.host, edge.port, timeout=10)
            with lock:
                outcomes[outcome] += 1
        connection.close()

    threads = [threading.Thread(target=client, args=(m,)) for m in ("GET", "POST") for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(3):
            assert router.set_route("site", ["site.example"], [address], page=TRICKY)
            wait_until(lambda: _shows(edge, "site.example", TRICKY), 10, "the page")
            # The page answers until the slot passed its check: no 503 without a server.
            assert router.set_route("site", ["site.example"], [address])
            assert edge.get("site.example", "/load") == (200, "app /load -\n")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert outcomes["app"] > 0 and outcomes["page"] > 0
    assert {k: n for k, n in outcomes.items() if k not in ("app", "page")} == {}


def test_a_restart_keeps_the_page(edge: Edge, router: HAProxyRouter) -> None:
    router.set_route("kept", ["kept.example"], [], page=TRICKY)
    before = router.routes()
    edge.script("stop")
    edge.script()
    assert router.routes() == before
    assert _shows(edge, "kept.example", TRICKY)
    router.set_route("kept", ["kept.example"], [], page="<p>new</p>")
    edge.script("stop")
    edge.script()
    assert _shows(edge, "kept.example", "<p>new</p>")
