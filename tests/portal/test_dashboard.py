"""The dashboard (empty states, invitations, projects with live status and attention, its
query count) and the account security page."""

from __future__ import annotations

import sys
import types
from datetime import timedelta
from typing import Any

import pytest
from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from allauth.usersessions.models import UserSession
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from projects import services
from projects.access import SESSION_KEY
from projects.models import Environment, EnvironmentStatus, Membership, Project, Role, User
from stacks.models import (
    ComponentVersion,
    Operation,
    OperationKind,
    OperationStatus,
    Placement,
    StackComponent,
    VersionStatus,
)
from stacks.runtime import lifecycle
from tests.conftest import Team, client_for, place
from tests.factories import InvitationFactory

pytestmark = pytest.mark.django_db

DASHBOARD = reverse("portal:dashboard")
# Pinned: the session and allauth's session tracking (7, savepoints included), membership,
# projects count, catalog, projects page, environments, components, active operations,
# attention count, invitations (2), the menu's memberships. Quotas come from the cache after
# the first request. The same for 1 or 10,000 projects.
DASHBOARD_QUERIES = 18


def test_anonymous_user_is_redirected_to_login() -> None:
    response = Client().get(DASHBOARD)

    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={DASHBOARD}"


def test_dashboard_only_answers_get(user: User) -> None:
    assert client_for(user).post(DASHBOARD).status_code == 405


def test_user_without_an_organization_is_offered_to_create_one(user: User) -> None:
    response = client_for(user).get(DASHBOARD)

    assert response.status_code == 200
    page = response.content.decode()
    assert "You are not in any organization" in page
    assert reverse("projects:organization_create") in page


def test_new_organization_shows_the_empty_state(user: User) -> None:
    org = services.create_organization(name="Fresh Start", owner=user)

    response = client_for(user).get(DASHBOARD)

    assert response.status_code == 200
    page = response.content.decode()
    assert "Fresh Start" in page
    assert "You are owner" in page
    assert "No projects yet" in page
    assert reverse("projects:member_invite", kwargs={"org_id": org.pk}) in page
    assert "You are invited" not in page


def test_pending_invitation_to_a_verified_address_has_an_accept_button(team: Team, user: User) -> None:
    invitation = InvitationFactory(
        organization=team.org, email=user.email, role=Role.ADMIN, invited_by=team.owner
    )
    client = client_for(user)

    page = client.get(DASHBOARD).content.decode()

    accept_url = reverse("projects:invitation", kwargs={"token": services.invitation_token(invitation)})
    assert "You are invited to join <strong>Acme Hosting Co</strong> as admin." in page
    assert f'action="{accept_url}"' in page
    assert "Accept invitation" in page

    response = client.post(accept_url)
    assert response.status_code == 302
    assert Membership.objects.get(organization=team.org, user=user).role == Role.ADMIN


def test_invitations_the_user_cannot_accept_are_not_shown(team: Team, user: User) -> None:
    EmailAddress.objects.create(user=user, email="second@example.test", verified=False)
    InvitationFactory(organization=team.org, email="second@example.test")  # unverified address
    InvitationFactory(organization=team.org, email=user.email, revoked_at=timezone.now())
    InvitationFactory(
        organization=team.org, email=user.email, expires_at=timezone.now() - timedelta(minutes=1)
    )
    InvitationFactory(organization=team.outsider_org, email="viewer@acme.test")  # someone else's address

    page = client_for(user).get(DASHBOARD).content.decode()

    assert "You are invited" not in page


def test_invitation_to_an_organization_one_already_belongs_to_is_not_shown(team: Team) -> None:
    InvitationFactory(organization=team.org, email="viewer@acme.test")

    page = client_for(team.viewer).get(DASHBOARD).content.decode()

    assert "You are invited" not in page
    assert "Acme Hosting Co" in page


def test_a_session_pointing_at_another_organization_shows_ones_own(team: Team) -> None:
    client = client_for(team.viewer)
    session = client.session
    session[SESSION_KEY] = team.outsider_org.pk
    session.save()

    page = client.get(DASHBOARD).content.decode()

    assert "Other Corp" not in page
    assert "Acme Hosting Co" in page


# --- projects, live status and attention --------------------------------------------------------
def make_project(team: Team, name: str, template: str = "static-site") -> Environment:
    return lifecycle.create_project(
        organization=team.org, actor=team.owner, name=name, region="eu-central", template=template
    )


