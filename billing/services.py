"""Every write to billing data except metering and invoices (``billing.metering``,
``billing.invoices``): subscriptions, plan changes, staff adjustments, payments and the
plans file. One transaction each, an audit row, e-mails queued on commit.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from django.db import transaction
from django.utils import timezone

from billing.models import (
    SUBSCRIPTION_TRANSITIONS,
    Adjustment,
    Invoice,
    InvoiceStatus,
    Plan,
    PlanPeriod,
    Price,
    PriceList,
    Resource,
    Subscription,
    SubscriptionStatus,
)
from billing.pricing import cents, default_currency
from billing.quotas import downgrade_problems, plan_for
from projects.models import Organization, Role
from projects.services import Origin, ServiceError, record_audit_event, require_role
from stacks.models import Region
from stacks.runtime import disk

if TYPE_CHECKING:
    from projects.models import User

PLANS_FILE = Path(__file__).resolve().parent / "plans.yaml"

__all__ = ["add_adjustment", "change_plan", "load_plans", "mark_invoice_paid", "plan_for", "start_trial"]


# --- subscriptions ---------------------------------------------------------------------------------
@transaction.atomic
def start_trial(*, organization: Organization, origin: Origin | None = None) -> Subscription | None:
    """A new organization's subscription to the default plan (a trial if the plan has one).
    Nothing when no default plan exists or the organization has a subscription."""
    plan = Plan.objects.filter(is_default=True).first()
    if plan is None or Subscription.objects.filter(organization=organization).exists():
        return None
    now = timezone.now()
    subscription = Subscription.objects.create(
        organization=organization,
        plan=plan,
        status=SubscriptionStatus.TRIAL if plan.trial_days else SubscriptionStatus.ACTIVE,
        started_at=now,
        trial_ends_at=now + timedelta(days=plan.trial_days) if plan.trial_days else None,
    )
    PlanPeriod.objects.create(subscription=subscription, plan=plan, started_at=now)
    record_audit_event(
        action="billing.subscription.start",
        organization=organization,
        target=f"plan {plan.code}",
        data={"status": subscription.status},
        origin=origin,
    )
    return subscription


def _subscription(organization: Organization) -> Subscription:
    """The organization's subscription, made on the default plan if it has none (locked)."""
    subscription = Subscription.objects.select_for_update().filter(organization=organization).first()
    if subscription is not None:
        return subscription
    plan = Plan.objects.filter(is_default=True).first()
    if plan is None:
        raise ServiceError("No plans are set up yet; ask support.", status=409)
    subscription = Subscription.objects.create(organization=organization, plan=plan)
    PlanPeriod.objects.create(subscription=subscription, plan=plan, started_at=subscription.started_at)
    return subscription


