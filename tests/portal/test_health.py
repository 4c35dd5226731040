from __future__ import annotations

from typing import Any

import pytest
from django.test import Client


@pytest.mark.django_db
def test_healthz_reports_database_and_cache() -> None:
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "cache": "ok"}}
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db
def test_healthz_is_503_when_the_cache_is_down(settings) -> None:
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
        }
    }
    # The settings fixture's override resets Django's cache handlers to the new setting.
    response = Client().get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["cache"].startswith("error")


@pytest.mark.django_db
def test_metrics_answer_loopback() -> None:
    response = Client(REMOTE_ADDR="127.0.0.1").get("/metrics")
    assert response.status_code == 200
    assert b"django_http_requests" in response.content


@pytest.mark.django_db
def test_metrics_are_not_public() -> None:
    assert Client(REMOTE_ADDR="203.0.113.9").get("/metrics").status_code == 404


@pytest.mark.django_db
def test_metrics_accept_the_bearer_token(settings) -> None:
    settings.METRICS_TOKEN = "s3cret-metrics-token"
    client = Client(REMOTE_ADDR="203.0.113.9")
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-metrics-token").status_code == 200


def test_healthz_rejects_post(client) -> None:
    assert client.post("/healthz").status_code == 405


def test_error_pages_are_styled_and_navigation_shows_only_what_the_role_may_do(team: Any) -> None:
    """A viewer sees no "New project"; opening it anyway gives the site's own 403 page,
    and an unknown address the site's own 404 page (with the navigation, not a bare text)."""
    from tests.conftest import client_for

    viewer = client_for(team.viewer)
    dashboard = viewer.get("/").content.decode()
    assert 'href="/projects/new/"' not in dashboard.split("</nav>")[0]
    refused = viewer.get("/projects/new/")
    assert refused.status_code == 403
    assert 'id="error-403"' in refused.content.decode() and "navbar" in refused.content.decode()
    missing = viewer.get("/no-such-page/")
    assert missing.status_code == 404 and 'id="error-404"' in missing.content.decode()
    developer = client_for(team.developer).get("/").content.decode()
    assert 'href="/projects/new/"' in developer.split("</nav>")[0]


@pytest.mark.django_db
def test_metrics_behind_a_trusted_proxy_judge_the_client_not_the_proxy(settings) -> None:
    """The proxy on loopback forwards everyone: its own address must not open /metrics, the
    client's (the last address the proxy added) decides; without a trusted proxy a client's
    own X-Forwarded-For is not believed."""
    settings.TRUSTED_PROXY_COUNT = 1
    proxy = Client(REMOTE_ADDR="127.0.0.1")
    assert proxy.get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 404
    assert proxy.get("/metrics", HTTP_X_FORWARDED_FOR="127.0.0.1, 203.0.113.9").status_code == 404
    assert proxy.get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.9, 127.0.0.1").status_code == 200
    settings.TRUSTED_PROXY_COUNT = 0
    spoofing = Client(REMOTE_ADDR="203.0.113.9")
    assert spoofing.get("/metrics", HTTP_X_FORWARDED_FOR="127.0.0.1").status_code == 404
