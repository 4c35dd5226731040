"""Support staff's pages outside Django admin: "view as customer" and "start a demo".

Viewing as a customer puts the organization's id in the staff user's session; the access
helpers (``projects.access``) then answer for that organization only, with a viewer
membership that is never saved, and ``ViewAsMiddleware`` refuses every unsafe request but
the one that stops it. Start and stop are in the audit log.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from portal.demos import (
    EXTEND_HOURS,
    START_PERMISSION,
    demo_lifetime,
    duration_text,
    end_demo_now,
    extend_demo,
    running_demos,
    start_demo,
)
from projects.access import VIEW_AS_PERMISSION, VIEW_AS_SESSION_KEY, AuthedRequest
from projects.models import Organization
from projects.sensitive import require_recent_authentication
from projects.services import Origin, ServiceError, record_audit_event
from stacks.models import StackTemplate

SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")


class ViewAsMiddleware:
    """Read-only while viewing as a customer: unsafe methods answer 403, except stopping
    the session and signing out. A session whose user lost the permission is ended."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        session = getattr(request, "session", None)
        if session is not None and session.get(VIEW_AS_SESSION_KEY):
            user = request.user
            if not (user.is_authenticated and user.is_staff and user.has_perm(VIEW_AS_PERMISSION)):
                session.pop(VIEW_AS_SESSION_KEY, None)
            elif request.method not in SAFE_METHODS:
                if request.path == reverse("account_logout"):
                    _record_stop(request, session[VIEW_AS_SESSION_KEY], ended_by="sign-out")
                elif request.path != reverse("support:view_as_stop"):
                    return render(
                        request,
                        "403.html",
                        {
                            "exception": "You are viewing as a customer: read-only. "
                            "Stop viewing as the customer to make changes."
                        },
                        status=403,
                    )
        return self.get_response(request)


def _record_stop(request: HttpRequest, data: dict[str, Any], *, ended_by: str) -> Organization | None:
    organization = Organization.objects.filter(pk=int(data.get("org") or 0)).first()
    record_audit_event(
        action="support.view_as.stop",
        actor=request.user,  # type: ignore[arg-type]
        organization=organization,
        target=f"organization {data.get('org')}",
        data={"started": data.get("started", ""), "ended_by": ended_by},
        origin=Origin.from_request(request),
    )
    return organization


def _require_staff_permission(request: AuthedRequest, permission: str) -> None:
    if not request.user.is_staff:
        raise Http404
    if not request.user.has_perm(permission):
        raise PermissionDenied("This needs a permission you do not have.")


@login_required
@require_POST
def view_as_start(request: AuthedRequest, org_id: int) -> HttpResponse:
    _require_staff_permission(request, VIEW_AS_PERMISSION)
    require_recent_authentication(request)  # allauth's page, then this POST again
    organization = get_object_or_404(Organization, pk=org_id)
    request.session[VIEW_AS_SESSION_KEY] = {
        "org": organization.pk,
        "name": organization.name,
        "started": timezone.now().isoformat(),
    }
    request.session.pop("stackport_organization_id", None)
    record_audit_event(
        action="support.view_as.start",
        actor=request.user,
        organization=organization,
        target=f"organization {organization.pk}",
        origin=Origin.from_request(request),
    )
    return redirect("portal:dashboard")


@login_required
@require_POST
def view_as_stop(request: AuthedRequest) -> HttpResponse:
    data = request.session.pop(VIEW_AS_SESSION_KEY, None)
    if not data:
        return redirect("portal:dashboard")
    organization = _record_stop(request, data, ended_by="stop")
    if organization is not None and request.user.is_staff:
        return redirect("admin:projects_organization_change", organization.pk)
    return redirect("portal:dashboard")


@never_cache  # the page shows the demo's password once
@login_required
@require_http_methods(["GET", "POST"])
def demo_start(request: AuthedRequest) -> HttpResponse:
    _require_staff_permission(request, START_PERMISSION)
    templates = StackTemplate.objects.filter(is_active=True).order_by("position", "code")
    context: dict[str, object] = {
        "templates": templates,
        "lifetime": duration_text(demo_lifetime()),
        "running": running_demos(),
        "extend_choices": [(h, duration_text(timedelta(hours=h))) for h in EXTEND_HOURS],
    }
    if request.method == "POST":
        try:
            login = start_demo(
                actor=request.user,
                template=request.POST.get("template", ""),
                prospect=request.POST.get("prospect", ""),
                origin=Origin.from_request(request),
            )
        except ServiceError as exc:
            messages.error(request, exc.message)
            return render(request, "support/demo_start.html", context, status=exc.status)
        context["login"] = login
        return render(request, "support/demo_start.html", context)
    return render(request, "support/demo_start.html", context)


def _demo(org_id: int) -> Organization:
    return get_object_or_404(Organization, pk=org_id, is_demo=True)


@login_required
@require_POST
def demo_extend(request: AuthedRequest, org_id: int) -> HttpResponse:
    _require_staff_permission(request, START_PERMISSION)
    organization = _demo(org_id)
    try:
        hours = int(request.POST.get("hours", ""))
    except ValueError:
        hours = 0
    try:
        extended = extend_demo(
            organization=organization, actor=request.user, hours=hours, origin=Origin.from_request(request)
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{extended.name} now ends {extended.demo_expires_at:%Y-%m-%d %H:%M} UTC.")
    return redirect("support:demo_start")


@login_required
@require_POST
def demo_end(request: AuthedRequest, org_id: int) -> HttpResponse:
    """End a running demo now, after a confirmation page (the first POST shows it)."""
    _require_staff_permission(request, START_PERMISSION)
    organization = _demo(org_id)
    if request.POST.get("confirmed") != "yes":
        return render(request, "support/demo_end_confirm.html", {"organization": organization})
    try:
        end_demo_now(organization=organization, actor=request.user, origin=Origin.from_request(request))
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{organization.name} is ending: its stacks are being removed.")
    return redirect("support:demo_start")
