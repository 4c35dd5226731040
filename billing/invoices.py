"""Invoices: one per organization and calendar month (UTC), made once, never changed.

Lines: the plan fee prorated over the time on each plan (nothing while on trial); metered
usage per project and resource, with the plan's included resources (prorated the same
way) taken off in project order and the rest charged at the region's unit prices; then
staff charges and credits not yet invoiced. Credits never take a total below zero: what
is left over stays a credit for the next invoice. Every amount is rounded to the cent
per line, and the totals are sums of the lines.
"""

from __future__ import annotations

import calendar
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from billing import tasks
from billing.metering import METERED_STATUSES
from billing.models import (
    RESOURCE_UNITS,
    Adjustment,
    Invoice,
    InvoiceLine,
    LineKind,
    MeteringInterval,
    Plan,
    PlanPeriod,
    Resource,
    Subscription,
    UsageRecord,
)
from billing.payments import get_backend
from billing.pricing import MICRO, Catalog, Money, cents, default_currency, unit_prices
from projects.models import Environment, Organization
from projects.services import record_audit_event

if TYPE_CHECKING:
    from projects.models import User

ZERO = Decimal("0")
QUANTITY_FIELDS = {
    Resource.CPU: "cpu_hours",
    Resource.MEMORY: "memory_gb_hours",
    Resource.STORAGE: "storage_gb_hours",
}


def month_bounds(year: int, month: int) -> tuple[datetime, datetime]:
    start = datetime(year, month, 1, tzinfo=UTC)
    days = calendar.monthrange(year, month)[1]
    return start, start + timedelta(days=days)


def previous_month(moment: datetime) -> tuple[int, int]:
    first = moment.astimezone(UTC).date().replace(day=1)
    last = first - timedelta(days=1)
    return last.year, last.month


@dataclass
class Line:
    kind: str
    description: str
    amount: Decimal
    project_id: int | None = None
    project_name: str = ""
    region: str = ""
    resource: str = ""
    quantity: Decimal = ZERO
    included: Decimal = ZERO
    unit: str = ""
    unit_price: Decimal = ZERO


@dataclass
class Draft:
    """An invoice before it is saved (also the current month's estimate)."""

    currency: str
    plan_name: str
    lines: list[Line] = field(default_factory=list)
    adjustments: list[Adjustment] = field(default_factory=list)

    @property
    def subtotal(self) -> Decimal:
        return cents(sum((ln.amount for ln in self.lines if ln.kind != LineKind.CREDIT), ZERO))

    @property
    def credits(self) -> Decimal:
        return cents(-sum((ln.amount for ln in self.lines if ln.kind == LineKind.CREDIT), ZERO))

    @property
    def total(self) -> Decimal:
        return self.subtotal - self.credits

    @property
    def total_money(self) -> Money:
        return Money(self.total, self.currency)


def _periods(
    organization: Organization, start: datetime, end: datetime
) -> list[tuple[Plan, datetime, datetime]]:
    """(plan, from, to) of the time in [start, end) the organization was on each plan."""
    subscription = Subscription.objects.filter(organization=organization).first()
    if subscription is None:
        plan = Plan.objects.filter(is_default=True).first()
        begin = max(start, organization.created_at)
        return [(plan, begin, end)] if plan is not None and begin < end else []
    stop = min(end, subscription.cancelled_at) if subscription.cancelled_at else end
    periods = PlanPeriod.objects.select_related("plan").filter(
        Q(ended_at__isnull=True) | Q(ended_at__gt=start), subscription=subscription, started_at__lt=stop
    )
    result = []
    for period in periods:
        begin, finish = max(start, period.started_at), min(stop, period.ended_at or stop)
        if begin < finish:
            result.append((period.plan, begin, finish))
    return result


