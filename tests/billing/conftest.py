"""Billing fixtures: plans from the shipped plans file, small made-up plans, settled stacks."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from billing.models import Plan, Price, PriceList, Resource
from billing.services import load_plans
from projects.models import Environment, EnvironmentStatus, Organization
from stacks.models import Operation, OperationStatus, Region, Release
from stacks.runtime import lifecycle


@pytest.fixture
def plans(offered_catalog: None) -> dict[str, Plan]:
    load_plans()
    return {p.code: p for p in Plan.objects.all()}


def make_plan(code: str = "tiny", **limits: Any) -> Plan:
    values: dict[str, Any] = {"name": code.title(), "monthly_price": Decimal("10.00")}
    values.update(limits)
    return Plan.objects.create(code=code, **values)


@pytest.fixture
def prices(offered_catalog: None) -> PriceList:
    """Round prices for eu-central: 0.01 per CPU-hour, 0.004 per GB-hour, 0.0002 per storage GB-hour."""
    price_list = PriceList.objects.create(name="Test", region=Region.objects.get(code="eu-central"))
    for resource, price in ((Resource.CPU, "0.01"), (Resource.MEMORY, "0.004"), (Resource.STORAGE, "0.0002")):
        Price.objects.create(price_list=price_list, resource=resource, unit_price=Decimal(price))
    return price_list


def settle(environment: Environment, *, status: str = EnvironmentStatus.RUNNING) -> Environment:
    """Pretend the queued operation ran: it succeeded and its release is current."""
    release = environment.releases.order_by("-number").first()
    Operation.objects.filter(environment=environment).update(status=OperationStatus.SUCCEEDED)
    Environment.objects.filter(pk=environment.pk).update(current_release=release, status=status)
    if release is not None:
        Release.objects.filter(pk=release.pk).update(ran_at=timezone.now())
    environment.refresh_from_db()
    return environment


def new_stack(
    org: Organization, actor: Any, *, name: str = "Shop", template: str = "static-site"
) -> Environment:
    env = lifecycle.create_project(
        organization=org, actor=actor, name=name, region="eu-central", template=template
    )
    return settle(env)
