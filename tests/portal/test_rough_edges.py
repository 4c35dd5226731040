"""What a first customer, a prospect and a salesperson meet (issue 16, item 4): the archive of
destroyed projects, demo accounts (expiry shown, no prices, extend and end now), host names
only for staff, the skip link, sign-in messages, styled refusals, prefix stripping and the
page the edge answers for stopped and suspended sites (its routes; the engine test sends
requests through Caddy)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from portal import demos
from projects.models import AuditEvent, Environment, EnvironmentStatus, User
from projects.services import ServiceError
from stacks.models import Domain, Operation, OperationKind, OperationStatus
from stacks.runtime import lifecycle, operations, support
from tests.conftest import Team, client_for, place, verified
from tests.factories import UserFactory
from tests.portal.test_api import api_for
from tests.portal.test_dashboard import finish, make_project
from tests.stacks.test_support import staff

pytestmark = pytest.mark.django_db
DASHBOARD = reverse("portal:dashboard")
ARCHIVE = reverse("portal:archive")
DEMOS = reverse("support:demo_start")


def page(response: Any) -> str:
    return response.content.decode()


def destroyed(environment: Environment, by: User | None) -> None:
    """``environment`` as a finished destroy by ``by`` leaves it."""
    Operation.objects.filter(environment=environment).update(status=OperationStatus.SUCCEEDED)
    Operation.objects.create(
        environment=environment,
        kind=OperationKind.DESTROY,
        status=OperationStatus.SUCCEEDED,
        requested_by=by,
        finished_at=timezone.now(),
    )
    Environment.objects.filter(pk=environment.pk).update(
        status=EnvironmentStatus.DESTROYED, destroyed_at=timezone.now(), desired_running=False
    )


@pytest.fixture
def shop(team: Team, offered_catalog: None) -> Environment:
    env = make_project(team, "Shop")
    finish(env)
    place(env, "docker-host-7")
    env.refresh_from_db()
    return env


# --- the archive ----------------------------------------------------------------------------------
def test_destroyed_projects_leave_the_dashboard_for_the_archive(
    team: Team, shop: Environment, offered_catalog: None
) -> None:
    gone = make_project(team, "Old Blog")
    finish(gone)
    destroyed(gone, team.admin)
    client = client_for(team.viewer)

    dashboard = page(client.get(DASHBOARD))
    assert "Shop" in dashboard and "Old Blog" not in dashboard
    assert "1 project." in dashboard and 'id="archive-link"' in dashboard

    archive = client.get(ARCHIVE)
    assert archive.status_code == 200
    html = page(archive)
    assert f'id="archived-{gone.project_id}"' in html and "Old Blog" in html
    assert team.admin.email in html and "UTC" in html
    assert "Shop" not in html.split('id="archive"')[1]
    # Read-only: nothing to act on.
    assert "<form" not in html.split('id="archive"')[1].split("</table>")[0]
    assert client.post(ARCHIVE).status_code == 405


def test_the_archive_names_support_and_the_demo_cleanup_not_staff(team: Team, offered_catalog: None) -> None:
    by_support = make_project(team, "Abuse")
    finish(by_support)
    destroyed(by_support, staff("Support", email="agent.smith@hoster.test"))
    by_hoster = make_project(team, "Expired")
    finish(by_hoster)
    destroyed(by_hoster, None)

    html = page(client_for(team.owner).get(ARCHIVE))

    assert "agent.smith" not in html
    row = html.split(f'id="archived-{by_support.project_id}"')[1].split("</tr>")[0]
    assert ">support<" in row
    assert "the hoster" in html.split(f'id="archived-{by_hoster.project_id}"')[1].split("</tr>")[0]


def test_a_project_with_one_live_environment_stays_on_the_dashboard(team: Team, shop: Environment) -> None:
    Environment.objects.create(
        project=shop.project,
        name="staging",
        kernel=shop.kernel,
        status=EnvironmentStatus.DESTROYED,
        destroyed_at=timezone.now(),
    )
    client = client_for(team.owner)
    assert "Shop" in page(client.get(DASHBOARD))
    assert f'id="archived-{shop.project_id}"' not in page(client.get(ARCHIVE))


def test_the_archive_needs_an_organization(user: User) -> None:
    assert client_for(user).get(ARCHIVE).status_code == 404
    assert Client().get(ARCHIVE).status_code == 302


# --- host names -----------------------------------------------------------------------------------
def test_customers_see_the_region_and_never_host_names(team: Team, shop: Environment) -> None:
    for url in (DASHBOARD, reverse("stacks:environment", args=[shop.pk])):
        html = page(client_for(team.owner).get(url))
        assert "docker-host-7" not in html, url
        assert shop.project.region.name in html
    assert 'id="host-count"' not in html


def test_staff_viewing_as_the_customer_still_see_hosts(team: Team, shop: Environment) -> None:
    client = client_for(staff("Support"))
    client.post(reverse("support:view_as_start", args=[team.org.pk]))
    assert "docker-host-7" in page(client.get(DASHBOARD))
    assert 'id="host-count"' in page(client.get(reverse("stacks:environment", args=[shop.pk])))


def test_the_api_names_no_host(team: Team, shop: Environment) -> None:
    body = api_for(team.owner).get(f"/environments/{shop.pk}").content.decode()
    assert "docker-host-7" not in body


# --- demos ----------------------------------------------------------------------------------------
def sales_user(email: str = "sales@hoster.test") -> User:
    user = UserFactory(is_staff=True, email=email)
    user.groups.add(Group.objects.get(name="Sales"))
    return User.objects.get(pk=user.pk)


@pytest.fixture
def demo(offered_catalog: None, settings: Any) -> demos.DemoLogin:
    settings.STACKPORT_DEMO_LIFETIME_HOURS = 4
    login = demos.start_demo(actor=sales_user(), template="static-site", prospect="Globex")
    finish(login.environment)
    return login


def prospect(demo: demos.DemoLogin) -> Client:
    return client_for(User.objects.get(email=demo.email))


def test_the_prospect_sees_the_demos_end_and_no_prices(demo: demos.DemoLogin) -> None:
    client = prospect(demo)
    html = page(client.get(DASHBOARD))
    assert 'id="demo-banner"' in html and "This is a demo" in html
    assert f"{demo.organization.demo_expires_at:%Y-%m-%d %H:%M} UTC" in html
    assert "hours" in html.split('id="demo-banner"')[1].split("</div>")[0]
    assert reverse("billing:overview", args=[demo.organization.pk]) not in html  # no Billing link
    for url in (reverse("stacks:environment", args=[demo.environment.pk]), reverse("stacks:project_new")):
        assert 'id="demo-banner"' in page(client.get(url)), url
    wizard = page(client.post(reverse("stacks:project_new"), {"template": "static-site", "step": "preview"}))
    assert 'id="price"' not in wizard and "update the price" not in wizard
    billing = client.get(reverse("billing:overview", args=[demo.organization.pk]))
    assert billing.status_code == 200 and 'id="billing-demo"' in page(billing)
    assert "a month" not in page(billing) and "Change plan" not in page(billing)
    plans = client.get(reverse("billing:change_plan", args=[demo.organization.pk]))
    assert 'id="billing-demo"' in page(plans)
    refused = client.post(reverse("billing:change_plan", args=[demo.organization.pk]), {"plan": "team"})
    assert refused.status_code == 403


def test_a_demo_cannot_change_its_plan_through_the_service(demo: demos.DemoLogin) -> None:
    from billing import services as billing_services

    with pytest.raises(ServiceError) as caught:
        billing_services.change_plan(
            organization=demo.organization, actor=User.objects.get(email=demo.email), plan="team"
        )
    assert caught.value.status == 403


def test_customers_keep_their_prices(team: Team, shop: Environment) -> None:
    html = page(client_for(team.owner).get(DASHBOARD))
    assert 'id="demo-banner"' not in html
    assert reverse("billing:overview", args=[team.org.pk]) in html


def test_the_demos_page_speaks_in_hours_and_lists_running_demos(demo: demos.DemoLogin) -> None:
    client = client_for(sales_user("other.sales@hoster.test"))
    html = page(client.get(DEMOS))
    assert "after 4 hours" in html and "4:00:00" not in html
    row = html.split(f'id="demo-{demo.organization.pk}"')[1].split("</tr>")[0]
    assert "Demo Globex" in row and "sales@hoster.test" in row
    assert "in 3 hours" in row or "in 4 hours" in row
    assert reverse("support:demo_extend", args=[demo.organization.pk]) in row
    assert reverse("support:demo_end", args=[demo.organization.pk]) in row
    assert "1 day" in row and "3 days" in row  # the extension choices


def test_extend_moves_the_end_and_is_audited(demo: demos.DemoLogin) -> None:
    sales = sales_user("other.sales@hoster.test")
    before = demo.organization.demo_expires_at
    response = client_for(sales).post(
        reverse("support:demo_extend", args=[demo.organization.pk]), {"hours": "24"}
    )
    assert response.status_code == 302
    demo.organization.refresh_from_db()
    assert demo.organization.demo_expires_at == before + timedelta(hours=24)
    assert demo.organization.demo_warned_at is None
    assert AuditEvent.objects.filter(
        action="demo.extend", actor=sales, organization=demo.organization
    ).exists()
    client_for(sales).post(reverse("support:demo_extend", args=[demo.organization.pk]), {"hours": "1000"})
    demo.organization.refresh_from_db()
    assert demo.organization.demo_expires_at == before + timedelta(hours=24)  # refused, unchanged


def test_end_now_asks_first_then_destroys_and_is_audited(demo: demos.DemoLogin) -> None:
    sales = sales_user("other.sales@hoster.test")
    client = client_for(sales)
    url = reverse("support:demo_end", args=[demo.organization.pk])

    confirm = client.post(url)
    assert confirm.status_code == 200 and 'id="confirm"' in page(confirm)
    assert not Operation.objects.filter(environment=demo.environment, kind=OperationKind.DESTROY).exists()

    done = client.post(url, {"confirmed": "yes"})
    assert done.status_code == 302
    demo.organization.refresh_from_db()
    assert demo.organization.demo_expires_at <= timezone.now()
    assert Operation.objects.filter(
        environment=demo.environment, kind=OperationKind.DESTROY, status=OperationStatus.QUEUED
    ).exists()
    assert AuditEvent.objects.filter(action="demo.end", actor=sales, organization=demo.organization).exists()
    assert f'id="demo-{demo.organization.pk}"' not in page(client.get(DEMOS))
    with pytest.raises(ServiceError, match="ended already"):
        demos.end_demo_now(organization=demo.organization, actor=sales)


def test_only_sales_manage_demos(team: Team, demo: demos.DemoLogin) -> None:
    url = reverse("support:demo_extend", args=[demo.organization.pk])
    assert client_for(team.owner).post(url, {"hours": "4"}).status_code == 404
    assert client_for(staff("Billing")).post(url, {"hours": "4"}).status_code == 403
    assert client_for(sales_user("s2@hoster.test")).get(url).status_code == 405
    not_a_demo = reverse("support:demo_end", args=[team.org.pk])
    assert client_for(sales_user("s3@hoster.test")).post(not_a_demo).status_code == 404
    with pytest.raises(ServiceError):
        demos.extend_demo(organization=demo.organization, actor=team.owner, hours=4)


def test_duration_text_reads_like_people_talk() -> None:
    assert demos.duration_text(timedelta(hours=4)) == "4 hours"
    assert demos.duration_text(timedelta(days=1, hours=6)) == "1 day, 6 hours"
    assert demos.duration_text(timedelta(days=14)) == "2 weeks"


# --- the shell ------------------------------------------------------------------------------------
def test_every_page_has_a_skip_link_to_the_main_content(team: Team) -> None:
    html = page(client_for(team.owner).get(DASHBOARD))
    assert html.index('id="skip-link"') < html.index("<nav")
    assert 'href="#main"' in html and '<main class="container py-4" id="main"' in html


def test_the_sign_in_message_names_the_address_not_the_user_name(password: str) -> None:
    user = UserFactory(username="internal-7f3a", email="ana@example.test")
    user.set_password(password)
    user.save()
    client = Client()
    response = client.post(reverse("account_login"), {"login": user.email, "password": password}, follow=True)
    html = page(response)
    assert "internal-7f3a" not in html
    assert "Successfully signed in as ana@example.test" in html


def test_viewers_and_view_as_see_no_new_project_and_get_a_styled_403(team: Team, shop: Environment) -> None:
    viewer = client_for(team.viewer)
    assert "New project" not in page(viewer.get(DASHBOARD))
    refused = viewer.get(reverse("stacks:project_new"))
    assert refused.status_code == 403 and 'id="error-403"' in page(refused) and "<nav" in page(refused)

    support_client = client_for(staff("Support"))
    support_client.post(reverse("support:view_as_start", args=[team.org.pk]))
    assert "New project" not in page(support_client.get(DASHBOARD))
    read_only = support_client.post(reverse("projects:organization", args=[team.org.pk]), {"name": "x"})
    assert read_only.status_code == 403 and 'id="error-403"' in page(read_only)
    assert "viewing as a customer" in page(read_only)


def test_a_suspended_project_shows_on_the_dashboard_without_live_buttons(
    team: Team, shop: Environment
) -> None:
    support.suspend_project(project=shop.project, actor=staff("Support"), reason="Unpaid invoice")
    html = page(client_for(team.owner).get(DASHBOARD))
    assert 'id="suspended"' in html and "Unpaid invoice" in html
    assert "Nothing needs attention" not in html
    env_page = page(client_for(team.owner).get(reverse("stacks:environment", args=[shop.pk])))
    assert reverse("stacks:environment_scale", args=[shop.pk]) not in env_page
    assert reverse("stacks:domain_add", args=[shop.pk]) not in env_page


# --- routes: prefix stripping and the page of a site that does not run ------------------------------
def test_the_domain_form_explains_prefix_stripping(team: Team, shop: Environment) -> None:
    html = page(client_for(team.developer).get(reverse("stacks:environment", args=[shop.pk])))
    assert 'name="strip_prefix"' in html and "X-Forwarded-Prefix" in html and "/shop/cart" in html


def test_a_prefix_domain_can_strip_its_prefix(team: Team, shop: Environment) -> None:
    response = client_for(team.developer).post(
        reverse("stacks:domain_add", args=[shop.pk]),
        {"hostname": "site.example.test", "path_prefix": "/static", "strip_prefix": "on"},
    )
    assert response.status_code == 302
    domain = verified(Domain.objects.get(environment=shop))
    assert domain.strip_prefix and domain.path_prefix == "/static"
    html = page(client_for(team.developer).get(reverse("stacks:environment", args=[shop.pk])))
    assert "the app gets the path without /static" in html

    routes, _ = operations.route_changes(shop, ["10.0.0.2:80"], [])
    (prefixed,) = [r for r in routes if r.path_prefix]
    assert prefixed.strip_prefix and prefixed.page is None


def test_stripping_needs_a_prefix(team: Team, shop: Environment) -> None:
    with pytest.raises(ServiceError) as caught:
        lifecycle.add_domain(
            environment=shop, actor=team.developer, hostname="plain.example.test", strip_prefix=True
        )
    assert caught.value.field == "strip_prefix"
    assert not Domain.objects.exists()


def test_the_api_takes_and_shows_strip_prefix(team: Team, shop: Environment) -> None:
    client = api_for(team.developer)
    created = client.post(
        f"/environments/{shop.pk}/domains",
        {"hostname": "api.example.test", "path_prefix": "/v1", "strip_prefix": True},
    )
    assert created.status_code == 201, created.content
    assert created.json()["strip_prefix"] is True
    assert Domain.objects.get().strip_prefix


def test_a_stopped_or_suspended_sites_routes_answer_its_page(
    team: Team, shop: Environment, settings: Any
) -> None:
    settings.STACKPORT_SITE_NAME = "Acme Cloud"
    verified(
        lifecycle.add_domain(
            environment=shop, actor=team.developer, hostname="s.example.test", path_prefix="/a"
        )
    )

    running, _ = operations.route_changes(shop, ["10.0.0.2:80"], [])
    assert all(r.page is None for r in running)

    stopped, _ = operations.route_changes(shop, ["10.0.0.2:80"], [], running=False)
    assert len(stopped) == 2 and all(r.page for r in stopped)
    assert "This site is stopped" in stopped[0].page and "Acme Cloud" in stopped[0].page
    assert shop.project.name not in stopped[0].page  # nothing of the customer's

    shop.project.suspended_at = timezone.now()
    suspended, _ = operations.route_changes(shop, ["10.0.0.2:80"], [], running=False)
    assert "This site is temporarily unavailable" in suspended[0].page


def test_pages_carry_the_sites_real_name(team: Team, settings: Any) -> None:
    settings.STACKPORT_SITE_NAME = "Acme Cloud"
    html = page(client_for(team.owner).get(DASHBOARD))
    assert "<title>Dashboard · Acme Cloud</title>" in html and ">Acme Cloud</a>" in html
