"""Django admin of stacks: the catalog (catalog staff), hosts, and customers' projects,
environments, operations and releases (support staff), whose actions call ``stacks.runtime.support``
(the customer's own code paths, each in the audit log). Read-only where hand edits are wrong."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from projects.access import VIEW_AS_PERMISSION
from projects.admin_helpers import ReadOnlyInline, SupportActionsMixin, action_form, staff_user
from projects.models import Environment, EnvironmentStatus, Organization, Project
from projects.sensitive import sensitive_action
from projects.services import Origin, ServiceError
from stacks.models import (
    CompatibilityRule,
    Component,
    ComponentVersion,
    DockerHost,
    Domain,
    DomainClaim,
    EdgeCertificate,
    Framework,
    KernelVersion,
    Operation,
    OperationStatus,
    Region,
    Release,
    ResourceSampleRow,
    Size,
    StackComponent,
    StackTemplate,
    StackTemplateComponent,
    Variable,
    placed_hosts,
)
from stacks.runtime import domains, old_data, support
from stacks.runtime.hosts import URL_RE, refresh_host
from stacks.runtime.reconcile import WAITING_PREFIX

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
    # What a container may do comes from the catalog files (load_catalog), not from admin;
    # the runtime checks it against a fixed allowlist anyway (stacks.runtime.spec).
    container_fields = ("user", "read_only_root", "capabilities", "tmpfs", "volumes", "ports")

    def get_readonly_fields(self, request: HttpRequest, obj: object = None) -> Any:
        if request.user.is_superuser:
            return super().get_readonly_fields(request, obj)
        return (*super().get_readonly_fields(request, obj), *self.container_fields)


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


class DockerHostForm(forms.ModelForm):
    def clean_url(self) -> str:
        url = str(self.cleaned_data.get("url", "")).strip()
        if not URL_RE.fullmatch(url):
            raise forms.ValidationError(
                "Give the engine as unix:///path, tcp://host:port or ssh://user@host."
            )
        return url


@admin.register(DockerHost)
class DockerHostAdmin(SupportActionsMixin, admin.ModelAdmin):
    form = DockerHostForm
    list_display = [
        "name",
        "region",
        "kernel",
        "state",
        "cpus",
        "memory_mb",
        "kernel_release",
        "probed_at",
        "missed_probes",
        "last_error",
        "engine_note",
        "last_seen_at",
    ]
    list_filter = ["region", "state", "kernel"]
    search_fields = ["name", "url"]
    # Host health (stacks.runtime.hosts.record_probe) writes these; the state too, but support
    # may still set it by hand (draining is set by the drain action).
    readonly_fields = [
        "engine_id",
        "kernel_release",
        "cpus",
        "memory_mb",
        "last_seen_at",
        "last_error",
        "probed_at",
        "missed_probes",
        "down_since",
        "reinstalled_at",
    ]
    actions = ["drain"]

    def save_model(self, request: HttpRequest, obj: DockerHost, form: Any, change: bool) -> None:
        """Whatever door adds a host (admin, ``add_host``, ``register_host``), its capacity and
        kernel are read from the engine at once; one that does not answer is saved with the
        error (host health reads it again)."""
        super().save_model(request, obj, form, change)
        if not change or {"url", "tls_verify"} & set(form.changed_data):
            refresh_host(obj)

    @admin.display(description="Engine")
    def engine_note(self, obj: DockerHost) -> str:
        """A reinstalled engine (another engine ID under the same name): its stacks were moved
        or restored from backups (stacks.runtime.reconcile.engine_reinstalled)."""
        if obj.reinstalled_at is None:
            return ""
        return f"engine was reinstalled {obj.reinstalled_at:%Y-%m-%d %H:%M} UTC"

    @admin.action(
        description="Drain (move its stacks elsewhere, those with data one after another)",
        permissions=["operate"],
    )
    @sensitive_action
    def drain(self, request: HttpRequest, queryset: QuerySet[DockerHost]) -> None:
        for host in queryset:
            try:
                result = support.drain_host(
                    host=host, actor=staff_user(request), origin=Origin.from_request(request)
                )  # type: ignore[arg-type]
            except ServiceError as exc:
                self.message_user(request, f"{host}: {exc.message}", messages.ERROR)
                continue
            self.message_user(
                request,
                f"{host}: marked draining; moving {len(result['moved'])} environment(s) to other hosts, "
                f"redeploying {len(result['respread'])} with replicas on it; moving with their data, "
                f"one after another (the site down during each): {', '.join(result['with_data']) or 'none'}. "
                "Staying (stopped with data, or no other host): "
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
    fields = readonly_fields = ("hostname", "path_prefix", "component", "claim", "created_at")
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
    readonly_fields = [f.name for f in Operation._meta.fields if f.name != "params"] + [
        "move_with_data",
        "shown_params",
    ]
    exclude = ["params"]
    actions = ["retry"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.display(description="organization")
    def organization(self, obj: Operation) -> object:
        return obj.environment.project.organization

    @admin.display(description="move with data")
    def move_with_data(self, obj: Operation) -> str:
        return support.describe_move(obj) if obj.params.get("move_data") else "—"

    @admin.display(description="params")
    def shown_params(self, obj: Operation) -> dict[str, object]:
        # A git address with credentials is kept encrypted for the worker: not for eyes.
        return {k: v for k, v in obj.params.items() if not k.endswith("_encrypted")}

    @admin.action(description="Retry (a failed operation, as a new one)", permissions=["operate"])
    def retry(self, request: HttpRequest, queryset: QuerySet[Operation]) -> None:
        self.run_service(
            request,
            queryset.filter(status=OperationStatus.FAILED),
            lambda op, origin: support.retry_operation(
                operation=op, actor=staff_user(request), origin=origin
            ),
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
    list_display = ["hostname", "path_prefix", "environment", "claim", "hsts", "created_at"]
    search_fields = ["hostname", "environment__project__name", "environment__project__organization__name"]
    readonly_fields = ["environment", "claim", "hostname", "path_prefix", "component", "hsts", "created_at"]
    list_select_related = ["environment__project", "claim"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # domains go through stacks.runtime.lifecycle.add_domain (validation, uniqueness, edge)

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(DomainClaim)
class DomainClaimAdmin(SupportActionsMixin, admin.ModelAdmin):
    """Organizations' claims on host names (docs/domains.md): support can vouch for one."""

    list_display = ["hostname", "organization", "verified_at", "method", "last_checked_at", "check_error"]
    list_filter = ["method"]
    search_fields = ["hostname", "organization__name"]
    readonly_fields = [
        "organization",
        "hostname",
        "record_name",
        "token",
        "verified_at",
        "method",
        "last_checked_at",
        "check_error",
        "created_at",
    ]
    list_select_related = ["organization"]
    actions = ["mark_verified", "check_now"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # claims are made by stacks.runtime.lifecycle.add_domain

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.action(description="Mark verified (support vouches; audited)", permissions=["operate"])
    def mark_verified(self, request: HttpRequest, queryset: QuerySet[DomainClaim]) -> None:
        for claim in queryset.filter(verified_at__isnull=True):
            if not domains.mark_verified(
                claim=claim, actor=staff_user(request), origin=Origin.from_request(request)
            ):
                self.message_user(
                    request, f"{claim.hostname}: another organization holds it verified.", messages.ERROR
                )
        self.message_user(request, "Done; verified domains are routed in a moment.", messages.SUCCESS)

    @admin.action(description="Check the TXT record (or the HTTP token) now", permissions=["operate"])
    def check_now(self, request: HttpRequest, queryset: QuerySet[DomainClaim]) -> None:
        verified = sum(domains.check_claim(claim) for claim in queryset.filter(verified_at__isnull=True))
        self.message_user(request, f"{verified} claim(s) verified.", messages.SUCCESS)


@admin.register(EdgeCertificate)
class EdgeCertificateAdmin(admin.ModelAdmin):
    """What the edge serves over HTTPS per routed name, as last checked (docs/domains.md)."""

    list_display = ["hostname", "status", "not_after", "issuer", "checked_at", "error"]
    list_filter = ["status"]
    search_fields = ["hostname"]
    readonly_fields = ["hostname", "status", "issuer", "not_after", "error", "checked_at", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # rows follow the routed names (stacks.runtime.certificates)

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
                    ", ".join(placed_hosts(env)) or "not placed",
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
    @sensitive_action
    def suspend_projects(self, request: HttpRequest, queryset: QuerySet[Project]) -> TemplateResponse | None:
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
            lambda p, origin: support.suspend_project(
                project=p, actor=staff_user(request), reason=reason, origin=origin
            ),
            "Suspended {count} project(s); their containers are stopping.",
        )
        return None

    @admin.action(description="Resume (start again what was running)", permissions=["operate"])
    @sensitive_action
    def resume_projects(self, request: HttpRequest, queryset: QuerySet[Project]) -> None:
        self.run_service(
            request,
            queryset,
            lambda p, origin: support.resume_project(project=p, actor=staff_user(request), origin=origin),
            "Resumed {count} project(s).",
        )


class NeedsSupportFilter(admin.SimpleListFilter):
    """Environments nothing heals by itself right now: failed (the reconciler retries them
    slowly), degraded (a repair failed, or waiting for a host that is down)."""

    title = "needs support"
    parameter_name = "attention"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("any", "Failed or degraded"),
            ("failed", "Failed"),
            ("waiting", "Waiting for a host"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Environment]) -> QuerySet[Environment]:
        if self.value() == "any":
            return queryset.filter(status__in=[EnvironmentStatus.FAILED, EnvironmentStatus.DEGRADED])
        if self.value() == "failed":
            return queryset.filter(status=EnvironmentStatus.FAILED)
        if self.value() == "waiting":
            return queryset.filter(status_detail__startswith=WAITING_PREFIX)
        return queryset


