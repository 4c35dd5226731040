"""Django admin for the hoster's support staff: customers, their projects and environments.

What customers own is read-only here: it changes only through the services, and support
changes it through the admin actions below, which call ``stacks.support`` (the same code
paths as the customer's own actions, each in the audit log).
"""

from __future__ import annotations

from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from projects.access import VIEW_AS_PERMISSION
from projects.models import (
    ApiToken,
    AuditEvent,
    Environment,
    Invitation,
    Membership,
    Organization,
    Project,
    User,
)
from projects.services import Origin, ServiceError

OPERATE_PERMISSION = "projects.operate_stacks"


def _staff(request: HttpRequest) -> User:
    return cast(User, request.user)  # the admin lets only signed-in staff in


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class SupportActionsMixin:
    """Admin actions marked ``permissions=["operate"]`` need ``projects.operate_stacks``."""

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_staff and request.user.has_perm(OPERATE_PERMISSION))

    def run_service(self, request: HttpRequest, objects: Any, call: Any, done: str) -> None:
        """``call(obj, origin)`` for each object; one message for the successes, one per refusal."""
        origin = Origin.from_request(request)
        ok = 0
        for obj in objects:
            try:
                call(obj, origin)
                ok += 1
            except ServiceError as exc:
                self.message_user(request, f"{obj}: {exc.message}", messages.ERROR)  # type: ignore[attr-defined]
        if ok:
            self.message_user(request, done.format(count=ok), messages.SUCCESS)  # type: ignore[attr-defined]


def action_form(
    request: HttpRequest, queryset: QuerySet[Any], action: str, title: str, field: dict[str, Any]
) -> TemplateResponse:
    """The intermediate page of an action that needs one more input (a reason, a host)."""
    return TemplateResponse(
        request,
        "support/admin/action_form.html",
        {
            **admin.site.each_context(request),
            "title": title,
            "objects": queryset,
            "action": action,
            "field": field,
            "opts": queryset.model._meta,
        },
    )


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


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
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
        inlines: list[Any] = [MembershipInline, InvitationInline, ProjectInline]
        subscription = _subscription_inline()
        if subscription is not None:
            inlines.append(subscription)
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


def _subscription_inline() -> type[admin.StackedInline] | None:
    """The organization's subscription (billing's model, when installed)."""
    try:
        from billing.models import Subscription
    except ImportError:
        return None

    class SubscriptionInline(admin.StackedInline):
        model = Subscription
        extra = 0
        can_delete = False
        show_change_link = True

        def get_readonly_fields(self, request: HttpRequest, obj: object = None) -> list[str]:
            return [f.name for f in Subscription._meta.fields]

        def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
            return False

    return SubscriptionInline


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


# --- projects and environments ----------------------------------------------------------------
class SuspendedFilter(admin.SimpleListFilter):
    title = "suspended"
    parameter_name = "suspended"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Suspended"), ("no", "Not suspended")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() in ("yes", "no"):
            return queryset.filter(suspended_at__isnull=self.value() == "no")
        return queryset


class EnvironmentInline(ReadOnlyInline):
    model = Environment
    fields = readonly_fields = (
        "name",
        "status",
        "status_detail",
        "template",
        "current_release",
        "created_at",
    )