def finish(environment: Environment, status: str = OperationStatus.SUCCEEDED) -> Operation:
    """The environment's queued operation as a worker would leave it."""
    operation = environment.operations.get()
    Operation.objects.filter(pk=operation.pk).update(status=status, finished_at=timezone.now())
    Environment.objects.filter(pk=environment.pk).update(
        status=EnvironmentStatus.RUNNING if status == OperationStatus.SUCCEEDED else EnvironmentStatus.FAILED,
    )
    place(environment, "local-1")
    return operation


def clone_projects(team: Team, template: Environment, count: int) -> None:
    """``count`` more projects like ``template``'s (bulk rows: fast, no services)."""
    projects = Project.objects.bulk_create(
        Project(organization=team.org, name=f"Bulk {i:03d}", region=template.project.region)
        for i in range(count)
    )
    environments = Environment.objects.bulk_create(
        Environment(
            project=p,
            kernel=template.kernel,
            template=template.template,
            framework=template.framework,
            status=EnvironmentStatus.RUNNING,
            backend_state={"host": "local-1"},
        )
        for p in projects
    )
    Placement.objects.bulk_create(Placement(environment=e, hosts=["local-1"]) for e in environments)
    rows = list(template.components.all())
    StackComponent.objects.bulk_create(
        StackComponent(
            environment=e,
            name=r.name,
            component=r.component,
            version=r.version,
            size=r.size,
            position=r.position,
        )
        for e in environments
        for r in rows
    )
    Operation.objects.bulk_create(
        Operation(environment=e, kind=OperationKind.DEPLOY, status=OperationStatus.SUCCEEDED)
        for e in environments
    )


@pytest.fixture
def shop(team: Team, offered_catalog: None) -> Environment:
    environment = make_project(team, "Shop")
    finish(environment)
    environment.refresh_from_db()
    return environment


def test_projects_are_listed_with_their_environments(team: Team, shop: Environment) -> None:
    page = client_for(team.viewer).get(DASHBOARD).content.decode()

    assert reverse("stacks:project", kwargs={"project_id": shop.project_id}) in page
    assert reverse("stacks:environment", kwargs={"environment_id": shop.pk}) in page
    assert ">Shop</a>" in page
    assert "production" in page
    assert '<span class="badge text-bg-success">running</span>' in page
    assert shop.project.region.name in page
    assert "Static site" in page
    assert f'href="{shop.public_url}"' in page
    assert "local-1" not in page  # host names are for staff (tests/portal/test_rough_edges.py)
    assert "No projects yet" not in page
    assert "Nothing needs attention." in page
    assert "hx-trigger" not in page  # nothing runs: no polling


def test_other_organizations_projects_are_not_shown(team: Team, shop: Environment) -> None:
    page = client_for(team.outsider).get(DASHBOARD).content.decode()

    assert "Shop" not in page
    assert "No projects yet" in page


def test_an_active_operation_is_linked_and_the_status_polls(team: Team, offered_catalog: None) -> None:
    environment = make_project(team, "Busy")  # its deploy is queued
    operation = environment.operations.get()

    page = client_for(team.developer).get(DASHBOARD).content.decode()

    assert reverse("stacks:operation", kwargs={"operation_id": operation.pk}) in page
    assert 'hx-trigger="every 4s"' in page
    assert f'hx-get="{DASHBOARD}?page=1"' in page


def test_the_htmx_partial_is_the_status_only_and_stops_polling_when_done(
    team: Team, offered_catalog: None
) -> None:
    environment = make_project(team, "Busy")
    client = client_for(team.developer)

    busy = client.get(DASHBOARD, headers={"HX-Request": "true"}).content.decode()
    finish(environment)
    done = client.get(DASHBOARD, headers={"HX-Request": "true"}).content.decode()

    assert busy.lstrip().startswith('<div id="dashboard-status"')
    assert "<html" not in busy and "You are invited" not in busy
    assert 'hx-trigger="every 4s"' in busy
    assert "hx-trigger" not in done
    assert '<span class="badge text-bg-success">running</span>' in done


def test_a_failed_last_operation_needs_attention(team: Team, offered_catalog: None) -> None:
    environment = make_project(team, "Broken")
    finish(environment, OperationStatus.FAILED)

    page = client_for(team.viewer).get(DASHBOARD).content.decode()

    assert "The last deploy failed." in page
    assert "1 environment needs attention" in page


