"""Billing: plans and their limits, subscriptions, prices, metered usage and invoices.

Rows are written by ``billing.services`` (plans also by ``manage.py load_plans``); billing
staff work in Django admin, whose writes go through the same services. Money is Decimal,
always with a currency; amounts are kept in cents (two decimals), unit prices and
quantities with six.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.utils import timezone


def _default_currency() -> str:
    return str(settings.STACKPORT_CURRENCY)


class Resource(models.TextChoices):
    """What is metered and priced, each in its unit-time."""

    CPU = "cpu", "CPU"
    MEMORY = "memory", "Memory"
    STORAGE = "storage", "Storage"


RESOURCE_UNITS: dict[str, str] = {
    Resource.CPU: "CPU-hours",
    Resource.MEMORY: "GB-hours",
    Resource.STORAGE: "GB-hours",
}


class Plan(models.Model):
    """What an organization may run and what it pays a month for it. Empty limits are unlimited."""

    code = models.SlugField(max_length=32, unique=True)
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    monthly_price = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal("0.00"))
    currency = models.CharField(max_length=3, default=_default_currency)
    # The plan of organizations without a subscription (and of new trials). One at most.
    is_default = models.BooleanField(default=False)
    # Offered on the customer's plan page (staff can still assign hidden plans).
    is_public = models.BooleanField(default=True)
    trial_days = models.PositiveSmallIntegerField(default=0)
    # Included resources per month; use beyond them is charged at the region's prices.
    included_cpu_hours = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal("0"))
    included_memory_gb_hours = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal("0"))
    included_storage_gb_hours = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal("0"))
    # Limits (None: unlimited).
    max_projects = models.PositiveIntegerField(null=True, blank=True)
    max_environments = models.PositiveIntegerField(null=True, blank=True)
    max_cpus = models.DecimalField(max_digits=8, decimal_places=2, null=True, blank=True)
    max_memory_mb = models.PositiveIntegerField(null=True, blank=True)
    max_storage_gb = models.PositiveIntegerField(null=True, blank=True)
    max_replicas = models.PositiveSmallIntegerField(null=True, blank=True, help_text="Replicas per component")
    max_custom_domains = models.PositiveIntegerField(null=True, blank=True)
    # The size each new volume is made with and held to by its host (docs/backends.md,
    # "Disk limits"); None: volumes have no limit.
    volume_size_gb = models.PositiveIntegerField(
        null=True, blank=True, help_text="Size of each new volume, held to by the host"
    )
    # Backups (docs/backups.md): how often each environment is backed up, how many daily and
    # weekly backups are kept per component, and how much they may hold (None: unlimited).
    backup_schedule = models.CharField(
        max_length=8,
        default="daily",
        choices=[("off", "Off"), ("hourly", "Hourly"), ("daily", "Daily"), ("weekly", "Weekly")],
    )
    backup_keep_daily = models.PositiveSmallIntegerField(default=7)
    backup_keep_weekly = models.PositiveSmallIntegerField(default=4)
    max_backup_gb = models.PositiveIntegerField(null=True, blank=True, help_text="Stored backups, GB")
    # Containers may open connections to the internet (docs/security.md, "Network egress");
    # never to the hosts, other stacks or private ranges, whatever this says.
    internet_egress = models.BooleanField(
        default=False, help_text="Containers may connect to the internet (takes effect at the next deploy)"
    )
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["position", "monthly_price", "code"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=models.Q(is_default=True), name="plan_one_default"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def included(self, resource: str) -> Decimal:
        return {
            Resource.CPU: self.included_cpu_hours,
            Resource.MEMORY: self.included_memory_gb_hours,
            Resource.STORAGE: self.included_storage_gb_hours,
        }[Resource(resource)]


class SubscriptionStatus(models.TextChoices):
    TRIAL = "trial", "Trial"
    ACTIVE = "active", "Active"
    PAST_DUE = "past_due", "Past due"
    CANCELLED = "cancelled", "Cancelled"


SUBSCRIPTION_TRANSITIONS: dict[str, set[str]] = {
    SubscriptionStatus.TRIAL: {SubscriptionStatus.ACTIVE, SubscriptionStatus.CANCELLED},
    SubscriptionStatus.ACTIVE: {SubscriptionStatus.PAST_DUE, SubscriptionStatus.CANCELLED},
    SubscriptionStatus.PAST_DUE: {SubscriptionStatus.ACTIVE, SubscriptionStatus.CANCELLED},
    SubscriptionStatus.CANCELLED: {SubscriptionStatus.ACTIVE},
}


class Subscription(models.Model):
    """An organization's plan. Plan changes close the current period and open a new one."""

    organization = models.OneToOneField(
        "projects.Organization", on_delete=models.CASCADE, related_name="subscription"
    )
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    status = models.CharField(
        max_length=16, choices=SubscriptionStatus.choices, default=SubscriptionStatus.ACTIVE
    )
    started_at = models.DateTimeField(default=timezone.now)
    trial_ends_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["organization_id"]

    def __str__(self) -> str:
        return f"{self.organization} on {self.plan} ({self.status})"


