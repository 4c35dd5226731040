"""The plan's limits, checked inside the service functions before anything is written.

``check_stack`` is called by ``stacks.runtime.lifecycle`` before create, scale, upgrade, rollback,
start and domain changes; ``stack_problems`` gives the wizard the same messages before the
customer confirms. A change is refused only when it needs more than the plan allows *and*
more than is used now, so scaling down is always possible, even over the limits.

An organization without a subscription is on the default plan; with no plan at all there
are no limits (a fresh install, and most tests).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Count, QuerySet, Sum

from billing.models import Plan, Subscription, SubscriptionStatus
from billing.pricing import Catalog
from projects.models import Environment, EnvironmentStatus, Organization
from projects.services import ServiceError
from stacks.models import ACTIVE_OPERATION_STATUSES, Domain, StackComponent

GONE = (EnvironmentStatus.DESTROYING, EnvironmentStatus.DESTROYED)
HOW_TO_GET_MORE = "Choose a bigger plan on the Billing page."
NEARLY = Decimal("0.8")


def plan_for(organization: Organization) -> Plan | None:
    """The organization's plan: its subscription's, else the default plan, else none."""

    subscription = (
        Subscription.objects.select_related("plan")
        .filter(organization=organization)
        .exclude(status=SubscriptionStatus.CANCELLED)
        .first()
    )
    if subscription is not None:
        return subscription.plan
    return Plan.objects.filter(is_default=True).first()


def _volume_size(*plans: Plan | None) -> int | None:
    """The size each volume is held to under ``plans`` (the largest: volumes grow with a
    bigger plan and never shrink); None when none of them sizes volumes."""
    sizes = [p.volume_size_gb for p in plans if p is not None and p.volume_size_gb]
    return max(sizes) if sizes else None


def number(value: Decimal | int) -> str:
    """2.00 -> "2", 0.50 -> "0.5"."""
    if isinstance(value, int):
        return str(value)
    text = format(value.normalize(), "f")
    return text


def _plural(count: Decimal | int, one: str, many: str) -> str:
    return f"{number(count)} {one if count == 1 else many}"


@dataclass
class Totals:
    projects: int = 0
    environments: int = 0
    cpus: Decimal = Decimal("0")
    memory_mb: int = 0
    storage_gb: int = 0
    custom_domains: int = 0
    # (environment id, component name) -> replicas
    replicas: dict[tuple[int, str], int] = field(default_factory=dict)

    def add_rows(
        self, env_id: int, rows: Sequence[Mapping[str, Any]], catalog: Catalog, *, running: bool
    ) -> None:
        for row in rows:
            use = catalog.use(row)
            if running:
                self.cpus += use.cpus
                self.memory_mb += use.memory_mb
            self.storage_gb += use.storage_gb
            self.replicas[(env_id, str(row.get("name", "")))] = int(row.get("replicas") or 0)


def _component_rows(environment: Environment) -> list[dict[str, Any]]:
    return [
        {"name": sc.name, "component": sc.component.code, "size": sc.size.code, "replicas": sc.replicas}
        for sc in environment.components.select_related("component", "size")
    ]


def _held(organization: Organization) -> QuerySet[Environment]:
    return Environment.objects.filter(project__organization=organization).exclude(status__in=GONE)


def current_totals(
    organization: Organization,
    *,
    exclude: Environment | None = None,
    catalog: Catalog | None = None,
    replicas_of: Environment | None = None,
) -> Totals:
    """What the organization holds now (stopped environments hold storage, not CPU or
    memory), summed in SQL: a constant number of queries however many projects it has.
    ``exclude`` leaves one environment's components out (it is about to change);
    ``replicas_of`` fills ``Totals.replicas`` for that environment's components."""

    catalog = catalog or Catalog(volume_gb=_volume_size(plan_for(organization)))
    environments = _held(organization)
    counts = environments.aggregate(projects=Count("project", distinct=True), environments=Count("id"))
    totals = Totals(
        projects=counts["projects"],
        environments=counts["environments"],
        custom_domains=Domain.objects.filter(environment__in=environments).count(),
    )
    components = StackComponent.objects.filter(environment__in=environments)
    if exclude is not None:
        components = components.exclude(environment=exclude)
    groups = components.values("component__code", "size__code", "environment__desired_running").annotate(
        replicas=Sum("replicas"), count=Count("id")
    )
    for group in groups:
        row = {"component": group["component__code"], "size": group["size__code"]}
        use = catalog.use({**row, "replicas": group["replicas"]})
        if group["environment__desired_running"]:
            totals.cpus += use.cpus
            totals.memory_mb += use.memory_mb
        totals.storage_gb += use.storage_gb * group["count"]
    _add_pending(totals, environments, exclude, catalog)
    if replicas_of is not None:
        for name, replicas in components.filter(environment=replicas_of).values_list("name", "replicas"):
            totals.replicas[(replicas_of.pk, name)] = replicas
    return totals


