"""Catalog administration for the hoster's catalog staff."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from stacks.models import (
    CompatibilityRule,
    Component,
    ComponentVersion,
    Framework,
    KernelVersion,
    Region,
    Size,
    StackTemplate,
    StackTemplateComponent,
)

PIPELINE_FIELDS = (
    "recipe_hash",
    "image_ref",
    "digest",
    "built_at",
    "verified_at",
    "published_at",
    "failure_reason",
    "verification_log",
)


@admin.register(Region)
class RegionAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "backend", "is_active"]
    list_filter = ["backend", "is_active"]
    filter_horizontal = ["kernel_lines"]


@admin.register(KernelVersion)
class KernelVersionAdmin(admin.ModelAdmin):
    list_display = ["line", "name", "eol", "is_default"]


@admin.register(Size)
class SizeAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "cpus", "memory_mb", "pids"]


class ComponentVersionInline(admin.TabularInline):
    model = ComponentVersion
    extra = 0
    fields = ("version", "track", "debian", "status", "target_status", "eol", "digest", "failure_reason")
    readonly_fields = ("status", "digest", "failure_reason")
    show_change_link = True


@admin.register(Component)
class ComponentAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "kind", "user", "stateful", "read_only_root"]
    list_filter = ["kind", "stateful"]
    search_fields = ["code", "name"]
    inlines = [ComponentVersionInline]
    filter_horizontal = ["sizes"]


@admin.register(ComponentVersion)
class ComponentVersionAdmin(admin.ModelAdmin):
    """Pipeline results are read-only: only the build/verify/publish services write them."""

    list_display = [
        "component",
        "version",
        "track",
        "debian",
        "status",
        "target_status",
        "eol",
        "short_digest",
        "verified_at",
        "failure_reason",
    ]
    list_filter = ["status", "component__kind", "debian", "component"]
    search_fields = ["component__code", "component__name", "version", "digest"]
    readonly_fields = ("status", *PIPELINE_FIELDS)
    list_select_related = ["component"]

    @admin.display(description="digest")
    def short_digest(self, obj: ComponentVersion) -> str:
        return obj.digest[:19]


@admin.register(Framework)
class FrameworkAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "runtime"]


@admin.register(CompatibilityRule)
class CompatibilityRuleAdmin(admin.ModelAdmin):
    list_display = ["component", "kind", "note"]
    filter_horizontal = ["others"]


class StackTemplateComponentInline(admin.TabularInline):
    model = StackTemplateComponent
    extra = 0


@admin.register(StackTemplate)
class StackTemplateAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "framework", "is_active"]
    list_filter = ["is_active", "framework"]
    inlines = [StackTemplateComponentInline]

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        # Templates come from the catalog files; retire one there (active: false).
        return False


# --- hosts and running stacks ------------------------------------------------------------------------
from django.contrib import messages  # noqa: E402
from django.db.models import QuerySet  # noqa: E402
from django.utils import timezone  # noqa: E402

from projects.access import VIEW_AS_PERMISSION  # noqa: E402
from projects.admin import ReadOnlyInline, SupportActionsMixin, _staff  # noqa: E402
from stacks.models import (  # noqa: E402
    DockerHost,
    Domain,
    Operation,
    OperationStatus,
    Release,
    ResourceSampleRow,
    StackComponent,
    Variable,
)


def secret_text(obj: Variable) -> str:
    return f"secret (set {timezone.localtime(obj.updated_at):%Y-%m-%d %H:%M})"


class VariableDisplay:
    """Secrets: never the value nor the ciphertext. Plain values: only to staff who may view
    the portal as the customer; the others see that a value is set."""

    @admin.display(description="value")
    def plain_value(self, obj: Variable) -> str:
        return secret_text(obj) if obj.is_secret else obj.value

    @admin.display(description="value")
    def masked_value(self, obj: Variable) -> str:
        return secret_text(obj) if obj.is_secret else "(hidden)"

    @staticmethod
    def value_field(request: HttpRequest) -> str:
        return "plain_value" if request.user.has_perm(VIEW_AS_PERMISSION) else "masked_value"


@admin.register(DockerHost)
class DockerHostAdmin(SupportActionsMixin, admin.ModelAdmin):
    list_display = [
        "name",
        "region",
        "kernel",
        "state",
        "cpus",
        "memory_mb",
        "kernel_release",
        "last_seen_at",
    ]
    list_filter = ["region", "state", "kernel"]
    search_fields = ["name", "url"]
    readonly_fields = ["engine_id", "kernel_release", "cpus", "memory_mb", "last_seen_at", "last_error"]
    actions = ["drain"]

    @admin.action(
        description="Drain (move stateless stacks elsewhere, then mark draining)", permissions=["operate"]
    )
    def drain(self, request: HttpRequest, queryset: QuerySet[DockerHost]) -> None:
        from projects.services import Origin, ServiceError
        from stacks.support import drain_host

        for host in queryset:
            try:
                result = drain_host(host=host, actor=_staff(request), origin=Origin.from_request(request))  # type: ignore[arg-type]
            except ServiceError as exc:
                self.message_user(request, f"{host}: {exc.message}", messages.ERROR)
                continue
            self.message_user(
                request,
                f"{host}: marked draining; moving {len(result['moved'])} environment(s) to other hosts, "
                f"redeploying {len(result['respread'])} with replicas on it. "
                "Staying (data in volumes or no other host): "
                f"{', '.join(result['stays']) or 'none'}. "
                f"Busy, drain again later: {', '.join(result['busy']) or 'none'}.",
                messages.WARNING if result["stays"] or result["busy"] else messages.SUCCESS,
            )


class StackComponentInline(ReadOnlyInline):
    model = StackComponent
    fields = readonly_fields = ("name", "component", "version", "size", "replicas", "public")
    show_change_link = False


class OperationInline(ReadOnlyInline):
    model = Operation
    fields = readonly_fields = ("kind", "status", "error", "requested_by", "created_at", "finished_at")
    ordering = ["-created_at", "-id"]
    max_num = 0


class DomainInline(ReadOnlyInline):
    model = Domain
    fields = readonly_fields = ("hostname", "path_prefix", "component", "created_at")
    show_change_link = False


class VariableInline(VariableDisplay, ReadOnlyInline):
    model = Variable
    show_change_link = False

    def get_fields(self, request: HttpRequest, obj: object = None) -> Any:
        return ["name", "component", self.value_field(request), "generated", "updated_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: object = None) -> Any:
        return self.get_fields(request, obj)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Variable]:
        return super().get_queryset(request).defer("encrypted_value")


@admin.register(Operation)
class OperationAdmin(SupportActionsMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "environment",
        "organization",
        "kind",
        "status",
        "created_at",
        "finished_at",
        "requested_by",
    ]
    list_filter = ["status", "kind", "created_at"]
    search_fields = [
        "=id",
        "environment__project__name",
        "environment__project__organization__name",
        "environment__project__organization__memberships__user__email",
        "error",
    ]
    list_select_related = ["environment__project__organization", "requested_by"]
    readonly_fields = [f.name for f in Operation._meta.fields if f.name != "params"] + ["shown_params"]
    exclude = ["params"]
    actions = ["retry"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.display(description="organization")
    def organization(self, obj: Operation) -> object:
        return obj.environment.project.organization

    @admin.display(description="params")
    def shown_params(self, obj: Operation) -> dict[str, object]:
        # A git address with credentials is kept encrypted for the worker: not for eyes.
        return {k: v for k, v in obj.params.items() if not k.endswith("_encrypted")}

    @admin.action(description="Retry (a failed operation, as a new one)", permissions=["operate"])
    def retry(self, request: HttpRequest, queryset: QuerySet[Operation]) -> None:
        from stacks.support import retry_operation

        self.run_service(
            request,
            queryset.filter(status=OperationStatus.FAILED),
            lambda op, origin: retry_operation(operation=op, actor=_staff(request), origin=origin),
            "Queued {count} retry(ies).",
        )
        skipped = queryset.exclude(status=OperationStatus.FAILED).count()
        if skipped:
            self.message_user(
                request, f"Skipped {skipped} operation(s) that had not failed.", messages.WARNING
            )


@admin.register(Release)
class ReleaseAdmin(admin.ModelAdmin):
    list_display = ["environment", "number", "source", "note", "content_sha256", "created_at"]
    list_filter = ["source"]
    search_fields = ["environment__project__name", "content_sha256", "commit"]
    readonly_fields = [f.name for f in Release._meta.fields]
    list_select_related = ["environment__project"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Domain)
class DomainAdmin(admin.ModelAdmin):
    list_display = ["hostname", "path_prefix", "environment", "created_at"]
    search_fields = ["hostname", "environment__project__name", "environment__project__organization__name"]
    readonly_fields = ["environment", "hostname", "path_prefix", "component", "created_at"]
    list_select_related = ["environment__project"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # domains go through stacks.lifecycle.add_domain (validation, uniqueness, edge)

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(StackComponent)
class StackComponentAdmin(admin.ModelAdmin):
    list_display = ["name", "environment", "component", "version", "size", "replicas", "public"]
    list_filter = ["component", "public"]
    search_fields = ["name", "environment__project__name"]
    readonly_fields = [f.name for f in StackComponent._meta.fields]
    list_select_related = ["environment__project", "component", "version__component", "size"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Variable)
class VariableAdmin(VariableDisplay, admin.ModelAdmin):
    """Names, and plain values to those allowed; secret values are never shown, not even
    their ciphertext."""

    list_filter = ["is_secret", "generated"]
    search_fields = ["name", "environment__project__name", "environment__project__organization__name"]
    list_select_related = ["environment__project"]

    def get_list_display(self, request: HttpRequest) -> Any:
        return [
            "name",
            "environment",
            "component",
            self.value_field(request),
            "is_secret",
            "generated",
            "updated_at",
        ]

    def get_fields(self, request: HttpRequest, obj: object = None) -> Any:
        return [
            "environment",
            "component",
            "name",
            self.value_field(request),
            "is_secret",
            "generated",
            "updated_at",
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: object = None) -> Any:
        return self.get_fields(request, obj)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Variable]:
        return super().get_queryset(request).defer("encrypted_value")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(ResourceSampleRow)
class ResourceSampleAdmin(admin.ModelAdmin):
    list_display = ["environment", "component", "replica", "taken_at", "cpu_percent", "memory_bytes"]
    list_filter = ["component"]
    readonly_fields = [f.name for f in ResourceSampleRow._meta.fields]
    list_select_related = ["environment__project"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
