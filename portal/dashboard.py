"""What the dashboard shows: one page of an organization's projects with their
environments, what runs where, and what needs attention.

Everything comes from the database (``Environment.backend_state`` says where a stack
lives): rendering the dashboard never calls a backend. The number of queries is the same
for 1 project or 10,000: a page of projects is loaded with its environments, components
and operations in a fixed number of queries, attention is computed for that page only, and
the organization-wide count is one SQL query (held for half a minute in large
organizations, as billing's quota totals are for a minute).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from django.core.cache import cache
from django.core.paginator import Page, Paginator
from django.db.models import Exists, OuterRef, Prefetch, Q, Subquery
from django.utils import timezone

import billing.quotas
from projects.models import Environment, EnvironmentStatus, Organization, Project
from stacks.catalog import offers
from stacks.models import (
    ACTIVE_OPERATION_STATUSES,
    ComponentVersion,
    Operation,
    OperationKind,
    OperationStatus,
    StackComponent,
    VersionStatus,
)
from stacks.runtime import disk

PAGE_SIZE = 20
EOL_SOON_DAYS = 180  # as ComponentVersion.eol_soon
LARGE_ORGANIZATION = 1000  # projects; from here on the organization-wide count is cached
QUOTA_CACHE_SECONDS = 60
ATTENTION_CACHE_SECONDS = 30
COMPONENT_FIELDS = (
    "environment_id",
    "name",
    "position",
    "component__name",
    "component__stateful",
    "version__component_id",
    "version__version",
    "version__status",
    "version__eol",
    "version__position",
)
BUSY_STATUSES = (EnvironmentStatus.DEPLOYING, EnvironmentStatus.DESTROYING)


@dataclass(frozen=True)
class Attention:
    level: str  # a Bootstrap colour: danger, warning, info
    text: str


@dataclass
class EnvironmentRow:
    environment: Environment
    components: list[StackComponent]
    operation: Operation | None  # the queued or running one
    hosts: list[str]
    attention: list[Attention] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        return self.operation is not None or self.environment.status in BUSY_STATUSES


@dataclass
class ProjectRow:
    project: Project
    environments: list[EnvironmentRow]


@dataclass
class Catalog:
    """The few catalog facts attention needs, read once (the catalog is small)."""

    versions: dict[int, ComponentVersion]  # by id
    by_component: dict[int, list[ComponentVersion]]  # component id -> its versions, newest first

    @classmethod
    def load(cls) -> Catalog:
        versions = list(
            ComponentVersion.objects.select_related("component")
            .only(
                "id",
                "component_id",
                "component__stateful",
                "version",
                "status",
                "digest",
                "position",
                "eol",
                "migration",
            )
            .order_by("-position", "-id")
        )
        by_component: dict[int, list[ComponentVersion]] = {}
        for cv in versions:
            by_component.setdefault(cv.component_id, []).append(cv)
        return cls(versions={cv.pk: cv for cv in versions}, by_component=by_component)

    def upgrades_for(self, version_id: int) -> list[ComponentVersion]:
        """The versions a component on ``version_id`` can upgrade to, newest first, by the
        catalog's one rule (``stacks.catalog.offers.is_upgrade_target``) applied to the
        versions loaded once (no query)."""
        running = self.versions.get(version_id)
        if running is None:
            return []
        stateful = running.component.stateful
        return [
            cv
            for cv in self.by_component.get(running.component_id, [])
            if offers.is_upgrade_target(running, cv, stateful=stateful)
        ]

    def upgrade_for(self, version_id: int) -> ComponentVersion | None:
        """The newest version a component on ``version_id`` can upgrade to, if any."""
        upgrades = self.upgrades_for(version_id)
        return upgrades[0] if upgrades else None

    def attention_version_ids(self, today: date) -> list[int]:
        """Versions whose users need attention: upgradable, end of life, or soon."""
        soon = today + timedelta(days=EOL_SOON_DAYS)
        return [
            cv.pk
            for cv in self.versions.values()
            if cv.status == VersionStatus.END_OF_LIFE
            or (cv.eol and cv.eol <= soon)
            or self.upgrade_for(cv.pk)
        ]


def _last_operation(column: str) -> Subquery:
    latest = Operation.objects.filter(environment=OuterRef("pk")).order_by("-created_at", "-id")
    return Subquery(latest.values(column)[:1])


def _environments_of(status_filter: Q | None = None) -> Exists:
    environments = Environment.objects.filter(project=OuterRef("pk"))
    if status_filter is not None:
        environments = environments.filter(status_filter)
    return Exists(environments)


def live_projects(organization: Organization) -> Any:
    """The organization's projects that are not archived: some environment is not
    destroyed, or it has none yet."""
    return Project.objects.filter(organization=organization).filter(
        _environments_of(~Q(status=EnvironmentStatus.DESTROYED)) | ~_environments_of()
    )


def archived_projects(organization: Organization) -> Any:
    """Projects whose every environment is destroyed: off the dashboard, in the archive (until
    deleted for good)."""
    return Project.objects.filter(organization=organization, purged_at__isnull=True).filter(
        _environments_of(), ~_environments_of(~Q(status=EnvironmentStatus.DESTROYED))
    )


def projects_page(organization: Organization, page_number: Any) -> Page:
    projects = (
        live_projects(organization)
        .select_related("region")
        .prefetch_related(
            Prefetch(
                "environments",
                queryset=Environment.objects.select_related("template", "framework", "placement")
                .annotate(
                    last_operation_id=_last_operation("id"),
                    last_operation_kind=_last_operation("kind"),
                    last_operation_status=_last_operation("status"),
                )
                .order_by("id"),
            ),
            Prefetch(
                "environments__components",
                # Not the versions' build and verification logs: they can be long.
                queryset=StackComponent.objects.select_related("component", "version")
                .only(*COMPONENT_FIELDS)
                .order_by("position", "id"),
            ),
        )
        .order_by("name", "id")
    )
    return Paginator(projects, PAGE_SIZE).get_page(page_number)


def environment_attention(
    env: Environment, components: list[StackComponent], catalog: Catalog
) -> list[Attention]:
    if env.status == EnvironmentStatus.DESTROYED:
        return []
    found = []
    if getattr(env, "last_operation_status", None) == OperationStatus.FAILED:
        kind = str(getattr(env, "last_operation_kind", "") or "operation")
        found.append(Attention("danger", f"The last {kind} failed."))
    for sc in components:
        version = sc.version
        name = f"{sc.component.name} {version.version}"
        if version.is_end_of_life:
            found.append(Attention("danger", f"{name} has reached end of life."))
        elif version.eol_soon and version.eol:
            found.append(Attention("warning", f"{name} reaches end of life on {version.eol:%Y-%m-%d}."))
        upgrade = catalog.upgrade_for(sc.version_id)
        if upgrade is not None:
            found.append(
                Attention(
                    "info", f"{sc.component.name} {upgrade.version} is available (runs {version.version})."
                )
            )
    return found


def project_rows(page: Page, catalog: Catalog) -> list[ProjectRow]:
    projects: list[Project] = list(page.object_list)
    environments = [env for p in projects for env in p.environments.all()]
    active = {
        op.environment_id: op
        for op in Operation.objects.filter(
            environment__in=environments, status__in=ACTIVE_OPERATION_STATUSES
        ).defer("log", "params")  # the log of a running operation grows to 200,000 characters
    }
    volumes = disk.usage_by_environment([env.pk for env in environments])  # one cache round trip
    rows = []
    for project in projects:
        envs = []
        for env in project.environments.all():
            components = list(env.components.all())
            attention = environment_attention(env, components, catalog)
            attention += [  # a volume near its size (docs/backends.md, "Disk limits")
                Attention("warning", f"The {v.volume} volume of {v.component} is {v.percent}% full.")
                for v in volumes.get(env.pk, [])
                if v.nearly_full and env.status != EnvironmentStatus.DESTROYED
            ]
            envs.append(
                EnvironmentRow(
                    environment=env,
                    components=components,
                    operation=active.get(env.pk),
                    hosts=offers.hosts_of(env),
                    attention=attention,
                )
            )
        rows.append(ProjectRow(project=project, environments=envs))
    return rows


def attention_count(organization: Organization, catalog: Catalog) -> int:
    """Environments of the whole organization that need attention (one query): last
    operation failed, or a component on an upgradable or (soon) end-of-life version.

    A union of the two small sets (failed operations, flagged components) rather than a
    filter over every environment: its cost follows what needs attention, not the size of
    the organization."""
    live = Q(environment__project__organization=organization) & ~Q(
        environment__status=EnvironmentStatus.DESTROYED
    )
    # Rows are created one at a time (one active operation per environment): no two of an
    # environment's share a creation time, so a plain comparison uses operation_env_latest.
    later = Operation.objects.filter(
        environment=OuterRef("environment"), created_at__gt=OuterRef("created_at")
    )
    last_failed = (
        Operation.objects.filter(live, status=OperationStatus.FAILED)
        .exclude(Exists(later))
        .values("environment_id")
        .order_by()
    )
    flagged = StackComponent.objects.filter(
        live, version_id__in=catalog.attention_version_ids(timezone.now().date())
    ).values("environment_id")
    return last_failed.union(flagged.order_by()).count()


def organization_attention(organization: Organization, catalog: Catalog, projects: int) -> int:
    """``attention_count``, held for half a minute in large organizations: there it costs
    ~10 ms a request (10,000 projects) while the page's own rows stay live anyway."""
    if not projects:
        return 0
    if projects < LARGE_ORGANIZATION:
        return attention_count(organization, catalog)
    key = cache_key("attention", organization)
    count = cache.get(key)
    if count is None:
        count = attention_count(organization, catalog)
        cache.set(key, count, ATTENTION_CACHE_SECONDS)
    return int(count)


