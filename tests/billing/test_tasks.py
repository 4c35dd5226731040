"""The billing tasks: scheduled by beat, thin wrappers around the services."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings

from billing import tasks
from billing.models import Invoice, PriceList, Subscription, SubscriptionStatus, UsageRecord
from billing.services import start_trial
from tests.billing.conftest import make_plan, new_stack

pytestmark = pytest.mark.django_db


def test_beat_runs_metering_and_invoices() -> None:
    from portal.celery import app

    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"billing.record_usage_task", "billing.generate_invoices_task"} <= scheduled
    app.loader.import_default_modules()
    assert {
        "billing.record_usage_task",
        "billing.generate_invoices_task",
        "billing.send_invoice_email_task",
    } <= set(app.tasks)


def test_tasks_meter_end_trials_and_invoice_last_month(
    team: Any, prices: PriceList, time_machine: Any
) -> None:
    time_machine.move_to(datetime(2026, 9, 30, 20, tzinfo=UTC), tick=False)
    make_plan("starter", is_default=True, trial_days=1, monthly_price=Decimal("3"))
    start_trial(organization=team.org)
    new_stack(team.org, team.developer)
    time_machine.move_to(datetime(2026, 10, 1, 22, tzinfo=UTC), tick=False)
    assert tasks.record_usage_task() == 26  # 20:00 on 30 Sep to 22:00 on 1 Oct, one component
    assert Subscription.objects.get().status == SubscriptionStatus.ACTIVE
    assert tasks.record_usage_task() == 0
    assert tasks.generate_invoices_task() == 1  # September
    assert tasks.generate_invoices_task() == 0
    september = Invoice.objects.get()
    assert september.period_start.month == 9
    # 4 hours of 0.25 CPU and 0.25 GB: 0.01 + 0.004; the trial covers September's plan fee.
    assert september.total == Decimal("0.01")
    assert UsageRecord.objects.filter(interval_start__month=10).count() == 22
    assert tasks.send_invoice_email_task(september.pk) is True
    assert tasks.send_invoice_email_task(september.pk) is False  # sent once
