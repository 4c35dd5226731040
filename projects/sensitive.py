"""Gates in front of sensitive actions: a staff account's second factor, and a recent
re-authentication (allauth's own flow), named once for every app that needs them.

- ``staff_needs_mfa(user)``: a staff user without an active TOTP authenticator or security
  key (recovery codes alone do not count) while ``STACKPORT_STAFF_MFA_REQUIRED`` is on.
  ``portal.staff.StaffMFAMiddleware`` sends such a user from the admin, the support pages
  and "view as customer" to the account security page.
- ``require_recent_authentication(request)``: raises allauth's ``ReauthenticationRequired``
  unless the user re-authenticated within ``ACCOUNT_REAUTHENTICATION_TIMEOUT`` seconds (a
  sign-in alone does not count: allauth's rule). allauth's ``AccountMiddleware`` answers it
  with a redirect to its re-authentication page; a POST is kept and replayed once the user
  has re-authenticated, when the page sends them back to the same path.
- ``sensitive_action``: both gates around a Django admin action (suspend, resume, drain,
  move).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from allauth.account.decorators import reauthentication_required
from allauth.mfa.models import Authenticator
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

SECOND_FACTORS = (Authenticator.Type.TOTP, Authenticator.Type.WEBAUTHN)
MFA_MISSING = (
    "Staff accounts need two-factor authentication: set up an authenticator app or a "
    "security key before using the admin or the support pages."
)


def has_second_factor(user: Any) -> bool:
    """An active TOTP authenticator or security key; recovery codes alone are no factor."""
    return Authenticator.objects.filter(user=user, type__in=SECOND_FACTORS).exists()


def staff_needs_mfa(user: Any) -> bool:
    return bool(
        getattr(settings, "STACKPORT_STAFF_MFA_REQUIRED", True)
        and user.is_authenticated
        and user.is_staff
        and not has_second_factor(user)
    )


@reauthentication_required
def _recently_authenticated(request: HttpRequest) -> None:
    return None


def require_recent_authentication(request: HttpRequest) -> None:
    """allauth's ``reauthentication_required`` check, callable inside a view (after its
    own access checks) or an admin action. Also refuses a staff user without a second factor:
    a request replayed after re-authentication skips the middleware."""
    if staff_needs_mfa(request.user):
        raise PermissionDenied(MFA_MISSING)
    _recently_authenticated(request)


def sensitive_action(action: Callable[..., Any]) -> Callable[..., Any]:
    """For admin actions: ``@admin.action(...)`` above, this below."""

    @functools.wraps(action)
    def run(modeladmin: Any, request: HttpRequest, queryset: Any) -> Any:
        require_recent_authentication(request)
        return action(modeladmin, request, queryset)

    return run
