"""Staff accounts and what a stolen password or a hostile catalog edit gets: staff need a
second factor before the admin, the support pages and "view as customer"; view-as, support
actions (suspend, resume, drain, move) and secret changes ask for a recent re-authentication
(allauth's page, then the same request again); each staff group has only what its job needs;
and whatever the catalog rows say, capabilities, users, mounts and engine addresses outside a
fixed allowlist never reach a container."""

from __future__ import annotations

import time
from typing import Any

import pytest
from allauth.mfa.models import Authenticator
from django.contrib.auth.models import Group
from django.urls import reverse

from projects.access import VIEW_AS_SESSION_KEY
from projects.models import AuditEvent, Environment, EnvironmentStatus, User
from stacks.backends.base import BackendError, HostRecord
from stacks.backends.memory import MemoryBackend
from stacks.models import Component, DockerHost, Operation, OperationStatus, Region, Variable
from stacks.runtime import lifecycle
from stacks.runtime.spec import SpecError, build_spec, check_component_allowlist
from tests.conftest import Team, add_memory_host, client_for, reauthenticate
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db
REAUTH = reverse("account_reauthenticate")


def staff(*groups: str, **fields: Any) -> User:
    user = UserFactory(is_staff=True, **fields)
    for name in groups:
        user.groups.add(Group.objects.get(name=name))
    return User.objects.get(pk=user.pk)


@pytest.fixture
def shop(team: Team, offered_catalog: None) -> Environment:
    env = lifecycle.create_project(
        organization=team.org, actor=team.developer, name="Shop", region="eu-central", template="static-site"
    )
    op = env.operations.get()
    Operation.objects.filter(pk=op.pk).update(status=OperationStatus.SUCCEEDED)
    Environment.objects.filter(pk=env.pk).update(current_release=op.release, status=EnvironmentStatus.RUNNING)
    env.refresh_from_db()
    return env


def _action(client: Any, model: str, action: str, pk: int, **data: str) -> Any:
    return client.post(
        reverse(f"admin:{model}_changelist"), {"action": action, "_selected_action": [pk], **data}
    )


def _asks_to_reauthenticate(response: Any, path: str) -> bool:
    return response.status_code == 302 and response["Location"] == f"{REAUTH}?next={path.replace('/', '%2F')}"


# --- a second factor ----------------------------------------------------------------------------
def test_staff_without_a_second_factor_cannot_open_the_admin_or_support_pages(team: Team) -> None:
    user = staff("Support", "Sales", is_superuser=True)
    client = client_for(user, second_factor=False)
    security = reverse("portal:security")
    for url in (reverse("admin:index"), reverse("admin:projects_organization_changelist")):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"] == security, url
    assert client.get(reverse("support:demo_start"))["Location"] == security
    start = client.post(reverse("support:view_as_start", args=[team.org.pk]))
    assert start["Location"] == security
    assert not AuditEvent.objects.filter(action="support.view_as.start").exists()
    page = client.get(security).content.decode()
    assert "Staff accounts need two-factor authentication" in page
    # Recovery codes alone are no second factor; an authenticator app is.
    Authenticator.objects.create(user=user, type=Authenticator.Type.RECOVERY_CODES, data={})
    assert client.get(reverse("admin:index"))["Location"] == security
    Authenticator.objects.create(user=user, type=Authenticator.Type.TOTP, data={"secret": "x"})
    assert client.get(reverse("admin:index")).status_code == 200
    assert client.get(reverse("support:demo_start")).status_code == 200


def test_a_view_as_session_ends_without_a_second_factor(team: Team) -> None:
    user = staff("Support")
    client = client_for(user, second_factor=False)
    session = client.session
    session[VIEW_AS_SESSION_KEY] = {"org": team.org.pk, "name": team.org.name}
    session.save()
    response = client.get(reverse("projects:organization", args=[team.org.pk]))
    assert response["Location"] == reverse("portal:security")
    assert VIEW_AS_SESSION_KEY not in client.session
    assert client.get(reverse("projects:organization", args=[team.org.pk])).status_code == 404


def test_customers_and_the_setting_off_are_not_asked(team: Team, settings: Any) -> None:
    assert client_for(team.owner, second_factor=False).get(reverse("portal:dashboard")).status_code == 200
    settings.STACKPORT_STAFF_MFA_REQUIRED = False
    client = client_for(staff(is_superuser=True), second_factor=False)
    assert client.get(reverse("admin:index")).status_code == 200


# --- recent re-authentication -------------------------------------------------------------------
def test_view_as_with_a_stale_login_asks_to_reauthenticate_then_starts(team: Team) -> None:
    supporter = staff("Support")
    client = client_for(supporter, reauthenticated=False)  # signed in, with MFA, not re-authenticated
    path = reverse("support:view_as_start", args=[team.org.pk])
    assert _asks_to_reauthenticate(client.post(path), path)
    assert VIEW_AS_SESSION_KEY not in client.session
    assert not AuditEvent.objects.filter(action="support.view_as.start").exists()
    # allauth's page: the password again, then the view-as request is replayed.
    done = client.post(f"{REAUTH}?next={path}", {"password": PASSWORD})
    assert done.status_code == 302 and done["Location"] == reverse("portal:dashboard")
    assert client.session[VIEW_AS_SESSION_KEY]["org"] == team.org.pk
    assert AuditEvent.objects.filter(action="support.view_as.start", actor=supporter).exists()


