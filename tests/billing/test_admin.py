"""Billing staff in Django admin: credits through the service, read-only usage and totals."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from billing import invoices, services
from billing.models import Adjustment, Invoice, InvoiceStatus, Subscription
from projects.models import AuditEvent
from tests.billing.conftest import make_plan
from tests.conftest import client_for
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff() -> Any:
    return UserFactory(is_staff=True, is_superuser=True)


@pytest.fixture
def staff_client(staff: Any) -> Client:
    return client_for(staff)  # with a second factor


@pytest.fixture
def invoice(team: Any, time_machine: Any) -> Invoice:
    time_machine.move_to(datetime(2026, 7, 1, tzinfo=UTC), tick=False)
    make_plan("starter", is_default=True, monthly_price=Decimal("10"))
    make_plan("team", monthly_price=Decimal("20"))
    services.start_trial(organization=team.org)
    time_machine.move_to(datetime(2026, 8, 1, tzinfo=UTC), tick=False)
    return invoices.generate_invoice(organization=team.org, year=2026, month=7)


def test_staff_add_a_credit_through_the_service(team: Any, staff: Any, staff_client: Client) -> None:
    response = staff_client.post(
        reverse("admin:billing_adjustment_add"),
        {
            "organization": team.org.pk,
            "kind": "credit",
            "amount": "7.50",
            "currency": "EUR",
            "description": "Outage",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    credit = Adjustment.objects.get()
    assert (credit.amount, credit.created_by) == (Decimal("7.50"), staff)
    assert AuditEvent.objects.filter(action="billing.credit.add", actor=staff).count() == 1
    change = staff_client.get(reverse("admin:billing_adjustment_change", args=[credit.pk]))
    assert change.status_code == 200
    assert 'name="amount"' not in change.content.decode()  # never edited afterwards


@pytest.mark.parametrize(("amount", "message"), [("0", "more than zero"), ("-3", "more than zero")])
def test_a_bad_adjustment_is_refused_next_to_the_field(
    team: Any, staff_client: Client, amount: str, message: str
) -> None:
    response = staff_client.post(
        reverse("admin:billing_adjustment_add"),
        {
            "organization": team.org.pk,
            "kind": "credit",
            "amount": amount,
            "currency": "EUR",
            "description": "x",
        },
    )
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Adjustment.objects.exists()


def test_invoice_opens_with_read_only_lines_and_can_be_marked_paid(
    invoice: Invoice, staff: Any, staff_client: Client
) -> None:
    page = staff_client.get(reverse("admin:billing_invoice_change", args=[invoice.pk]))
    assert page.status_code == 200
    assert 'name="total"' not in page.content.decode()
    response = staff_client.post(
        reverse("admin:billing_invoice_changelist"), {"action": "mark_paid", "_selected_action": [invoice.pk]}
    )
    assert response.status_code == 302
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.PAID
    assert AuditEvent.objects.filter(action="billing.invoice.paid", actor=staff).exists()


def test_staff_move_a_subscription_to_another_plan(team: Any, invoice: Invoice, staff_client: Client) -> None:
    subscription = Subscription.objects.get(organization=team.org)
    response = staff_client.post(
        reverse("admin:billing_subscription_changelist"),
        {"action": "move_to_team", "_selected_action": [subscription.pk]},
    )
    assert response.status_code == 302
    subscription.refresh_from_db()
    assert subscription.plan.code == "team"


def test_usage_records_are_read_only(staff_client: Client) -> None:
    assert staff_client.get(reverse("admin:billing_usagerecord_changelist")).status_code == 200
    assert staff_client.get(reverse("admin:billing_usagerecord_add")).status_code == 403
