"""Django admin for the hoster's support staff: people, organizations, invitations, tokens
and the audit log. Read-only where hand edits would be wrong: tenancy changes through the
services. Projects and environments are in ``stacks.admin`` (their support actions run
stacks); the organization's subscription is added by ``billing.admin`` (``more_inlines``).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse

from projects.access import VIEW_AS_PERMISSION
from projects.admin_helpers import ReadOnlyInline
from projects.models import (
    ApiToken,
    AuditEvent,
    Invitation,
    Membership,
    Organization,
    Project,
    User,
)
from projects.sensitive import require_recent_authentication


# --- people and organizations ----------------------------------------------------------------
class MembershipInline(ReadOnlyInline):
    model = Membership
    fields = readonly_fields = ("user", "role", "created_at")
    show_change_link = False


class UserMembershipInline(ReadOnlyInline):
    model = Membership
    fk_name = "user"
    fields = readonly_fields = ("organization", "role", "created_at")
    show_change_link = False


class InvitationInline(ReadOnlyInline):
    model = Invitation
    fields = readonly_fields = (
        "email",
        "role",
        "invited_by",
        "created_at",
        "expires_at",
        "accepted_at",
        "revoked_at",
    )
    show_change_link = False


class ProjectInline(ReadOnlyInline):
    model = Project
    fields = readonly_fields = ("name", "region", "suspended_at", "suspended_reason", "created_at")


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = ["email", "username", "is_staff", "is_active", "date_joined", "last_login"]
    list_filter = ["is_staff", "is_superuser", "is_active", "groups"]
    search_fields = ["email", "username", "first_name", "last_name"]
    inlines = [UserMembershipInline]

    # Who is staff, their groups and passwords: saved only after a recent re-authentication
    # (allauth's page, then the same POST again).
    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        if request.method == "POST":
            require_recent_authentication(request)
        return super().changeform_view(request, object_id, form_url, extra_context)

    def user_change_password(self, request: HttpRequest, id: str, form_url: str = "") -> HttpResponse:
        if request.method == "POST":
            require_recent_authentication(request)
        return super().user_change_password(request, id, form_url)


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    more_inlines: list[type[admin.options.InlineModelAdmin]] = []  # billing adds the subscription
    list_display = [
        "name",
        "id",
        "owners",
        "member_count",
        "project_count",
        "is_demo",
        "demo_expires_at",
        "created_at",
    ]
    list_filter = ["is_demo", "created_at"]
    search_fields = ["name", "memberships__user__email", "projects__name"]
    date_hierarchy = "created_at"
    readonly_fields = ["is_demo", "demo_warned_at", "created_at"]
    fields = ["name", "is_demo", "demo_expires_at", "demo_warned_at", "created_at"]
    change_form_template = "support/admin/organization_change_form.html"
    change_list_template = "support/admin/organization_change_list.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # organizations come from sign-ups (with an owner) and start_demo

    def get_queryset(self, request: HttpRequest) -> QuerySet[Organization]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                members_n=Count("memberships", distinct=True), projects_n=Count("projects", distinct=True)
            )
            .prefetch_related("memberships__user")
        )

    def get_inline_instances(self, request: HttpRequest, obj: Organization | None = None) -> list[Any]:
        inlines: list[Any] = [MembershipInline, InvitationInline, ProjectInline, *self.more_inlines]
        return [inline(self.model, self.admin_site) for inline in inlines] if obj else []

    @admin.display(description="owners")
    def owners(self, obj: Organization) -> str:
        return ", ".join(m.user.email for m in obj.memberships.all() if m.role == "owner")

    @admin.display(description="members", ordering="members_n")
    def member_count(self, obj: Organization) -> int:
        return getattr(obj, "members_n", 0)

    @admin.display(description="projects", ordering="projects_n")
    def project_count(self, obj: Organization) -> int:
        return getattr(obj, "projects_n", 0)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        extra = {**(extra_context or {}), "can_view_as": request.user.has_perm(VIEW_AS_PERMISSION)}
        return super().change_view(request, object_id, form_url, extra)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra = {**(extra_context or {}), "can_start_demo": request.user.has_perm("projects.start_demo")}
        return super().changelist_view(request, extra)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    """Roles change through the services (last-owner rule, audit): read-only here."""

    list_display = ["user", "organization", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__email", "organization__name"]
    list_select_related = ["user", "organization"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = ["email", "organization", "role", "status", "created_at", "expires_at"]
    search_fields = ["email", "organization__name"]
    list_filter = ["role"]
    readonly_fields = [
        "organization",
        "email",
        "role",
        "invited_by",
        "created_at",
        "expires_at",
        "accepted_at",
        "accepted_by",
        "revoked_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The audit trail is evidence: searchable, never edited or deleted from here."""

    list_display = ["created_at", "action", "actor_email", "organization", "target", "ip_address"]
    list_filter = ["action", "created_at"]
    search_fields = ["actor_email", "action", "target", "organization__name", "ip_address"]
    date_hierarchy = "created_at"
    list_select_related = ["organization"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are shown by prefix only; the secret was never stored."""

    list_display = [
        "name",
        "prefix",
        "user",
        "organization",
        "read_only",
        "created_at",
        "expires_at",
        "revoked_at",
    ]
    list_filter = ["read_only"]
    search_fields = ["user__email", "prefix", "name", "organization__name"]
    fields = readonly_fields = (
        "user",
        "organization",
        "name",
        "prefix",
        "read_only",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    )
    list_select_related = ["user", "organization"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
