"""Rate limits of the JSON API: counters in the real (Redis) cache, one per token, so one
token's exhaustion never slows another, and one per user over all of its tokens, so more
tokens never mean more requests; over a limit, 429 with Retry-After. A cache without an
atomic increment is refused in production and switches the limits off elsewhere."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from portal.api import parse_rate
from projects.models import Organization
from tests.conftest import Team
from tests.portal.test_api import Api, api_for
from tests.portal.test_settings import _prod_keys, _run

pytestmark = pytest.mark.django_db


def test_one_tokens_exhaustion_does_not_affect_another(team: Team, settings) -> None:
    settings.STACKPORT_API_RATE_LIMIT = "5/h"
    hog, other = api_for(team.developer), api_for(team.developer)  # the same user, two tokens
    assert [hog.get("/organizations").status_code for _ in range(5)] == [200] * 5
    refused = hog.get("/organizations")
    assert refused.status_code == 429
    assert refused.json() == {
        "detail": refused.json()["detail"],
        "field": None,
    } and refused.json()["detail"].startswith("Too many requests with this token: try again in ")
    assert 1 <= int(refused["Retry-After"]) <= 3600
    assert other.get("/organizations").status_code == 200
    assert api_for(team.viewer).get("/organizations").status_code == 200
    assert hog.get("/organizations").status_code == 429  # still refused, nothing run


def test_writes_have_a_stricter_limit_of_their_own(team: Team, settings) -> None:
    settings.STACKPORT_API_RATE_LIMIT = "100/h"
    settings.STACKPORT_API_WRITE_RATE_LIMIT = "2/h"
    api = api_for(team.owner)
    org = team.org.pk
    statuses = [
        api.send("patch", f"/organizations/{org}", {"name": f"Acme {n}"}).status_code for n in range(3)
    ]
    assert statuses == [200, 200, 429]
    assert Organization.objects.get(pk=org).name == "Acme 1"  # the refused write changed nothing
    assert api.get(f"/organizations/{org}").status_code == 200  # reads go on
    assert api_for(team.owner).send("patch", f"/organizations/{org}", {"name": "Acme 9"}).status_code == 200


def test_limits_can_be_switched_off_and_unauthenticated_calls_stay_401(team: Team, settings) -> None:
    settings.STACKPORT_API_RATE_LIMIT = "off"
    api = api_for(team.viewer)
    assert {api.get("/organizations").status_code for _ in range(3)} == {200}
    assert Api(None).get("/organizations").status_code == 401


def test_a_users_tokens_share_one_wider_limit(team: Team, settings) -> None:
    settings.STACKPORT_API_RATE_LIMIT = "5/h"
    settings.STACKPORT_API_USER_RATE_LIMIT = "8/h"
    first, second, third = (api_for(team.developer) for _ in range(3))
    assert [first.get("/organizations").status_code for _ in range(5)] == [200] * 5
    assert [second.get("/organizations").status_code for _ in range(4)] == [200, 200, 200, 429]
    assert third.get("/organizations").status_code == 429  # a fresh token adds nothing
    assert api_for(team.viewer).get("/organizations").status_code == 200  # another user


def test_a_token_refused_by_its_own_limit_costs_its_user_nothing(team: Team, settings) -> None:
    settings.STACKPORT_API_RATE_LIMIT = "2/h"
    settings.STACKPORT_API_USER_RATE_LIMIT = "4/h"
    hog, other = api_for(team.developer), api_for(team.developer)
    assert [hog.get("/organizations").status_code for _ in range(6)] == [200, 200, 429, 429, 429, 429]
    assert [other.get("/organizations").status_code for _ in range(3)] == [200, 200, 429]


def test_writes_have_a_per_user_limit_too(team: Team, settings) -> None:
    settings.STACKPORT_API_WRITE_RATE_LIMIT = "2/h"
    settings.STACKPORT_API_USER_WRITE_RATE_LIMIT = "3/h"
    org = team.org.pk
    first, second = api_for(team.owner), api_for(team.owner)

    def rename(api: Api, n: int) -> int:
        return api.send("patch", f"/organizations/{org}", {"name": f"Acme {n}"}).status_code

    assert [rename(first, n) for n in range(2)] == [200, 200]
    assert [rename(second, n) for n in range(2, 4)] == [200, 429]
    assert Organization.objects.get(pk=org).name == "Acme 2"
    assert second.get(f"/organizations/{org}").status_code == 200  # reads go on


def test_limits_are_off_when_the_cache_cannot_count_atomically(team: Team, settings) -> None:
    settings.STACKPORT_API_THROTTLE_ENABLED = False  # what a file or database cache gives
    settings.STACKPORT_API_RATE_LIMIT = settings.STACKPORT_API_USER_RATE_LIMIT = "1/h"
    api = api_for(team.viewer)
    assert {api.get("/organizations").status_code for _ in range(3)} == {200}


@pytest.mark.parametrize("cache_url", ["filecache:///tmp/stackport-test-cache", "dbcache://cache_table"])
def test_production_refuses_a_cache_without_atomic_increment(cache_url: str) -> None:
    result = _run(["check"], CACHE_URL=cache_url, **_prod_keys())
    assert result.returncode != 0
    assert "atomic increment" in result.stderr


def test_production_takes_a_file_cache_with_the_api_limits_off() -> None:
    off = {
        name: "off"
        for name in (
            "STACKPORT_API_RATE_LIMIT",
            "STACKPORT_API_WRITE_RATE_LIMIT",
            "STACKPORT_API_USER_RATE_LIMIT",
            "STACKPORT_API_USER_WRITE_RATE_LIMIT",
        )
    }
    result = _run(["check"], CACHE_URL="filecache:///tmp/stackport-test-cache", **off, **_prod_keys())
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("rate", "parsed"),
    [("600/m", (600, 60)), ("100/5m", (100, 300)), ("1/s", (1, 1)), ("10/d", (10, 86400)), ("off", None)],
)
def test_rates_are_parsed(rate: str, parsed: tuple[int, int] | None) -> None:
    assert parse_rate(rate) == parsed


@pytest.mark.parametrize("rate", ["600", "0/m", "x/m", "5/w", "-1/m", "5/xm"])
def test_bad_rates_are_refused(rate: str) -> None:
    with pytest.raises(ImproperlyConfigured):
        parse_rate(rate)