def test_an_older_version_shows_the_upgrade_and_its_end_of_life(team: Team, shop: Environment) -> None:
    old = ComponentVersion.objects.get(component__code="nginx", version="1.22")
    StackComponent.objects.filter(environment=shop, name="web").update(version=old)
    ComponentVersion.objects.filter(pk=old.pk).update(eol=timezone.now().date() + timedelta(days=30))

    page = client_for(team.viewer).get(DASHBOARD).content.decode()

    assert "nginx 1.26 is available (runs 1.22)." in page
    soon = (timezone.now().date() + timedelta(days=30)).isoformat()
    assert f"nginx 1.22 reaches end of life on {soon}." in page
    assert "1 environment needs attention" in page


def test_attention_offers_only_what_the_environment_page_offers(team: Team, shop: Environment) -> None:
    """One rule (``stacks.catalog.offers.is_upgrade_target``): a newer version that is not
    current (verified, not yet offered) is no upgrade on the dashboard either."""
    from portal.dashboard import Catalog
    from stacks.catalog import offers

    old = ComponentVersion.objects.get(component__code="nginx", version="1.22")
    StackComponent.objects.filter(environment=shop, name="web").update(version=old)
    ComponentVersion.objects.filter(component__code="nginx", version="1.26").update(
        status=VersionStatus.VERIFIED
    )

    page = client_for(team.viewer).get(DASHBOARD).content.decode()

    assert "is available" not in page and "Nothing needs attention." in page
    components = list(shop.components.select_related("component", "version"))
    catalog = Catalog.load()
    assert {sc.name: catalog.upgrades_for(sc.version_id) for sc in components} == offers.upgrades_for(
        components
    )
    ComponentVersion.objects.filter(component__code="nginx", version="1.26").update(
        status=VersionStatus.CURRENT
    )
    assert "nginx 1.26 is available (runs 1.22)." in client_for(team.viewer).get(DASHBOARD).content.decode()


def test_an_end_of_life_version_needs_attention(team: Team, shop: Environment) -> None:
    ComponentVersion.objects.filter(pk=shop.components.get().version_id).update(
        status=VersionStatus.END_OF_LIFE
    )

    page = client_for(team.viewer).get(DASHBOARD).content.decode()

    assert "nginx 1.26 has reached end of life." in page
    assert "1 environment needs attention" in page


def test_quotas_nearly_used_are_shown(team: Team, shop: Environment, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("billing.quotas")
    item = types.SimpleNamespace(label="Memory", used="900 MB", limit="1024 MB", nearly_used=True)
    fine = types.SimpleNamespace(label="Projects", used=1, limit=10, nearly_used=False)
    fake.usage_summary = lambda organization: [item, fine] if organization == team.org else []  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "billing.quotas", fake)
    import billing

    monkeypatch.setattr(billing, "quotas", fake, raising=False)

    page = client_for(team.viewer).get(DASHBOARD).content.decode()

    assert "Quota nearly used" in page
    assert "Memory: 900 MB of 1024 MB" in page
    assert "Projects: 1 of 10" not in page


def test_attention_is_counted_for_the_whole_organization(team: Team, shop: Environment) -> None:
    clone_projects(team, shop, 25)
    Operation.objects.filter(environment__project__name="Bulk 024").update(status=OperationStatus.FAILED)

    page = client_for(team.viewer).get(DASHBOARD).content.decode()

    assert "26 projects." in page
    assert "Bulk 024" not in page  # on page 2
    assert "1 environment needs attention" in page
    second = client_for(team.viewer).get(DASHBOARD, {"page": 2}).content.decode()
    assert "Bulk 024" in second and "The last deploy failed." in second
    assert "Page 2 of 2" in second


def test_names_are_escaped(team: Team, offered_catalog: None) -> None:
    make_project(team, "<b>bold</b> & co")

    page = client_for(team.viewer).get(DASHBOARD).content.decode()

    assert "<b>bold</b>" not in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in page


def test_the_number_of_queries_does_not_grow_with_the_projects(team: Team, shop: Environment) -> None:
    client = client_for(team.viewer)
    client.get(DASHBOARD)  # sessions and caches settle
    with CaptureQueriesContext(connection) as one:
        client.get(DASHBOARD)
    clone_projects(team, shop, 29)
    with CaptureQueriesContext(connection) as thirty:
        page = client.get(DASHBOARD).content.decode()

    assert "Bulk 018" in page  # a full page of 20
    assert len(thirty) == len(one), [q["sql"][:120] for q in thirty.captured_queries]
    assert len(one) == DASHBOARD_QUERIES, [q["sql"][:120] for q in one.captured_queries]


