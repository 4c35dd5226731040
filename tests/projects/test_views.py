"""Organization pages: happy paths, wrong methods, other people's organizations (404), roles (403),
bad input (4xx with the message shown), htmx partials, and pinned query counts."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import URLPattern, reverse

from projects import services
from projects import urls as project_urls
from projects.access import SESSION_KEY
from projects.models import AuditEvent, Invitation, Membership, Organization, Role, User
from tests.conftest import Team, client_for
from tests.factories import InvitationFactory, MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

LOGIN_URL = "/accounts/login/"


@pytest.fixture
def invitation(team: Team) -> Invitation:
    """A pending invitation to team.org, for a person who has an account with that address."""
    UserFactory(email="sam@example.test")
    return InvitationFactory(organization=team.org, email="sam@example.test", invited_by=team.owner)


@pytest.fixture
def outsider_invitation(team: Team) -> Invitation:
    return InvitationFactory(organization=team.outsider_org, email="someone@other.test")


def snapshot() -> tuple[Any, ...]:
    """Every tenancy row that a refused request must leave as it was."""
    return (
        list(Organization.objects.order_by("pk").values_list("pk", "name")),
        list(Membership.objects.order_by("pk").values_list("pk", "organization", "user", "role")),
        list(
            Invitation.objects.order_by("pk").values_list("pk", "email", "role", "accepted_at", "revoked_at")
        ),
        AuditEvent.objects.filter(organization__isnull=False).count(),
    )


def url(name: str, **kwargs: Any) -> str:
    return reverse(f"projects:{name}", kwargs=kwargs)


def team_kwargs(team: Team, name: str, invitation: Invitation) -> dict[str, int]:
    """URL arguments pointing into team.org, for the view ``name``."""
    kwargs = {"org_id": team.org.pk}
    if name in {"member_role", "member_remove"}:
        kwargs["member_id"] = team.membership(team.viewer).pk
    if name == "invitation_revoke":
        kwargs["invitation_id"] = invitation.pk
    return kwargs


def text(response: Any) -> str:
    return response.content.decode()


# Each org-scoped view with the method it answers and plausible, valid form data.
ORG_REQUESTS = [
    ("organization", "get", {}),
    ("organization", "post", {"name": "Taken Over"}),
    ("member_invite", "get", {}),
    ("member_invite", "post", {"email": "mallory@example.test", "role": "owner"}),
    ("invitation_revoke", "post", {}),
    ("member_role", "post", {"role": "admin"}),
    ("member_remove", "get", {}),
    ("member_remove", "post", {}),
    ("audit_log", "get", {}),
]


# --- anonymous and method checks ---------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "organization_create",
        "organization_switch",
        "organization",
        "member_invite",
        "invitation_revoke",
        "member_role",
        "member_remove",
        "audit_log",
    ],
)
@pytest.mark.parametrize("method", ["get", "post"])
def test_anonymous_user_is_sent_to_login(team: Team, invitation: Invitation, name: str, method: str) -> None:
    kwargs = (
        {} if name in {"organization_create", "organization_switch"} else team_kwargs(team, name, invitation)
    )
    before = snapshot()

    response = getattr(Client(), method)(url(name, **kwargs), {"name": "x", "role": "owner"})

    assert response.status_code == 302
    assert response["Location"].startswith(f"{LOGIN_URL}?next=")
    assert snapshot() == before


@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("organization_create", "put"),
        ("organization_create", "delete"),
        ("organization_switch", "get"),
        ("organization", "put"),
        ("organization", "patch"),
        ("member_invite", "delete"),
        ("invitation_revoke", "get"),
        ("member_role", "get"),
        ("member_remove", "put"),
        ("audit_log", "post"),
        ("invitation", "put"),
    ],
)
def test_wrong_method_is_405(team: Team, invitation: Invitation, name: str, method: str) -> None:
    if name == "invitation":
        kwargs: dict[str, Any] = {"token": services.invitation_token(invitation)}
    elif name in {"organization_create", "organization_switch"}:
        kwargs = {}
    else:
        kwargs = team_kwargs(team, name, invitation)
    before = snapshot()

    response = getattr(client_for(team.owner), method)(url(name, **kwargs))

    assert response.status_code == 405
    assert snapshot() == before


# --- someone else's organization: 404, never 403, nothing changed ------------------------------
@pytest.mark.parametrize(("name", "method", "data"), ORG_REQUESTS)
def test_outsider_gets_404_for_another_organization(
    team: Team, invitation: Invitation, name: str, method: str, data: dict[str, str]
) -> None:
    before = snapshot()

    response = getattr(client_for(team.outsider), method)(
        url(name, **team_kwargs(team, name, invitation)), data
    )

    assert response.status_code == 404
    assert "Acme Hosting Co" not in text(response)
    assert snapshot() == before


@pytest.mark.parametrize(
    ("name", "method", "data"),
    [r for r in ORG_REQUESTS if r[0] in {"member_role", "member_remove", "invitation_revoke"}],
)
def test_member_gets_404_for_a_member_or_invitation_of_another_organization(
    team: Team, outsider_invitation: Invitation, name: str, method: str, data: dict[str, str]
) -> None:
    # Own organization in the URL, the other organization's member or invitation id.
    kwargs: dict[str, int] = {"org_id": team.org.pk}
    if name in {"member_role", "member_remove"}:
        kwargs["member_id"] = Membership.objects.get(organization=team.outsider_org).pk
    else:
        kwargs["invitation_id"] = outsider_invitation.pk
    before = snapshot()

    response = getattr(client_for(team.owner), method)(url(name, **kwargs), data)

    assert response.status_code == 404
    assert snapshot() == before


def test_every_org_url_answers_404_for_another_organization(
    team: Team, outsider_invitation: Invitation
) -> None:
    """Walk projects.urls: no view may let a member of team.org see or touch the outsider's org."""
    outsider_ids = {
        "org_id": team.outsider_org.pk,
        "member_id": Membership.objects.get(organization=team.outsider_org).pk,
        "invitation_id": outsider_invitation.pk,
        "token_id": services.create_api_token(user=team.outsider, name="theirs")[0].pk,
    }
    missing_ids = dict.fromkeys(outsider_ids, 987654321)
    client = client_for(team.owner)
    before = snapshot()
    walked = []

    for pattern in project_urls.urlpatterns:
        assert isinstance(pattern, URLPattern)
        if pattern.name in {"organization_create", "organization_switch", "invitation", "api_tokens"}:
            continue
        params = set(pattern.pattern.converters)
        assert params <= set(outsider_ids), f"{pattern.name} takes an id this test does not know"
        target = url(pattern.name, **{p: outsider_ids[p] for p in params})
        missing = url(pattern.name, **{p: missing_ids[p] for p in params})
        statuses = []
        for method in ("get", "post"):
            response = getattr(client, method)(
                target, {"name": "x", "role": "owner", "email": "m@example.test"}
            )
            # A method the view never answers is refused the same way for every id (405);
            # otherwise the outsider's ids must be indistinguishable from ids that do not exist.
            baseline = getattr(client, method)(missing).status_code
            assert baseline in {404, 405}, (pattern.name, method, baseline)
            assert response.status_code == baseline, (pattern.name, method, response.status_code)
            statuses.append(response.status_code)
        assert 404 in statuses, pattern.name
        walked.append(pattern.name)

    assert snapshot() == before
    assert set(walked) == {
        "organization",
        "member_invite",
        "invitation_revoke",
        "member_role",
        "member_remove",
        "audit_log",
        "api_token_revoke",
    }

    response = client.post(url("organization_switch"), {"organization": team.outsider_org.pk})
    assert response.status_code == 404
    assert client.session.get(SESSION_KEY) != team.outsider_org.pk
    assert snapshot() == before