def quota_warnings(organization: Organization) -> list[Any]:
    """Quotas nearly used up, from billing.

    Held for a minute: billing sums the organization's whole stack in SQL (~30 ms at 10,000
    projects), and a warning does not need to show to the second. Enforcement
    (``billing.quotas.check_stack``) never uses this cache.
    """
    key = cache_key("quotas", organization)
    warnings = cache.get(key)
    if warnings is None:
        warnings = [
            {"label": str(q.label), "used": _shown(q, "used"), "limit": _shown(q, "limit")}
            for q in billing.quotas.usage_summary(organization)
            if q.nearly_used
        ]
        cache.set(key, warnings, QUOTA_CACHE_SECONDS)
    return list(warnings)


def cache_key(what: str, organization: Organization) -> str:
    # The creation time too: ids restart in a recreated database, cached entries do not.
    return f"stackport:dashboard:{what}:{organization.pk}:{organization.created_at.timestamp()}"


def _shown(quota: Any, what: str) -> str:
    display = getattr(quota, f"{what}_display", None)
    return str(display if display is not None else getattr(quota, what))


def dashboard_context(organization: Organization, page_number: Any) -> dict[str, Any]:
    page = projects_page(organization, page_number)
    catalog = Catalog.load()
    rows = project_rows(page, catalog)
    return {
        "page": page,
        "rows": rows,
        "live": any(e.busy for r in rows for e in r.environments),
        "suspended": [r.project for r in rows if r.project.suspended_at],
        "attention_total": organization_attention(organization, catalog, page.paginator.count),
        "quota_warnings": quota_warnings(organization),
    }


