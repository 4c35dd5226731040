"""A router restart is not an outage, on the HAProxy edge (issue "edge", item 5): HAProxy
killed under keep-alive GET and POST load and started again by scripts/haproxy.sh comes back
from its mirrored maps and server state with every route, so requests fail only while no
process listens (refused, never a 404 of a router without its routes), and few of them: at
most RESTART_MAX_FAILED, the failures 2 s of outage can make (as for Caddy in
tests/stacks/test_edge.py, whose upstreams and load this test uses)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from stacks.backends.edge import Route
from stacks.backends.haproxy import HAProxyRouter
from tests.stacks import test_edge, test_haproxy_edge
from tests.stacks.conftest import caddy, wait_until  # noqa: F401 - under_load's fixture
from tests.stacks.test_edge import RESTART_ERROR_PAUSE, StartLoad, Upstream, assert_restart_bounded
from tests.stacks.test_haproxy_edge import Edge

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
edge, router = test_haproxy_edge.edge, test_haproxy_edge.router
upstream, under_load = test_edge.upstream, test_edge.under_load


def test_haproxy_killed_under_load_serves_every_route_again(
    edge: Edge, router: HAProxyRouter, upstream: Callable[..., Upstream], under_load: StartLoad
) -> None:
    # Not on 127.0.0.1 (an unused slot's address): the slots' addresses come back from the
    # saved state, like a container's 10.x one.
    site, api = upstream("site", ip="127.0.0.2"), upstream("api", ip="127.0.0.3")
    router.set_routes(
        [
            Route("t-restart", ["restart.example", "www.restart.example"], [site.addr]),
            Route("t-restart-api", ["restart.example"], [api.addr], path_prefix="/api"),
        ]
    )
    routes = router.routes()
    wait_until(lambda: edge.get("restart.example")[1].startswith("site "), 10, "the route")
    gets = under_load("restart.example", {"site"}, edge=edge, error_pause=RESTART_ERROR_PAUSE)
    posts = under_load("www.restart.example", {"site"}, "POST", edge=edge, error_pause=RESTART_ERROR_PAUSE)
    time.sleep(1)

    pid = edge.pid()
    os.kill(pid, signal.SIGKILL)  # a crash: nothing saved at a stop
    wait_until(lambda: not router.ping(), 10, "haproxy to die")
    edge.script()
    restarted = time.monotonic()
    time.sleep(2)
    gets.stop()
    posts.stop()

    assert edge.pid() != pid
    assert router.routes() == routes
    assert edge.get("restart.example", "/api/x") == (200, "api /api/x\n")
    assert edge.get("www.restart.example", "/x") == (200, "site /x\n")
    assert_restart_bounded(gets, posts, restarted)
