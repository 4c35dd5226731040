from __future__ import annotations

from typing import Any, cast

from django.conf import settings
from django.http import HttpRequest

from projects.access import current_membership
from projects.models import Membership, User


def site(request: HttpRequest) -> dict[str, Any]:
    """The portal's name as the hoster sets it (STACKPORT_SITE_NAME), for titles and the menu."""
    return {"site_name": settings.STACKPORT_SITE_NAME}


def organizations(request: HttpRequest) -> dict[str, Any]:
    """The current organization and the others the user can switch to (for the shell)."""
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    membership = current_membership(request)

    def _all() -> list[Membership]:
        return list(Membership.objects.select_related("organization").filter(user=cast(User, request.user)))

    return {
        "current_membership": membership,
        "current_organization": membership.organization if membership else None,
        "my_memberships": _all,  # callable: evaluated only when a template uses it
    }
