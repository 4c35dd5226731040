"""Money, unit prices and what a stack's components use.

A component's use is ``replicas x size`` (CPUs, memory) plus its storage: every volume of
a stateful component counts the plan's volume size (``Plan.volume_size_gb``: what the volume
is made with and held to) when the caller knows the plan, else ``STACKPORT_VOLUME_GB`` (a
volume entry may carry ``size_gb`` to override that default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.conf import settings

from billing.models import Price, PriceList, Resource
from stacks.models import Component, Region, Size

CENT = Decimal("0.01")
MICRO = Decimal("0.000001")
# An estimate's month: 365 days * 24 hours / 12.
HOURS_PER_MONTH = Decimal("730")


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Money:
    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "amount", cents(Decimal(self.amount)))

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"

    def __add__(self, other: Money) -> Money:
        if other.currency != self.currency:
            raise ValueError(f"Cannot add {other.currency} to {self.currency}.")
        return Money(self.amount + other.amount, self.currency)


def default_currency() -> str:
    return str(settings.STACKPORT_CURRENCY)


@dataclass(frozen=True)
class Use:
    """What one component (all its replicas) holds at once."""

    cpus: Decimal
    memory_mb: int
    storage_gb: int

    @property
    def memory_gb(self) -> Decimal:
        return Decimal(self.memory_mb) / Decimal(1024)

    def per_hour(self, resource: str) -> Decimal:
        return {
            Resource.CPU: self.cpus,
            Resource.MEMORY: self.memory_gb,
            Resource.STORAGE: Decimal(self.storage_gb),
        }[Resource(resource)]


def volume_gb(component: Component, plan_gb: int | None = None) -> int:
    """GB a component's volumes hold: ``plan_gb`` each (the plan's volume size), else each
    entry's ``size_gb``, else ``STACKPORT_VOLUME_GB``."""
    if not component.stateful:
        return 0
    default = int(settings.STACKPORT_VOLUME_GB)
    if plan_gb:
        return plan_gb * len(component.volumes)
    return sum(int(v.get("size_gb", default)) if isinstance(v, dict) else default for v in component.volumes)


class Catalog:
    """Sizes and components looked up once per call (rows name them by code).
    ``volume_gb``: the plan's volume size, when the use is counted for one plan."""

    def __init__(self, volume_gb: int | None = None) -> None:
        self.sizes = {s.code: s for s in Size.objects.all()}
        self.components = {c.code: c for c in Component.objects.all()}
        self.volume_gb = volume_gb

    def use(self, row: Mapping[str, Any]) -> Use:
        size = self.sizes.get(str(row.get("size", "")))
        component = self.components.get(str(row.get("component", "")))
        replicas = int(row.get("replicas") or 0)
        cpus = size.cpus if size else Decimal("0")
        memory = size.memory_mb if size else 0
        return Use(
            cpus=cpus * replicas,
            memory_mb=memory * replicas,
            storage_gb=volume_gb(component, self.volume_gb) if component else 0,
        )


def region_code(region: Region | str | None) -> str:
    if region is None:
        return ""
    return region.code if isinstance(region, Region) else str(region)


def price_list_for(region: Region | str | None) -> PriceList | None:
    """The region's own price list, else the fallback list (no region)."""
    code = region_code(region)
    found = PriceList.objects.filter(region__code=code).first() if code else None
    return found or PriceList.objects.filter(region__isnull=True).order_by("id").first()


def unit_prices(region: Region | str | None) -> tuple[dict[str, Decimal], str]:
    """Price per unit-hour of each resource in the region (missing prices are zero)."""
    price_list = price_list_for(region)
    prices = {r.value: Decimal("0") for r in Resource}
    if price_list is None:
        return prices, default_currency()
    for price in Price.objects.filter(price_list=price_list):
        prices[price.resource] = price.unit_price
    return prices, price_list.currency


def estimate_monthly(*, organization: Any, region: Region | str, rows: Sequence[Mapping[str, Any]]) -> Money:
    """What ``rows`` cost for a month of running at the region's list prices, before the
    plan's included resources (the wizard shows it next to the plan fee)."""
    prices, currency = unit_prices(region)
    catalog = Catalog()
    total = Decimal("0")
    for row in rows:
        use = catalog.use(row)
        for resource in Resource:
            total += use.per_hour(resource) * HOURS_PER_MONTH * prices[resource.value]
    return Money(total, currency)
