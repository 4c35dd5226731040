"""Metering: what each running component used, per interval, recorded exactly once.

Time is cut into intervals of ``STACKPORT_METERING_INTERVAL_MINUTES`` aligned to midnight
UTC. The periodic task meters every finished interval not metered yet (up to
``STACKPORT_METERING_CATCHUP_HOURS`` back, so a late or stopped beat catches up). Each
component gets one UsageRecord per interval: a unique constraint makes a second run, or two
workers at once, record nothing twice, and the interval is marked finished with a
compare-and-set on ``finished_at``.

Usage comes from the applied state (the components of the release that runs, in environments
that are running: status running or degraded, and desired running), never from a change that
has not run and never from the engine. A late run meters
missed intervals with the stack as it is now; an environment counts from its creation.
Storage is the exception: a component's volumes count at their last measured size
(``stacks.runtime.disk``, measured on the hosts every few minutes) when one is known, and at
the catalog's flat size otherwise.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from billing.models import MeteringInterval, UsageRecord
from billing.pricing import MICRO, Catalog
from projects.models import Environment, EnvironmentStatus
from stacks.models import Backup, Operation
from stacks.runtime import disk

METERED_STATUSES = (EnvironmentStatus.RUNNING, EnvironmentStatus.DEGRADED)
HOUR = Decimal(3600)
GIB = Decimal(1024**3)


def interval_length() -> timedelta:
    return timedelta(minutes=int(settings.STACKPORT_METERING_INTERVAL_MINUTES))


def interval_start(moment: datetime) -> datetime:
    """The start of the interval ``moment`` falls in."""
    moment = moment.astimezone(UTC)
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    length = interval_length()
    return midnight + length * ((moment - midnight) // length)


def due_intervals(now: datetime | None = None) -> list[datetime]:
    """Starts of the finished intervals not metered yet, oldest first."""
    now = now or timezone.now()
    length = interval_length()
    last = interval_start(now) - length
    first = interval_start(now - timedelta(hours=int(settings.STACKPORT_METERING_CATCHUP_HOURS)))
    done = set(
        MeteringInterval.objects.filter(start__gte=first, finished_at__isnull=False).values_list(
            "start", flat=True
        )
    )
    starts = []
    moment = first
    while moment <= last:
        if moment not in done:
            starts.append(moment)
        moment += length
    return starts


def _running(now: datetime) -> list[Environment]:
    return list(
        Environment.objects.filter(
            status__in=METERED_STATUSES, desired_running=True, created_at__lt=now
        ).select_related("project__region", "current_release")
    )


def storage_gb(flat_gb: int, measured_bytes: int | None) -> Decimal:
    """A component's storage in GB: its volumes' measured bytes when known, else the flat
    size the catalog gives it (``billing.pricing.volume_gb``)."""
    if measured_bytes is None:
        return Decimal(flat_gb)
    return Decimal(measured_bytes) / GIB


def _records(
    start: datetime, end: datetime, environments: list[Environment], catalog: Catalog
) -> list[UsageRecord]:
    records = []
    measured = disk.usage_by_environment([env.pk for env in environments])
    backed_up = backups_by_environment([env.pk for env in environments])
    for env in environments:
        if env.created_at >= end:
            continue
        # Storage at its real size: the volumes' last measurement, where one is known.
        stored: dict[str, int] = {}
        for volume in measured.get(env.pk, []):
            stored[volume.component] = stored.get(volume.component, 0) + volume.used_bytes
        seconds = int((end - max(start, env.created_at)).total_seconds())
        hours = Decimal(seconds) / HOUR
        # What ran (the applied release), never a requested change that has not (yet) run.
        rows = env.current_release.spec.get("components", []) if env.current_release else []
        for row in rows:
            use = catalog.use(row)
            records.append(
                _record(
                    env,
                    start,
                    end,
                    component=row["name"],
                    component_code=row["component"],
                    size=row["size"],
                    replicas=row["replicas"],
                    seconds=seconds,
                    cpu_hours=(use.cpus * hours).quantize(MICRO),
                    memory_gb_hours=(use.memory_gb * hours).quantize(MICRO),
                    storage_gb_hours=(storage_gb(use.storage_gb, stored.get(row["name"])) * hours).quantize(
                        MICRO
                    ),
                )
            )
        if backed_up.get(env.pk):  # backups (docs/backups.md): storage at what they hold
            records.append(
                _record(
                    env,
                    start,
                    end,
                    component=BACKUPS_COMPONENT,
                    component_code="backup",
                    seconds=seconds,
                    cpu_hours=Decimal(0),
                    memory_gb_hours=Decimal(0),
                    storage_gb_hours=(Decimal(backed_up[env.pk]) / GIB * hours).quantize(MICRO),
                )
            )
    return records


def _record(
    env: Environment,
    start: datetime,
    end: datetime,
    *,
    component: str,
    component_code: str,
    seconds: int,
    cpu_hours: Decimal,
    memory_gb_hours: Decimal,
    storage_gb_hours: Decimal,
    size: str = "",
    replicas: int = 0,
) -> UsageRecord:
    """One usage row of an environment for the interval, its tenancy fields copied (the
    record outlives the environment and its project)."""
    return UsageRecord(
        organization_id=env.project.organization_id,
        project=env.project,
        project_name=env.project.name,
        environment=env,
        environment_ref=env.pk,
        component=component,
        component_code=component_code,
        region=env.project.region.code,
        size=size,
        replicas=replicas,
        interval_start=start,
        interval_end=end,
        seconds=seconds,
        cpu_hours=cpu_hours,
        memory_gb_hours=memory_gb_hours,
        storage_gb_hours=storage_gb_hours,
    )


BACKUPS_COMPONENT = "(backups)"  # never a service name: those are [a-z][a-z0-9-]*
BUILDS_COMPONENT = "(builds)"


def _build_records(start: datetime, end: datetime) -> list[UsageRecord]:
    """Dependency builds (docs/builds.md) that finished in the interval, one record per
    environment: ``seconds`` of build time, priced as the CPU and memory the build container
    had for that long (so a plan's CPU and memory prices price build minutes). A build taken
    from the cache costs nothing."""
    operations = Operation.objects.filter(
        finished_at__gte=start, finished_at__lt=end, params__build__cached=False
    ).select_related("environment__project__region")
    totals: dict[int, tuple[Environment, Decimal, Decimal, Decimal]] = {}
    for op in operations:
        build = op.params.get("build") or {}
        seconds = Decimal(str(build.get("seconds") or 0))
        hours = seconds / HOUR
        env = op.environment
        _, secs, cpu, mem = totals.get(env.pk, (env, Decimal(0), Decimal(0), Decimal(0)))
        totals[env.pk] = (
            env,
            secs + seconds,
            cpu + Decimal(str(build.get("cpus") or 0)) * hours,
            mem + Decimal(int(build.get("memory_mb") or 0)) / 1024 * hours,
        )
    return [
        _record(
            env,
            start,
            end,
            component=BUILDS_COMPONENT,
            component_code="build",
            seconds=int(secs.to_integral_value()),
            cpu_hours=cpu.quantize(MICRO),
            memory_gb_hours=mem.quantize(MICRO),
            storage_gb_hours=Decimal(0),
        )
        for env, secs, cpu, mem in totals.values()
    ]


def build_minutes(records: list[UsageRecord]) -> Decimal:
    """Build minutes among usage records (for pages and invoices)."""
    return sum((Decimal(r.seconds) / 60 for r in records if r.component == BUILDS_COMPONENT), Decimal(0))


def backups_by_environment(environment_ids: list[int]) -> dict[int, int]:
    """Bytes the environments' backups hold in the repository (the new data each stored)."""

    rows = (
        Backup.objects.filter(environment_id__in=environment_ids, status=Backup.Status.SUCCEEDED)
        .values("environment_id")
        .annotate(total=Sum("added_bytes"))
    )
    return {row["environment_id"]: int(row["total"] or 0) for row in rows}


@transaction.atomic
def meter_interval(
    start: datetime, *, environments: list[Environment] | None = None, catalog: Catalog | None = None
) -> int:
    """Record the usage of the interval starting at ``start``; the number of new records
    (0 when it was metered already). The interval's row is locked while it is metered and
    marked finished in the same transaction, so concurrent runs wait and then skip it."""
    end = start + interval_length()
    interval, _ = MeteringInterval.objects.get_or_create(start=start, defaults={"end": end})
    locked = (
        MeteringInterval.objects.select_for_update().filter(pk=interval.pk, finished_at__isnull=True).first()
    )
    if locked is None:
        return 0
    if environments is None:
        environments = _running(end)
    UsageRecord.objects.bulk_create(
        _records(start, end, environments, catalog or Catalog()) + _build_records(start, end),
        ignore_conflicts=True,
    )
    written = UsageRecord.objects.filter(interval_start=start).count()
    MeteringInterval.objects.filter(pk=locked.pk).update(finished_at=timezone.now(), records=written)
    return written


def record_usage(now: datetime | None = None) -> int:
    """Meter every finished interval that is due; the number of records written. The
    stacks are read once: every due interval is metered with them as they are now."""
    now = now or timezone.now()
    due = due_intervals(now)
    if not due:
        return 0
    environments, catalog = _running(now), Catalog()
    return sum(meter_interval(start, environments=environments, catalog=catalog) for start in due)