def _plan_lines(
    organization: Organization, start: datetime, end: datetime
) -> tuple[list[Line], dict[str, Decimal], Plan | None]:
    """The prorated plan fee lines, the included resources for the month and the last plan."""
    month = Decimal((end - start).total_seconds())
    subscription = Subscription.objects.filter(organization=organization).first()
    trial_ends = subscription.trial_ends_at if subscription else None
    lines: list[Line] = []
    included = {r.value: ZERO for r in Resource}
    last = None
    for plan, begin, finish in _periods(organization, start, end):
        last = plan
        share = Decimal((finish - begin).total_seconds()) / month
        for resource in Resource:
            included[resource.value] += (plan.included(resource) * share).quantize(MICRO)
        paid_from = max(begin, trial_ends) if trial_ends else begin
        paid = Decimal(max(0, (finish - paid_from).total_seconds())) / month
        whole = begin == start and finish == end and paid_from == begin
        span = "" if whole else f", {begin:%d %b %H:%M}–{finish - timedelta(seconds=1):%d %b %H:%M} UTC"
        trial = f" (trial until {trial_ends:%d %b})" if trial_ends and trial_ends > begin else ""
        lines.append(
            Line(
                kind=LineKind.PLAN,
                description=f"Plan {plan.name}{span}{trial}",
                quantity=paid.quantize(MICRO),
                unit="month",
                unit_price=plan.monthly_price,
                amount=cents(plan.monthly_price * paid),
            )
        )
    return lines, included, last


UsageKey = tuple[int | None, str, str]  # project id, project name, region


def metered_usage(
    organization: Organization, start: datetime, end: datetime
) -> dict[UsageKey, dict[str, Decimal]]:
    """Resource-hours per project and region from the usage records of [start, end)."""
    rows = (
        UsageRecord.objects.filter(
            organization=organization, interval_start__gte=start, interval_start__lt=end
        )
        .values("project_id", "project_name", "region")
        .annotate(**{r.value: Sum(QUANTITY_FIELDS[r]) for r in Resource})
        .order_by()
    )
    usage: dict[UsageKey, dict[str, Decimal]] = {}
    for row in rows:
        usage[(row["project_id"], row["project_name"], row["region"])] = {
            r.value: row[r.value] or ZERO for r in Resource
        }
    return usage


def _usage_lines(usage: dict[UsageKey, dict[str, Decimal]], included: dict[str, Decimal]) -> list[Line]:
    remaining = dict(included)
    lines = []
    for key in sorted(usage, key=lambda k: (k[1].lower(), k[0] or 0, k[2])):
        project_id, project_name, region = key
        prices, _ = unit_prices(region)
        for resource in Resource:
            quantity = usage[key][resource.value]
            if quantity <= 0:
                continue
            covered = min(quantity, remaining[resource.value])
            remaining[resource.value] -= covered
            lines.append(
                Line(
                    kind=LineKind.USAGE,
                    description=f"{project_name}: {resource.label} ({region})",
                    project_id=project_id,
                    project_name=project_name,
                    region=region,
                    resource=resource.value,
                    quantity=quantity,
                    included=covered,
                    unit=RESOURCE_UNITS[resource],
                    unit_price=prices[resource.value],
                    amount=cents((quantity - covered) * prices[resource.value]),
                )
            )
    return lines


def _adjustment_lines(draft: Draft, adjustments: list[Adjustment]) -> list[tuple[Adjustment, Decimal]]:
    """Charges first, then credits up to what is owed; (adjustment, amount used) pairs."""
    used = []
    for adj in sorted(adjustments, key=lambda a: (a.kind != Adjustment.Kind.CHARGE, a.created_at, a.pk or 0)):
        if adj.kind == Adjustment.Kind.CHARGE:
            draft.lines.append(Line(kind=LineKind.ADJUSTMENT, description=adj.description, amount=adj.amount))
            used.append((adj, adj.amount))
            continue
        amount = min(adj.amount, draft.total)
        if amount <= 0:
            continue
        draft.lines.append(Line(kind=LineKind.CREDIT, description=adj.description, amount=-amount))
        used.append((adj, amount))
    return used


def build(
    organization: Organization,
    start: datetime,
    end: datetime,
    *,
    usage: dict[UsageKey, dict[str, Decimal]] | None = None,
    adjustments: list[Adjustment] | None = None,
) -> tuple[Draft, list[tuple[Adjustment, Decimal]]]:
    plan_lines, included, plan = _plan_lines(organization, start, end)
    usage = metered_usage(organization, start, end) if usage is None else usage
    draft = Draft(
        currency=plan.currency if plan else default_currency(),
        plan_name=plan.name if plan else "",
        lines=plan_lines + _usage_lines(usage, included),
    )
    used = _adjustment_lines(draft, adjustments or [])
    return draft, used