# --- roles: a member whose role is too low gets 403 --------------------------------------------
LOW_ROLE_REQUESTS = [
    ("organization", "post", {"name": "Renamed"}),
    ("member_invite", "get", {}),
    ("member_invite", "post", {"email": "friend@example.test", "role": "viewer"}),
    ("invitation_revoke", "post", {}),
    ("member_role", "post", {"role": "admin"}),
    ("member_remove", "get", {}),
    ("member_remove", "post", {}),
    ("audit_log", "get", {}),
]


@pytest.mark.parametrize("who", ["viewer", "developer"])
@pytest.mark.parametrize(("name", "method", "data"), LOW_ROLE_REQUESTS)
def test_member_below_admin_gets_403_on_admin_actions(
    team: Team, invitation: Invitation, who: str, name: str, method: str, data: dict[str, str]
) -> None:
    kwargs = team_kwargs(team, name, invitation)
    if name in {"member_role", "member_remove"}:
        kwargs["member_id"] = team.membership(team.admin).pk  # someone else, so not "leave"
    before = snapshot()

    response = getattr(client_for(getattr(team, who)), method)(url(name, **kwargs), data)

    assert response.status_code == 403
    assert snapshot() == before


# --- organization_create -----------------------------------------------------------------------
def test_create_organization_page(user: User) -> None:
    response = client_for(user).get(url("organization_create"))
    assert response.status_code == 200
    assert 'name="name"' in text(response)


