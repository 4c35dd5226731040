"""Metered usage and invoices, exact to the cent, with the clock moved forward."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from billing import invoices, metering, services
from billing.models import Invoice, PriceList, UsageRecord
from stacks.runtime import lifecycle
from tests.billing.conftest import make_plan, new_stack, settle

pytestmark = pytest.mark.django_db


def at(day: int, hour: int = 0, month: int = 3) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


@pytest.fixture
def march(team: Any, prices: PriceList, settings: Any, time_machine: Any) -> dict[str, Any]:
    """Acme on Team (30.00, 100 CPU-hours included) from 1 March, a python-web stack running
    (4 small components: 1 CPU, 1 GB, 2 GB of volumes)."""
    time_machine.move_to(at(1), tick=False)
    team_plan = make_plan("team", is_default=True, monthly_price=Decimal("30.00"), included_cpu_hours=100)
    big = make_plan("big", monthly_price=Decimal("60.00"), included_cpu_hours=200)
    services.start_trial(organization=team.org)
    env = new_stack(team.org, team.developer, template="python-web")
    return {"env": env, "team": team_plan, "big": big}


def test_metering_records_each_component_once_per_interval(
    team: Any, march: dict[str, Any], time_machine: Any
) -> None:
    time_machine.move_to(at(1, 3), tick=False)
    assert metering.record_usage() == 3 * 4
    assert metering.record_usage() == 0
    assert metering.meter_interval(at(1, 1)) == 0  # even asked directly
    time_machine.move_to(at(1, 5), tick=False)
    assert metering.record_usage() == 2 * 4
    assert UsageRecord.objects.count() == 5 * 4
    app = UsageRecord.objects.filter(component="db")
    assert {r.interval_start.hour for r in app} == {0, 1, 2, 3, 4}
    record = app.get(interval_start=at(1, 2))
    assert (record.cpu_hours, record.memory_gb_hours, record.storage_gb_hours) == (
        Decimal("0.25"),
        Decimal("0.25"),
        Decimal("1"),
    )


def test_stopped_and_other_organizations_stacks_are_metered_apart(
    team: Any, march: dict[str, Any], time_machine: Any
) -> None:
    other = new_stack(team.outsider_org, team.outsider, template="static-site")
    stopped = new_stack(team.org, team.developer, name="Paused", template="static-site")
    lifecycle.set_running(environment=stopped, actor=team.developer, running=False)
    settle(stopped, status="stopped")
    time_machine.move_to(at(1, 1), tick=False)
    metering.record_usage()
    assert UsageRecord.objects.filter(organization=team.org).count() == 4
    assert UsageRecord.objects.get(organization=team.outsider_org).environment == other


def test_environment_created_mid_interval_is_metered_from_its_creation(
    team: Any, march: dict[str, Any], time_machine: Any
) -> None:
    time_machine.move_to(at(1, 0).replace(minute=45), tick=False)
    new_stack(team.org, team.developer, name="Late", template="static-site")
    time_machine.move_to(at(1, 1), tick=False)
    metering.record_usage()
    late = UsageRecord.objects.get(project_name="Late")
    assert late.seconds == 900
    assert late.cpu_hours == Decimal("0.0625")  # 0.25 CPU for a quarter of an hour


def test_march_invoice_is_exact_to_the_cent(
    team: Any, march: dict[str, Any], time_machine: Any, settings: Any
) -> None:
    settings.STACKPORT_METERING_CATCHUP_HOURS = 24 * 40  # one run meters the whole month
    env = march["env"]
    time_machine.move_to(at(11), tick=False)  # 240 hours at 1 CPU, 1 GB, 2 GB of storage
    metering.record_usage()
    metering.record_usage()  # twice: nothing counted twice
    lifecycle.scale(environment=env, actor=team.developer, component="app", replicas=2)
    settle(env)
    time_machine.move_to(at(16), tick=False)
    services.change_plan(organization=team.org, actor=team.owner, plan="big")
    time_machine.move_to(at(20), tick=False)
    services.add_adjustment(
        organization=team.org, actor=_staff(), kind="credit", amount="5", description="Sorry for the outage"
    )
    time_machine.move_to(at(1, 0, month=4), tick=False)  # 504 more hours at 1.25 CPU, 1.25 GB
    metering.record_usage()

    invoice = invoices.generate_invoice(organization=team.org, year=2026, month=3)
    lines = {(ln.kind, ln.resource, ln.description.split(",")[0]): ln for ln in invoice.lines.all()}
    assert lines[("plan", "", "Plan Team")].amount == Decimal("14.52")  # 30.00 x 15/31
    assert lines[("plan", "", "Plan Big")].amount == Decimal("30.97")  # 60.00 x 16/31
    cpu = lines[("usage", "cpu", "Shop: CPU (eu-central)")]
    assert cpu.quantity == Decimal("870")
    assert cpu.included == Decimal("151.612903")  # 100 x 15/31 + 200 x 16/31
    assert cpu.amount == Decimal("7.18")
    assert lines[("usage", "memory", "Shop: Memory (eu-central)")].amount == Decimal("3.48")  # 870 GB-h
    assert lines[("usage", "storage", "Shop: Storage (eu-central)")].amount == Decimal("0.30")  # 1488 GB-h
    assert lines[("credit", "", "Sorry for the outage")].amount == Decimal("-5.00")
    assert (invoice.subtotal, invoice.credits, invoice.total) == (
        Decimal("56.45"),
        Decimal("5.00"),
        Decimal("51.45"),
    )
    assert invoice.number == f"202603-{team.org.pk:06d}"
    # Generated once: again (or by the monthly task) it is the same invoice.
    assert invoices.generate_invoice(organization=team.org, year=2026, month=3) == invoice
    assert invoices.generate_invoices() == 0  # the monthly task finds nothing left to do
    assert Invoice.objects.filter(organization=team.org).count() == 1


def _staff() -> Any:
    from tests.factories import UserFactory

    return UserFactory(is_staff=True)


@pytest.mark.django_db(transaction=True)
def test_two_workers_metering_at_once_record_each_component_once(team: Any, prices: PriceList) -> None:
    import threading

    from django.db import connection

    from projects.models import Environment

    env = new_stack(team.org, team.developer, template="python-web")
    start = metering.interval_start(timezone_now()) - metering.interval_length()
    Environment.objects.filter(pk=env.pk).update(created_at=start)
    barrier, results = threading.Barrier(2), []

    def work() -> None:
        try:
            barrier.wait()
            results.append(metering.meter_interval(start))
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [0, 4]
    assert UsageRecord.objects.filter(interval_start=start).count() == 4


def timezone_now() -> datetime:
    from django.utils import timezone

    return timezone.now()