@transaction.atomic
def change_plan(
    *,
    organization: Organization,
    actor: User | None,
    plan: Plan | str,
    origin: Origin | None = None,
    system: bool = False,
) -> Subscription:
    """Move the organization to ``plan`` at once; the plan fee is prorated by the time on
    each plan. A plan whose limits the current use exceeds is refused, saying which.
    ``system``: billing staff acting (any plan, no role check)."""
    if not system:
        if actor is None:
            raise ServiceError("Sign in first.", status=403)
        require_role(actor, organization, Role.ADMIN)
        if organization.is_demo:
            raise ServiceError("A demo has no plan to change.", status=403)
    target = plan if isinstance(plan, Plan) else Plan.objects.filter(code=plan).first()
    if target is None or (not system and not target.is_public):
        raise ServiceError("Choose one of the offered plans.", field="plan")
    subscription = _subscription(organization)
    if subscription.plan_id == target.pk and subscription.status != SubscriptionStatus.CANCELLED:
        raise ServiceError(f"You are on {target.name} already.", field="plan")
    problems = downgrade_problems(organization, target)
    if problems:
        raise ServiceError(
            f"{target.name} is too small for what you run: " + " ".join(problems) + " Scale down first.",
            field="plan",
            status=409,
        )
    now = timezone.now()
    previous = subscription.plan
    PlanPeriod.objects.filter(subscription=subscription, ended_at__isnull=True).update(ended_at=now)
    PlanPeriod.objects.create(subscription=subscription, plan=target, started_at=now)
    subscription.plan = target
    fields = ["plan"]
    if subscription.status in (SubscriptionStatus.TRIAL, SubscriptionStatus.CANCELLED):
        # Choosing a plan ends the trial: the new plan is paid from now.
        subscription.status = SubscriptionStatus.ACTIVE
        subscription.trial_ends_at = min(subscription.trial_ends_at or now, now)
        subscription.cancelled_at = None
        fields += ["status", "trial_ends_at", "cancelled_at"]
    subscription.save(update_fields=fields)
    if (target.volume_size_gb or 0) > (previous.volume_size_gb or 0) and previous.volume_size_gb:
        disk.grow_volumes(organization=organization)  # volumes made with the old size grow now
    record_audit_event(
        action="billing.plan.change",
        actor=actor,
        organization=organization,
        target=f"plan {target.code}",
        data={"from": previous.code, "to": target.code},
        origin=origin,
    )
    return subscription


@transaction.atomic
def set_subscription_status(
    *, subscription: Subscription, status: str, actor: User | None, origin: Origin | None = None
) -> Subscription:
    """Staff (or the overdue check) move a subscription along its allowed transitions."""
    locked = Subscription.objects.select_for_update().get(pk=subscription.pk)
    if status not in SUBSCRIPTION_TRANSITIONS.get(locked.status, set()):
        raise ServiceError(f"A {locked.get_status_display().lower()} subscription cannot become {status}.")
    old = locked.status
    locked.status = status
    locked.cancelled_at = timezone.now() if status == SubscriptionStatus.CANCELLED else None
    locked.save(update_fields=["status", "cancelled_at"])
    record_audit_event(
        action="billing.subscription.status",
        actor=actor,
        organization=locked.organization,
        target=f"subscription {locked.pk}",
        data={"from": old, "to": status},
        origin=origin,
    )
    return locked


def end_trials() -> int:
    """Trials whose time is up become active subscriptions (their plan fee runs from then)."""
    return Subscription.objects.filter(
        status=SubscriptionStatus.TRIAL, trial_ends_at__lte=timezone.now()
    ).update(status=SubscriptionStatus.ACTIVE)


def mark_overdue() -> int:
    """Subscriptions with an issued invoice past its due date become past due."""
    overdue = Invoice.objects.filter(status=InvoiceStatus.ISSUED, due_on__lt=timezone.now().date())
    return Subscription.objects.filter(
        status=SubscriptionStatus.ACTIVE, organization__in=overdue.values("organization")
    ).update(status=SubscriptionStatus.PAST_DUE)


# --- staff: credits, charges, payments --------------------------------------------------------------
def clean_amount(value: Any) -> Decimal:
    try:
        amount = cents(Decimal(str(value)))
    except (InvalidOperation, ValueError) as exc:
        raise ServiceError("Give the amount as a number, e.g. 12.50.", field="amount") from exc
    if amount <= 0:
        raise ServiceError("The amount must be more than zero.", field="amount")
    return amount


@transaction.atomic
def add_adjustment(
    *,
    organization: Organization,
    actor: User | None,
    kind: str,
    amount: Any,
    description: str,
    currency: str | None = None,
    origin: Origin | None = None,
) -> Adjustment:
    """A credit or a charge from billing staff, taken into the next invoice."""
    if actor is None or not actor.is_staff:
        raise ServiceError("Only billing staff add credits and charges.", status=403)
    if kind not in Adjustment.Kind.values:
        raise ServiceError("Choose credit or charge.", field="kind")
    description = " ".join(str(description).split())[:200]
    if not description:
        raise ServiceError("Say what the adjustment is for.", field="description")
    adjustment = Adjustment.objects.create(
        organization=organization,
        kind=kind,
        amount=clean_amount(amount),
        currency=currency or default_currency(),
        description=description,
        created_by=actor,
    )
    record_audit_event(
        action=f"billing.{kind}.add",
        actor=actor,
        organization=organization,
        target=f"adjustment {adjustment.pk}",
        data={"amount": str(adjustment.amount), "currency": adjustment.currency, "description": description},
        origin=origin,
    )
    return adjustment