class PlanPeriod(models.Model):
    """A stretch of time an organization was on one plan: the plan fee is prorated over these."""

    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="periods")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="+")
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["subscription_id", "started_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["subscription"], condition=models.Q(ended_at__isnull=True), name="planperiod_one_open"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.plan} from {self.started_at:%Y-%m-%d %H:%M}"


class PriceList(models.Model):
    """Unit prices of one region (or of every region without its own list: region empty)."""

    name = models.CharField(max_length=100)
    region = models.OneToOneField(
        "stacks.Region", null=True, blank=True, on_delete=models.CASCADE, related_name="price_list"
    )
    currency = models.CharField(max_length=3, default=_default_currency)

    class Meta:
        ordering = ["region__code", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["currency"], condition=models.Q(region__isnull=True), name="pricelist_one_fallback"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Price(models.Model):
    price_list = models.ForeignKey(PriceList, on_delete=models.CASCADE, related_name="prices")
    resource = models.CharField(max_length=16, choices=Resource.choices)
    # Per unit-hour: per CPU-hour, per GB-hour of memory or of storage.
    unit_price = models.DecimalField(max_digits=12, decimal_places=6)

    class Meta:
        ordering = ["price_list_id", "resource"]
        constraints = [
            models.UniqueConstraint(fields=["price_list", "resource"], name="price_unique_resource"),
        ]

    def __str__(self) -> str:
        return f"{self.resource}: {self.unit_price}"


class MeteringInterval(models.Model):
    """One metered interval; ``finished_at`` set once its usage records are written."""

    start = models.DateTimeField(unique=True)
    end = models.DateTimeField()
    records = models.PositiveIntegerField(default=0)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-start"]

    def __str__(self) -> str:
        return f"{self.start:%Y-%m-%d %H:%M}–{self.end:%H:%M}"


class UsageRecord(models.Model):
    """What one component of a running environment used during one interval.

    Exactly one per component and interval (a database constraint): metering twice, or
    late, cannot count anything twice. Project and names are snapshots for the invoice.
    """

    organization = models.ForeignKey(
        "projects.Organization", on_delete=models.CASCADE, related_name="usage_records"
    )
    project = models.ForeignKey(
        "projects.Project", null=True, on_delete=models.SET_NULL, related_name="usage_records"
    )
    project_name = models.CharField(max_length=100)
    environment = models.ForeignKey(
        "projects.Environment", null=True, on_delete=models.SET_NULL, related_name="usage_records"
    )
    environment_ref = models.PositiveBigIntegerField(help_text="Environment id, kept when it is gone")
    component = models.CharField(max_length=30)
    component_code = models.CharField(max_length=40)
    region = models.CharField(max_length=32)
    size = models.CharField(max_length=16)
    replicas = models.PositiveSmallIntegerField()
    interval_start = models.DateTimeField()
    interval_end = models.DateTimeField()
    seconds = models.PositiveIntegerField()
    cpu_hours = models.DecimalField(max_digits=14, decimal_places=6)
    memory_gb_hours = models.DecimalField(max_digits=14, decimal_places=6)
    storage_gb_hours = models.DecimalField(max_digits=14, decimal_places=6)
    recorded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-interval_start", "environment_ref", "component"]
        constraints = [
            models.UniqueConstraint(
                fields=["environment_ref", "component", "interval_start"],
                name="usagerecord_once_per_interval",
            ),
        ]
        indexes = [models.Index(fields=["organization", "interval_start"])]

    def __str__(self) -> str:
        return f"{self.project_name}/{self.component} {self.interval_start:%Y-%m-%d %H:%M}"

    def quantity(self, resource: str) -> Decimal:
        return {
            Resource.CPU: self.cpu_hours,
            Resource.MEMORY: self.memory_gb_hours,
            Resource.STORAGE: self.storage_gb_hours,
        }[Resource(resource)]


class InvoiceStatus(models.TextChoices):
    ISSUED = "issued", "Issued"
    PAID = "paid", "Paid"
    VOID = "void", "Void"


class Invoice(models.Model):
    """One organization's bill for one calendar month; made once (a database constraint)."""

    organization = models.ForeignKey(
        "projects.Organization", on_delete=models.PROTECT, related_name="invoices"
    )
    number = models.CharField(max_length=32, unique=True)
    period_start = models.DateField()
    period_end = models.DateField(help_text="Last day of the period")
    currency = models.CharField(max_length=3, default=_default_currency)
    status = models.CharField(max_length=16, choices=InvoiceStatus.choices, default=InvoiceStatus.ISSUED)
    plan_name = models.CharField(max_length=100, blank=True)
    subtotal = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal("0.00"))
    credits = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal("0.00"))
    total = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal("0.00"))
    issued_at = models.DateTimeField(default=timezone.now)
    due_on = models.DateField()
    paid_at = models.DateTimeField(null=True, blank=True)
    payment_reference = models.CharField(max_length=100, blank=True)
    payment_state = models.JSONField(default=dict, blank=True)  # the payment backend's bookkeeping
    emailed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-period_start", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "period_start"], name="invoice_once_per_month"),
        ]

    def __str__(self) -> str:
        return self.number

    @property
    def is_overdue(self) -> bool:
        return self.status == InvoiceStatus.ISSUED and self.due_on < date.today()


