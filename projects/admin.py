from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.http import HttpRequest

from projects.models import AuditEvent, Invitation, Membership, Organization, User


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]
    readonly_fields = ["created_at"]


class UserMembershipInline(MembershipInline):
    autocomplete_fields = ["organization"]


class InvitationInline(admin.TabularInline):
    model = Invitation
    extra = 0
    fields = ("email", "role", "invited_by", "created_at", "expires_at", "accepted_at", "revoked_at")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = ["email", "username", "is_staff", "is_active", "date_joined", "last_login"]
    search_fields = ["email", "username", "first_name", "last_name"]
    inlines = [UserMembershipInline]


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["name", "id", "member_count", "created_at"]
    search_fields = ["name", "memberships__user__email"]
    date_hierarchy = "created_at"
    inlines = [MembershipInline, InvitationInline]

    @admin.display(description="members")
    def member_count(self, obj: Organization) -> int:
        return obj.memberships.count()


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


from projects.models import Environment, Project  # noqa: E402


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "organization", "region", "created_at"]
    search_fields = ["name", "organization__name"]
    list_filter = ["region"]
    readonly_fields = ["organization", "region", "created_by", "created_at"]


@admin.register(Environment)
class EnvironmentAdmin(admin.ModelAdmin):
    list_display = ["__str__", "status", "kernel", "template", "current_release", "created_at"]
    list_filter = ["status", "kernel"]
    search_fields = ["project__name", "project__organization__name"]
    readonly_fields = [
        "project",
        "status",
        "status_detail",
        "current_release",
        "backend_state",
        "created_at",
        "destroyed_at",
    ]

    def get_inline_instances(self, request, obj=None):  # type: ignore[no-untyped-def]
        from stacks.admin import StackComponentInline

        return [StackComponentInline(self.model, self.admin_site)] if obj else []
