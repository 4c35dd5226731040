"""The live pages in Chromium under the real Content-Security-Policy: the dashboard's
status polls until the operation ends, the log tail appends new lines, uPlot draws."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from projects.models import Environment, EnvironmentStatus
from stacks.backends.memory import MemoryBackend
from stacks.models import Operation, OperationStatus, ResourceSampleRow
from stacks.runtime import lifecycle
from tests.browser.conftest import sign_in_as
from tests.conftest import Team, add_memory_host

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def signed_in(page: Any, live_server: Any, team: Team) -> str:
    sign_in_as(page, live_server.url, team.owner)
    return str(live_server.url)


@pytest.fixture
def environment(team: Team, offered_catalog: None) -> Environment:
    return lifecycle.create_project(
        organization=team.org, actor=team.owner, name="Shop", region="eu-central", template="static-site"
    )


def test_dashboard_polls_until_the_operation_ends(
    page: Any, signed_in: str, environment: Environment, console_errors: list[str]
) -> None:
    page.goto(f"{signed_in}/")
    assert page.locator("#dashboard-status[hx-trigger]").count() == 1
    Operation.objects.filter(environment=environment).update(status=OperationStatus.SUCCEEDED)
    Environment.objects.filter(pk=environment.pk).update(status=EnvironmentStatus.RUNNING)

    page.locator("#projects .badge", has_text="running").wait_for(timeout=15000)
    assert page.locator("#dashboard-status[hx-trigger]").count() == 0
    assert console_errors == []


def test_log_tail_appends_new_lines(
    page: Any,
    signed_in: str,
    environment: Environment,
    console_errors: list[str],
    memory_backend: type[MemoryBackend],
) -> None:
    # Running on host h1 of the in-memory backend (the live server runs in this process).
    Environment.objects.filter(pk=environment.pk).update(
        status=EnvironmentStatus.RUNNING, backend_state={"host": "h1"}
    )
    add_memory_host(environment, "h1")
    memory_backend.seed_logs(
        environment.key, "web", ["env-1-web-a0 2026-12-02T10:00:01.000000000Z first line"]
    )

    page.goto(f"{signed_in}/environments/{environment.pk}/components/web/logs/")
    assert page.locator(".log-line").count() == 1
    memory_backend.seed_logs(
        environment.key, "web", ["env-1-web-a0 2026-12-02T10:00:05.000000000Z <b>second</b> line"]
    )

    page.locator(".log-text", has_text="<b>second</b> line").wait_for(timeout=15000)
    assert page.locator(".log-line").count() == 2
    assert page.locator("#logs-follow-switch:not(.d-none)").count() == 1
    assert console_errors == []


def test_resource_charts_are_drawn_by_uplot(
    page: Any, signed_in: str, environment: Environment, console_errors: list[str]
) -> None:
    now = timezone.now()
    ResourceSampleRow.objects.bulk_create(
        ResourceSampleRow(
            environment=environment,
            component="web",
            taken_at=now - timedelta(minutes=m),
            cpu_percent=5 + m % 7,
            memory_bytes=(80 + m) * 2**20,
        )
        for m in range(50)
    )

    page.goto(f"{signed_in}/environments/{environment.pk}/components/web/metrics/")

    page.locator("[data-chart=cpu] .uplot").wait_for(timeout=15000)
    assert page.locator("[data-chart=memory] .uplot").count() == 1
    assert page.locator("#cpu-sparkline.d-none").count() == 1
    # Times are UTC and 24-hour, as the caption says (uPlot's default: local time, AM/PM).
    page.locator("[data-chart=cpu] .u-over").hover()
    shown = page.locator("[data-chart=cpu] .u-legend .u-series").first.locator(".u-value").inner_text()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", shown), shown
    assert console_errors == []
