"""Money and the monthly estimate of a stack."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from billing.models import PriceList
from billing.pricing import Money, estimate_monthly
from stacks.models import Region

pytestmark = pytest.mark.django_db


def test_money_is_cents_with_a_currency() -> None:
    money = Money(Decimal("12.345"), "EUR")
    assert money.amount == Decimal("12.35")
    assert str(money) == "12.35 EUR"
    assert str(money + Money(Decimal("1"), "EUR")) == "13.35 EUR"
    with pytest.raises(ValueError):
        money + Money(Decimal("1"), "USD")


def test_estimate_monthly_prices_size_replicas_and_storage(team: Any, prices: PriceList) -> None:
    rows = [
        {"name": "web", "component": "nginx", "size": "small", "replicas": 2},
        {"name": "db", "component": "mariadb", "size": "medium", "replicas": 1},
    ]
    # CPU 0.25*2 + 0.5 = 1 CPU; memory 512 + 512 MB = 1 GB; storage 1 GB; 730 hours.
    expected = Decimal("730") * (Decimal("0.01") + Decimal("0.004") + Decimal("0.0002"))
    estimate = estimate_monthly(organization=team.org, region="eu-central", rows=rows)
    assert estimate == Money(expected, "EUR")
    assert str(estimate) == "10.37 EUR"
    assert (
        estimate_monthly(organization=team.org, region=Region.objects.get(code="eu-central"), rows=rows)
        == estimate
    )


def test_region_without_prices_falls_back_to_the_standard_list(team: Any, plans: Any) -> None:
    rows = [{"name": "web", "component": "nginx", "size": "large", "replicas": 1}]
    # Standard list: 0.02 per CPU-hour, 0.005 per GB-hour.
    assert str(estimate_monthly(organization=team.org, region="us-east", rows=rows)) == "18.25 EUR"
    assert str(estimate_monthly(organization=team.org, region="eu-west", rows=rows)) == "20.08 EUR"