def test_create_organization_makes_user_owner_and_switches_to_it(user: User) -> None:
    client = client_for(user)

    response = client.post(url("organization_create"), {"name": "Fresh Start"})

    org = Organization.objects.get(name="Fresh Start")
    assert response.status_code == 302
    assert response["Location"] == url("organization", org_id=org.pk)
    assert org.memberships.get().user == user
    assert org.memberships.get().role == Role.OWNER
    assert client.session[SESSION_KEY] == org.pk
    assert AuditEvent.objects.filter(organization=org, action="organization.created").count() == 1


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "This field is required."),
        ("   ", "This field is required."),
        ("x" * 101, "Ensure this value has at most 100 characters"),
    ],
)
def test_create_organization_with_a_bad_name_is_400(user: User, name: str, message: str) -> None:
    before = snapshot()

    response = client_for(user).post(url("organization_create"), {"name": name})

    assert response.status_code == 400
    assert message in text(response)
    assert snapshot() == before


# --- organization_switch -----------------------------------------------------------------------
def test_switch_to_another_own_organization(team: Team) -> None:
    side = MembershipFactory(user=team.owner, organization__name="Side Project", role=Role.VIEWER)
    client = client_for(team.owner)

    response = client.post(url("organization_switch"), {"organization": side.organization_id})

    assert response.status_code == 302
    assert response["Location"] == reverse("portal:dashboard")
    assert client.session[SESSION_KEY] == side.organization_id
    page = client.get(response["Location"])
    assert "You are now working in Side Project." in text(page)
    assert '<h1 class="h3">Side Project</h1>' in text(page)


@pytest.mark.parametrize("value", ["", "abc", "0"])
def test_switch_with_bad_input_changes_nothing(team: Team, value: str) -> None:
    client = client_for(team.owner)

    response = client.post(url("organization_switch"), {"organization": value}, follow=True)

    assert response.redirect_chain == [(reverse("portal:dashboard"), 302)]
    assert "Choose an organization from the list." in text(response)
    assert SESSION_KEY not in client.session


# --- organization_detail -----------------------------------------------------------------------
def test_organization_page_lists_members_and_pending_invitations(team: Team, invitation: Invitation) -> None:
    response = client_for(team.viewer).get(url("organization", org_id=team.org.pk))

    assert response.status_code == 200
    page = text(response)
    for email in ("owner@acme.test", "admin@acme.test", "developer@acme.test", "viewer@acme.test"):
        assert email in page
    assert "sam@example.test" in page
    assert "outsider@other.test" not in page
    # A viewer sees the team but none of the controls.
    assert url("member_invite", org_id=team.org.pk) not in page
    assert 'id="rename"' not in page


def test_organization_page_shows_admin_controls_to_admins(team: Team, invitation: Invitation) -> None:
    page = text(client_for(team.admin).get(url("organization", org_id=team.org.pk)))

    assert url("member_invite", org_id=team.org.pk) in page
    assert url("invitation_revoke", org_id=team.org.pk, invitation_id=invitation.pk) in page
    assert 'id="rename"' in page


def test_rename_by_admin(team: Team) -> None:
    response = client_for(team.admin).post(url("organization", org_id=team.org.pk), {"name": "Acme Cloud"})

    assert response.status_code == 302
    assert response["Location"] == url("organization", org_id=team.org.pk)
    team.org.refresh_from_db()
    assert team.org.name == "Acme Cloud"
    event = AuditEvent.objects.get(action="organization.renamed")
    assert (event.actor, event.ip_address, event.data) == (
        team.admin,
        "127.0.0.1",
        {"from": "Acme Hosting Co"},
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [("", "This field is required."), ("y" * 101, "Ensure this value has at most 100 characters")],
)
def test_rename_with_a_bad_name_is_400(team: Team, name: str, message: str) -> None:
    before = snapshot()

    response = client_for(team.owner).post(url("organization", org_id=team.org.pk), {"name": name})

    assert response.status_code == 400
    assert message in text(response)
    assert snapshot() == before


