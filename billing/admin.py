"""Billing staff's admin: plans and prices (configuration), subscriptions, usage (read-only),
invoices with their lines (read-only totals), credits and charges.

Everything customers are billed for changes only through ``billing.services``: the admin
actions and the adjustment form call them, each leaving an audit row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from billing import services
from billing.models import (
    Adjustment,
    Invoice,
    InvoiceLine,
    MeteringInterval,
    Plan,
    Price,
    PriceList,
    Subscription,
    SubscriptionStatus,
    UsageRecord,
)
from billing.tasks import send_invoice_email_task
from projects.admin import OrganizationAdmin
from projects.models import User
from projects.services import Origin, ServiceError


def _staff(request: HttpRequest) -> User:
    return cast(User, request.user)  # the admin is behind staff login


class ReadOnlyMixin:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _each(
    modeladmin: admin.ModelAdmin, request: HttpRequest, objects: Any, call: Callable[[Any, Origin], Any]
) -> None:
    origin, done = Origin.from_request(request), 0
    for obj in objects:
        try:
            call(obj, origin)
            done += 1
        except ServiceError as exc:
            modeladmin.message_user(request, f"{obj}: {exc.message}", messages.ERROR)
    if done:
        modeladmin.message_user(request, f"Done for {done}.", messages.SUCCESS)


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "code",
        "monthly_price",
        "currency",
        "is_default",
        "is_public",
        "max_projects",
        "max_cpus",
        "max_memory_mb",
        "internet_egress",
    ]
    list_filter = ["is_public", "is_default", "internet_egress"]
    search_fields = ["code", "name"]


class PriceInline(admin.TabularInline):
    model = Price
    extra = 0


@admin.register(PriceList)
class PriceListAdmin(admin.ModelAdmin):
    list_display = ["name", "region", "currency"]
    inlines = [PriceInline]


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = ["organization", "plan", "status", "started_at", "trial_ends_at"]
    list_filter = ["status", "plan"]
    search_fields = ["organization__name"]
    readonly_fields = ["organization", "plan", "status", "started_at", "trial_ends_at", "cancelled_at"]
    actions = ["make_active", "make_past_due", "cancel"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def _status(self, request: HttpRequest, queryset: QuerySet[Subscription], status: str) -> None:
        _each(
            self,
            request,
            queryset,
            lambda s, origin: services.set_subscription_status(
                subscription=s, status=status, actor=_staff(request), origin=origin
            ),
        )

    @admin.action(description="Mark active")
    def make_active(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        self._status(request, queryset, SubscriptionStatus.ACTIVE)

    @admin.action(description="Mark past due")
    def make_past_due(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        self._status(request, queryset, SubscriptionStatus.PAST_DUE)

    @admin.action(description="Cancel")
    def cancel(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        self._status(request, queryset, SubscriptionStatus.CANCELLED)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        """One "Move to <plan>" action per plan (staff may assign hidden plans too)."""
        actions = super().get_actions(request)
        for plan in Plan.objects.all():
            name = f"move_to_{plan.code}"
            actions[name] = (self._mover(plan), name, f"Move to plan {plan.name}")  # type: ignore[assignment]
        return actions

    def _mover(self, plan: Plan) -> Callable[..., None]:
        def move(
            modeladmin: SubscriptionAdmin, request: HttpRequest, queryset: QuerySet[Subscription]
        ) -> None:
            _each(
                modeladmin,
                request,
                queryset,
                lambda s, origin: services.change_plan(
                    organization=s.organization, actor=_staff(request), plan=plan, origin=origin, system=True
                ),
            )

        return move


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "interval_start",
        "organization",
        "project_name",
        "component",
        "size",
        "replicas",
        "cpu_hours",
        "memory_gb_hours",
        "storage_gb_hours",
    ]
    list_filter = ["region"]
    search_fields = ["organization__name", "project_name"]
    date_hierarchy = "interval_start"
    list_select_related = ["organization"]


@admin.register(MeteringInterval)
class MeteringIntervalAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["start", "end", "records", "finished_at"]


class InvoiceLineInline(ReadOnlyMixin, admin.TabularInline):
    model = InvoiceLine
    extra = 0
    fields = ["kind", "description", "quantity", "included", "unit", "unit_price", "amount"]
    readonly_fields = ["kind", "description", "quantity", "included", "unit", "unit_price", "amount"]


@admin.register(Invoice)
class InvoiceAdmin(admin.ModelAdmin):
    list_display = ["number", "organization", "period_start", "status", "total", "currency", "due_on"]
    list_filter = ["status", "period_start"]
    search_fields = ["number", "organization__name"]
    inlines = [InvoiceLineInline]
    actions = ["mark_paid", "resend"]
    readonly_fields = [
        "organization",
        "number",
        "period_start",
        "period_end",
        "currency",
        "status",
        "plan_name",
        "subtotal",
        "credits",
        "total",
        "issued_at",
        "due_on",
        "paid_at",
        "payment_reference",
        "payment_state",
        "emailed_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Mark paid (bank transfer received)")
    def mark_paid(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        _each(
            self,
            request,
            queryset,
            lambda inv, origin: services.mark_invoice_paid(
                invoice=inv, actor=_staff(request), reference="admin", origin=origin
            ),
        )

    @admin.action(description="E-mail again to the owners")
    def resend(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        for invoice in queryset:
            Invoice.objects.filter(pk=invoice.pk).update(emailed_at=None)
            send_invoice_email_task.delay(invoice.pk)
        self.message_user(request, "Queued.", messages.SUCCESS)


class AdjustmentForm(ModelForm):
    """Refuses what the service would refuse, next to the field (not as a server error)."""

    class Meta:
        model = Adjustment
        fields = ["organization", "kind", "amount", "currency", "description"]

    def clean_amount(self) -> Any:
        try:
            return services.clean_amount(self.cleaned_data["amount"])
        except ServiceError as exc:
            raise ValidationError(exc.message) from exc

    def clean_description(self) -> str:
        description = " ".join(str(self.cleaned_data.get("description", "")).split())
        if not description:
            raise ValidationError("Say what the adjustment is for.")
        return description


@admin.register(Adjustment)
class AdjustmentAdmin(admin.ModelAdmin):
    """Credits and charges: added here through ``billing.services.add_adjustment``; never edited."""

    list_display = ["created_at", "organization", "kind", "amount", "currency", "description", "invoice"]
    list_filter = ["kind"]
    search_fields = ["organization__name", "description"]
    form = AdjustmentForm
    fields = ["organization", "kind", "amount", "currency", "description"]
    autocomplete_fields = ["organization"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Adjustment, form: ModelForm, change: bool) -> None:
        created = services.add_adjustment(
            organization=obj.organization,
            actor=_staff(request),  # type: ignore[arg-type]
            kind=obj.kind,
            amount=obj.amount,
            description=obj.description,
            currency=obj.currency,
            origin=Origin.from_request(request),
        )
        obj.pk = created.pk


# --- the organization's subscription, on the tenancy admin's organization page ----------------
class SubscriptionInline(admin.StackedInline):
    model = Subscription
    extra = 0
    can_delete = False
    show_change_link = True

    def get_readonly_fields(self, request: HttpRequest, obj: object = None) -> list[str]:
        return [f.name for f in Subscription._meta.fields]

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


OrganizationAdmin.more_inlines = [*OrganizationAdmin.more_inlines, SubscriptionInline]