def test_a_reauthentication_older_than_the_timeout_is_stale(team: Team, settings: Any) -> None:
    settings.ACCOUNT_REAUTHENTICATION_TIMEOUT = 300
    supporter = staff("Support")
    client = client_for(supporter, reauthenticated=False)
    reauthenticate(client, supporter, at=time.time() - 301)
    path = reverse("support:view_as_start", args=[team.org.pk])
    assert _asks_to_reauthenticate(client.post(path), path)


def test_support_actions_ask_to_reauthenticate_then_run(team: Team, shop: Environment) -> None:
    supporter = staff("Support")
    client = client_for(supporter, reauthenticated=False)
    host = DockerHost.objects.create(
        name="h1", url="unix:///x.sock", region=shop.project.region, kernel=shop.kernel
    )
    changelist = reverse("admin:stacks_dockerhost_changelist")
    assert _asks_to_reauthenticate(_action(client, "stacks_dockerhost", "drain", host.pk), changelist)
    host.refresh_from_db()
    assert host.state == DockerHost.State.ACTIVE
    # The action's POST is kept and replayed after the password.
    client.post(f"{REAUTH}?next={changelist}", {"password": PASSWORD})
    host.refresh_from_db()
    assert host.state == DockerHost.State.DRAINING
    assert AuditEvent.objects.filter(action="support.host.drain", actor=supporter).exists()
    # Suspend, resume and move are gated the same way (a fresh client: not re-authenticated).
    stale = client_for(supporter, reauthenticated=False)
    projects = reverse("admin:projects_project_changelist")
    response = _action(stale, "projects_project", "suspend_projects", shop.project.pk, apply="1", reason="x")
    assert _asks_to_reauthenticate(response, projects)
    assert _asks_to_reauthenticate(
        _action(stale, "projects_project", "resume_projects", shop.project.pk), projects
    )
    environments = reverse("admin:projects_environment_changelist")
    response = _action(stale, "projects_environment", "move_to_host", shop.pk, apply="1", host=str(host.pk))
    assert _asks_to_reauthenticate(response, environments)
    shop.project.refresh_from_db()
    assert shop.project.suspended_at is None
    # Redeploy and retry change nothing a customer could lose: no re-authentication.
    assert _action(stale, "projects_environment", "redeploy", shop.pk)["Location"] == environments


def test_making_someone_staff_in_admin_asks_to_reauthenticate(team: Team) -> None:
    client = client_for(staff(is_superuser=True), reauthenticated=False)
    path = reverse("admin:projects_user_change", args=[team.outsider.pk])
    assert client.get(path).status_code == 200
    form = {"username": team.outsider.username, "email": team.outsider.email, "is_staff": "on"}
    assert _asks_to_reauthenticate(client.post(path, form), path)
    team.outsider.refresh_from_db()
    assert not team.outsider.is_staff


def test_secret_changes_on_the_pages_ask_to_reauthenticate(team: Team, shop: Environment) -> None:
    client = client_for(team.developer, reauthenticated=False)
    path = reverse("stacks:variable_set", args=[shop.pk])
    assert client.post(path, {"name": "MODE", "value": "plain"}).status_code == 302
    assert Variable.objects.get(name="MODE").value == "plain"  # plain values: no question asked
    secret = {"name": "API_KEY", "value": "s3cr3t", "secret": "on"}
    assert _asks_to_reauthenticate(client.post(path, secret), path)
    assert not Variable.objects.filter(name="API_KEY").exists()
    client.post(f"{REAUTH}?next={path}", {"password": PASSWORD})
    assert Variable.objects.get(name="API_KEY").is_secret
    # Overwriting or deleting a secret asks too (once the re-authentication is stale).
    stale = client_for(team.developer, reauthenticated=False)
    assert _asks_to_reauthenticate(stale.post(path, {"name": "API_KEY", "value": "plain now"}), path)
    delete = reverse("stacks:variable_delete", args=[shop.pk])
    assert _asks_to_reauthenticate(stale.post(delete, {"name": "API_KEY"}), delete)
    assert Variable.objects.get(name="API_KEY").is_secret


# --- groups and the catalog ---------------------------------------------------------------------
def test_each_group_has_only_what_its_job_needs(team: Team) -> None:
    catalog = staff("Catalog managers")
    assert catalog.has_perm("stacks.change_component") and catalog.has_perm("stacks.view_dockerhost")
    assert not catalog.has_perm("stacks.change_dockerhost") and not catalog.has_perm("stacks.add_dockerhost")
    billing = staff("Billing")
    assert billing.has_perm("billing.add_adjustment") and billing.has_perm("billing.change_subscription")
    assert not billing.has_perm("billing.change_usagerecord") and not billing.has_perm("billing.add_invoice")
    assert not staff("Sales").has_perm("projects.operate_stacks")


