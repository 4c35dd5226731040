"""Support in Chromium: find a customer by e-mail in admin, see the failed operation, retry
it, suspend the project (the customer sees why and cannot act), resume it. No engine:
operations are queued, and "finished" by the test where the next step needs it."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.contrib.auth.models import Group
from playwright.sync_api import expect

from projects.models import AuditEvent, Environment, EnvironmentStatus, Project, User
from projects.receivers import sync_staff_groups
from stacks.models import Operation, OperationKind, OperationStatus
from stacks.runtime import lifecycle
from tests.conftest import client_for
from tests.factories import UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.slow]
REASON = "Unpaid invoice INV-2026-11"


def _signed_in(browser: Any, base: str, user: User) -> Any:
    """A browser context with a session of ``user`` (sign-in itself has its own tests)."""
    client = client_for(user)
    context = browser.new_context(base_url=base)
    context.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": base}])
    return context.new_page()


def _admin_action(page: Any, pk: int, action: str) -> None:
    page.check(f"input[name=_selected_action][value='{pk}']")
    page.select_option("select[name=action]", action)
    page.click("button[name=index]")


@pytest.fixture
def shop(team: Any, offered_catalog: None, monkeypatch: Any) -> Environment:
    # Operations stay queued: the worker and the engine are not part of this test.
    monkeypatch.setattr("stacks.tasks.run_operation_task.delay", lambda *a, **k: None)
    env = lifecycle.create_project(
        organization=team.org, actor=team.developer, name="Shop", region="eu-central", template="static-site"
    )
    deploy = env.operations.get()
    Operation.objects.filter(pk=deploy.pk).update(status=OperationStatus.SUCCEEDED)
    Environment.objects.filter(pk=env.pk).update(
        current_release=deploy.release, status=EnvironmentStatus.RUNNING
    )
    Operation.objects.create(
        environment=env,
        kind=OperationKind.SCALE,
        status=OperationStatus.FAILED,
        release=deploy.release,
        params={"component": "web", "replicas": 2},
        error="not healthy: web-1 exited (137)",
    )
    env.refresh_from_db()
    return env


def test_support_retries_suspends_and_resumes_while_the_customer_sees_it(
    browser: Any, live_server: Any, team: Any, shop: Environment
) -> None:
    base = live_server.url
    # Live-server tests flush the database between tests; make the groups as migrate does.
    sync_staff_groups(django_apps)
    supporter = UserFactory(is_staff=True, email="support@hoster.test")
    supporter.groups.add(Group.objects.get(name="Support"))
    staff = _signed_in(browser, base, supporter)
    customer = _signed_in(browser, base, team.developer)

    # 1. Find the customer by e-mail, open their organization and the project.
    staff.goto("/admin/projects/organization/")
    staff.fill("#searchbar", "developer@acme.test")
    staff.press("#searchbar", "Enter")
    staff.get_by_role("link", name="Acme Hosting Co").click()
    staff.wait_for_url(re.compile(r".*/admin/projects/organization/\d+/change/"))
    expect(staff.get_by_text("Shop").first).to_be_visible()
    staff.goto(f"/admin/projects/project/{shop.project.pk}/change/")
    expect(staff.get_by_text("not healthy: web-1 exited (137)")).to_be_visible()

    # 2. Retry the failed operation: a new one is queued through the service.
    failed = Operation.objects.get(status=OperationStatus.FAILED)
    staff.goto("/admin/stacks/operation/?status__exact=failed")
    _admin_action(staff, failed.pk, "retry")
    expect(staff.get_by_text("Queued 1 retry")).to_be_visible()
    retry = Operation.objects.get(status=OperationStatus.QUEUED)
    assert (retry.kind, retry.params["retry_of"], retry.requested_by_id) == ("scale", failed.pk, supporter.pk)
    Operation.objects.filter(pk=retry.pk).update(status=OperationStatus.SUCCEEDED)  # the worker ran it

    # 3. Suspend the project, with a reason.
    staff.goto("/admin/projects/project/")
    _admin_action(staff, shop.project.pk, "suspend_projects")
    staff.fill("input[name=reason]", REASON)
    staff.click("input[type=submit][value='Suspend projects']")
    expect(staff.get_by_text("Suspended 1 project(s)")).to_be_visible()
    assert Project.objects.get(pk=shop.project.pk).suspended_reason == REASON
    stop = Operation.objects.get(status=OperationStatus.QUEUED)
    assert stop.kind == OperationKind.STOP
    Operation.objects.filter(pk=stop.pk).update(status=OperationStatus.SUCCEEDED)

    # 4. The customer sees the suspension and cannot act.
    customer.goto(f"/environments/{shop.pk}/")
    expect(customer.get_by_text(REASON).first).to_be_visible()
    expect(customer.locator("#suspended")).to_contain_text("nothing can be changed until support resumes")
    expect(customer.get_by_role("button", name="One replica more of web")).to_have_count(0)  # no live buttons
    customer.goto("/")
    expect(customer.locator("#suspended")).to_contain_text(REASON)
    expect(customer.get_by_text("Nothing needs attention")).to_have_count(0)
    assert not Operation.objects.filter(status=OperationStatus.QUEUED).exists()

    # 5. Resume: the customer's stack starts again and they can act.
    staff.goto("/admin/projects/project/")
    _admin_action(staff, shop.project.pk, "resume_projects")
    expect(staff.get_by_text("Resumed 1 project(s)")).to_be_visible()
    start = Operation.objects.get(status=OperationStatus.QUEUED)
    assert start.kind == OperationKind.START
    Operation.objects.filter(pk=start.pk).update(status=OperationStatus.SUCCEEDED)
    customer.goto(f"/environments/{shop.pk}/")
    expect(customer.get_by_text(REASON)).to_have_count(0)
    actions = set(AuditEvent.objects.filter(actor=supporter).values_list("action", flat=True))
    assert {"support.operation.retry", "support.project.suspend", "support.project.resume"} <= actions
