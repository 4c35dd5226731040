"""A component's log viewer (page, live tail, download) and its resource charts.

No engine: the in-memory backend (``stacks/backends/memory.py``) holds the seeded log lines
and samples; chart samples are rows made here.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from projects.models import Environment, EnvironmentStatus
from stacks.backends.base import BackendError, ResourceSample
from stacks.backends.memory import MemoryBackend
from stacks.models import ResourceSampleRow
from stacks.runtime import lifecycle
from stacks.runtime.reconcile import record_samples
from tests.conftest import Team, add_memory_host, client_for

pytestmark = pytest.mark.django_db

PAYLOAD = '<script>alert("x")</script> & done'


LINES = [
    f"env-1-web-a0 2026-12-02T10:00:01.000000000Z first {PAYLOAD}",
    "env-1-web-a0 2026-12-02T10:00:03.000000000Z third",
    "env-1-web-a1 2026-12-02T10:00:02.000000000Z second",
]


@pytest.fixture
def backend(memory_backend: type[MemoryBackend], environment: Environment) -> type[MemoryBackend]:
    """The environment runs on host h1 of the in-memory backend, which holds its web
    replicas' lines and two samples."""
    add_memory_host(environment, "h1")
    memory_backend.seed_logs(environment.key, "web", LINES[:2], replica=0)
    memory_backend.seed_logs(environment.key, "web", LINES[2:], replica=1)
    memory_backend.seed_samples(
        environment.key,
        [ResourceSample("web", 0, 12.5, 50 * 2**20), ResourceSample("web", 1, 7.5, 70 * 2**20)],
    )
    return memory_backend


def set_lines(backend: type[MemoryBackend], environment: Environment, lines: list[str]) -> None:
    backend.clear_logs(environment.key)
    backend.seed_logs(environment.key, "web", lines)


@pytest.fixture
def environment(team: Team, offered_catalog: None) -> Environment:
    env = lifecycle.create_project(
        organization=team.org, actor=team.owner, name="Shop <b>", region="eu-central", template="static-site"
    )
    Environment.objects.filter(pk=env.pk).update(
        status=EnvironmentStatus.RUNNING, backend_state={"host": "h1"}
    )
    env.refresh_from_db()
    return env


@pytest.fixture
def theirs(team: Team, offered_catalog: None) -> Environment:
    return lifecycle.create_project(
        organization=team.outsider_org,
        actor=team.outsider,
        name="Theirs",
        region="eu-central",
        template="static-site",
    )


def url(name: str, env: Environment, component: str = "web") -> str:
    return reverse(f"stacks:{name}", kwargs={"environment_id": env.pk, "component": component})


# --- logs ---------------------------------------------------------------------------------------
def test_logs_page_shows_the_last_lines_in_time_order_escaped(
    team: Team, environment: Environment, backend: type[MemoryBackend]
) -> None:
    response = client_for(team.viewer).get(url("component_logs", environment))

    assert response.status_code == 200
    page = response.content.decode()
    assert backend.calls("logs") == [(environment.key, "web", 200)]
    assert page.index('text">first') < page.index('text">second') < page.index('text">third')
    assert PAYLOAD not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; done" in page
    assert "Shop &lt;b&gt;" in page and "Shop <b>" not in page
    assert url("component_logs_download", environment) in page
    assert url("component_metrics", environment) in page
    tail = f"{url('component_logs', environment)}?after=2026-12-02T10%3A00%3A03.000000000Z"
    assert f'hx-get="{tail}"' in page
    assert 'hx-trigger="every 2s"' in page


def test_the_tail_returns_only_new_lines_and_the_next_poll(
    team: Team, environment: Environment, backend: type[MemoryBackend]
) -> None:
    backend.seed_logs(
        environment.key, "web", ["env-1-web-a1 2026-12-02T10:00:04.000000000Z fourth <i>"], replica=1
    )
    response = client_for(team.viewer).get(
        url("component_logs", environment),
        {"after": "2026-12-02T10:00:03.000000000Z"},
        headers={"HX-Request": "true"},
    )

    body = response.content.decode()
    assert "<html" not in body
    assert "fourth &lt;i&gt;" in body
    assert "third" not in body and "first" not in body
    assert "after=2026-12-02T10%3A00%3A04.000000000Z" in body
    assert body.rstrip().endswith("</div>")


