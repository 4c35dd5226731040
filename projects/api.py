"""The JSON API's tenancy part: organizations, members (read-only) and the audit log.

Also the scoping helpers every API endpoint uses: the access helpers of ``projects.access``
(404 for someone else's object, 403 for a too-low role), then the token's own limit to one
organization (404 elsewhere, like any object the caller cannot see).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest
from ninja import Router, Schema
from ninja.pagination import LimitOffsetPagination, paginate

from projects import services
from projects.access import (
    get_environment_for_user,
    get_membership_for_user,
    get_project_for_user,
)
from projects.models import ApiToken, AuditEvent, Environment, Membership, Organization, Project, Role, User
from projects.services import Origin

router = Router(tags=["organizations"])


# --- scoping -------------------------------------------------------------------------------------
def actor(request: HttpRequest) -> User:
    """The token's user (the API's auth class set ``request.user``)."""
    return cast(User, request.user)


def origin(request: HttpRequest) -> Origin:
    return Origin.from_request(request)


def token_of(request: HttpRequest) -> ApiToken | None:
    auth = getattr(request, "auth", None)
    return auth if isinstance(auth, ApiToken) else None


def within_token(request: HttpRequest, organization_id: int) -> None:
    token = token_of(request)
    if token is not None and token.organization_id and token.organization_id != organization_id:
        raise Http404


def _require(membership: Membership, role: str) -> None:
    if not membership.has_role(role):
        raise PermissionDenied(
            f"This needs the {Role(role).label.lower()} role or higher; you are "
            f"{Role(membership.role).label.lower()}."
        )


def scoped_membership(request: HttpRequest, org_id: int, role: str = Role.VIEWER) -> Membership:
    membership = get_membership_for_user(request, org_id)
    within_token(request, membership.organization_id)
    _require(membership, role)
    return membership


def scoped_project(request: HttpRequest, project_id: int, role: str = Role.VIEWER) -> Project:
    project = get_project_for_user(request, project_id)
    within_token(request, project.organization_id)
    _require(project.membership, role)  # type: ignore[attr-defined]
    return project


def scoped_environment(request: HttpRequest, environment_id: int, role: str = Role.VIEWER) -> Environment:
    environment = get_environment_for_user(request, environment_id)
    within_token(request, environment.project.organization_id)
    _require(environment.membership, role)  # type: ignore[attr-defined]
    return environment


def visible_organizations(request: HttpRequest) -> QuerySet[Organization]:
    orgs = Organization.objects.filter(memberships__user=actor(request))
    token = token_of(request)
    if token is not None and token.organization_id:
        orgs = orgs.filter(pk=token.organization_id)
    return orgs


PATH_LOOKUPS: dict[str, Callable[[HttpRequest, int], Any]] = {
    "org_id": scoped_membership,
    "project_id": scoped_project,
    "environment_id": scoped_environment,
}  # the apps above add theirs (stacks.api: operation_id)


def check_path_objects(request: HttpRequest) -> None:
    """Raise Http404 if an id in the URL names something the caller cannot see: a request
    with a bad body about someone else's object answers 404, like every other one."""
    match = getattr(request, "resolver_match", None)
    for name, value in (match.kwargs if match else {}).items():
        lookup = PATH_LOOKUPS.get(name)
        if lookup is not None:
            try:
                lookup(request, int(value))
            except (TypeError, ValueError):
                raise Http404 from None
            except PermissionDenied:
                pass  # visible: the validation error is the answer


# --- schemas -------------------------------------------------------------------------------------
class OrganizationOut(Schema):
    id: int
    name: str
    role: str
    created_at: datetime


class OrganizationIn(Schema):
    name: str


class MemberOut(Schema):
    id: int
    email: str
    role: str
    joined_at: datetime


class AuditEventOut(Schema):
    id: int
    created_at: datetime
    actor_email: str
    action: str
    target: str
    data: dict[str, Any]
    ip_address: str | None


def _organization_out(membership: Membership) -> dict[str, Any]:
    org = membership.organization
    return {"id": org.pk, "name": org.name, "role": membership.role, "created_at": org.created_at}


# --- endpoints -----------------------------------------------------------------------------------
@router.get("/organizations", response=list[OrganizationOut], summary="Your organizations")
def list_organizations(request: HttpRequest) -> list[dict[str, Any]]:
    memberships = Membership.objects.select_related("organization").filter(
        user=actor(request), organization__in=visible_organizations(request)
    )
    return [_organization_out(m) for m in memberships.order_by("organization__name", "organization_id")]


@router.get("/organizations/{int:org_id}", response=OrganizationOut, summary="One organization")
def get_organization(request: HttpRequest, org_id: int) -> dict[str, Any]:
    return _organization_out(scoped_membership(request, org_id))


@router.patch("/organizations/{int:org_id}", response=OrganizationOut, summary="Rename (admins)")
def rename_organization(request: HttpRequest, org_id: int, payload: OrganizationIn) -> dict[str, Any]:
    membership = scoped_membership(request, org_id, Role.ADMIN)
    services.rename_organization(
        organization=membership.organization, name=payload.name, actor=actor(request), origin=origin(request)
    )
    return _organization_out(membership)


@router.get("/organizations/{int:org_id}/members", response=list[MemberOut], summary="Members")
def list_members(request: HttpRequest, org_id: int) -> list[dict[str, Any]]:
    membership = scoped_membership(request, org_id)
    members = Membership.objects.select_related("user").filter(organization_id=membership.organization_id)
    return [
        {"id": m.pk, "email": m.user.email, "role": m.role, "joined_at": m.created_at}
        for m in members.order_by("created_at", "id")
    ]


@router.get("/organizations/{int:org_id}/audit", response=list[AuditEventOut], summary="Audit log (admins)")
@paginate(LimitOffsetPagination)
def audit_log(request: HttpRequest, org_id: int, q: str = "") -> QuerySet[AuditEvent]:
    membership = scoped_membership(request, org_id, Role.ADMIN)
    events = AuditEvent.objects.filter(organization_id=membership.organization_id)
    if q:
        q = q[:100]
        events = events.filter(Q(action__icontains=q) | Q(actor_email__icontains=q) | Q(target__icontains=q))
    return events