class LineKind(models.TextChoices):
    PLAN = "plan", "Plan fee"
    USAGE = "usage", "Usage"
    CREDIT = "credit", "Credit"
    ADJUSTMENT = "adjustment", "Adjustment"


class InvoiceLine(models.Model):
    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    kind = models.CharField(max_length=16, choices=LineKind.choices)
    description = models.CharField(max_length=200)
    project = models.ForeignKey("projects.Project", null=True, blank=True, on_delete=models.SET_NULL)
    project_name = models.CharField(max_length=100, blank=True)
    region = models.CharField(max_length=32, blank=True)
    resource = models.CharField(max_length=16, choices=Resource.choices, blank=True)
    quantity = models.DecimalField(max_digits=14, decimal_places=6, default=Decimal("0"))
    included = models.DecimalField(max_digits=14, decimal_places=6, default=Decimal("0"))
    unit = models.CharField(max_length=16, blank=True)
    unit_price = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["invoice_id", "position", "id"]

    def __str__(self) -> str:
        return self.description

    @property
    def billable(self) -> Decimal:
        return max(Decimal("0"), self.quantity - self.included)


class Adjustment(models.Model):
    """A credit (lowers the next invoice) or a charge added by billing staff.

    Written by ``billing.services.add_adjustment`` (with an audit row); taken into the
    next invoice generated for a month after it was made.
    """

    class Kind(models.TextChoices):
        CREDIT = "credit", "Credit"
        CHARGE = "charge", "Charge"

    organization = models.ForeignKey(
        "projects.Organization", on_delete=models.CASCADE, related_name="billing_adjustments"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.CREDIT)
    amount = models.DecimalField(max_digits=12, decimal_places=2, help_text="Positive, in the currency")
    currency = models.CharField(max_length=3, default=_default_currency)
    description = models.CharField(max_length=200)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    invoice = models.ForeignKey(
        Invoice, null=True, blank=True, on_delete=models.SET_NULL, related_name="adjustments"
    )

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} {self.currency}: {self.description}"
