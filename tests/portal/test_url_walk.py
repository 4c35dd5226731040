"""Walk every URL pattern the portal serves.

- As a member of one organization, aimed at another organization's objects (every id in
  the URL belongs to the outsider): each page, partial, log stream, download and API
  endpoint answers 404 (or 405 for a method it never takes) and changes nothing.
- As a member, on the organization's own objects whose names carry markup: every page
  renders (no 5xx) and shows the names escaped.

A new URL whose arguments this file does not know fails the walk: add how to fill them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.apps import apps
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from projects import services
from projects.models import ApiToken, AuditEvent, Environment, Invitation, Membership, Organization, User
from stacks.models import Backup, Domain, Operation, Release, StackComponent, Variable
from stacks.runtime import lifecycle
from tests.conftest import Team, client_for
from tests.factories import InvitationFactory

pytestmark = pytest.mark.django_db

# Not tenant data, or served by libraries with their own tests (allauth, admin, static files).
SKIP_PREFIXES = ("admin/", "accounts/", "static/", "media/", "__debug__/")
SKIP_ROUTES = {"", "healthz", "metrics", "catalog/", "invitations/<str:token>/"}
PAYLOAD = "<script>alert(\"x\")</script> & 'q'"
ESCAPED_FRAGMENT = "&lt;script&gt;alert("
PARAM_RE = re.compile(r"<(?:(?P<conv>[a-z_]+):)?(?P<name>\w+)>")


def routes(resolver: URLResolver | None = None, prefix: str = "") -> Iterator[str]:
    """Every route of the URLconf as a string with ``<conv:name>`` parameters."""
    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        text = str(entry.pattern)
        if text.startswith("^"):  # a regex route: only allauth and admin use them
            continue
        if isinstance(entry, URLResolver):
            yield from routes(entry, prefix + text)
        elif isinstance(entry, URLPattern):
            yield prefix + text


def walked_routes() -> list[str]:
    return sorted(
        {
            r
            for r in routes()
            if not r.startswith(SKIP_PREFIXES) and r not in SKIP_ROUTES and PARAM_RE.search(r)
        }
    )


@dataclass
class World:
    """One organization's objects, everything a URL can point at."""

    org: Organization
    owner: User
    environment: Environment
    operation: Operation
    release: Release
    domain: Domain
    variable: Variable
    member: Membership
    invitation: Invitation
    token: ApiToken
    invoice: Any
    backup: Any

    def value(self, name: str) -> str | None:
        values: dict[str, Any] = {
            "org_id": self.org.pk,
            "organization_id": self.org.pk,
            "project_id": self.environment.project_id,
            "environment_id": self.environment.pk,
            "env_id": self.environment.pk,
            "operation_id": self.operation.pk,
            "release_id": self.release.pk,
            "number": self.release.number,
            "release_number": self.release.number,
            "domain_id": self.domain.pk,
            "variable_id": self.variable.pk,
            "member_id": self.member.pk,
            "membership_id": self.member.pk,
            "invitation_id": self.invitation.pk,
            "token_id": self.token.pk,
            "backup_id": self.backup.pk,
            "component": "web",
            "name": "web",
        }
        if self.invoice is not None:
            values["invoice_id"] = self.invoice.pk
        value = values.get(name)
        return None if value is None else str(value)


def make_world(org: Organization, owner: User, name: str) -> World:
    environment = lifecycle.create_project(
        organization=org, actor=owner, name=name, region="eu-central", template="lamp"
    )
    lifecycle.add_domain(environment=environment, actor=owner, hostname=f"shop-{org.pk}.example.test")
    lifecycle.set_variable(environment=environment, actor=owner, name="GREETING", value=PAYLOAD)
    lifecycle.set_variable(environment=environment, actor=owner, name="API_KEY", value="s3cr3t", secret=True)
    token, _secret = services.create_api_token(user=owner, name=PAYLOAD)
    invoice = None
    if apps.is_installed("billing") and hasattr(apps.get_app_config("billing"), "models_module"):
        invoice = _an_invoice(org)
    member = org.memberships.exclude(user=owner).first() or org.memberships.get(user=owner)
    return World(
        org=org,
        owner=owner,
        environment=environment,
        operation=environment.operations.get(),
        release=environment.releases.get(),
        domain=environment.domains.get(),
        variable=Variable.objects.get(environment=environment, name="GREETING"),
        member=member,
        invitation=InvitationFactory(organization=org, email=f"invitee-{org.pk}@example.test"),
        token=token,
        invoice=invoice,
        # A failed backup: its pages and its refusals, without a repository behind it.
        backup=Backup.objects.create(
            environment=environment, batch="walk", component="db", kind="mariadb", status="failed"
        ),
    )