@transaction.atomic
def mark_invoice_paid(
    *, invoice: Invoice, actor: User | None, reference: str = "", origin: Origin | None = None
) -> Invoice:
    """Record a payment (a bank transfer matched by staff, or a provider's confirmation)."""
    updated = Invoice.objects.filter(pk=invoice.pk, status=InvoiceStatus.ISSUED).update(
        status=InvoiceStatus.PAID, paid_at=timezone.now(), payment_reference=reference[:100]
    )
    if not updated:
        raise ServiceError("Only an issued invoice can be marked paid.", status=409)
    invoice.refresh_from_db()
    record_audit_event(
        action="billing.invoice.paid",
        actor=actor,
        organization=invoice.organization,
        target=f"invoice {invoice.number}",
        data={"reference": reference[:100]},
        origin=origin,
    )
    # Paying the last overdue invoice lifts "past due".
    if not Invoice.objects.filter(
        organization=invoice.organization, status=InvoiceStatus.ISSUED, due_on__lt=timezone.now().date()
    ).exists():
        Subscription.objects.filter(
            organization=invoice.organization, status=SubscriptionStatus.PAST_DUE
        ).update(status=SubscriptionStatus.ACTIVE)
    return invoice


# --- the plans file ------------------------------------------------------------------------------------
PLAN_FIELDS = (
    "name",
    "description",
    "monthly_price",
    "currency",
    "is_public",
    "trial_days",
    "included_cpu_hours",
    "included_memory_gb_hours",
    "included_storage_gb_hours",
    "max_projects",
    "max_environments",
    "max_cpus",
    "max_memory_mb",
    "max_storage_gb",
    "max_replicas",
    "max_custom_domains",
    "volume_size_gb",
    "internet_egress",
)


@transaction.atomic
def load_plans(path: Path | None = None) -> dict[str, int]:
    """Create or update the plans and price lists of ``billing/plans.yaml`` (by code and
    region); rows the file does not name are left alone."""

    data = yaml.safe_load((path or PLANS_FILE).read_text()) or {}
    default = None
    for position, item in enumerate(data.get("plans", [])):
        values = {k: item[k] for k in PLAN_FIELDS if k in item}
        values["position"] = position
        plan, _ = Plan.objects.update_or_create(code=item["code"], defaults=values)
        if item.get("default"):
            default = plan
    if default is not None:
        Plan.objects.exclude(pk=default.pk).filter(is_default=True).update(is_default=False)
        Plan.objects.filter(pk=default.pk).update(is_default=True)
    lists = 0
    for item in data.get("price_lists", []):
        region = Region.objects.filter(code=item["region"]).first() if item.get("region") else None
        if item.get("region") and region is None:
            continue  # the catalog does not have this region (yet)
        currency = item.get("currency", default_currency())
        existing = (
            PriceList.objects.filter(region=region)
            if region
            else PriceList.objects.filter(region__isnull=True, currency=currency)
        ).first()
        price_list = existing or PriceList(region=region)
        price_list.name, price_list.currency = item["name"], currency
        price_list.save()
        for resource, unit_price in item.get("prices", {}).items():
            Price.objects.update_or_create(
                price_list=price_list,
                resource=Resource(resource),
                defaults={"unit_price": Decimal(str(unit_price))},
            )
        lists += 1
    return {"plans": len(data.get("plans", [])), "price_lists": lists}