@admin.register(Project)
class ProjectAdmin(SupportActionsMixin, admin.ModelAdmin):
    list_display = ["name", "organization", "region", "environment_count", "suspended_at", "created_at"]
    search_fields = ["name", "organization__name", "organization__memberships__user__email"]
    list_filter = [SuspendedFilter, "region", "organization__is_demo"]
    list_select_related = ["organization", "region"]
    fields = readonly_fields = (
        "name",
        "organization",
        "region",
        "created_by",
        "created_at",
        "suspended_at",
        "suspended_reason",
        "stacks_overview",
    )
    inlines = [EnvironmentInline]
    actions = ["suspend_projects", "resume_projects"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Project]:
        return super().get_queryset(request).annotate(environments_n=Count("environments"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # customers create projects (or start_demo does)

    @admin.display(description="environments", ordering="environments_n")
    def environment_count(self, obj: Project) -> int:
        return getattr(obj, "environments_n", 0)

    @admin.display(description="stacks")
    def stacks_overview(self, obj: Project) -> SafeString:
        """Each environment's components, latest operations and domains, on one page."""
        from stacks.models import Operation

        blocks = []
        for env in obj.environments.all():
            components = ", ".join(
                f"{c.name} ({c.version}, {c.replicas}× {c.size.code})"
                for c in env.components.select_related("size", "version__component")
            )
            operations = format_html_join(
                "",
                '<li><a href="{}">{} #{}</a> {} {}</li>',
                (
                    (
                        reverse("admin:stacks_operation_change", args=[op.pk]),
                        op.get_kind_display(),
                        op.pk,
                        op.status,
                        (op.error or "")[:120],
                    )
                    for op in Operation.objects.filter(environment=env).order_by("-created_at", "-id")[:5]
                ),
            )
            domains = ", ".join(str(d) for d in env.domains.all()) or "—"
            blocks.append(
                format_html(
                    '<div><strong><a href="{}">{}</a></strong> {} · {}<br>components: {}<br>domains: {} · '
                    "{}<ul>{}</ul></div>",
                    reverse("admin:projects_environment_change", args=[env.pk]),
                    env.name,
                    env.get_status_display(),
                    env.backend_state.get("host", "not placed"),
                    components or "—",
                    env.hostname,
                    domains,
                    operations,
                )
            )
        return format_html_join("", "{}", ((b,) for b in blocks)) if blocks else SafeString("—")

    @admin.action(
        description="Suspend (stop containers, keep data, block the customer)", permissions=["operate"]
    )
    def suspend_projects(self, request: HttpRequest, queryset: QuerySet[Project]) -> TemplateResponse | None:
        from stacks.support import suspend_project

        if "apply" not in request.POST:
            return action_form(
                request,
                queryset,
                "suspend_projects",
                "Suspend projects",
                {"name": "reason", "label": "Reason (the customer sees it)", "type": "text"},
            )
        reason = request.POST.get("reason", "")
        self.run_service(
            request,
            queryset,
            lambda p, origin: suspend_project(project=p, actor=_staff(request), reason=reason, origin=origin),
            "Suspended {count} project(s); their containers are stopping.",
        )
        return None

    @admin.action(description="Resume (start again what was running)", permissions=["operate"])
    def resume_projects(self, request: HttpRequest, queryset: QuerySet[Project]) -> None:
        from stacks.support import resume_project

        self.run_service(
            request,
            queryset,
            lambda p, origin: resume_project(project=p, actor=_staff(request), origin=origin),
            "Resumed {count} project(s).",
        )


@admin.register(Environment)
class EnvironmentAdmin(SupportActionsMixin, admin.ModelAdmin):
    list_display = [
        "__str__",
        "organization",
        "status",
        "host",
        "kernel",
        "template",
        "current_release",
        "created_at",
    ]
    list_filter = ["status", "project__region", "kernel", "template"]
    search_fields = [
        "project__name",
        "project__organization__name",
        "project__organization__memberships__user__email",
    ]
    list_select_related = ["project__organization", "kernel", "template", "current_release"]
    fields = readonly_fields = (
        "project",
        "name",
        "kernel",
        "framework",
        "template",
        "desired_running",
        "status",
        "status_detail",
        "current_release",
        "public_address",
        "backend_state",
        "created_at",
        "destroyed_at",
    )
    actions = ["redeploy", "reconcile_now", "move_to_host"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_inline_instances(self, request: HttpRequest, obj: Environment | None = None) -> list[Any]:
        from stacks.admin import DomainInline, OperationInline, StackComponentInline, VariableInline

        inlines = [StackComponentInline, OperationInline, DomainInline, VariableInline]
        return [inline(self.model, self.admin_site) for inline in inlines] if obj else []

    @admin.display(description="organization", ordering="project__organization__name")
    def organization(self, obj: Environment) -> Organization:
        return obj.project.organization

    @admin.display(description="host")
    def host(self, obj: Environment) -> str:
        return str(obj.backend_state.get("host", "—"))

    @admin.display(description="address")
    def public_address(self, obj: Environment) -> str:
        return obj.public_url

    @admin.action(description="Redeploy the current release", permissions=["operate"])
    def redeploy(self, request: HttpRequest, queryset: QuerySet[Environment]) -> None:
        from stacks.support import redeploy_environment

        self.run_service(
            request,
            queryset,
            lambda e, origin: redeploy_environment(environment=e, actor=_staff(request), origin=origin),
            "Queued a redeploy of {count} environment(s).",
        )

    @admin.action(description="Reconcile now", permissions=["operate"])
    def reconcile_now(self, request: HttpRequest, queryset: QuerySet[Environment]) -> None:
        from stacks.support import reconcile_environment

        self.run_service(
            request,
            queryset,
            lambda e, origin: reconcile_environment(environment=e, actor=_staff(request), origin=origin),
            "A reconciler pass is queued ({count} environment(s) asked).",
        )

    @admin.action(description="Move to another host", permissions=["operate"])
    def move_to_host(self, request: HttpRequest, queryset: QuerySet[Environment]) -> TemplateResponse | None:
        from stacks.models import DockerHost
        from stacks.support import move_environment

        if "apply" not in request.POST:
            hosts = DockerHost.objects.filter(state=DockerHost.State.ACTIVE).select_related(
                "region", "kernel"
            )
            choices = [(h.pk, f"{h.name} ({h.region.code}, {h.kernel or 'no kernel line'})") for h in hosts]
            return action_form(
                request,
                queryset,
                "move_to_host",
                "Move environments",
                {"name": "host", "label": "Target host", "type": "select", "choices": choices},
            )
        host = DockerHost.objects.filter(pk=request.POST.get("host") or 0).first()
        if host is None:
            self.message_user(request, "Choose a host.", messages.ERROR)
            return None
        self.run_service(
            request,
            queryset,
            lambda e, origin: move_environment(
                environment=e, host=host, actor=_staff(request), origin=origin
            ),
            f"Queued the move of {{count}} environment(s) to {host}.",
        )
        return None