def test_the_tail_stops_when_the_environment_is_not_running(
    team: Team, environment: Environment, backend: type[MemoryBackend]
) -> None:
    Environment.objects.filter(pk=environment.pk).update(status=EnvironmentStatus.STOPPED)
    client = client_for(team.viewer)

    page = client.get(url("component_logs", environment)).content.decode()
    tail = client.get(
        url("component_logs", environment), {"after": "2026-12-02T10:00:03Z"}, headers={"HX-Request": "true"}
    ).content.decode()

    assert "third" in page
    assert "hx-get" not in page.split('id="logs"')[1]
    assert '<div id="logs-tail"></div>' in tail


def test_a_backend_error_is_a_clear_message(
    team: Team, environment: Environment, backend: type[MemoryBackend]
) -> None:
    backend.errors["logs"] = BackendError("Docker host h1 does not answer: connection refused")

    response = client_for(team.viewer).get(url("component_logs", environment))

    assert response.status_code == 200
    page = response.content.decode()
    assert "The logs are not available right now: Docker host h1 does not answer" in page
    assert 'hx-trigger="every 2s"' not in page


def test_an_unreachable_engine_is_a_clear_message(
    team: Team, environment: Environment, backend: type[MemoryBackend]
) -> None:
    backend.errors["logs"] = ConnectionRefusedError("refused")

    page = client_for(team.viewer).get(url("component_logs", environment)).content.decode()

    assert "The host running this stack does not answer." in page


def test_download_is_a_text_attachment(
    team: Team, environment: Environment, backend: type[MemoryBackend]
) -> None:
    response = client_for(team.viewer).get(url("component_logs_download", environment))

    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    disposition = response["Content-Disposition"]
    assert disposition.startswith(f'attachment; filename="{environment.key}-web-') and disposition.endswith(
        '.log"'
    )
    body = response.content.decode()
    assert body.splitlines()[0] == f"env-1-web-a0 2026-12-02T10:00:01.000000000Z first {PAYLOAD}"
    assert len(body.splitlines()) == 3
    assert backend.calls("logs")[0][2] == 5000


def test_a_failed_download_goes_back_to_the_viewer_with_the_reason(
    team: Team, environment: Environment, backend: type[MemoryBackend]
) -> None:
    backend.errors["logs"] = BackendError("no <host>")
    client = client_for(team.viewer)

    response = client.get(url("component_logs_download", environment))
    page = client.get(response["Location"]).content.decode()

    assert response.status_code == 302
    assert response["Location"] == url("component_logs", environment)
    assert "The logs could not be downloaded: no &lt;host&gt;" in page


@pytest.mark.parametrize(
    "name", ["component_logs", "component_logs_download", "component_metrics", "component_metrics_data"]
)
def test_someone_elses_environment_and_unknown_components_are_404(
    team: Team, environment: Environment, theirs: Environment, backend: type[MemoryBackend], name: str
) -> None:
    client = client_for(team.owner)

    assert client.get(url(name, theirs)).status_code == 404
    assert client.get(url(name, environment, "nope")).status_code == 404
    assert client.post(url(name, environment)).status_code == 405
    assert Client().get(url(name, environment)).status_code == 302
    assert backend.calls("logs") == []


# --- resource charts ---------------------------------------------------------------------------
def add_samples(env: Environment, minutes: int, component: str = "web", replicas: int = 2) -> None:
    now = timezone.now()
    ResourceSampleRow.objects.bulk_create(
        ResourceSampleRow(
            environment=env,
            component=component,
            replica=r,
            taken_at=now - timedelta(minutes=m, seconds=5),
            cpu_percent=10.0 + r * 10,
            memory_bytes=(100 + r * 100) * 2**20,
        )
        for m in range(minutes)
        for r in range(replicas)
    )


def test_metrics_page_without_samples_says_when_they_come(team: Team, environment: Environment) -> None:
    page = client_for(team.viewer).get(url("component_metrics", environment)).content.decode()

    assert "No samples in the last hour" in page
    assert "<polyline" not in page


def test_metrics_page_draws_sparklines_without_javascript(team: Team, environment: Environment) -> None:
    add_samples(environment, 30)
    add_samples(environment, 30, component="db")  # another component's: not on this page

    response = client_for(team.viewer).get(url("component_metrics", environment))

    page = response.content.decode()
    assert response.status_code == 200
    assert page.count("<polyline") == 2
    points = page.split('<polyline points="')[1].split('"')[0].split()
    assert len(points) == 30
    assert "now 15.0%, peak 20.0% of 25%" in page  # mean of the replicas, peak, the small size's 0.25 CPU
    assert "peak 200 MB of 256 MB" in page
    assert (
        reverse(
            "stacks:component_metrics_data", kwargs={"environment_id": environment.pk, "component": "web"}
        )
        in page
    )
    assert "Shop &lt;b&gt;" in page