# --- the archive --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArchivedProject:
    project: Project
    environments: list[Environment]
    destroyed_at: Any  # the last environment's destruction
    destroyed_by: str


def destroyed_by(operation: Operation | None, member_ids: set[int]) -> str:
    """Who destroyed it, in the customer's terms: a member's address, support, or the
    hoster's own cleanup (an expired demo); never a staff member's name."""
    if operation is None:
        return "unknown"
    user = operation.requested_by
    if user is None:
        return (
            "automatically (the demo ended)"
            if operation.params.get("reason") == "demo.expired"
            else "the hoster"
        )
    if user.is_staff and user.pk not in member_ids:
        return "support"
    return str(user.email)


def archive_context(organization: Organization, page_number: Any) -> dict[str, Any]:
    """A page of archived projects with when and by whom each was destroyed (read-only)."""
    projects = archived_projects(organization).select_related("region").order_by("name", "id")
    page = Paginator(projects, PAGE_SIZE).get_page(page_number)
    listed: list[Project] = list(page.object_list)
    environments = list(
        Environment.objects.filter(project__in=listed).select_related("template").order_by("id")
    )
    destroys = (
        Operation.objects.filter(
            environment__in=environments, kind=OperationKind.DESTROY, status=OperationStatus.SUCCEEDED
        )
        .select_related("requested_by")
        .defer("log")
        .order_by("finished_at", "id")
    )
    member_ids = set(organization.memberships.values_list("user_id", flat=True))
    last_destroy: dict[int, Operation] = {}
    for op in destroys:
        last_destroy[op.environment_id] = op  # the later one wins
    rows = []
    for project in listed:
        envs = [e for e in environments if e.project_id == project.pk]
        last = max(envs, key=lambda e: (e.destroyed_at is not None, e.destroyed_at or e.created_at))
        rows.append(
            ArchivedProject(
                project=project,
                environments=envs,
                destroyed_at=last.destroyed_at,
                destroyed_by=destroyed_by(last_destroy.get(last.pk), member_ids),
            )
        )
    return {"page": page, "rows": rows}
