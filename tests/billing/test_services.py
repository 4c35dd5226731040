"""Subscriptions, plan changes, staff adjustments, payments and the plans file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command

from billing import invoices, services
from billing.models import (
    Adjustment,
    InvoiceStatus,
    Plan,
    PlanPeriod,
    PriceList,
    Subscription,
    SubscriptionStatus,
)
from billing.payments import PayByInvoiceBackend, get_backend
from projects.models import AuditEvent
from projects.services import ServiceError, create_organization
from tests.billing.conftest import make_plan, new_stack
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_new_organization_starts_a_trial_of_the_default_plan(user: Any, time_machine: Any) -> None:
    time_machine.move_to(datetime(2026, 7, 1, tzinfo=UTC), tick=False)
    make_plan("starter", is_default=True, trial_days=14)
    org = create_organization(name="Fresh", owner=user)
    subscription = Subscription.objects.get(organization=org)
    assert subscription.status == SubscriptionStatus.TRIAL
    assert subscription.trial_ends_at == datetime(2026, 7, 15, tzinfo=UTC)
    assert PlanPeriod.objects.filter(subscription=subscription, ended_at__isnull=True).count() == 1
    assert AuditEvent.objects.filter(organization=org, action="billing.subscription.start").exists()


def test_without_plans_no_subscription_is_made(user: Any) -> None:
    org = create_organization(name="Fresh", owner=user)
    assert not Subscription.objects.filter(organization=org).exists()


def test_trial_months_cost_nothing_and_the_fee_runs_after(team: Any, time_machine: Any) -> None:
    time_machine.move_to(datetime(2026, 7, 1, tzinfo=UTC), tick=False)
    make_plan("starter", is_default=True, trial_days=10, monthly_price=Decimal("31.00"))
    services.start_trial(organization=team.org)
    time_machine.move_to(datetime(2026, 7, 12, tzinfo=UTC), tick=False)
    assert services.end_trials() == 1
    assert Subscription.objects.get(organization=team.org).status == SubscriptionStatus.ACTIVE
    time_machine.move_to(datetime(2026, 8, 1, 1, tzinfo=UTC), tick=False)
    invoice = invoices.generate_invoice(organization=team.org, year=2026, month=7)
    (line,) = invoice.lines.all()
    assert line.amount == Decimal("21.00")  # 21 of 31 days after the trial
    assert "trial until 11 Jul" in line.description


def test_change_plan_is_at_once_audited_and_ends_the_trial(team: Any, time_machine: Any) -> None:
    time_machine.move_to(datetime(2026, 7, 1, tzinfo=UTC), tick=False)
    make_plan("starter", is_default=True, trial_days=14)
    team_plan = make_plan("team", monthly_price=Decimal("29"))
    services.start_trial(organization=team.org)
    time_machine.move_to(datetime(2026, 7, 3, tzinfo=UTC), tick=False)
    subscription = services.change_plan(organization=team.org, actor=team.admin, plan="team")
    assert subscription.plan == team_plan
    assert subscription.status == SubscriptionStatus.ACTIVE
    periods = list(PlanPeriod.objects.filter(subscription=subscription).values_list("plan__code", "ended_at"))
    assert periods == [("starter", datetime(2026, 7, 3, tzinfo=UTC)), ("team", None)]
    event = AuditEvent.objects.get(action="billing.plan.change")
    assert (event.actor, event.data) == (team.admin, {"from": "starter", "to": "team"})
    with pytest.raises(ServiceError, match="You are on Team already"):
        services.change_plan(organization=team.org, actor=team.admin, plan="team")
    with pytest.raises(ServiceError) as caught:
        services.change_plan(organization=team.org, actor=team.developer, plan="starter")
    assert caught.value.status == 403


def test_hidden_plans_only_through_staff(team: Any) -> None:
    make_plan("starter", is_default=True)
    hidden = make_plan("partner", is_public=False)
    with pytest.raises(ServiceError, match="offered plans"):
        services.change_plan(organization=team.org, actor=team.owner, plan="partner")
    staff = UserFactory(is_staff=True)
    assert services.change_plan(organization=team.org, actor=staff, plan=hidden, system=True).plan == hidden


def test_downgrade_refused_while_usage_exceeds_saying_which(team: Any, offered_catalog: None) -> None:
    make_plan("team", is_default=True, max_projects=5)
    make_plan("mini", max_projects=1, max_memory_mb=256, max_replicas=1)
    new_stack(team.org, team.developer, template="static-site")
    new_stack(team.org, team.developer, name="Two", template="lamp")
    with pytest.raises(ServiceError) as caught:
        services.change_plan(organization=team.org, actor=team.owner, plan="mini")
    assert caught.value.status == 409
    assert caught.value.message == (
        "Mini is too small for what you run: Mini allows 1 project; you use 2 now. "
        "Mini allows 256 MB of memory; you use 1024 now. Scale down first."
    )
    assert not Subscription.objects.filter(organization=team.org).exists()  # nothing written


def test_staff_adjustments_are_audited_and_only_by_staff(team: Any) -> None:
    staff = UserFactory(is_staff=True)
    with pytest.raises(ServiceError) as caught:
        services.add_adjustment(
            organization=team.org, actor=team.owner, kind="credit", amount="5", description="x"
        )
    assert caught.value.status == 403
    for bad in ("-1", "0", "lots"):
        with pytest.raises(ServiceError, match="amount"):
            services.add_adjustment(
                organization=team.org, actor=staff, kind="credit", amount=bad, description="x"
            )
    credit = services.add_adjustment(
        organization=team.org, actor=staff, kind="credit", amount="12.345", description="  Goodwill  "
    )
    assert (credit.amount, credit.description, credit.currency) == (Decimal("12.35"), "Goodwill", "EUR")
    event = AuditEvent.objects.get(action="billing.credit.add")
    assert event.actor == staff and event.data["amount"] == "12.35"


def test_credit_larger_than_the_bill_carries_over(team: Any, time_machine: Any) -> None:
    time_machine.move_to(datetime(2026, 7, 1, tzinfo=UTC), tick=False)
    make_plan("starter", is_default=True, monthly_price=Decimal("10"))
    services.start_trial(organization=team.org)
    services.add_adjustment(
        organization=team.org,
        actor=UserFactory(is_staff=True),
        kind="credit",
        amount="25",
        description="Refund",
    )
    time_machine.move_to(datetime(2026, 8, 1, tzinfo=UTC), tick=False)
    july = invoices.generate_invoice(organization=team.org, year=2026, month=7)
    assert (july.subtotal, july.credits, july.total) == (Decimal("10.00"), Decimal("10.00"), Decimal("0.00"))
    rest = Adjustment.objects.get(invoice__isnull=True)
    assert (rest.amount, rest.description) == (Decimal("15.00"), "Refund (rest)")
    time_machine.move_to(datetime(2026, 9, 1, tzinfo=UTC), tick=False)
    august = invoices.generate_invoice(organization=team.org, year=2026, month=8)
    assert august.total == Decimal("0.00") and august.credits == Decimal("10.00")
    assert Adjustment.objects.get(invoice__isnull=True).amount == Decimal("5.00")


def test_paying_lifts_past_due(team: Any, time_machine: Any) -> None:
    time_machine.move_to(datetime(2026, 7, 1, tzinfo=UTC), tick=False)
    make_plan("starter", is_default=True, monthly_price=Decimal("10"))
    services.start_trial(organization=team.org)
    time_machine.move_to(datetime(2026, 8, 1, tzinfo=UTC), tick=False)
    invoice = invoices.generate_invoice(organization=team.org, year=2026, month=7)
    time_machine.move_to(datetime(2026, 8, 1, tzinfo=UTC) + timedelta(days=15), tick=False)
    assert services.mark_overdue() == 1
    assert Subscription.objects.get(organization=team.org).status == SubscriptionStatus.PAST_DUE
    staff = UserFactory(is_staff=True)
    services.mark_invoice_paid(invoice=invoice, actor=staff, reference="SEPA 123")
    assert invoice.status == InvoiceStatus.PAID
    assert Subscription.objects.get(organization=team.org).status == SubscriptionStatus.ACTIVE
    with pytest.raises(ServiceError):
        services.mark_invoice_paid(invoice=invoice, actor=staff)


def test_subscription_transitions_are_checked(team: Any) -> None:
    make_plan("starter", is_default=True, trial_days=5)
    subscription = services.start_trial(organization=team.org)
    assert subscription is not None
    with pytest.raises(ServiceError, match="cannot become past_due"):
        services.set_subscription_status(subscription=subscription, status="past_due", actor=None)
    cancelled = services.set_subscription_status(subscription=subscription, status="cancelled", actor=None)
    assert cancelled.cancelled_at is not None


def test_load_plans_is_idempotent(offered_catalog: None) -> None:
    out = StringIO()
    call_command("load_plans", stdout=out)
    call_command("load_plans", stdout=out)
    assert "3 plans, 3 price lists loaded." in out.getvalue()
    assert list(Plan.objects.values_list("code", flat=True)) == ["starter", "team", "business"]
    assert Plan.objects.get(is_default=True).code == "starter"
    assert PriceList.objects.count() == 3
    assert PriceList.objects.get(region__code="eu-west").prices.get(resource="cpu").unit_price == Decimal(
        "0.022"
    )


def test_payment_backend_is_chosen_by_dotted_path(settings: Any, team: Any, time_machine: Any) -> None:
    assert isinstance(get_backend(), PayByInvoiceBackend)
    time_machine.move_to(datetime(2026, 8, 1, tzinfo=UTC), tick=False)
    make_plan("starter", is_default=True, monthly_price=Decimal("10"))
    services.start_trial(organization=team.org)
    invoice = invoices.generate_invoice(organization=team.org, year=2026, month=7)
    assert invoice.number in get_backend().instructions(invoice)
    assert get_backend().start_payment(invoice, return_url="/")["method"] == "bank-transfer"
    settings.STACKPORT_PAYMENT_BACKEND = "billing.models.Plan"
    with pytest.raises(TypeError):
        get_backend()