def _organization_page_queries(client: Client, org: Organization) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url("organization", org_id=org.pk))
    assert response.status_code == 200
    return len(queries)


def test_organization_page_queries_do_not_grow_with_members(
    team: Team, invitation: Invitation, django_assert_max_num_queries: Any
) -> None:
    client = client_for(team.owner)
    client.get(url("organization", org_id=team.org.pk))  # warm-up: session and user-session rows
    with_four = _organization_page_queries(client, team.org)

    for _ in range(20):
        MembershipFactory(organization=team.org, role=Role.DEVELOPER)
    InvitationFactory.create_batch(5, organization=team.org, invited_by=team.admin)
    with_many = _organization_page_queries(client, team.org)

    assert with_many == with_four
    # Measured: 12 (session, user, user-session bookkeeping, memberships, invitations).
    with django_assert_max_num_queries(14):
        response = client.get(url("organization", org_id=team.org.pk))
    assert text(response).count("@example.test") >= 25


# --- member_invite -----------------------------------------------------------------------------
def test_invite_page(team: Team) -> None:
    response = client_for(team.admin).get(url("member_invite", org_id=team.org.pk))
    assert response.status_code == 200
    assert 'name="email"' in text(response)


def test_invite_creates_a_pending_invitation(team: Team) -> None:
    client = client_for(team.admin)

    response = client.post(
        url("member_invite", org_id=team.org.pk), {"email": "friend@example.test", "role": "viewer"}
    )

    assert response.status_code == 302
    assert response["Location"] == url("organization", org_id=team.org.pk)
    invitation = Invitation.objects.get(organization=team.org)
    assert (invitation.email, invitation.role, invitation.status) == (
        "friend@example.test",
        "viewer",
        "pending",
    )
    page = text(client.get(response["Location"]))
    assert "Invitation sent to friend@example.test." in page


@pytest.mark.parametrize(
    ("who", "data", "status", "message"),
    [
        ("admin", {"email": "not-an-address", "role": "viewer"}, 400, "Enter a valid email address."),
        ("admin", {"email": "", "role": "viewer"}, 400, "This field is required."),
        ("admin", {"email": "friend@example.test", "role": "god"}, 400, "Select a valid choice."),
        (
            "admin",
            {"email": "developer@acme.test", "role": "viewer"},
            409,
            "developer@acme.test is already a member of this organization.",
        ),
        (
            "admin",
            {"email": "boss@example.test", "role": "owner"},
            403,
            "Only an owner can invite another owner.",
        ),
    ],
)
def test_invite_refusals_show_the_reason(
    team: Team, who: str, data: dict[str, str], status: int, message: str
) -> None:
    before = snapshot()

    response = client_for(getattr(team, who)).post(url("member_invite", org_id=team.org.pk), data)

    assert response.status_code == status
    assert message in text(response)
    assert snapshot() == before


# --- invitation_revoke -------------------------------------------------------------------------
def test_revoke_withdraws_the_invitation(team: Team, invitation: Invitation) -> None:
    response = client_for(team.admin).post(
        url("invitation_revoke", org_id=team.org.pk, invitation_id=invitation.pk)
    )

    assert response.status_code == 302
    assert response["Location"] == url("organization", org_id=team.org.pk)
    invitation.refresh_from_db()
    assert invitation.status == "revoked"
    assert AuditEvent.objects.filter(action="invitation.revoked", organization=team.org).count() == 1


# --- member_role -------------------------------------------------------------------------------
def test_admin_changes_a_role(team: Team) -> None:
    member = team.membership(team.developer)

    response = client_for(team.admin).post(
        url("member_role", org_id=team.org.pk, member_id=member.pk), {"role": "viewer"}
    )

    assert response.status_code == 302
    member.refresh_from_db()
    assert member.role == Role.VIEWER
    assert AuditEvent.objects.get(action="member.role_changed").data == {"from": "developer", "to": "viewer"}


@pytest.mark.parametrize(
    ("who", "member", "role", "status", "message"),
    [
        ("owner", "developer", "superuser", 400, "Select a valid choice."),
        ("owner", "developer", "", 400, "This field is required."),
        ("owner", "owner", "admin", 409, "This is the last owner."),
        ("admin", "developer", "owner", 403, "Only an owner can grant or take away the owner role."),
        ("admin", "owner", "viewer", 403, "Only an owner can grant or take away the owner role."),
    ],
)
def test_role_change_refusals_show_the_reason(
    team: Team, who: str, member: str, role: str, status: int, message: str
) -> None:
    membership = team.membership(getattr(team, member))
    before = snapshot()

    response = client_for(getattr(team, who)).post(
        url("member_role", org_id=team.org.pk, member_id=membership.pk), {"role": role}
    )

    assert response.status_code == status
    assert message in text(response)
    assert snapshot() == before