def test_an_existing_install_loses_the_trimmed_permissions(team: Team) -> None:
    """projects.receivers only ever adds; migration 0006 takes the trimmed ones away."""
    import importlib

    from django.apps import apps
    from django.contrib.auth.models import Permission

    group = Group.objects.get(name="Catalog managers")
    group.permissions.add(*Permission.objects.filter(codename__in=["add_dockerhost", "change_dockerhost"]))
    importlib.import_module("projects.migrations.0006_trim_staff_groups").forwards(apps, None)
    assert not group.permissions.filter(codename__endswith="_dockerhost").exclude(codename="view_dockerhost")


@pytest.mark.django_db(transaction=True)
def test_the_staff_groups_survive_a_flush() -> None:
    """Transactional tests (and ``manage.py flush``) empty every table and send post_migrate
    without the migration state; the groups and their permissions must come back."""
    from django.core.management import call_command

    call_command("flush", interactive=False, verbosity=0)
    assert set(Group.objects.values_list("name", flat=True)) >= {
        "Support",
        "Catalog managers",
        "Billing",
        "Sales",
    }
    assert Group.objects.get(name="Sales").permissions.filter(codename="start_demo").exists()
    assert Group.objects.get(name="Support").permissions.filter(codename="view_as_customer").exists()


def test_catalog_managers_cannot_edit_what_a_container_may_do(team: Team, offered_catalog: None) -> None:
    client = client_for(staff("Catalog managers"))
    nginx = Component.objects.get(code="nginx")
    page = client.get(reverse("admin:stacks_component_change", args=[nginx.pk])).content.decode()
    assert 'name="capabilities"' not in page and 'name="user"' not in page and 'name="volumes"' not in page
    assert 'name="description"' in page
    assert client.get(reverse("admin:stacks_dockerhost_add")).status_code == 403


def test_a_host_address_outside_the_allowlist_is_refused(team: Team, offered_catalog: None) -> None:
    client = client_for(staff(is_superuser=True))
    region = Region.objects.get(code="eu-central")
    response = client.post(
        reverse("admin:stacks_dockerhost_add"),
        {"name": "evil", "url": "http://169.254.169.254/", "region": region.pk, "state": "active"},
    )
    assert response.status_code == 200 and "Give the engine as" in response.content.decode()
    assert not DockerHost.objects.filter(name="evil").exists()
    from stacks.backends.docker import DockerBackend

    with pytest.raises(BackendError, match="address Stackport does not use") as refused:
        DockerBackend(hosts=[HostRecord("evil", "http://169.254.169.254:80")])
    assert refused.value.permanent


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("capabilities", ["SYS_ADMIN"], "the capability 'SYS_ADMIN'"),
        ("capabilities", ["cap_sys_ptrace"], "the capability 'cap_sys_ptrace'"),
        ("capabilities", ["ALL"], "the capability 'ALL'"),
        ("user", "root", "the user 'root'"),
        ("user", "0", "the user '0'"),
        ("user", "www-data:0", "the user 'www-data:0'"),
        ("user", "", "no user"),
        ("tmpfs", ["/proc"], "a mount at '/proc'"),
        ("tmpfs", ["/tmp/../etc"], "a mount at '/tmp/../etc'"),
        ("volumes", [{"name": "app", "path": "/etc/nginx"}], "a mount at '/etc/nginx'"),
        ("volumes", [{"name": "data", "path": "/var/run/docker.sock"}], "a mount at '/var/run/docker.sock'"),
        ("volumes", [{"name": "/", "path": "/srv/app"}], "the volume"),
    ],
)
def test_a_hostile_catalog_value_is_refused_at_deploy_time(
    team: Team,
    offered_catalog: None,
    memory_backend: type[MemoryBackend],
    monkeypatch: pytest.MonkeyPatch,
    field: str,
    value: Any,
    message: str,
) -> None:
    from stacks import tasks
    from stacks.runtime import operations

    monkeypatch.setattr(tasks.run_operation_task, "delay", lambda *args: None)
    monkeypatch.setattr(operations, "sync_routes", lambda *args: False)  # no router here
    monkeypatch.setattr(operations, "_check_site", lambda *args: None)
    env = lifecycle.create_project(
        organization=team.org, actor=team.owner, name="Shop", region="eu-central", template="static-site"
    )
    add_memory_host(env)
    Component.objects.filter(code="nginx").update(**{field: value})  # a catalog manager's edit
    with pytest.raises(SpecError, match="which Stackport never gives a container") as refused:
        build_spec(env, env.operations.get().release)
    assert message in refused.value.message and "nginx" in refused.value.message.lower()
    deploy = env.operations.get()
    assert operations.run_operation(deploy.pk) == OperationStatus.FAILED
    deploy.refresh_from_db()
    assert message in deploy.error
    assert memory_backend.calls("apply") == []


def test_the_shipped_catalog_passes_the_allowlist(offered_catalog: None) -> None:
    for component in Component.objects.all():
        check_component_allowlist(component)
