"""The dashboard: empty states, invitations waiting for the user, and sign-in."""

from __future__ import annotations

from datetime import timedelta

import pytest
from allauth.account.models import EmailAddress
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from projects import services
from projects.access import SESSION_KEY
from projects.models import Membership, Role, User
from tests.conftest import Team, client_for
from tests.factories import InvitationFactory

pytestmark = pytest.mark.django_db

DASHBOARD = reverse("portal:dashboard")


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