# --- member_remove -----------------------------------------------------------------------------
def test_remove_asks_for_confirmation_first(team: Team) -> None:
    member = team.membership(team.developer)
    before = snapshot()

    response = client_for(team.admin).get(url("member_remove", org_id=team.org.pk, member_id=member.pk))

    assert response.status_code == 200
    assert "Remove developer@acme.test?" in text(response)
    assert snapshot() == before


def test_admin_removes_a_member(team: Team) -> None:
    member = team.membership(team.developer)

    response = client_for(team.admin).post(url("member_remove", org_id=team.org.pk, member_id=member.pk))

    assert response.status_code == 302
    assert response["Location"] == url("organization", org_id=team.org.pk)
    assert not Membership.objects.filter(pk=member.pk).exists()
    assert AuditEvent.objects.get(organization=team.org).action == "member.removed"


@pytest.mark.parametrize("who", ["viewer", "developer"])
def test_member_can_leave(team: Team, who: str) -> None:
    member = team.membership(getattr(team, who))
    client = client_for(getattr(team, who))
    target = url("member_remove", org_id=team.org.pk, member_id=member.pk)

    assert "Leave Acme Hosting Co?" in text(client.get(target))
    response = client.post(target)

    assert response.status_code == 302
    assert response["Location"] == reverse("portal:dashboard")
    assert not Membership.objects.filter(pk=member.pk).exists()
    assert AuditEvent.objects.get(organization=team.org).action == "member.left"


def test_last_owner_cannot_leave(team: Team) -> None:
    member = team.membership(team.owner)
    before = snapshot()

    response = client_for(team.owner).post(url("member_remove", org_id=team.org.pk, member_id=member.pk))

    assert response.status_code == 409
    assert "The last owner cannot be removed." in text(response)
    assert snapshot() == before


def test_admin_cannot_remove_an_owner(team: Team) -> None:
    MembershipFactory(organization=team.org, role=Role.OWNER)
    member = team.membership(team.owner)
    before = snapshot()

    response = client_for(team.admin).post(url("member_remove", org_id=team.org.pk, member_id=member.pk))

    assert response.status_code == 403
    assert "Only an owner can remove an owner." in text(response)
    assert snapshot() == before


# --- audit_log ---------------------------------------------------------------------------------
@pytest.fixture
def audit_events(team: Team) -> None:
    services.rename_organization(organization=team.org, name="Acme Cloud", actor=team.owner)
    services.change_member_role(
        membership=team.membership(team.viewer), role=Role.DEVELOPER, actor=team.admin
    )
    services.rename_organization(organization=team.outsider_org, name="Other Cloud", actor=team.outsider)


def test_audit_log_page_shows_the_organizations_events_only(team: Team, audit_events: None) -> None:
    response = client_for(team.admin).get(url("audit_log", org_id=team.org.pk))

    assert response.status_code == 200
    page = text(response)
    assert "<html" in page
    assert 'class="navbar' in page
    assert "organization.renamed" in page
    assert "member.role_changed" in page
    assert "outsider@other.test" not in page


def test_audit_log_search_filters_events(team: Team, audit_events: None) -> None:
    response = client_for(team.admin).get(url("audit_log", org_id=team.org.pk), {"q": "role_changed"})

    page = text(response)
    assert "member.role_changed" in page
    assert "organization.renamed" not in page


def test_audit_log_htmx_request_gets_only_the_events_partial(team: Team, audit_events: None) -> None:
    response = client_for(team.admin).get(
        url("audit_log", org_id=team.org.pk), {"q": "renamed"}, headers={"HX-Request": "true"}
    )

    assert response.status_code == 200
    page = text(response).strip()
    assert page.startswith('<div id="events">')
    assert page.endswith("</div>")
    assert "organization.renamed" in page
    assert "member.role_changed" not in page
    # Only the partial: no document, no site navigation (the partial's own pagination <nav> is fine).
    assert "<html" not in page
    assert "<body" not in page
    assert 'class="navbar' not in page
    assert len(re.findall(r"<nav\b", page)) == 1
    assert '<nav aria-label="Pages">' in page


