"""The portal's interface of the Caddy client (``EdgeRouter``) on the HAProxy edge, against a
real HAProxy and real upstreams with the fixtures of tests/stacks/test_haproxy_edge.py: the
domain claims' tokens (``set_platform_routes``), redirects and HSTS, what the HTTPS listener
serves (``served_certificate``, ``get_over_https``) and ``route_config``. No Docker engine."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509

from stacks.backends.edge import NOT_FOUND_BODY, EdgeError, EdgeRouter, Route, route_config
from stacks.backends.edge_tls import CHALLENGE_PATH, HSTS_VALUE, NO_CHALLENGE_BODY, certificate_info
from stacks.backends.haproxy import HAProxyRouter
from tests.stacks import test_haproxy_edge
from tests.stacks.conftest import unused_loopback_port, wait_until
from tests.stacks.test_haproxy_edge import Edge, _serves, http_get, https_get, make_certificate

pytestmark = [pytest.mark.slow]
# Fixtures of that module, used here too.
edge, router, upstream = test_haproxy_edge.edge, test_haproxy_edge.router, test_haproxy_edge.upstream

TOKEN = "Claim_Token-0123456789"
OTHER_TOKEN = "other-token-abcdefghij"


@pytest.fixture
def https_router(edge: Edge) -> Iterator[HAProxyRouter]:
    """A client that knows where the edge's HTTPS listener is, as the portal's will."""
    with HAProxyRouter(edge.directory, https_address=f"127.0.0.1:{edge.https_port}") as client:
        yield client


def claim(edge: Edge, host: str, token: str, *, https: bool = False) -> tuple[int, str, str]:
    """(status, content type, body) of the claim path of ``token`` on ``host``."""
    status, headers, text = (https_get if https else http_get)(edge, host, CHALLENGE_PATH + token)
    return status, headers.get("content-type", ""), text


def test_a_claim_token_is_answered_on_its_host_only_until_the_next_call_replaces_it(
    edge: Edge, router: HAProxyRouter, upstream
) -> None:
    address, _ = upstream("site")
    router.set_route("site", ["pending.example", "other.example"], [address])
    wait_until(_serves(edge, "pending.example", "site"), 10, "the route")
    assert router.set_platform_routes(challenges={"Pending.Example": TOKEN})
    assert not router.set_platform_routes(challenges={"pending.example": TOKEN})
    answered = (200, "text/plain; charset=utf-8", TOKEN)
    # Exactly the token (no newline), on HTTP and HTTPS, ahead of the host's route; the path
    # ignores case like Caddy's matcher, the Host header's port does not count.
    assert claim(edge, "pending.example", TOKEN) == answered
    assert claim(edge, "pending.example:80", TOKEN) == answered
    assert claim(edge, "pending.example", TOKEN, https=True) == answered
    assert http_get(edge, "pending.example", CHALLENGE_PATH.upper() + TOKEN.lower())[::2] == (200, TOKEN)
    # Anywhere else under the path: Caddy's 404, also on a routed host and for a path below it.
    not_here = (404, "text/plain; charset=utf-8", NO_CHALLENGE_BODY)
    assert claim(edge, "other.example", TOKEN) == not_here
    assert claim(edge, "unrouted.example", TOKEN) == not_here
    assert claim(edge, "pending.example", OTHER_TOKEN) == not_here
    assert claim(edge, "pending.example", TOKEN + "/x") == not_here
    assert claim(edge, "pending.example", "") == not_here
    assert edge.get("pending.example", "/.well-known/other") == (200, "site /.well-known/other -\n")
    # Replaced by the next call, removed by an empty one.
    assert router.set_platform_routes(challenges={"other.example": OTHER_TOKEN})
    assert claim(edge, "pending.example", TOKEN) == not_here
    assert claim(edge, "other.example", OTHER_TOKEN) == (200, "text/plain; charset=utf-8", OTHER_TOKEN)
    assert router.set_platform_routes()
    assert not router.set_platform_routes(challenges={})
    assert claim(edge, "other.example", OTHER_TOKEN) == not_here
    assert router._state().maps["claims"] == {}


def test_redirects_and_hsts_leave_the_challenge_paths_alone(
    edge: Edge, router: HAProxyRouter, https_router: HAProxyRouter, upstream
) -> None:
    address, _ = upstream("site")
    router.set_route("site", ["moved.example", "strict.example", "plain.example"], [address])
    wait_until(_serves(edge, "plain.example", "site"), 10, "the route")
    assert https_router.set_platform_routes(
        challenges={"moved.example": TOKEN, "strict.example": OTHER_TOKEN},
        redirect_hosts=["moved.example"],
        hsts_hosts=["strict.example"],
    )
    status, headers, _ = http_get(edge, "moved.example", "/a?b=1")
    assert (status, headers["location"]) == (308, "https://moved.example/a?b=1")
    # The claim and ACME's path are not redirected (an unknown ACME token: the host's route).
    assert claim(edge, "moved.example", TOKEN)[::2] == (200, TOKEN)
    acme = "/.well-known/acme-challenge/unknown"
    assert http_get(edge, "moved.example", acme)[::2] == (200, f"site {acme} -\n")
    assert https_get(edge, "strict.example")[1]["strict-transport-security"] == HSTS_VALUE
    assert "strict-transport-security" not in https_get(edge, "plain.example")[1]
    # A claim's answer comes before HSTS, like the Caddy edge's platform routes.
    status, headers, text = https_get(edge, "strict.example", CHALLENGE_PATH + OTHER_TOKEN)
    assert (status, text) == (200, OTHER_TOKEN)
    assert "strict-transport-security" not in headers
    # Without an HTTPS listener of its own (like Caddy without TLS) no redirect is set; the
    # whole set is replaced.
    assert router.set_platform_routes(redirect_hosts=["moved.example"], hsts_hosts=["plain.example"])
    assert http_get(edge, "moved.example")[0] == 200
    assert claim(edge, "moved.example", TOKEN)[0] == 404
    assert "strict-transport-security" not in https_get(edge, "strict.example")[1]
    assert https_get(edge, "plain.example")[1]["strict-transport-security"] == HSTS_VALUE


def test_claims_redirects_and_hsts_survive_a_restart(edge: Edge, https_router: HAProxyRouter) -> None:
    https_router.set_platform_routes(
        challenges={"pending.example": TOKEN}, redirect_hosts=["moved.example"], hsts_hosts=["moved.example"]
    )
    maps = https_router._state().maps
    edge.script("stop")
    edge.script()
    assert https_router._state().maps == maps
    assert claim(edge, "pending.example", TOKEN)[::2] == (200, TOKEN)
    assert claim(edge, "moved.example", TOKEN)[0] == 404
    assert http_get(edge, "moved.example", "/x")[1]["location"] == "https://moved.example/x"
    assert https_get(edge, "moved.example")[1]["strict-transport-security"] == HSTS_VALUE
    assert not https_router.set_platform_routes(
        challenges={"pending.example": TOKEN}, redirect_hosts=["moved.example"], hsts_hosts=["moved.example"]
    )


def test_served_certificate_is_none_until_the_host_has_its_own(
    edge: Edge, router: HAProxyRouter, https_router: HAProxyRouter
) -> None:
    # The listener answers every name with its default certificate: that is no certificate.
    assert https_router.served_certificate("secure.example") is None
    cert_pem, key_pem = make_certificate("secure.example")
    router.set_certificate("secure.example", cert_pem, key_pem)
    info = https_router.served_certificate("Secure.Example")
    assert info == certificate_info(x509.load_pem_x509_certificate(cert_pem.encode()))
    assert info is not None and info.names == ("secure.example",) and info.covers("secure.example")
    assert https_router.served_certificate("other.example") is None
    # No HTTPS address: nothing is read (like Caddy without TLS).
    assert router.served_certificate("secure.example") is None
    router.remove_certificate("secure.example")
    assert https_router.served_certificate("secure.example") is None
    with pytest.raises(EdgeError) as caught:
        https_router.served_certificate("bad host")
    assert caught.value.permanent


def test_get_over_https_answers_through_the_listener(
    edge: Edge, router: HAProxyRouter, https_router: HAProxyRouter, upstream
) -> None:
    address, _ = upstream("site")
    router.set_route("site", ["site.example"], [address])
    https_router.set_platform_routes(redirect_hosts=["site.example"])
    wait_until(_serves(edge, "site.example", "site", "/.well-known/acme-challenge/x"), 10, "the route")
    assert https_router.get_over_https("Site.Example", "/x?y=1") == (200, "site /x?y=1 -\n")
    assert https_router.get_over_https("unrouted.example") == (404, NOT_FOUND_BODY)
    with pytest.raises(EdgeError) as caught:
        router.get_over_https("site.example")
    assert caught.value.permanent


def test_a_listener_that_does_not_answer_is_a_transient_error(edge: Edge) -> None:
    with HAProxyRouter(edge.directory, https_address=f"127.0.0.1:{unused_loopback_port()}") as nowhere:
        for call in (
            lambda: nowhere.served_certificate("site.example"),
            lambda: nowhere.get_over_https("x.example"),
        ):
            with pytest.raises(EdgeError) as caught:
                call()
            assert not caught.value.permanent
    # A wildcard bind is reached on loopback; an address that is not host:port is refused.
    assert (
        HAProxyRouter(edge.directory, https_address=f":{edge.https_port}").served_certificate("a.example")
        is None
    )
    for address in ("127.0.0.1", "127.0.0.1:port", "a b:443"):
        with pytest.raises(EdgeError) as caught:
            HAProxyRouter(edge.directory, https_address=address)
        assert caught.value.permanent


def test_route_config_is_what_routes_holds(router: HAProxyRouter) -> None:
    routes = [
        Route("shop", ["Shop.Example", "www.shop.example"], ["127.0.0.1:9002", "127.0.0.1:9001"]),
        Route("shop-api", ["shop.example"], ["127.0.0.1:9003"], "/api/", "/up", strip_prefix=True),
        Route("shop-docs", ["shop.example"], ["127.0.0.1:9004"], "/docs", strip_prefix=False),
        Route("stopped", ["stopped.example"], [], page="<h1>Stopped</h1>\n"),
    ]
    router.set_routes(routes)
    held = router.routes()
    for route in routes:
        assert held[route.route_id] == router.route_config(route) == HAProxyRouter.route_config(route)
    changed = [
        Route("shop", ["shop.example", "www.shop.example"], ["127.0.0.1:9001"]),
        Route("shop-api", ["shop.example"], ["127.0.0.1:9003"], "/api", "/up"),
        Route("shop-docs", ["shop.example"], ["127.0.0.1:9004"], "/docs", "/other"),
        Route("stopped", ["stopped.example"], [], page="<h1>Suspended</h1>\n"),
    ]
    for route in changed:
        assert held[route.route_id] != router.route_config(route)
    with pytest.raises(EdgeError) as caught:
        router.route_config(Route("shop", ["shop.example"], ["not an address"]))
    assert caught.value.permanent


@pytest.mark.parametrize(
    "arguments",
    [
        {"challenges": {"pending.example": "short"}},
        {"challenges": {"pending.example": "spaces in the token ok"}},
        {"challenges": {"pending.example": "x" * 65}},
        {"challenges": {"pending.example": None}},
        {"challenges": {"bad host": TOKEN}},
        {"challenges": {"*.example.com": TOKEN}},
        {"challenges": {"pending.example": TOKEN}, "hsts_hosts": ["127.0.0.1"]},
        {"challenges": {"pending.example": TOKEN}, "redirect_hosts": "moved.example"},
        {"challenges": {"pending.example": TOKEN}, "redirect_hosts": ["moved.example:443"]},
    ],
)
def test_invalid_platform_input_is_refused_with_nothing_sent(
    edge: Edge, https_router: HAProxyRouter, arguments: dict[str, Any]
) -> None:
    https_router.set_platform_routes(
        challenges={"kept.example": OTHER_TOKEN}, redirect_hosts=["kept.example"], hsts_hosts=["kept.example"]
    )
    before = https_router._state().maps
    with pytest.raises(EdgeError) as caught:
        https_router.set_platform_routes(**arguments)
    assert caught.value.permanent
    assert https_router._state().maps == before
    assert claim(edge, "kept.example", OTHER_TOKEN)[::2] == (200, OTHER_TOKEN)


def test_both_routers_offer_the_portals_interface() -> None:
    """The methods the portal calls take the same arguments on either router."""
    for name in (
        "routes",
        "set_route",
        "set_routes",
        "remove_route",
        "close",
        "ensure_https",
        "set_platform_routes",
        "served_certificate",
        "get_over_https",
        "route_config",
        "drain",
        "wait_drained",
    ):
        caddy = inspect.signature(getattr(EdgeRouter, name)).parameters
        haproxy = inspect.signature(getattr(HAProxyRouter, name)).parameters
        assert list(caddy) == list(haproxy), name
    # Caddy's drain is a no-op that sends nothing (no Caddy listens here); arguments checked.
    with EdgeRouter(f"http://127.0.0.1:{unused_loopback_port()}") as caddy_router:
        assert caddy_router.drain("site", ["127.0.0.1:9001"]) is False
        assert caddy_router.wait_drained("site", ["127.0.0.1:9001"]) is True
        route = Route("site", ["Site.Example"], ["127.0.0.1:9001"])
        assert caddy_router.route_config(route) == route_config(route)
        for route_id, upstreams in [
            ("Bad Id", ["127.0.0.1:9001"]),
            ("site", ["nowhere"]),
            ("site", "127.0.0.1:1"),
        ]:
            with pytest.raises(EdgeError) as caught:
                caddy_router.drain(route_id, upstreams)
            assert caught.value.permanent