def test_the_dashboard_makes_no_backend_or_docker_calls(
    team: Team, shop: Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    import docker

    from stacks.backends import docker as docker_backend

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the dashboard called Docker")

    monkeypatch.setattr(docker, "DockerClient", refuse)
    monkeypatch.setattr(docker, "from_env", refuse)
    for name in ("apply", "observe", "logs", "samples", "stacks", "upstreams"):
        monkeypatch.setattr(docker_backend.DockerBackend, name, refuse)
    monkeypatch.setattr("stacks.runtime.operations.backend_for", refuse)
    make_project(team, "Busy")

    client = client_for(team.owner)
    assert client.get(DASHBOARD).status_code == 200
    assert client.get(DASHBOARD, headers={"HX-Request": "true"}).status_code == 200
    assert client.get(reverse("stacks:project", kwargs={"project_id": shop.project_id})).status_code == 200
    assert client.get(reverse("stacks:environment", kwargs={"environment_id": shop.pk})).status_code == 200


# --- account security -----------------------------------------------------------------------------
SECURITY = reverse("portal:security")


def test_security_page_needs_sign_in_and_get() -> None:
    assert Client().get(SECURITY).status_code == 302


def test_security_page_only_answers_get(user: User) -> None:
    assert client_for(user).post(SECURITY).status_code == 405


def test_security_page_shows_mfa_off_and_links_to_allauth(user: User) -> None:
    page = client_for(user).get(SECURITY).content.decode()

    assert '<span class="badge text-bg-warning">off</span>' in page
    for name in ("mfa_activate_totp", "mfa_add_webauthn", "mfa_index", "usersessions_list"):
        assert reverse(name) in page


def test_security_page_shows_authenticators_sessions_and_sign_ins(user: User, password: str) -> None:
    Authenticator.objects.create(user=user, type=Authenticator.Type.TOTP, data={"secret": "x"})
    Authenticator.objects.create(
        user=user, type=Authenticator.Type.WEBAUTHN, data={"name": "<i>Yubi</i>", "credential": {}}
    )
    Authenticator.objects.create(user=user, type=Authenticator.Type.RECOVERY_CODES, data={"seed": "x"})
    services.record_audit_event(action="account.login_failed", actor_email=user.email.upper())
    services.record_audit_event(action="account.login_failed", actor_email="someone@else.test")
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    # Another browser's session (the middleware records this client's own on its request).
    UserSession.objects.create(
        user=user, session_key="other-browser", ip="192.0.2.7", user_agent="<b>Agent</b>"
    )
    services.record_audit_event(action="account.login", actor=user)

    page = client.get(SECURITY).content.decode()

    assert '<span class="badge text-bg-success">on</span>' in page
    assert reverse("mfa_deactivate_totp") in page
    assert "&lt;i&gt;Yubi&lt;/i&gt;" in page and "<i>Yubi</i>" not in page
    assert reverse("mfa_view_recovery_codes") in page
    assert "192.0.2.7" in page and "&lt;b&gt;Agent&lt;/b&gt;" in page
    assert page.count("this one") == 1
    assert page.count('text-bg-danger">failed attempt') == 1
    assert "signed in" in page


def test_the_user_menu_links_to_the_security_page(user: User) -> None:
    assert f'href="{SECURITY}"' in client_for(user).get(DASHBOARD).content.decode()


def test_a_stateful_upgrade_is_offered_only_with_a_tested_migration(
    team: Team, offered_catalog: None
) -> None:
    environment = make_project(team, "Data", template="python-web")
    finish(environment)
    old = ComponentVersion.objects.get(component__code="postgresql", version="15")
    StackComponent.objects.filter(environment=environment, name="db").update(version=old)
    client = client_for(team.viewer)

    with_path = client.get(DASHBOARD).content.decode()
    ComponentVersion.objects.filter(component__code="postgresql", version="17").update(migration={})
    without = client.get(DASHBOARD).content.decode()

    assert "PostgreSQL 17 is available (runs 15)." in with_path
    assert "PostgreSQL 17 is available" not in without
    assert "Nothing needs attention." in without


def test_a_large_organizations_count_is_held_briefly(
    team: Team, shop: Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("portal.dashboard.LARGE_ORGANIZATION", 1)
    client = client_for(team.viewer)

    first = client.get(DASHBOARD).content.decode()
    Operation.objects.filter(environment=shop).update(status=OperationStatus.FAILED)
    second = client.get(DASHBOARD).content.decode()

    assert "Nothing needs attention." in first
    assert "Nothing needs attention." in second  # the count is cached ...
    assert "The last deploy failed." in second  # ... the rows are live