def test_audit_log_htmx_request_without_events_has_no_nav(team: Team) -> None:
    response = client_for(team.admin).get(
        url("audit_log", org_id=team.org.pk), headers={"HX-Request": "true"}
    )

    page = text(response)
    assert "No events" in page
    assert "<nav" not in page
    assert "<html" not in page


def test_audit_log_boosted_htmx_request_gets_the_full_page(team: Team, audit_events: None) -> None:
    response = client_for(team.admin).get(
        url("audit_log", org_id=team.org.pk), headers={"HX-Request": "true", "HX-Boosted": "true"}
    )

    assert "<html" in text(response)


# --- invitation (the e-mailed link) ------------------------------------------------------------
def invitation_url(invitation: Invitation) -> str:
    return url("invitation", token=services.invitation_token(invitation))


def test_invitation_page_for_anonymous_visitor_asks_to_sign_in(invitation: Invitation) -> None:
    response = Client().get(invitation_url(invitation))

    assert response.status_code == 200
    page = text(response)
    assert "Join Acme Hosting Co" in page
    assert "Sign in with sam@example.test" in page


def test_anonymous_accept_is_sent_to_login_and_changes_nothing(invitation: Invitation) -> None:
    target = invitation_url(invitation)
    before = snapshot()

    response = Client().post(target)

    assert response.status_code == 302
    assert response["Location"] == f"{LOGIN_URL}?next={target}"
    assert snapshot() == before


def test_invited_user_accepts(team: Team, invitation: Invitation) -> None:
    sam = User.objects.get(email="sam@example.test")
    client = client_for(sam)

    response = client.post(invitation_url(invitation))

    assert response.status_code == 302
    assert response["Location"] == reverse("portal:dashboard")
    assert Membership.objects.get(organization=team.org, user=sam).role == invitation.role
    assert client.session[SESSION_KEY] == team.org.pk
    assert "Welcome to Acme Hosting Co." in text(client.get(response["Location"]))


def test_accepting_with_another_address_is_403_with_the_reason(team: Team, invitation: Invitation) -> None:
    before = snapshot()

    response = client_for(team.outsider).post(invitation_url(invitation))

    assert response.status_code == 403
    assert "This invitation was sent to sam@example.test." in text(response)
    assert snapshot() == before


def test_accepting_as_an_existing_member_is_409(team: Team) -> None:
    invitation = InvitationFactory(organization=team.org, email="viewer@acme.test", role=Role.ADMIN)
    before = snapshot()

    response = client_for(team.viewer).post(invitation_url(invitation))

    assert response.status_code == 409
    assert "You are already a member of this organization." in text(response)
    assert snapshot() == before


@pytest.mark.parametrize("token", ["nonsense", "1:abc:def"])
def test_invitation_with_a_bad_token_is_404(team: Team, token: str) -> None:
    response = Client().get(url("invitation", token=token))

    assert response.status_code == 404
    assert "This invitation link is not valid" in text(response)


def test_invitation_with_a_tampered_token_is_404(invitation: Invitation) -> None:
    token = services.invitation_token(invitation)
    response = Client().get(url("invitation", token=token[:-2] + "xx"))
    assert response.status_code == 404


@pytest.mark.parametrize("method", ["get", "post"])
def test_used_invitation_is_410(team: Team, invitation: Invitation, method: str) -> None:
    sam = User.objects.get(email="sam@example.test")
    services.accept_invitation(invitation=invitation, user=sam)
    before = snapshot()

    response = getattr(client_for(sam), method)(invitation_url(invitation))

    assert response.status_code == 410
    assert "It has already been accepted." in text(response)
    assert snapshot() == before


def test_revoked_invitation_is_410(team: Team, invitation: Invitation) -> None:
    services.revoke_invitation(invitation=invitation, actor=team.owner)

    response = Client().get(invitation_url(invitation))

    assert response.status_code == 410
    assert "It was withdrawn." in text(response)


def test_expired_invitation_is_410_and_cannot_be_accepted(invitation: Invitation) -> None:
    sam = User.objects.get(email="sam@example.test")
    client = client_for(sam)
    before = snapshot()

    with time_machine.travel(invitation.expires_at + timedelta(minutes=1), tick=False):
        assert client.get(invitation_url(invitation)).status_code == 410
        response = client.post(invitation_url(invitation))

    assert response.status_code == 410
    assert "It expired on" in text(response)
    assert snapshot() == before
