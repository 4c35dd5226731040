"""Access helpers: every view reaches tenancy data through these.

Someone else's organization answers 404 (never 403), so ids do not leak what exists.
A member whose role is too low gets 403: they can see the organization, not change it.
"""

from __future__ import annotations

from allauth.account.models import EmailAddress
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import Http404, HttpRequest
from django_htmx.middleware import HtmxDetails

from projects.models import Environment, Invitation, Membership, Organization, Project, Role, User


class AuthedRequest(HttpRequest):
    """A request behind ``login_required``, with django-htmx's details (for type checking)."""

    user: User
    htmx: HtmxDetails


SESSION_KEY = "stackport_organization_id"


VIEW_AS_SESSION_KEY = "stackport_view_as"
VIEW_AS_PERMISSION = "projects.view_as_customer"


def view_as_organization_id(request: HttpRequest) -> int | None:
    """The organization a support engineer is viewing as its customer (portal.support_views),
    or None. Only staff who hold the permission now; a revoked permission ends it."""
    session = getattr(request, "session", None)
    data = session.get(VIEW_AS_SESSION_KEY) if session is not None else None
    user = getattr(request, "user", None)
    if not data or user is None or not user.is_authenticated:
        return None
    if not (user.is_staff and user.has_perm(VIEW_AS_PERMISSION)):
        return None
    return int(data["org"])


def view_as_membership(request: HttpRequest, org_id: int) -> Membership | None:
    """While viewing as a customer: a viewer membership in that organization, never saved."""

    organization = Organization.objects.filter(pk=org_id).first()
    if organization is None:
        return None
    return Membership(organization=organization, user=request.user, role=Role.VIEWER)  # type: ignore[misc]


def get_membership_for_user(request: HttpRequest, org_id: int, *, role: str = Role.VIEWER) -> Membership:
    """The signed-in user's membership in ``org_id``: 404 if none, 403 if the role is too low.
    While support views as a customer, only that organization answers, read-only."""
    if not request.user.is_authenticated:
        raise Http404
    viewing = view_as_organization_id(request)
    if viewing is not None:
        membership = view_as_membership(request, org_id) if viewing == org_id else None
    else:
        membership = (
            Membership.objects.select_related("organization")
            .filter(organization_id=org_id, user=request.user)
            .first()
        )
    if membership is None:
        raise Http404
    if not membership.has_role(role):
        raise PermissionDenied(f"This needs the {Role(role).label.lower()} role.")
    return membership


def get_member_of_org(membership: Membership, member_id: int) -> Membership:
    """Another membership in the same organization as ``membership``; 404 otherwise."""
    other = (
        Membership.objects.select_related("user", "organization")
        .filter(organization_id=membership.organization_id, pk=member_id)
        .first()
    )
    if other is None:
        raise Http404
    return other


def get_invitation_of_org(membership: Membership, invitation_id: int) -> Invitation:
    invitation = (
        Invitation.objects.select_related("organization")
        .filter(organization_id=membership.organization_id, pk=invitation_id)
        .first()
    )
    if invitation is None:
        raise Http404
    return invitation


def current_membership(request: HttpRequest) -> Membership | None:
    """The organization the user is working in (session choice, else their first)."""
    if hasattr(request, "_stackport_membership"):
        return request._stackport_membership  # type: ignore[attr-defined,no-any-return]
    membership = None
    viewing = view_as_organization_id(request)
    if viewing is not None:
        membership = view_as_membership(request, viewing)
    elif request.user.is_authenticated:
        memberships = Membership.objects.select_related("organization").filter(user=request.user)
        chosen = request.session.get(SESSION_KEY)
        membership = (chosen and memberships.filter(organization_id=chosen).first()) or memberships.order_by(
            "created_at", "id"
        ).first()
    request._stackport_membership = membership  # type: ignore[attr-defined]
    return membership


def set_current_organization(request: HttpRequest, membership: Membership) -> None:
    request.session[SESSION_KEY] = membership.organization_id
    request._stackport_membership = membership  # type: ignore[attr-defined]


def pending_invitations_for(user: User) -> list[Invitation]:
    """Open invitations to any of the user's verified addresses (case-insensitive), to
    organizations they are not in yet."""

    addresses = Q(pk__in=[])
    for address in EmailAddress.objects.filter(user=user, verified=True).values_list("email", flat=True):
        addresses |= Q(email__iexact=address)
    return list(
        Invitation.objects.pending()
        .select_related("organization", "invited_by")
        .filter(addresses)
        .exclude(organization__memberships__user=user)
    )


def get_project_for_user(request: HttpRequest, project_id: int, *, role: str = Role.VIEWER) -> Project:
    """A project of an organization the user belongs to: 404 otherwise, 403 if the role is
    too low. The membership is at ``project.membership``."""
    project = (
        Project.objects.select_related("organization", "region")
        .filter(pk=project_id, purged_at__isnull=True)  # deleted for good: gone for customers
        .first()
        if request.user.is_authenticated
        else None
    )
    if project is None:
        raise Http404
    project.membership = get_membership_for_user(  # type: ignore[attr-defined]
        request, project.organization_id, role=role
    )
    return project


def get_environment_for_user(
    request: HttpRequest, environment_id: int, *, role: str = Role.VIEWER
) -> Environment:
    """An environment (with its project and organization loaded) the user may see: 404
    otherwise, 403 if the role is too low. The membership is at ``environment.membership``."""
    environment = (
        Environment.objects.select_related(
            "project__organization", "project__region", "kernel", "framework", "template", "current_release"
        )
        .filter(pk=environment_id, project__purged_at__isnull=True)
        .first()
        if request.user.is_authenticated
        else None
    )
    if environment is None:
        raise Http404
    environment.membership = get_membership_for_user(  # type: ignore[attr-defined]
        request, environment.project.organization_id, role=role
    )
    return environment
