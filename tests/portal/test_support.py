"""Support staff in Django admin and "view as customer": every admin page loads, customers
are found by e-mail, actions go through the support services, secrets never show, and
viewing as a customer is read-only, audited and only for staff with the permission."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, Permission
from django.urls import reverse

from projects.models import AuditEvent, Environment, EnvironmentStatus, User
from stacks.models import DockerHost, Operation, OperationKind, OperationStatus, Variable
from stacks.runtime import lifecycle
from tests.conftest import client_for
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
SECRET = "s3cr3t-VALUE-'$(rm -rf)'-xyz"
PLAIN = "plain-value-visible-42"


def staff(*groups: str, **fields: Any) -> User:
    user = UserFactory(is_staff=True, **fields)
    for name in groups:
        user.groups.add(Group.objects.get(name=name))
    return User.objects.get(pk=user.pk)


@pytest.fixture
def shop(team: Any, offered_catalog: None) -> Environment:
    """A running customer stack with a secret, a plain variable, a domain and a failed operation."""
    env = lifecycle.create_project(
        organization=team.org, actor=team.developer, name="Shop", region="eu-central", template="static-site"
    )
    op = env.operations.get()
    Operation.objects.filter(pk=op.pk).update(status=OperationStatus.SUCCEEDED)
    Environment.objects.filter(pk=env.pk).update(current_release=op.release, status=EnvironmentStatus.RUNNING)
    env.refresh_from_db()
    lifecycle.set_variable(environment=env, actor=team.developer, name="API_KEY", value=SECRET, secret=True)
    lifecycle.set_variable(environment=env, actor=team.developer, name="MODE", value=PLAIN)
    lifecycle.add_domain(environment=env, actor=team.developer, hostname="shop.example.com")
    Operation.objects.create(
        environment=env,
        kind=OperationKind.SCALE,
        status=OperationStatus.FAILED,
        release=op.release,
        params={"component": "web", "replicas": 3},
        error="not healthy: web-2 exited (137)",
    )
    DockerHost.objects.create(name="h1", url="unix:///x.sock", region=env.project.region, kernel=env.kernel)
    return env


# --- every page -------------------------------------------------------------------------------
def test_every_admin_changelist_and_changeform_loads(team: Any, shop: Environment) -> None:
    client = client_for(staff(is_superuser=True))
    assert client.get(reverse("admin:index")).status_code == 200
    for model, model_admin in admin.site._registry.items():
        meta = model._meta
        url = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
        assert client.get(url).status_code == 200, url
        assert client.get(url, {"q": "acme"}).status_code == 200 if model_admin.search_fields else True
        add = reverse(f"admin:{meta.app_label}_{meta.model_name}_add")
        assert client.get(add).status_code in (200, 403), add
        obj = model._default_manager.first()
        if obj is not None:
            change = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])
            assert client.get(change).status_code == 200, change


def test_support_group_sees_customers_read_only(team: Any, shop: Environment) -> None:
    client = client_for(staff("Support"))
    for name in ("projects_organization", "projects_project", "projects_environment", "stacks_operation"):
        assert client.get(reverse(f"admin:{name}_changelist")).status_code == 200
    page = client.get(reverse("admin:projects_environment_change", args=[shop.pk])).content.decode()
    assert 'name="_save"' not in page  # nothing to edit by hand
    assert client.get(reverse("admin:stacks_component_changelist")).status_code == 200
    assert client.get(reverse("admin:stacks_component_add")).status_code == 403


def test_catalog_managers_edit_the_catalog_not_customers(team: Any, shop: Environment) -> None:
    client = client_for(staff("Catalog managers"))
    assert client.get(reverse("admin:stacks_component_add")).status_code == 200
    assert client.get(reverse("admin:projects_organization_changelist")).status_code == 403


def test_a_customer_is_found_by_email(team: Any, shop: Environment) -> None:
    client = client_for(staff("Support"))
    page = client.get(
        reverse("admin:projects_organization_changelist"), {"q": "viewer@acme.test"}
    ).content.decode()
    assert "Acme Hosting Co" in page and "Other Corp" not in page
    page = client.get(reverse("admin:projects_organization_change", args=[team.org.pk])).content.decode()
    assert "Shop" in page and "View as customer" in page
    project = client.get(reverse("admin:projects_project_change", args=[shop.project.pk])).content.decode()
    assert "not healthy: web-2 exited (137)" in project and "shop.example.com" in project


# --- secrets ----------------------------------------------------------------------------------
def _pages(shop: Environment) -> list[str]:
    variable = Variable.objects.get(name="API_KEY")
    return [
        reverse("admin:stacks_variable_changelist"),
        reverse("admin:stacks_variable_change", args=[variable.pk]),
        reverse("admin:projects_environment_change", args=[shop.pk]),
        reverse("admin:projects_project_change", args=[shop.project.pk]),
        reverse("admin:projects_auditevent_changelist"),
        reverse("admin:stacks_operation_changelist"),
    ]


@pytest.mark.parametrize("who", ["superuser", "support", "billing"])
def test_secrets_never_appear_in_admin(team: Any, shop: Environment, who: str) -> None:
    user = {
        "superuser": lambda: staff(is_superuser=True),
        "support": lambda: staff("Support"),
        "billing": lambda: staff("Billing", "Catalog managers"),
    }[who]()
    user.user_permissions.add(
        *Permission.objects.filter(codename__startswith="view_").exclude(codename="view_as_customer")
    )
    client = client_for(User.objects.get(pk=user.pk))
    ciphertext = bytes(Variable.objects.get(name="API_KEY").encrypted_value).decode()
    for url in _pages(shop):
        page = client.get(url).content.decode()
        assert SECRET not in page and "s3cr3t" not in page, url
        assert ciphertext[:40] not in page, url
    page = client.get(reverse("admin:stacks_variable_changelist")).content.decode()
    assert "secret (set " in page
    # Plain values only for staff who may view as the customer (superuser, Support).
    assert (PLAIN in page) == (who != "billing")


# --- actions ----------------------------------------------------------------------------------
def _action(client: Any, model: str, action: str, pk: int, **data: str) -> Any:
    return client.post(
        reverse(f"admin:{model}_changelist"), {"action": action, "_selected_action": [pk], **data}
    )


def test_suspend_and_resume_through_admin_go_through_the_services(team: Any, shop: Environment) -> None:
    supporter = staff("Support")
    client = client_for(supporter)
    form = _action(client, "projects_project", "suspend_projects", shop.project.pk)
    assert form.status_code == 200 and 'name="reason"' in form.content.decode()
    done = _action(
        client, "projects_project", "suspend_projects", shop.project.pk, apply="1", reason="Unpaid"
    )
    assert done.status_code == 302
    shop.project.refresh_from_db()
    assert shop.project.suspended_reason == "Unpaid"
    assert Operation.objects.filter(
        environment=shop, kind="stop", status="queued", requested_by=supporter
    ).exists()
    assert AuditEvent.objects.filter(action="support.project.suspend", actor=supporter).exists()
    Operation.objects.filter(environment=shop, status="queued").update(status="succeeded")
    _action(client, "projects_project", "resume_projects", shop.project.pk)
    shop.project.refresh_from_db()
    assert shop.project.suspended_at is None
    assert AuditEvent.objects.filter(action="support.project.resume", actor=supporter).exists()


def test_retry_redeploy_and_drain_from_admin(team: Any, shop: Environment) -> None:
    supporter = staff("Support")
    client = client_for(supporter)
    failed = Operation.objects.get(status="failed")
    _action(client, "stacks_operation", "retry", failed.pk)
    retry = Operation.objects.get(status="queued")
    assert retry.params["retry_of"] == failed.pk and retry.kind == "scale"
    Operation.objects.filter(pk=retry.pk).update(status="succeeded")
    _action(client, "projects_environment", "redeploy", shop.pk)
    assert Operation.objects.filter(
        status="queued", kind="deploy", params__reason="support.redeploy"
    ).exists()
    host = DockerHost.objects.get(name="h1")
    _action(client, "stacks_dockerhost", "drain", host.pk)
    host.refresh_from_db()
    assert host.state == DockerHost.State.DRAINING  # nothing lived there: marked at once
    assert AuditEvent.objects.filter(action="support.host.drain").exists()


def test_staff_without_the_permission_cannot_run_actions(team: Any, shop: Environment) -> None:
    user = staff("Catalog managers")
    user.user_permissions.add(*Permission.objects.filter(codename="view_project"))
    client = client_for(User.objects.get(pk=user.pk))
    page = client.get(reverse("admin:projects_project_changelist")).content.decode()
    assert "suspend_projects" not in page
    _action(client, "projects_project", "suspend_projects", shop.project.pk, apply="1", reason="x")
    shop.project.refresh_from_db()
    assert shop.project.suspended_at is None


# --- view as customer -------------------------------------------------------------------------
def test_view_as_customer_is_read_only_with_a_banner_and_audited(team: Any, shop: Environment) -> None:
    supporter = staff("Support")
    client = client_for(supporter)
    response = client.post(reverse("support:view_as_start", args=[team.org.pk]))
    assert response.status_code == 302
    assert AuditEvent.objects.filter(
        action="support.view_as.start", actor=supporter, organization=team.org
    ).exists()
    page = client.get(reverse("portal:dashboard")).content.decode()
    assert 'id="view-as-banner"' in page and "Acme Hosting Co" in page and "Shop" in page
    assert client.get(reverse("projects:organization", args=[team.org.pk])).status_code == 200
    assert client.get(reverse("projects:organization", args=[team.outsider_org.pk])).status_code == 404
    assert client.get(reverse("projects:audit_log", args=[team.org.pk])).status_code == 403  # viewer only
    refused = client.post(
        reverse("projects:member_invite", args=[team.org.pk]), {"email": "x@y.test", "role": "viewer"}
    )
    assert refused.status_code == 403
    refused = client.post(reverse("projects:organization", args=[team.org.pk]), {"name": "Hacked"})
    assert refused.status_code == 403
    team.org.refresh_from_db()
    assert team.org.name == "Acme Hosting Co"
    stop = client.post(reverse("support:view_as_stop"))
    assert stop.status_code == 302
    assert AuditEvent.objects.filter(action="support.view_as.stop", actor=supporter).exists()
    assert client.get(reverse("projects:organization", args=[team.org.pk])).status_code == 404
    assert 'id="view-as-banner"' not in client.get(reverse("portal:dashboard")).content.decode()


def test_view_as_needs_the_permission(team: Any, shop: Environment) -> None:
    assert (
        client_for(staff("Billing")).post(reverse("support:view_as_start", args=[team.org.pk])).status_code
        == 403
    )
    assert (
        client_for(team.owner).post(reverse("support:view_as_start", args=[team.org.pk])).status_code == 404
    )
    assert (
        client_for(staff("Support")).get(reverse("support:view_as_start", args=[team.org.pk])).status_code
        == 405
    )
    # A session key alone (a forged or stale session) gives nothing without the permission.
    client = client_for(staff("Billing"))
    session = client.session
    session["stackport_view_as"] = {"org": team.org.pk, "name": "x"}
    session.save()
    assert client.get(reverse("projects:organization", args=[team.org.pk])).status_code == 404
    page = client_for(staff("Billing")).get(reverse("admin:projects_organization_change", args=[team.org.pk]))
    assert "View as customer" not in page.content.decode()
    assert not AuditEvent.objects.filter(action="support.view_as.start").exists()


# --- demos page -------------------------------------------------------------------------------
def test_the_demo_page_is_for_sales_staff_only(team: Any, offered_catalog: None) -> None:
    assert client_for(team.owner).get(reverse("support:demo_start")).status_code == 404
    assert client_for(staff("Support")).get(reverse("support:demo_start")).status_code == 403
    sales = client_for(staff("Sales"))
    page = sales.get(reverse("support:demo_start"))
    assert page.status_code == 200 and "static-site" in page.content.decode()
    done = sales.post(reverse("support:demo_start"), {"template": "static-site", "prospect": "Globex <b>"})
    body = done.content.decode()
    assert done.status_code == 200 and 'data-testid="demo-password"' in body
    assert "Globex &lt;b&gt;" in body
    assert "no-store" in done.headers.get("Cache-Control", "") or "max-age=0" in done.headers.get(
        "Cache-Control", ""
    )
    bad = sales.post(reverse("support:demo_start"), {"template": "nope"})
    assert bad.status_code == 400


def test_signing_out_ends_view_as_in_the_audit_log(team: Any, shop: Environment) -> None:
    supporter = staff("Support")
    client = client_for(supporter)
    client.post(reverse("support:view_as_start", args=[team.org.pk]))
    assert client.post(reverse("account_logout")).status_code == 302
    stop = AuditEvent.objects.get(action="support.view_as.stop", actor=supporter)
    assert stop.data["ended_by"] == "sign-out"


def test_the_nav_links_the_demo_page_for_sales_only(team: Any) -> None:
    assert "Start a demo" in client_for(staff("Sales")).get(reverse("portal:dashboard")).content.decode()
    assert (
        "Start a demo" not in client_for(staff("Support")).get(reverse("portal:dashboard")).content.decode()
    )
