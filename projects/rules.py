"""Permission predicates (django-rules) over an organization, by membership role."""

from __future__ import annotations

import rules

from projects.models import Membership, Organization, Role


def _has_role(user: object, organization: Organization | None, role: str) -> bool:
    user_id = getattr(user, "pk", None)
    if organization is None or user_id is None:
        return False
    membership = Membership.objects.filter(organization=organization, user_id=user_id).only("role").first()
    return membership is not None and membership.has_role(role)


@rules.predicate
def is_member(user: object, organization: Organization | None) -> bool:
    return _has_role(user, organization, Role.VIEWER)


@rules.predicate
def is_admin(user: object, organization: Organization | None) -> bool:
    return _has_role(user, organization, Role.ADMIN)


@rules.predicate
def is_owner(user: object, organization: Organization | None) -> bool:
    return _has_role(user, organization, Role.OWNER)


rules.add_perm("projects.view_organization", is_member)
rules.add_perm("projects.manage_members", is_admin)
rules.add_perm("projects.view_audit_log", is_admin)
rules.add_perm("projects.grant_owner", is_owner)