def _an_invoice(org: Organization) -> Any:
    """An invoice of ``org`` for last month, made by the billing service (if it exists)."""
    try:
        from billing import invoices
    except ImportError:
        return None
    make = getattr(invoices, "generate_invoice", None)
    if make is None:
        return None
    from django.utils import timezone

    today = timezone.now().date()
    last_month = (today.replace(day=1) - __import__("datetime").timedelta(days=1)).replace(day=1)
    return make(organization=org, month=last_month)


@pytest.fixture
def worlds(team: Team, offered_catalog: None) -> tuple[World, World]:
    """Ours (team.org, names with markup) and theirs (the outsider's organization)."""
    team.org.name = PAYLOAD
    team.org.save(update_fields=["name"])
    ours = make_world(team.org, team.owner, PAYLOAD)
    theirs = make_world(team.outsider_org, team.outsider, "Their shop")
    return ours, theirs


def fill(route: str, world: World) -> str:
    def one(match: re.Match[str]) -> str:
        value = world.value(match["name"])
        if value is None:
            pytest.fail(f"test_url_walk does not know how to fill <{match['name']}> in {route!r}")
        return value

    return "/" + PARAM_RE.sub(one, route)


def snapshot() -> tuple[Any, ...]:
    """Every row a refused request must leave as it was."""
    models = [Organization, Membership, Invitation, Environment, Operation, Release, StackComponent, Domain]
    state: list[Any] = [
        list(m.objects.order_by("pk").values_list(*[f.attname for f in m._meta.concrete_fields]))
        for m in models
    ]
    state.append(list(Variable.objects.order_by("pk").values_list("pk", "name", "value", "updated_at")))
    state.append(list(ApiToken.objects.order_by("pk").values_list("pk", "name", "revoked_at")))
    state.append(AuditEvent.objects.count())
    if apps.is_installed("billing"):
        for model in apps.get_app_config("billing").get_models():
            state.append(list(model.objects.order_by("pk").values_list("pk", flat=True)))
    return tuple(state)


def api_client(world: World) -> Client:
    _token, secret = services.create_api_token(user=world.owner, name="walk")
    return Client(headers={"authorization": f"Bearer {secret}"})


def test_the_walk_covers_the_portal_and_the_api() -> None:
    walked = walked_routes()
    assert any(r.startswith("api/") for r in walked), walked
    for expected in ("environments/<int:environment_id>/", "projects/<int:project_id>/"):
        assert expected in walked, walked


def test_every_url_answers_404_for_another_organizations_objects(worlds: tuple[World, World]) -> None:
    ours, theirs = worlds
    browser = client_for(ours.owner)
    api = api_client(ours)
    before = snapshot()
    leaks = []
    for route in walked_routes():
        url = fill(route, theirs)
        client = api if route.startswith("api/") else browser
        for method in ("get", "post", "put", "patch", "delete"):
            response = getattr(client, method)(url, data={} if method != "get" else None)
            if response.status_code not in (404, 405):
                leaks.append(f"{method.upper()} {url} -> {response.status_code}")
    assert not leaks, "\n".join(leaks)
    assert snapshot() == before


def test_every_page_renders_what_customers_typed_escaped(worlds: tuple[World, World]) -> None:
    ours, _theirs = worlds
    browser = client_for(ours.owner)
    api = api_client(ours)
    problems = []
    for route in walked_routes():
        url = fill(route, ours)
        client = api if route.startswith("api/") else browser
        response = client.get(url)
        if response.status_code >= 500:
            problems.append(f"GET {url} -> {response.status_code}")
            continue
        body = b"".join(response) if response.streaming else response.content  # type: ignore[attr-defined]
        if PAYLOAD.encode() in body and "html" in response.get("Content-Type", ""):
            problems.append(f"GET {url} shows the name unescaped")
        if b"s3cr3t" in body:
            problems.append(f"GET {url} shows a secret")
    assert not problems, "\n".join(problems)
    page = browser.get(f"/environments/{ours.environment.pk}/")
    assert page.status_code == 200
    assert ESCAPED_FRAGMENT in page.content.decode()