@admin.register(Environment)
class EnvironmentAdmin(SupportActionsMixin, admin.ModelAdmin):
    list_display = [
        "__str__",
        "organization",
        "status",
        "status_detail",
        "host",
        "kernel",
        "template",
        "current_release",
        "created_at",
    ]
    list_filter = [NeedsSupportFilter, "status", "project__region", "kernel", "template"]
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
        "old_data_kept",
        "moves_with_data",
        "created_at",
        "destroyed_at",
    )
    actions = ["redeploy", "reconcile_now", "move_to_host"]

    @admin.display(description="Moves with its data")
    def moves_with_data(self, obj: Environment) -> str:
        """Support's moves of it with its data, newest first, with the downtime measured."""
        return "; ".join(support.describe_move(op) for op in support.moves_with_data(obj)) or "none"

    @admin.display(description="Data kept after upgrades")
    def old_data_kept(self, obj: Environment) -> str:
        """What stateful upgrades kept (the customer deletes it from the environment page)."""
        kept = old_data.kept_old_data(obj)
        return (
            "; ".join(
                f"{d.component} {d.version} (upgraded to {d.upgraded_to}), "
                f"{filesizeformat(d.size_bytes) if d.size_bytes is not None else 'size not measured'}, "
                f"kept since {d.kept_since:%Y-%m-%d}"
                for d in kept
            )
            or "none"
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_inline_instances(self, request: HttpRequest, obj: Environment | None = None) -> list[Any]:
        inlines = [StackComponentInline, OperationInline, DomainInline, VariableInline]
        return [inline(self.model, self.admin_site) for inline in inlines] if obj else []

    @admin.display(description="organization", ordering="project__organization__name")
    def organization(self, obj: Environment) -> Organization:
        return obj.project.organization

    @admin.display(description="host")
    def host(self, obj: Environment) -> str:
        return ", ".join(placed_hosts(obj)) or "—"

    @admin.display(description="address")
    def public_address(self, obj: Environment) -> str:
        return obj.public_url

    @admin.action(description="Redeploy the current release", permissions=["operate"])
    def redeploy(self, request: HttpRequest, queryset: QuerySet[Environment]) -> None:
        self.run_service(
            request,
            queryset,
            lambda e, origin: support.redeploy_environment(
                environment=e, actor=staff_user(request), origin=origin
            ),
            "Queued a redeploy of {count} environment(s).",
        )

    @admin.action(description="Reconcile now", permissions=["operate"])
    def reconcile_now(self, request: HttpRequest, queryset: QuerySet[Environment]) -> None:
        self.run_service(
            request,
            queryset,
            lambda e, origin: support.reconcile_environment(
                environment=e, actor=staff_user(request), origin=origin
            ),
            "A reconciler pass is queued ({count} environment(s) asked).",
        )

    @admin.action(description="Move to another host", permissions=["operate"])
    @sensitive_action
    def move_to_host(self, request: HttpRequest, queryset: QuerySet[Environment]) -> TemplateResponse | None:
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
            lambda e, origin: support.move_environment(
                environment=e, host=host, actor=staff_user(request), origin=origin
            ),
            f"Queued the move of {{count}} environment(s) to {host}. One with data is backed up with "
            "its writers stopped and restored there: its site is down until it answers on the new "
            "host (the downtime measured is on the operation and on the environment's page here).",
        )
        return None