def _add_pending(
    totals: Totals, environments: QuerySet[Environment], exclude: Environment | None, catalog: Catalog
) -> None:
    """While a change is pending (an operation in flight), the applied release still runs
    next to the desired rows: count whichever of the two is larger, per component."""

    pending = (
        environments.filter(operations__status__in=ACTIVE_OPERATION_STATUSES, current_release__isnull=False)
        .select_related("current_release")
        .distinct()
    )
    if exclude is not None:
        pending = pending.exclude(pk=exclude.pk)
    for env in pending:
        assert env.current_release is not None
        desired = {row["name"]: row for row in _component_rows(env)}
        for row in env.current_release.spec.get("components", []):
            applied = catalog.use(row)
            wanted = catalog.use({**row, **desired[row["name"]]}) if row.get("name") in desired else None
            if env.desired_running:
                totals.cpus += max(Decimal(0), applied.cpus - (wanted.cpus if wanted else 0))
                totals.memory_mb += max(0, applied.memory_mb - (wanted.memory_mb if wanted else 0))
            totals.storage_gb += max(0, applied.storage_gb - (wanted.storage_gb if wanted else 0))


@dataclass(frozen=True)
class Problem:
    resource: str
    field: str
    message: str


# resource: (plan field, form field of a refusal, singular, plural)
LIMITS: dict[str, tuple[str, str, str, str]] = {
    "projects": ("max_projects", "name", "project", "projects"),
    "environments": ("max_environments", "name", "environment", "environments"),
    "cpus": ("max_cpus", "size", "CPU", "CPUs"),
    "memory_mb": ("max_memory_mb", "size", "MB of memory", "MB of memory"),
    "storage_gb": ("max_storage_gb", "component", "GB of storage", "GB of storage"),
    "custom_domains": ("max_custom_domains", "hostname", "custom domain", "custom domains"),
}


def amount_of(resource: str, value: Decimal | int) -> str:
    """ "2 CPUs", "1 project", "512 MB of memory"."""
    _, _, one, many = LIMITS[resource]
    return _plural(value, one, many)


def _exceeds(plan: Plan, before: Totals, after: Totals) -> list[Problem]:
    """The limits ``after`` passes that ``before`` did not already pass as far."""
    problems = []
    for resource, (plan_field, form_field, _, _) in LIMITS.items():
        limit, was, needs = getattr(plan, plan_field), getattr(before, resource), getattr(after, resource)
        if limit is not None and needs > limit and needs > was:
            problems.append(
                Problem(
                    resource,
                    form_field,
                    f"Your plan {plan.name} allows {amount_of(resource, limit)}; this change needs "
                    f"{amount_of(resource, needs)}. {HOW_TO_GET_MORE}",
                )
            )
    if plan.max_replicas is not None:
        allowed = _plural(plan.max_replicas, "replica", "replicas")
        for key, replicas in after.replicas.items():
            if replicas > plan.max_replicas and replicas > before.replicas.get(key, 0):
                message = f"Your plan {plan.name} allows {allowed} per component; {key[1]} needs {replicas}."
                problems.append(Problem("replicas", "replicas", f"{message} {HOW_TO_GET_MORE}"))
    return problems


