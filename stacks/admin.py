"""Catalog administration for the hoster's catalog staff."""

from __future__ import annotations

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
from stacks.models import DockerHost, Domain, Operation, Release, StackComponent, Variable  # noqa: E402


@admin.register(DockerHost)
class DockerHostAdmin(admin.ModelAdmin):
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
    readonly_fields = ["engine_id", "kernel_release", "cpus", "memory_mb", "last_seen_at", "last_error"]


class StackComponentInline(admin.TabularInline):
    model = StackComponent
    extra = 0
    fields = readonly_fields = ("name", "component", "version", "size", "replicas", "public")

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Operation)
class OperationAdmin(admin.ModelAdmin):
    list_display = ["id", "environment", "kind", "status", "created_at", "finished_at", "requested_by"]
    list_filter = ["status", "kind"]
    search_fields = ["environment__project__name", "error"]
    readonly_fields = [f.name for f in Operation._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Release)
class ReleaseAdmin(admin.ModelAdmin):
    list_display = ["environment", "number", "source", "content_sha256", "created_at"]
    readonly_fields = [f.name for f in Release._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Domain)
class DomainAdmin(admin.ModelAdmin):
    list_display = ["hostname", "path_prefix", "environment", "created_at"]
    search_fields = ["hostname"]
    readonly_fields = ["environment", "hostname", "path_prefix", "component", "created_at"]


@admin.register(Variable)
class VariableAdmin(admin.ModelAdmin):
    """Names only: secret values are never shown, not even to staff."""

    list_display = ["name", "environment", "component", "is_secret", "generated", "updated_at"]
    fields = readonly_fields = ("environment", "component", "name", "is_secret", "generated", "updated_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
