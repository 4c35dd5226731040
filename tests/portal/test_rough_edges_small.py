"""Small rough edges of issue 16 left by the first pass: the 500 page carries the site's name,
the dashboard's empty row spans the visible columns, and customer tables read on phones
(each cell names its column in ``data-label``)."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from billing.models import UsageRecord
from portal import urls as root_urls
from portal import views as portal_views
from projects.models import AuditEvent, Environment, EnvironmentStatus, Project
from projects.services import ServiceError, purge_project
from tests.conftest import Team, client_for
from tests.portal.test_dashboard import finish, make_project
from tests.portal.test_rough_edges import destroyed

pytestmark = pytest.mark.django_db
DASHBOARD = reverse("portal:dashboard")
ARCHIVE = reverse("portal:archive")


def page(response: Any) -> str:
    return response.content.decode()


# --- the 500 page ---------------------------------------------------------------------------------
def test_the_500_page_names_the_site(team: Team, settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.STACKPORT_SITE_NAME = "Acme Cloud"

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(portal_views, "dashboard_context", broken)
    client = client_for(team.owner)
    client.raise_request_exception = False
    response = client.get(DASHBOARD)
    assert response.status_code == 500
    html = page(response)
    assert "<title>Something went wrong · Acme Cloud</title>" in html
    assert 'id="error-500"' in html and "Stackport" not in html and "boom" not in html


def test_the_500_handler_never_fails_itself(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(name: str) -> None:
        raise RuntimeError("template missing")

    monkeypatch.setattr(portal_views.loader, "get_template", broken)
    response = portal_views.server_error(RequestFactory().get("/"))
    assert response.status_code == 500
    assert b"Something went wrong" in response.content and b"template missing" not in response.content


def test_the_500_handler_is_installed() -> None:
    assert root_urls.handler500 == "portal.views.server_error"


# --- the dashboard's empty row --------------------------------------------------------------------
def header_and_empty_row(html: str) -> tuple[int, int]:
    """(columns in the projects table's header, columns the "No environments." row spans)."""
    table = html[html.index('id="projects"') :]
    header = table[: table.index("</thead>")]
    row = re.search(r'<tr><td>.*?</td><td colspan="(\d+)"[^>]*>No environments\.</td></tr>', table)
    assert row is not None
    return header.count("<th>"), 1 + int(row.group(1))


def empty_project(team: Team, offered_catalog: None) -> None:
    env = make_project(team, "Empty")
    finish(env)
    Environment.objects.filter(pk=env.pk).delete()


def test_the_empty_row_spans_the_customers_columns(team: Team, offered_catalog: None) -> None:
    empty_project(team, offered_catalog)
    columns, spanned = header_and_empty_row(page(client_for(team.owner).get(DASHBOARD)))
    assert (columns, spanned) == (8, 8)  # no Hosts column for customers


def test_the_empty_row_spans_the_staff_columns(team: Team, offered_catalog: None) -> None:
    empty_project(team, offered_catalog)
    team.owner.is_staff = True
    team.owner.save(update_fields=["is_staff"])
    columns, spanned = header_and_empty_row(page(client_for(team.owner).get(DASHBOARD)))
    assert (columns, spanned) == (9, 9)


# --- the audit log on phones ----------------------------------------------------------------------
def test_the_audit_log_stacks_on_phones(team: Team, offered_catalog: None) -> None:
    make_project(team, "Shop")
    html = page(client_for(team.owner).get(reverse("projects:audit_log", kwargs={"org_id": team.org.pk})))
    assert 'table-stack" id="audit-table"' in html
    for label in ("When (UTC)", "Who", "What", "Target", "From"):
        assert f'data-label="{label}"' in html


# --- deleting an archived project for good ----------------------------------------------------------
@pytest.fixture
def gone(team: Team, offered_catalog: None) -> Environment:
    env = make_project(team, "Old Blog")
    finish(env)
    destroyed(env, team.admin)
    env.refresh_from_db()
    return env


def purge_url(env: Environment) -> str:
    return reverse("portal:archive_delete", kwargs={"project_id": env.project_id})


def test_an_admin_deletes_an_archived_project_for_good_after_typing_its_name(
    team: Team, gone: Environment
) -> None:
    client = client_for(team.admin)
    archive = page(client.get(ARCHIVE))
    assert f'id="purge-{gone.project_id}"' in archive and purge_url(gone) in archive
    confirm = client.get(purge_url(gone))
    assert confirm.status_code == 200 and "<code>Old Blog</code>" in page(confirm)

    wrong = client.post(purge_url(gone), {"confirmation": "Old"})
    assert wrong.status_code == 400 and 'id="purge-error"' in page(wrong)
    assert Project.objects.get(pk=gone.project_id).purged_at is None

    done = client.post(purge_url(gone), {"confirmation": "Old Blog"})
    assert done.status_code == 302 and done["Location"] == ARCHIVE
    archive = page(client.get(ARCHIVE))
    assert f'id="archived-{gone.project_id}"' not in archive and "deleted for good" in archive
    assert client.get(reverse("stacks:project", kwargs={"project_id": gone.project_id})).status_code == 404
    assert client.get(reverse("stacks:environment", kwargs={"environment_id": gone.pk})).status_code == 404
    assert client.get(purge_url(gone)).status_code == 404
    event = AuditEvent.objects.get(action="project.purged")
    assert (event.actor, event.organization, event.data["project"]) == (team.admin, team.org, gone.project_id)


def test_developers_and_viewers_cannot_delete_for_good(team: Team, gone: Environment) -> None:
    for user in (team.developer, team.viewer):
        client = client_for(user)
        assert f'id="purge-{gone.project_id}"' not in page(client.get(ARCHIVE))
        assert client.get(purge_url(gone)).status_code == 403
        assert client.post(purge_url(gone), {"confirmation": "Old Blog"}).status_code == 403
    assert client_for(team.outsider).get(purge_url(gone)).status_code == 404
    assert Project.objects.get(pk=gone.project_id).purged_at is None


def test_a_project_with_a_live_environment_is_not_deleted(team: Team, gone: Environment) -> None:
    Environment.objects.filter(pk=gone.pk).update(status=EnvironmentStatus.RUNNING)
    assert client_for(team.owner).get(purge_url(gone)).status_code == 404
    with pytest.raises(ServiceError) as refused:
        purge_project(project=gone.project, actor=team.owner, confirmation="Old Blog")
    assert refused.value.status == 409
    assert Project.objects.get(pk=gone.project_id).purged_at is None
    assert not AuditEvent.objects.filter(action="project.purged").exists()


def test_purging_keeps_billing_records_and_the_audit_log_and_is_idempotent(
    team: Team, gone: Environment
) -> None:
    now = timezone.now()
    record = UsageRecord.objects.create(
        organization=team.org,
        project=gone.project,
        project_name="Old Blog",
        environment=gone,
        environment_ref=gone.pk,
        component="web",
        component_code="nginx",
        region="eu-central",
        size="s",
        replicas=1,
        interval_start=now - timedelta(hours=1),
        interval_end=now,
        seconds=3600,
        cpu_hours=Decimal("0.25"),
        memory_gb_hours=Decimal("0.25"),
        storage_gb_hours=Decimal("1"),
    )
    audit_before = AuditEvent.objects.count()
    purged = purge_project(project=gone.project, actor=team.owner, confirmation=" Old  Blog ")
    assert purged.purged_at is not None and purged.deploy_key_private == b""
    again = purge_project(project=gone.project, actor=team.owner, confirmation="anything")
    assert again.purged_at == purged.purged_at
    assert AuditEvent.objects.count() == audit_before + 1  # once, and nothing of it removed
    record.refresh_from_db()
    assert (record.project_id, record.environment_id) == (gone.project_id, gone.pk)
