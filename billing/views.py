"""Customer billing pages: plan, usage this month, the estimate, invoices. Thin: access
helper, one service or query function, render."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from billing import services
from billing.forms import ChangePlanForm
from billing.invoices import daily_usage, estimate_month, invoice_context
from billing.models import Invoice, Plan, Resource
from billing.quotas import downgrade_problems, plan_for, usage_summary
from billing.render import invoice_pdf as render_pdf
from projects.access import AuthedRequest, get_membership_for_user
from projects.models import Membership, Role
from projects.services import Origin, ServiceError

CHART_HEIGHT = 100
BAR_WIDTH = 10


@dataclass(frozen=True)
class Bar:
    x: int
    y: int
    height: int
    label: str


def usage_chart(membership: Membership) -> tuple[list[Bar], Decimal]:
    """CPU-hours per day of this month as SVG bars (coordinates only: no inline styles)."""
    days = daily_usage(membership.organization)
    peak = max((values[Resource.CPU] for _, values in days), default=Decimal("0"))
    bars = []
    for index, (day, values) in enumerate(days):
        cpu = values[Resource.CPU]
        height = int(CHART_HEIGHT * cpu / peak) if peak else 0
        bars.append(
            Bar(index * BAR_WIDTH, CHART_HEIGHT - height, height, f"{day:%d %b}: {cpu:.2f} CPU-hours")
        )
    return bars, peak


def _invoice_of(membership: Membership, invoice_id: int) -> Invoice:
    invoice = (
        Invoice.objects.select_related("organization")
        .filter(pk=invoice_id, organization_id=membership.organization_id)
        .first()
    )
    if invoice is None:
        raise Http404
    return invoice


def _partial(request: HttpRequest, template: str, name: str) -> str:
    return f"{template}#{name}" if request.htmx and not request.htmx.boosted else template  # type: ignore[attr-defined]


def _demo_page(request: AuthedRequest, membership: Membership, status: int = 200) -> HttpResponse:
    """A demo organization is not billed: no prices, quotas or plans to show."""
    context = {"membership": membership, "organization": membership.organization}
    return render(request, "billing/demo.html", context, status=status)


@login_required
@require_GET
def overview(request: AuthedRequest, org_id: int) -> HttpResponse:
    membership = get_membership_for_user(request, org_id)
    if membership.organization.is_demo:
        return _demo_page(request, membership)
    bars, peak = usage_chart(membership)
    context = {
        "membership": membership,
        "organization": membership.organization,
        "plan": plan_for(membership.organization),
        "subscription": getattr(membership.organization, "subscription", None),
        "quotas": usage_summary(membership.organization),
        "estimate": estimate_month(membership.organization),
        "bars": bars,
        "chart_width": max(len(bars), 1) * BAR_WIDTH,
        "peak": peak,
        "invoices": Invoice.objects.filter(organization=membership.organization)[:24],
        "can_change": membership.has_role(Role.ADMIN),
    }
    return render(request, _partial(request, "billing/overview.html", "usage"), context)


@login_required
@require_http_methods(["GET", "POST"])
def change_plan(request: AuthedRequest, org_id: int) -> HttpResponse:
    role = Role.ADMIN if request.method == "POST" else Role.VIEWER
    membership = get_membership_for_user(request, org_id, role=role)
    organization = membership.organization
    if organization.is_demo:
        return _demo_page(request, membership, status=403 if request.method == "POST" else 200)
    form = ChangePlanForm(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                subscription = services.change_plan(
                    organization=organization,
                    actor=request.user,
                    plan=form.cleaned_data["plan"],
                    origin=Origin.from_request(request),
                )
            except ServiceError as exc:
                form.add_error("plan" if exc.field == "plan" else None, exc.message)
                status = exc.status
            else:
                messages.success(request, f"You are on {subscription.plan.name} now.")
                return redirect("billing:overview", org_id=organization.pk)
    plans = [(p, downgrade_problems(organization, p)) for p in Plan.objects.filter(is_public=True)]
    context = {
        "membership": membership,
        "organization": organization,
        "form": form,
        "plans": plans,
        "current": plan_for(organization),
        "can_change": membership.has_role(Role.ADMIN),
    }
    return render(request, "billing/change_plan.html", context, status=status)


@login_required
@require_GET
def invoice(request: AuthedRequest, org_id: int, invoice_id: int) -> HttpResponse:
    membership = get_membership_for_user(request, org_id)
    context = {**invoice_context(_invoice_of(membership, invoice_id)), "membership": membership}
    return render(request, "billing/invoice.html", context)


@login_required
@require_GET
def invoice_pdf(request: AuthedRequest, org_id: int, invoice_id: int) -> HttpResponse:
    membership = get_membership_for_user(request, org_id)
    found = _invoice_of(membership, invoice_id)
    response = HttpResponse(render_pdf(found), content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="invoice-{found.number}.pdf"'
    return response