def _problems(
    *,
    organization: Organization,
    rows: Sequence[Mapping[str, Any]] | None,
    environment: Environment | None,
    extra_domains: int,
) -> list[Problem]:
    plan = plan_for(organization)
    if plan is None:
        return []
    catalog = Catalog(volume_gb=_volume_size(plan))
    before = current_totals(organization, catalog=catalog, replicas_of=environment)
    after = current_totals(organization, exclude=environment, catalog=catalog)
    if environment is None:
        after.projects += 1
        after.environments += 1
        env_id = 0
    else:
        env_id = environment.pk
        if rows is None:
            rows = _component_rows(environment)
            # An unchanged stack (a domain change) keeps its running state.
            after.add_rows(env_id, rows, catalog, running=environment.desired_running)
            rows = []
    after.add_rows(env_id, rows or [], catalog, running=True)
    after.custom_domains += extra_domains
    return _exceeds(plan, before, after)


def stack_problems(
    *,
    organization: Organization,
    rows: Sequence[Mapping[str, Any]] | None,
    environment: Environment | None = None,
    extra_domains: int = 0,
) -> list[str]:
    """The messages ``check_stack`` would raise, for showing before the customer confirms."""
    return [
        p.message
        for p in _problems(
            organization=organization, rows=rows, environment=environment, extra_domains=extra_domains
        )
    ]


def check_stack(
    *,
    organization: Organization,
    rows: Sequence[Mapping[str, Any]] | None,
    environment: Environment | None = None,
    extra_domains: int = 0,
) -> None:
    """Refuse (HTTP 402) a change whose stack needs more than the plan allows.

    ``rows`` are the stack's component rows after the change (None: the environment's
    stack unchanged); ``environment`` is the one changed, None for a new project (one more
    project and environment). Call before anything is written.
    """
    if plan_for(organization) is None:
        return
    if transaction.get_connection().in_atomic_block:
        # Two changes of one organization at once are checked one after the other.
        Organization.objects.select_for_update().filter(pk=organization.pk).first()
    problems = _problems(
        organization=organization, rows=rows, environment=environment, extra_domains=extra_domains
    )
    if problems:
        raise ServiceError(" ".join(p.message for p in problems), field=problems[0].field, status=402)


# --- what the dashboard and the billing page show --------------------------------------------------
@dataclass(frozen=True)
class QuotaUse:
    resource: str
    label: str
    used: Decimal | int
    limit: Decimal | int | None

    @property
    def nearly_used(self) -> bool:
        return self.limit is not None and Decimal(self.used) >= NEARLY * Decimal(self.limit)

    @property
    def exceeded(self) -> bool:
        return self.limit is not None and self.used > self.limit

    @property
    def used_display(self) -> str:
        return number(self.used)

    @property
    def limit_display(self) -> str:
        return "unlimited" if self.limit is None else number(self.limit)


def _quota_uses(plan: Plan | None, totals: Totals) -> list[QuotaUse]:
    def limit(attr: str) -> Any:
        return getattr(plan, attr) if plan is not None else None

    labels = {
        "projects": "Projects",
        "environments": "Environments",
        "cpus": "CPUs",
        "memory_mb": "Memory (MB)",
        "storage_gb": "Storage (GB)",
        "custom_domains": "Custom domains",
    }
    return [
        QuotaUse(resource, label, getattr(totals, resource), limit(LIMITS[resource][0]))
        for resource, label in labels.items()
    ]


def usage_summary(organization: Organization) -> list[QuotaUse]:
    """Each limited resource: what is held now against the plan's limit."""
    return _quota_uses(plan_for(organization), current_totals(organization))


def downgrade_problems(organization: Organization, plan: Plan) -> list[str]:
    """Why ``organization`` cannot move to ``plan`` now (what it uses beyond the plan's limits).
    Volumes count at the larger of the two plans' volume sizes (a volume never shrinks)."""
    totals = current_totals(
        organization, catalog=Catalog(volume_gb=_volume_size(plan_for(organization), plan))
    )
    problems = [
        f"{plan.name} allows {amount_of(q.resource, q.limit or 0)}; you use {q.used_display} now."
        for q in _quota_uses(plan, totals)
        if q.exceeded
    ]
    if plan.max_replicas is not None:
        too_many = sorted(
            set(
                StackComponent.objects.filter(
                    environment__in=_held(organization), replicas__gt=plan.max_replicas
                ).values_list("name", flat=True)
            )
        )
        if too_many:
            problems.append(
                f"{plan.name} allows {_plural(plan.max_replicas, 'replica', 'replicas')} per component; "
                f"{', '.join(too_many)} run more."
            )
    return problems
