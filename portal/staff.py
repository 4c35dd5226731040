"""Staff accounts need a second factor before the admin, the support pages and "view as
customer" (``STACKPORT_STAFF_MFA_REQUIRED``, on by default).

``StaffMFAMiddleware`` sends a staff user without an active TOTP authenticator or security
key (recovery codes alone do not count) to the account security page, with a message saying
why; a "view as customer" session of such a user ends. Signing out and stopping view-as stay
open. The gates themselves (and recent re-authentication) are in ``projects.sensitive``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect

from projects.access import VIEW_AS_SESSION_KEY
from projects.sensitive import MFA_MISSING, staff_needs_mfa

GUARDED_NAMESPACES = ("admin", "support")
ALWAYS_OPEN = ("support:view_as_stop", "admin:logout", "account_logout")


class StaffMFAMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view_func: Any, view_args: Any, view_kwargs: Any
    ) -> HttpResponse | None:
        user = getattr(request, "user", None)
        match = request.resolver_match
        if user is None or match is None or not user.is_authenticated or not user.is_staff:
            return None
        viewing_as = bool(request.session.get(VIEW_AS_SESSION_KEY))
        guarded = viewing_as or any(ns in GUARDED_NAMESPACES for ns in match.namespaces)
        if not guarded or match.view_name in ALWAYS_OPEN or not staff_needs_mfa(user):
            return None
        request.session.pop(VIEW_AS_SESSION_KEY, None)
        messages.warning(request, MFA_MISSING)
        return redirect("portal:security")