def _save(organization: Organization, start: datetime, end: datetime, draft: Draft) -> Invoice:
    invoice = Invoice.objects.create(
        organization=organization,
        number=f"{start:%Y%m}-{organization.pk:06d}",
        period_start=start.date(),
        period_end=(end - timedelta(days=1)).date(),
        currency=draft.currency,
        plan_name=draft.plan_name,
        subtotal=draft.subtotal,
        credits=draft.credits,
        total=draft.total,
        due_on=timezone.now().date() + timedelta(days=int(settings.STACKPORT_INVOICE_DUE_DAYS)),
    )
    InvoiceLine.objects.bulk_create(
        InvoiceLine(
            invoice=invoice,
            kind=ln.kind,
            description=ln.description[:200],
            project_id=ln.project_id,
            project_name=ln.project_name,
            region=ln.region,
            resource=ln.resource,
            quantity=ln.quantity,
            included=ln.included,
            unit=ln.unit,
            unit_price=ln.unit_price,
            amount=ln.amount,
            position=position,
        )
        for position, ln in enumerate(draft.lines)
    )
    return invoice


def _take_adjustments(invoice: Invoice, used: list[tuple[Adjustment, Decimal]]) -> None:
    """Attach the adjustments to the invoice; a credit only partly used leaves its rest as a new credit."""
    for adj, amount in used:
        Adjustment.objects.filter(pk=adj.pk, invoice__isnull=True).update(invoice=invoice)
        if adj.kind == Adjustment.Kind.CREDIT and amount < adj.amount:
            Adjustment.objects.filter(pk=adj.pk).update(amount=amount)
            Adjustment.objects.create(
                organization=adj.organization,
                kind=adj.kind,
                amount=adj.amount - amount,
                currency=adj.currency,
                description=f"{adj.description} (rest)"[:200],
                created_by=adj.created_by,
                created_at=adj.created_at,
            )


def generate_invoice(
    *, organization: Organization, month: int | date, year: int | None = None, actor: User | None = None
) -> Invoice:
    """The organization's invoice for the month (``year`` and ``month``, or a date in it),
    made if it does not exist yet: a second call, or two at once, return the same invoice.
    E-mailed to the owners after commit."""
    if isinstance(month, date):
        year, month = month.year, month.month
    if year is None:
        raise TypeError("generate_invoice needs a year with a month number")
    start, end = month_bounds(year, month)
    with transaction.atomic():
        Organization.objects.select_for_update().filter(pk=organization.pk).first()
        existing = Invoice.objects.filter(organization=organization, period_start=start.date()).first()
        if existing is not None:
            return existing
        pending = list(
            Adjustment.objects.select_for_update().filter(
                organization=organization, invoice__isnull=True, created_at__lt=end
            )
        )
        draft, used = build(organization, start, end, adjustments=pending)
        try:
            with transaction.atomic():
                invoice = _save(organization, start, end, draft)
        except IntegrityError:
            return Invoice.objects.get(organization=organization, period_start=start.date())
        _take_adjustments(invoice, used)
        record_audit_event(
            action="billing.invoice.issue",
            actor=actor,
            organization=organization,
            target=f"invoice {invoice.number}",
            data={"total": str(invoice.total), "currency": invoice.currency},
        )
        transaction.on_commit(lambda: _mail_later(invoice.pk))
    return invoice


def _mail_later(invoice_id: int) -> None:
    tasks.send_invoice_email_task.delay(invoice_id)


def organizations_to_invoice(year: int, month: int) -> list[Organization]:
    """Organizations with a plan or usage in the month and no invoice for it yet."""
    start, end = month_bounds(year, month)
    with_usage = UsageRecord.objects.filter(interval_start__gte=start, interval_start__lt=end).values(
        "organization_id"
    )
    subscribed = (
        Subscription.objects.filter(started_at__lt=end)
        .filter(Q(cancelled_at__isnull=True) | Q(cancelled_at__gt=start))
        .values("organization_id")
    )
    return list(
        Organization.objects.filter(Q(pk__in=with_usage) | Q(pk__in=subscribed))
        # Sales demos are the hoster's own cost and are removed whole when they expire.
        .exclude(is_demo=True)
        .exclude(invoices__period_start=start.date())
        .order_by("pk")
    )