def test_metrics_day_range_is_aggregated_in_five_minute_buckets(team: Team, environment: Environment) -> None:
    add_samples(environment, 24 * 60 - 10, replicas=1)
    ResourceSampleRow.objects.create(
        environment=environment,
        component="web",
        taken_at=timezone.now() - timedelta(days=2),
        cpu_percent=99,
        memory_bytes=1,
    )
    client = client_for(team.viewer)

    data = json.loads(client.get(url("component_metrics_data", environment), {"range": "day"}).content)
    hour = json.loads(client.get(url("component_metrics_data", environment)).content)

    assert data["range"] == "day"
    assert 285 <= len(data["t"]) <= 290
    assert data["t"] == sorted(data["t"])
    assert {t % 300 for t in data["t"]} == {0}
    assert max(data["cpu_peak"]) == 10.0  # the sample two days ago is outside
    assert data["limits"] == {"cpu_percent": 25.0, "memory_bytes": 256 * 2**20}
    assert hour["range"] == "hour" and 59 <= len(hour["t"]) <= 61
    assert len(data["cpu"]) == len(data["memory"]) == len(data["replicas"]) == len(data["t"])


def test_an_unknown_range_is_the_hour(team: Team, environment: Environment) -> None:
    data = json.loads(
        client_for(team.viewer).get(url("component_metrics_data", environment), {"range": "x"}).content
    )

    assert data["range"] == "hour"
    assert data["t"] == []


def test_samples_are_recorded_by_a_scheduled_task(
    environment: Environment, backend: type[MemoryBackend]
) -> None:
    assert any(e["task"] == "stacks.record_samples_task" for e in settings.CELERY_BEAT_SCHEDULE.values())
    ResourceSampleRow.objects.create(
        environment=environment,
        component="web",
        taken_at=timezone.now() - timedelta(days=2),
        cpu_percent=1,
        memory_bytes=1,
    )

    assert record_samples() == 2

    rows = list(ResourceSampleRow.objects.filter(environment=environment).order_by("replica"))
    assert [(r.component, r.replica, r.cpu_percent) for r in rows] == [("web", 0, 12.5), ("web", 1, 7.5)]


def test_lines_without_timestamps_are_shown_but_not_followed(
    team: Team, environment: Environment, backend: type[MemoryBackend]
) -> None:
    set_lines(backend, environment, ["plain line one", "plain <line> two"])

    page = client_for(team.viewer).get(url("component_logs", environment)).content.decode()

    assert "plain line one" in page and "plain &lt;line&gt; two" in page
    assert 'hx-trigger="every 2s"' not in page


def test_an_empty_log_is_followed_from_the_start(
    team: Team, environment: Environment, backend: type[MemoryBackend]
) -> None:
    set_lines(backend, environment, [])
    client = client_for(team.viewer)

    page = client.get(url("component_logs", environment)).content.decode()
    set_lines(backend, environment, ["env-1-web-a0 2026-12-02T10:00:09.000000000Z hello"])
    tail = client.get(url("component_logs", environment), {"after": ""}, headers={"HX-Request": "true"})

    assert "No lines yet." in page
    assert f'hx-get="{url("component_logs", environment)}?after="' in page
    assert "hello" in tail.content.decode() and "<html" not in tail.content.decode()


def test_one_stacks_engine_failing_does_not_end_the_sampling_pass(
    team: Team, environment: Environment, backend: type[MemoryBackend], offered_catalog: None
) -> None:
    """The first environment sampled fails; the next one is still sampled."""
    second = lifecycle.create_project(
        organization=team.org, actor=team.owner, name="Second", region="eu-central", template="static-site"
    )
    Environment.objects.filter(pk=second.pk).update(
        status=EnvironmentStatus.RUNNING, backend_state={"host": "h1"}
    )
    backend.seed_samples(second.key, [ResourceSample("web", 0, 1.0, 2**20)] * 3)
    first, later = list(Environment.objects.filter(status=EnvironmentStatus.RUNNING))
    backend.fail_next("samples", BackendError("Docker host h1 does not answer", permanent=False))

    recorded = record_samples()

    assert recorded == (3 if first.pk == environment.pk else 2)
    assert not ResourceSampleRow.objects.filter(environment=first).exists()
    assert ResourceSampleRow.objects.filter(environment=later).count() == recorded
