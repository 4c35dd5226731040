"""The edge's own answers for sites that are not proxied, and path-prefix stripping,
against a real Caddy (the ``caddy`` fixture: scripts/caddy.sh on ports of its own)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from stacks.backends.edge import MAINTENANCE_RETRY_AFTER, EdgeError, EdgeRouter, Route, route_config
from tests.stacks.conftest import Caddy
from tests.stacks.test_edge import Upstream, get, upstream  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.slow]

PAGE = (
    "<!DOCTYPE html><html><head><style>body{margin:0} .x{color:#123}</style></head>"
    "<body><h1>This site is stopped</h1><p>{file./etc/passwd} {env.HOME} \\ back</p></body></html>"
)


@pytest.fixture
def router(caddy: Caddy) -> Iterator[EdgeRouter]:
    with EdgeRouter(caddy.admin_url, listen=[caddy.edge_addr], timeout=10) as router:
        router.ensure_server()
        yield router


def test_a_stopped_sites_route_answers_its_page_with_503_and_retry_after(
    caddy: Caddy, router: EdgeRouter
) -> None:
    router.set_routes(
        [
            Route("t-page", ["stopped.example"], [], page=PAGE),
            Route("t-page-api", ["stopped.example"], [], path_prefix="/api", page=PAGE),
        ]
    )

    for path in ("/", "/some/page?x=1", "/api/v1"):
        response = get(caddy, "stopped.example", path)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == MAINTENANCE_RETRY_AFTER
        assert response.headers["Content-Type"].startswith("text/html")
        # Byte for byte: braces reach the visitor as written, no placeholder expanded.
        assert response.text == PAGE
    assert router.set_routes([Route("t-page", ["stopped.example"], [], page=PAGE)]) is False
    router.set_routes(remove=["t-page", "t-page-api"])


def test_starting_again_replaces_the_page_with_the_proxy(
    caddy: Caddy,
    router: EdgeRouter,
    upstream: Callable[..., Upstream],  # noqa: F811
) -> None:
    web = upstream("web")
    router.set_routes([Route("t-again", ["again.example"], [web.addr], page=PAGE)])
    assert get(caddy, "again.example").status_code == 503

    router.set_routes([Route("t-again", ["again.example"], [web.addr])])

    assert get(caddy, "again.example", "/x").text == "web /x\n"
    router.remove_route("t-again")


def test_a_prefix_route_strips_its_prefix_when_asked(
    caddy: Caddy,
    router: EdgeRouter,
    upstream: Callable[..., Upstream],  # noqa: F811
) -> None:
    site, static = upstream("site"), upstream("static")
    router.set_routes(
        [
            Route("t-strip-site", ["strip.example"], [site.addr]),
            Route(
                "t-strip-static", ["strip.example"], [static.addr], path_prefix="/static", strip_prefix=True
            ),
            Route("t-strip-keep", ["strip.example"], [static.addr], path_prefix="/keep"),
        ]
    )

    assert get(caddy, "strip.example", "/static/css/app.css?v=2").text == "static /css/app.css?v=2\n"
    assert get(caddy, "strip.example", "/static").text == "static /\n"
    assert get(caddy, "strip.example", "/static/").text == "static /\n"
    assert get(caddy, "strip.example", "/keep/a").text == "static /keep/a\n"  # not asked: unchanged
    assert get(caddy, "strip.example", "/staticx").text == "site /staticx\n"
    router.set_routes(remove=["t-strip-site", "t-strip-static", "t-strip-keep"])


def test_route_config_refuses_an_oversized_page_and_sets_the_forwarded_prefix() -> None:
    with pytest.raises(EdgeError) as caught:
        route_config(Route("t-big", ["big.example"], [], page="x" * 40_000))
    assert caught.value.permanent

    config = route_config(
        Route("t-fwd", ["fwd.example"], ["127.0.0.1:9"], path_prefix="/shop/", strip_prefix=True)
    )
    rewrite, proxy = config["handle"]
    assert rewrite == {"handler": "rewrite", "strip_path_prefix": "/shop"}
    assert proxy["headers"]["request"]["set"] == {"X-Forwarded-Prefix": ["/shop"]}
    plain = route_config(Route("t-plain", ["fwd.example"], ["127.0.0.1:9"], path_prefix="/shop"))
    assert [h["handler"] for h in plain["handle"]] == ["reverse_proxy"]
