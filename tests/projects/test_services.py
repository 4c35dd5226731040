"""Behaviour of projects.services: every write, its audit row, and every refusal writing nothing."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from allauth.account.models import EmailAddress
from django.core import signing
from django.utils import timezone

from projects import services
from projects.models import AuditEvent, Invitation, Membership, Organization, Role, User
from projects.services import ServiceError
from tests.conftest import Team
from tests.factories import InvitationFactory, MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


def row_counts() -> tuple[int, int, int]:
    """What a refused call must leave as it was."""
    return Membership.objects.count(), Invitation.objects.count(), AuditEvent.objects.count()


def refused(call: Callable[..., object], **kwargs: Any) -> ServiceError:
    """Run a service call that must be refused, and check that it wrote nothing."""
    before = row_counts()
    with pytest.raises(ServiceError) as excinfo:
        call(**kwargs)
    assert row_counts() == before
    return excinfo.value


def invite(
    team: Team, email: str = "new@example.test", role: str = Role.DEVELOPER, actor: User | None = None
) -> Invitation:
    return services.invite_member(organization=team.org, email=email, role=role, actor=actor or team.owner)


def unverified_user(email: str) -> User:
    user = UserFactory(email=email, verified=False)
    EmailAddress.objects.create(user=user, email=email, verified=False, primary=True)
    return user


# --- organizations -----------------------------------------------------------------------------
def test_create_organization_makes_the_creator_its_owner_and_records_it(user: User) -> None:
    org = services.create_organization(name="  New   Co ", owner=user)

    assert org.name == "New Co"
    assert list(org.memberships.values_list("user", "role")) == [(user.pk, Role.OWNER)]
    event = AuditEvent.objects.get(organization=org)
    assert (event.action, event.actor, event.actor_email, event.target) == (
        "organization.created",
        user,
        user.email,
        "New Co",
    )


def test_create_organization_refuses_a_blank_name(user: User) -> None:
    orgs = Organization.objects.count()
    error = refused(services.create_organization, name="   ", owner=user)
    assert error.field == "name"
    assert Organization.objects.count() == orgs


def test_rename_by_admin_changes_name_and_records_old_one(team: Team) -> None:
    services.rename_organization(organization=team.org, name="Acme Cloud", actor=team.admin)

    team.org.refresh_from_db()
    assert team.org.name == "Acme Cloud"
    event = AuditEvent.objects.get(action="organization.renamed")
    assert event.data == {"from": "Acme Hosting Co"}
    assert event.organization == team.org


@pytest.mark.parametrize("who", ["viewer", "developer"])
def test_rename_below_admin_is_refused_with_403(team: Team, who: str) -> None:
    error = refused(
        services.rename_organization, organization=team.org, name="Hijacked", actor=getattr(team, who)
    )
    assert error.status == 403
    team.org.refresh_from_db()
    assert team.org.name == "Acme Hosting Co"


def test_rename_by_outsider_is_refused_as_not_found(team: Team) -> None:
    error = refused(services.rename_organization, organization=team.org, name="Mine", actor=team.outsider)
    assert error.status == 404
    team.org.refresh_from_db()
    assert team.org.name == "Acme Hosting Co"


# --- invitations: sending ----------------------------------------------------------------------
@pytest.mark.parametrize("email", ["not-an-address", "", "a@b@c.test", "x@"])
def test_invite_refuses_a_bad_address_on_the_email_field(team: Team, email: str) -> None:
    error = refused(
        services.invite_member, organization=team.org, email=email, role=Role.DEVELOPER, actor=team.owner
    )
    assert error.field == "email"
    assert error.status == 400


def test_invite_refuses_an_unknown_role(team: Team) -> None:
    error = refused(
        services.invite_member, organization=team.org, email="a@example.test", role="god", actor=team.owner
    )
    assert error.field == "role"


@pytest.mark.parametrize("email", ["developer@acme.test", "Developer@ACME.test"])
def test_invite_of_an_existing_member_is_a_conflict(team: Team, email: str) -> None:
    error = refused(
        services.invite_member, organization=team.org, email=email, role=Role.VIEWER, actor=team.admin
    )
    assert error.status == 409
    assert error.field == "email"


def test_reinvite_revokes_the_earlier_pending_invitation(team: Team) -> None:
    first = invite(team, email="Sam@Example.test")
    second = invite(team, email="sam@example.TEST", role=Role.VIEWER)

    first.refresh_from_db()
    assert first.status == "revoked"
    assert second.status == "pending"
    assert list(Invitation.objects.pending().filter(organization=team.org)) == [second]


def test_reinvite_leaves_other_organizations_invitations_alone(team: Team) -> None:
    elsewhere = services.invite_member(
        organization=team.outsider_org, email="sam@example.test", role=Role.VIEWER, actor=team.outsider
    )
    invite(team, email="sam@example.test")

    elsewhere.refresh_from_db()
    assert elsewhere.status == "pending"


def test_invite_normalizes_the_domain_only(team: Team) -> None:
    invitation = invite(team, email="  Sam.Smith@Example.TEST ")
    assert invitation.email == "Sam.Smith@example.test"


def test_admin_cannot_invite_an_owner(team: Team) -> None:
    error = refused(
        services.invite_member,
        organization=team.org,
        email="boss@example.test",
        role=Role.OWNER,
        actor=team.admin,
    )
    assert error.status == 403
    assert error.field == "role"


def test_owner_can_invite_an_owner(team: Team) -> None:
    invitation = invite(team, email="boss@example.test", role=Role.OWNER, actor=team.owner)
    assert invitation.role == Role.OWNER
    assert invitation.invited_by == team.owner


@pytest.mark.parametrize("who", ["viewer", "developer", "outsider"])
def test_invite_needs_admin(team: Team, who: str) -> None:
    error = refused(
        services.invite_member,
        organization=team.org,
        email="a@example.test",
        role=Role.VIEWER,
        actor=getattr(team, who),
    )
    assert error.status == (404 if who == "outsider" else 403)


def test_invite_records_invitation_sent(team: Team) -> None:
    invitation = invite(team, email="sam@example.test", role=Role.VIEWER, actor=team.admin)

    event = AuditEvent.objects.get(action="invitation.sent")
    assert event.actor == team.admin
    assert event.organization == team.org
    assert event.target == "sam@example.test"
    assert event.data == {"role": "viewer", "invitation": invitation.pk}
    assert invitation.expires_at > timezone.now() + timedelta(days=6)


def test_invitation_email_waits_for_the_commit(
    team: Team, settings: Any, mailoutbox: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = True
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        invite(team)
    assert len(callbacks) == 1
    assert mailoutbox == []


def test_invitation_email_is_sent_on_commit_with_a_working_link(
    team: Team, settings: Any, mailoutbox: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = True
    with django_capture_on_commit_callbacks(execute=True):
        invitation = invite(team, email="sam@example.test", role=Role.VIEWER, actor=team.admin)

    assert len(mailoutbox) == 1
    mail = mailoutbox[0]
    assert mail.to == ["sam@example.test"]
    assert "Acme Hosting Co" in mail.subject
    Organization.objects.filter(pk=team.org.pk).update(name="walk's <b>organization</b> & co")
    with django_capture_on_commit_callbacks(execute=True):
        invite(team, email="kim@example.test", role=Role.VIEWER, actor=team.admin)
    assert mailoutbox[1].subject.endswith("invited you to walk's <b>organization</b> & co")  # plain text
    match = re.search(r"http://\S+/invitations/(?P<token>[^/\s]+)/", mail.body)
    assert match, mail.body
    assert services.invitation_from_token(match["token"]) == invitation


def test_no_invitation_email_when_the_invitation_was_revoked_before_sending(
    team: Team, settings: Any, mailoutbox: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = True
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        invitation = invite(team)
    services.revoke_invitation(invitation=invitation, actor=team.owner)
    for callback in callbacks:
        callback()
    assert mailoutbox == []


# --- invitations: revoking ---------------------------------------------------------------------
def test_revoke_withdraws_once_and_records_it_once(team: Team) -> None:
    invitation = invite(team)
    services.revoke_invitation(invitation=invitation, actor=team.admin)
    services.revoke_invitation(invitation=invitation, actor=team.admin)

    invitation.refresh_from_db()
    assert invitation.status == "revoked"
    assert AuditEvent.objects.filter(action="invitation.revoked").count() == 1


def test_revoke_needs_admin(team: Team) -> None:
    invitation = invite(team)
    error = refused(services.revoke_invitation, invitation=invitation, actor=team.developer)
    assert error.status == 403
    invitation.refresh_from_db()
    assert invitation.revoked_at is None


# --- invitations: accepting --------------------------------------------------------------------
def test_accept_makes_a_membership_with_the_invited_role(team: Team) -> None:
    invitation = invite(team, email="sam@example.test", role=Role.VIEWER)
    sam = UserFactory(email="sam@example.test")

    membership = services.accept_invitation(invitation=invitation, user=sam)

    assert (membership.organization, membership.user, membership.role) == (team.org, sam, Role.VIEWER)
    invitation.refresh_from_db()
    assert invitation.status == "accepted"
    assert invitation.accepted_by == sam
    event = AuditEvent.objects.get(action="invitation.accepted")
    assert event.actor == sam
    assert event.data == {"role": "viewer", "invitation": invitation.pk}


def test_accept_matches_any_verified_address_ignoring_case(team: Team) -> None:
    invitation = invite(team, email="Sam@example.test")
    sam = UserFactory(email="primary@example.test")
    EmailAddress.objects.create(user=sam, email="sam@EXAMPLE.test", verified=True, primary=False)

    services.accept_invitation(invitation=invitation, user=sam)

    assert Membership.objects.filter(organization=team.org, user=sam).exists()


def test_accept_is_single_use(team: Team) -> None:
    invitation = invite(team, email="sam@example.test")
    sam = UserFactory(email="sam@example.test")
    services.accept_invitation(invitation=invitation, user=sam)

    again = services.invitation_from_token(services.invitation_token(invitation))
    assert again is not None
    error = refused(services.accept_invitation, invitation=again, user=sam)

    assert error.status == 410
    assert Membership.objects.filter(organization=team.org, user=sam).count() == 1


def test_accept_with_a_stale_copy_loses_to_the_earlier_acceptance(team: Team) -> None:
    # Two requests load the invitation; the first accepts, the user leaves, the second
    # still sees "pending" in memory. The filtered update must refuse it.
    invitation = invite(team, email="sam@example.test")
    stale = Invitation.objects.get(pk=invitation.pk)
    sam = UserFactory(email="sam@example.test")
    services.accept_invitation(invitation=invitation, user=sam)
    services.leave_organization(organization=team.org, user=sam)

    error = refused(services.accept_invitation, invitation=stale, user=sam)

    assert error.status == 410
    assert not Membership.objects.filter(organization=team.org, user=sam).exists()


def test_accept_after_expiry_is_refused(team: Team) -> None:
    invitation = invite(team, email="sam@example.test")
    sam = UserFactory(email="sam@example.test")

    with time_machine.travel(invitation.expires_at + timedelta(seconds=1), tick=False):
        error = refused(services.accept_invitation, invitation=invitation, user=sam)

    assert error.status == 410
    assert not Membership.objects.filter(organization=team.org, user=sam).exists()
    invitation.refresh_from_db()
    assert invitation.accepted_at is None


def test_accept_just_before_expiry_works(team: Team) -> None:
    invitation = invite(team, email="sam@example.test")
    sam = UserFactory(email="sam@example.test")

    with time_machine.travel(invitation.expires_at - timedelta(seconds=1), tick=False):
        services.accept_invitation(invitation=invitation, user=sam)

    assert Membership.objects.filter(organization=team.org, user=sam).exists()


def test_accept_of_a_revoked_invitation_is_refused(team: Team) -> None:
    invitation = invite(team, email="sam@example.test")
    services.revoke_invitation(invitation=invitation, actor=team.owner)
    invitation.refresh_from_db()
    sam = UserFactory(email="sam@example.test")

    error = refused(services.accept_invitation, invitation=invitation, user=sam)

    assert error.status == 410
    invitation.refresh_from_db()
    assert invitation.accepted_at is None


def test_accept_by_a_user_with_another_address_is_forbidden(team: Team) -> None:
    invitation = invite(team, email="sam@example.test")

    error = refused(services.accept_invitation, invitation=invitation, user=team.outsider)

    assert error.status == 403
    assert "sam@example.test" in error.message
    invitation.refresh_from_db()
    assert invitation.status == "pending"


def test_accept_with_the_address_unverified_is_forbidden(team: Team) -> None:
    invitation = invite(team, email="sam@example.test")
    sam = unverified_user("sam@example.test")

    error = refused(services.accept_invitation, invitation=invitation, user=sam)

    assert error.status == 403
    invitation.refresh_from_db()
    assert invitation.status == "pending"


def test_accept_by_an_existing_member_is_a_conflict(team: Team) -> None:
    # invite_member refuses members, but a member may have joined after the invitation left.
    invitation = InvitationFactory(organization=team.org, email="developer@acme.test", role=Role.ADMIN)

    error = refused(services.accept_invitation, invitation=invitation, user=team.developer)

    assert error.status == 409
    assert team.membership(team.developer).role == Role.DEVELOPER
    invitation.refresh_from_db()
    assert invitation.status == "pending"


# --- tokens ------------------------------------------------------------------------------------
def test_invitation_from_token_round_trips(team: Team) -> None:
    invitation = invite(team)
    assert services.invitation_from_token(services.invitation_token(invitation)) == invitation


@pytest.mark.parametrize(
    "tamper",
    [
        lambda token: token[:-1] + ("A" if token[-1] != "A" else "B"),
        lambda token: "x" + token,
        lambda token: "",
        lambda token: "garbage",
    ],
)
def test_invitation_from_token_rejects_a_tampered_token(team: Team, tamper: Callable[[str], str]) -> None:
    token = services.invitation_token(invite(team))
    assert services.invitation_from_token(tamper(token)) is None


def test_invitation_from_token_rejects_another_purposes_signature(team: Team) -> None:
    invitation = invite(team)
    assert services.invitation_from_token(signing.dumps(invitation.pk)) is None
    assert services.invitation_from_token(signing.dumps(invitation.pk, salt="other")) is None


def test_invitation_from_token_of_a_deleted_invitation_is_none(team: Team) -> None:
    invitation = invite(team)
    token = services.invitation_token(invitation)
    invitation.delete()
    assert services.invitation_from_token(token) is None


# --- roles -------------------------------------------------------------------------------------
def test_last_owner_cannot_be_demoted(team: Team) -> None:
    owner = team.membership(team.owner)

    error = refused(services.change_member_role, membership=owner, role=Role.ADMIN, actor=team.owner)

    assert error.status == 409
    owner.refresh_from_db()
    assert owner.role == Role.OWNER


def test_an_owner_can_step_down_once_another_owner_exists(team: Team) -> None:
    services.change_member_role(membership=team.membership(team.admin), role=Role.OWNER, actor=team.owner)
    services.change_member_role(membership=team.membership(team.owner), role=Role.ADMIN, actor=team.owner)

    assert team.membership(team.owner).role == Role.ADMIN
    assert team.membership(team.admin).role == Role.OWNER


def test_only_an_owner_can_grant_owner(team: Team) -> None:
    developer = team.membership(team.developer)

    error = refused(services.change_member_role, membership=developer, role=Role.OWNER, actor=team.admin)

    assert error.status == 403
    developer.refresh_from_db()
    assert developer.role == Role.DEVELOPER


def test_owner_can_grant_owner(team: Team) -> None:
    developer = services.change_member_role(
        membership=team.membership(team.developer), role=Role.OWNER, actor=team.owner
    )
    assert developer.role == Role.OWNER
    assert team.membership(team.developer).role == Role.OWNER


def test_admin_cannot_demote_an_owner(team: Team) -> None:
    MembershipFactory(organization=team.org, role=Role.OWNER)
    owner = team.membership(team.owner)

    error = refused(services.change_member_role, membership=owner, role=Role.VIEWER, actor=team.admin)

    assert error.status == 403
    owner.refresh_from_db()
    assert owner.role == Role.OWNER


def test_admin_changes_developer_to_viewer_and_records_from_and_to(team: Team) -> None:
    services.change_member_role(
        membership=team.membership(team.developer), role=Role.VIEWER, actor=team.admin
    )

    assert team.membership(team.developer).role == Role.VIEWER
    event = AuditEvent.objects.get(action="member.role_changed")
    assert event.actor == team.admin
    assert event.target == "developer@acme.test"
    assert event.data == {"from": "developer", "to": "viewer"}


def test_changing_to_the_same_role_writes_nothing(team: Team) -> None:
    before = row_counts()
    services.change_member_role(
        membership=team.membership(team.developer), role=Role.DEVELOPER, actor=team.admin
    )
    assert row_counts() == before


@pytest.mark.parametrize("who", ["viewer", "developer"])
def test_changing_roles_needs_admin(team: Team, who: str) -> None:
    viewer = team.membership(team.viewer)
    error = refused(
        services.change_member_role, membership=viewer, role=Role.DEVELOPER, actor=getattr(team, who)
    )
    assert error.status == 403
    viewer.refresh_from_db()
    assert viewer.role == Role.VIEWER


def test_outsider_cannot_change_roles(team: Team) -> None:
    viewer = team.membership(team.viewer)
    error = refused(services.change_member_role, membership=viewer, role=Role.ADMIN, actor=team.outsider)
    assert error.status == 404
    viewer.refresh_from_db()
    assert viewer.role == Role.VIEWER


def test_changing_to_an_unknown_role_is_refused(team: Team) -> None:
    viewer = team.membership(team.viewer)
    error = refused(services.change_member_role, membership=viewer, role="superuser", actor=team.owner)
    assert error.field == "role"
    viewer.refresh_from_db()
    assert viewer.role == Role.VIEWER


# --- removing ----------------------------------------------------------------------------------
def test_last_owner_cannot_remove_themselves(team: Team) -> None:
    error = refused(services.remove_member, membership=team.membership(team.owner), actor=team.owner)
    assert error.status == 409
    assert team.membership(team.owner).role == Role.OWNER


def test_last_owner_cannot_leave(team: Team) -> None:
    error = refused(services.leave_organization, organization=team.org, user=team.owner)
    assert error.status == 409
    assert Membership.objects.filter(organization=team.org, user=team.owner).exists()


def test_admin_cannot_remove_an_owner(team: Team) -> None:
    MembershipFactory(organization=team.org, role=Role.OWNER)
    error = refused(services.remove_member, membership=team.membership(team.owner), actor=team.admin)
    assert error.status == 403
    assert Membership.objects.filter(organization=team.org, user=team.owner).exists()


def test_owner_can_remove_another_owner(team: Team) -> None:
    other = MembershipFactory(organization=team.org, role=Role.OWNER)
    services.remove_member(membership=other, actor=team.owner)
    assert not Membership.objects.filter(pk=other.pk).exists()


@pytest.mark.parametrize("who", ["viewer", "developer"])
def test_removing_someone_else_needs_admin(team: Team, who: str) -> None:
    error = refused(services.remove_member, membership=team.membership(team.admin), actor=getattr(team, who))
    assert error.status == 403


def test_outsider_cannot_remove_members(team: Team) -> None:
    error = refused(services.remove_member, membership=team.membership(team.viewer), actor=team.outsider)
    assert error.status == 404


def test_admin_removes_a_member_and_records_member_removed(team: Team) -> None:
    membership = team.membership(team.developer)
    services.remove_member(membership=membership, actor=team.admin)

    assert not Membership.objects.filter(pk=membership.pk).exists()
    event = AuditEvent.objects.get(organization=team.org)
    assert (event.action, event.actor, event.target) == ("member.removed", team.admin, "developer@acme.test")


def test_leaving_records_member_left(team: Team) -> None:
    services.leave_organization(organization=team.org, user=team.viewer)

    assert not Membership.objects.filter(organization=team.org, user=team.viewer).exists()
    event = AuditEvent.objects.get(organization=team.org)
    assert (event.action, event.actor, event.target) == ("member.left", team.viewer, "viewer@acme.test")


def test_removing_twice_is_a_noop(team: Team) -> None:
    membership = team.membership(team.developer)
    services.remove_member(membership=membership, actor=team.admin)
    before = row_counts()

    assert services.remove_member(membership=membership, actor=team.admin) is None

    assert row_counts() == before
    assert AuditEvent.objects.filter(action="member.removed").count() == 1


def test_leaving_an_organization_one_is_not_in_is_refused(team: Team) -> None:
    error = refused(services.leave_organization, organization=team.org, user=team.outsider)
    assert error.status == 404