def generate_invoices(now: datetime | None = None) -> int:
    """Last month's invoices for everyone who has none yet; the number made."""
    year, month = previous_month(now or timezone.now())
    made = 0
    for organization in organizations_to_invoice(year, month):
        generate_invoice(organization=organization, year=year, month=month)
        made += 1
    return made


# --- this month so far, and the estimate -----------------------------------------------------------
def _running_rates(organization: Organization) -> dict[UsageKey, dict[str, Decimal]]:
    """Resource per hour of what runs now, per project and region."""

    catalog = Catalog()
    rates: dict[UsageKey, dict[str, Decimal]] = defaultdict(lambda: {r.value: ZERO for r in Resource})
    environments = (
        Environment.objects.filter(
            project__organization=organization, status__in=METERED_STATUSES, desired_running=True
        )
        .select_related("project__region")
        .prefetch_related("components__component", "components__size")
    )
    for env in environments:
        key = (env.project_id, env.project.name, env.project.region.code)
        for sc in env.components.all():
            use = catalog.use({"component": sc.component.code, "size": sc.size.code, "replicas": sc.replicas})
            for resource in Resource:
                rates[key][resource.value] += use.per_hour(resource)
    return rates


def estimate_month(organization: Organization, now: datetime | None = None) -> Draft:
    """This month's bill if what runs now keeps running: metered usage so far plus what runs
    now for the rest of the month."""
    now = now or timezone.now()
    start, end = month_bounds(now.year, now.month)
    usage = metered_usage(organization, start, end)
    # From the end of what is metered: intervals not metered yet are assumed to run as now.
    metered_until = (
        MeteringInterval.objects.filter(finished_at__isnull=False, end__gt=start, end__lte=end)
        .order_by("-end")
        .values_list("end", flat=True)
        .first()
    )
    hours_left = (
        Decimal((end - (metered_until or max(start, organization.created_at))).total_seconds()) / 3600
    )
    for key, rate in _running_rates(organization).items():
        current = usage.setdefault(key, {r.value: ZERO for r in Resource})
        for resource, per_hour in rate.items():
            current[resource] += (per_hour * hours_left).quantize(MICRO)
    pending = list(Adjustment.objects.filter(organization=organization, invoice__isnull=True))
    draft, _ = build(organization, start, end, usage=usage, adjustments=pending)
    return draft


def daily_usage(
    organization: Organization, now: datetime | None = None
) -> list[tuple[date, dict[str, Decimal]]]:
    """Resource-hours per day of this month so far (for the chart)."""

    now = now or timezone.now()
    start, _ = month_bounds(now.year, now.month)
    rows = (
        UsageRecord.objects.filter(organization=organization, interval_start__gte=start)
        .annotate(day=TruncDate("interval_start", tzinfo=UTC))
        .values("day")
        .annotate(**{r.value: Sum(QUANTITY_FIELDS[r]) for r in Resource})
        .order_by("day")
    )
    by_day = {row["day"]: {r.value: row[r.value] or ZERO for r in Resource} for row in rows}
    days = []
    for offset in range(now.astimezone(UTC).day):
        day = start.date() + timedelta(days=offset)
        days.append((day, by_day.get(day, {r.value: ZERO for r in Resource})))
    return days


def invoice_context(invoice: Invoice) -> dict[str, Any]:
    lines = list(invoice.lines.all())
    return {
        "invoice": invoice,
        "organization": invoice.organization,
        "lines": lines,
        "plan_lines": [ln for ln in lines if ln.kind == LineKind.PLAN],
        "usage_lines": [ln for ln in lines if ln.kind == LineKind.USAGE],
        "other_lines": [ln for ln in lines if ln.kind in (LineKind.ADJUSTMENT, LineKind.CREDIT)],
        "payment_instructions": get_backend().instructions(invoice),
        "issuer": settings.STACKPORT_INVOICE_ISSUER,
        "issuer_lines": [part.strip() for part in settings.STACKPORT_INVOICE_ISSUER.split("|")],
    }
