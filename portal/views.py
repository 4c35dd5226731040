"""The signed-in shell (dashboard, account security page) and the endpoints machines call:
health and metrics."""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from allauth.mfa.models import Authenticator
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseServerError, JsonResponse
from django.shortcuts import redirect, render
from django.template import loader
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods
from django_prometheus.exports import ExportToDjangoView

from portal.dashboard import archive_context, archived_projects, dashboard_context
from portal.security import security_context
from projects.access import AuthedRequest, current_membership, get_project_for_user, pending_invitations_for
from projects.models import Role
from projects.services import Origin, ServiceError, client_ip, invitation_token, purge_project


def server_error(request: HttpRequest) -> HttpResponse:
    """The styled 500 page with the site's name. Rendered without the request (no context
    processors, no database) and never raising itself: on any failure a plain page."""
    try:
        name = str(getattr(settings, "STACKPORT_SITE_NAME", "") or "Stackport")
        body = loader.get_template("500.html").render({"site_name": name})
    except Exception:  # noqa: BLE001 - the error page itself must not fail
        body = "<!DOCTYPE html><title>Server error</title><h1>Something went wrong on our side</h1>"
    return HttpResponseServerError(body)


@login_required
@require_GET
def dashboard(request: AuthedRequest) -> HttpResponse:
    """The organization's projects and environments, live status and what needs attention."""
    membership = current_membership(request)
    context: dict[str, Any] = {"membership": membership}
    if membership is not None:
        context.update(dashboard_context(membership.organization, request.GET.get("page")))
    if request.htmx and not request.htmx.boosted:
        return render(request, "portal/dashboard.html#status", context)
    context["invitations"] = [(inv, invitation_token(inv)) for inv in pending_invitations_for(request.user)]
    if membership is not None and not context["page"].paginator.count:
        context["mfa_enabled"] = Authenticator.objects.filter(user=request.user).exists()
        context["member_count"] = membership.organization.memberships.count()
    return render(request, "portal/dashboard.html", context)


@login_required
@require_GET
def archive(request: AuthedRequest) -> HttpResponse:
    """Destroyed projects of the organization: read-only, with when and by whom."""
    membership = current_membership(request)
    if membership is None:
        raise Http404
    context = {
        "membership": membership,
        "can_purge": membership.has_role(Role.ADMIN),
        **archive_context(membership.organization, request.GET.get("page")),
    }
    return render(request, "portal/archive.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def archive_delete(request: AuthedRequest, project_id: int) -> HttpResponse:
    """GET: what deleting an archived project for good means (typed confirmation); POST: do it
    (projects.services.purge_project), back to the archive."""
    project = get_project_for_user(request, project_id, role=Role.ADMIN)
    if not archived_projects(project.organization).filter(pk=project.pk).exists():
        raise Http404("Not an archived project")
    error, status = "", 200
    if request.method == "POST":
        try:
            purge_project(
                project=project,
                actor=request.user,
                confirmation=str(request.POST.get("confirmation", ""))[:200],
                origin=Origin.from_request(request),
            )
        except ServiceError as exc:
            error, status = exc.message, exc.status
        else:
            messages.success(request, f"{project.name} was deleted for good.")
            return redirect(reverse("portal:archive"))
    return render(request, "portal/archive_delete.html", {"project": project, "error": error}, status=status)


@login_required
@require_GET
def security(request: AuthedRequest) -> HttpResponse:
    """Two-factor authentication, open sessions and recent sign-ins of the signed-in user."""
    return render(request, "portal/security.html", security_context(request))


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """For load balancers: 200 when the database and the cache answer, 503 otherwise."""
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure is "down" for a health check
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        cache.set("stackport:healthz", "1", timeout=10)
        checks["cache"] = "ok" if cache.get("stackport:healthz") == "1" else "error: no read-back"
    except Exception as exc:  # noqa: BLE001
        checks["cache"] = f"error: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "error", "checks": checks}, status=200 if healthy else 503
    )


def _metrics_allowed(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    auth = request.META.get("HTTP_AUTHORIZATION", "")
    if token and auth.startswith("Bearer ") and hmac.compare_digest(auth[7:], token):
        return True
    try:
        address = ipaddress.ip_address(client_ip(request) or "")
    except ValueError:
        return False
    return any(address in net for net in settings.METRICS_ALLOWED_NETWORKS)


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics, for the monitoring network only: others get 404."""
    if not _metrics_allowed(request):
        raise Http404
    return ExportToDjangoView(request)
