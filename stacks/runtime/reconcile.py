"""Converge what runs to what was asked for, periodically (Celery beat) and on demand.

One pass: operations whose worker died are run again; every Docker host is listed once
(one call per host, not per container); containers of stacks that should not exist are
removed; a running environment that misses a replica (a container died or was removed)
gets its current release applied again; its edge routes are put back if the edge lost
them (Caddy's config is not persisted).
"""

from __future__ import annotations

from datetime import timedelta

import structlog
from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from projects.models import Environment, EnvironmentStatus
from stacks.backends.base import Backend, BackendError, HostRecord, ReplicaState, get_backend
from stacks.backends.edge import EdgeError
from stacks.models import (
    ACTIVE_OPERATION_STATUSES,
    DockerHost,
    Operation,
    OperationKind,
    OperationStatus,
    ResourceSampleRow,
)
from stacks.runtime import lifecycle
from stacks.runtime.operations import OperationFailed, backend_for, sync_routes
from stacks.runtime.spec import SpecError, build_spec

log = structlog.get_logger(__name__)


def inventory_backends(exclude_url: str = "") -> list[Backend]:
    """One backend per kind named by the regions (``Region.backend``), over every engine of
    the regions using it that is not down; an engine listed under several inventory names
    (make run's local one) once."""
    engines: dict[str, dict[str, HostRecord]] = {}
    hosts = DockerHost.objects.exclude(state=DockerHost.State.DOWN).select_related("region").order_by("name")
    for h in hosts:
        if h.url != exclude_url:
            engines.setdefault(h.region.backend, {}).setdefault(
                h.url, HostRecord(h.name, h.url, h.address_pool)
            )
    return [
        get_backend(settings.STACKPORT_BACKENDS[kind], hosts=list(by_url.values()))
        for kind, by_url in engines.items()
    ]


RECONCILE_LOCK = "stackport:reconcile-lock"
RECONCILE_LOCK_SECONDS = 600  # a pass that died holding the lock frees it after this


def reconcile() -> dict[str, int]:
    """One pass, never two at once (beat every 30 s, support's "reconcile now", a slow pass):
    a pass that finds another one running does nothing (``{"skipped": 1}``)."""
    if not cache.add(RECONCILE_LOCK, timezone.now().isoformat(), timeout=RECONCILE_LOCK_SECONDS):
        log.info("reconcile_skipped", reason="another pass is running")
        return {"skipped": 1}
    try:
        return _reconcile()
    finally:
        cache.delete(RECONCILE_LOCK)


def _reconcile() -> dict[str, int]:
    report = {"resumed": 0, "orphans_removed": 0, "repaired": 0, "routes_fixed": 0}
    report["resumed"] = resume_lost_operations()
    running: dict[str, list[ReplicaState]] = {}
    for backend in inventory_backends():
        try:
            running.update(backend.stacks())
        except BackendError as exc:
            log.warning("reconcile_list_failed", error=exc.message)
            return report
    if not running and not DockerHost.objects.exclude(state=DockerHost.State.DOWN).exists():
        return report
    prefix = f"{settings.STACKPORT_STACK_PREFIX}-"
    running = {k: v for k, v in running.items() if k.startswith(prefix)}  # other installations' are not ours
    environments = {
        env.key: env
        for env in Environment.objects.select_related("project__region", "kernel", "current_release").filter(
            pk__in=[int(k[len(prefix) :]) for k in running if k[len(prefix) :].isdigit()]
        )
    }
    busy = set(
        Operation.objects.filter(status__in=ACTIVE_OPERATION_STATUSES).values_list(
            "environment_id", flat=True
        )
    )
    for key in running:
        env = environments.get(key)
        if env is not None and env.status != EnvironmentStatus.DESTROYED:
            continue
        if env is not None and env.pk in busy:
            continue
        log.info("reconcile_orphan", key=key)
        try:
            state = {"host": running[key][0].host}
            backend.destroy(key, state)
            report["orphans_removed"] += 1
        except BackendError as exc:
            log.warning("reconcile_orphan_failed", key=key, error=exc.message)
    for env in Environment.objects.select_related("project__region", "kernel", "current_release").filter(
        status__in=[EnvironmentStatus.RUNNING, EnvironmentStatus.DEGRADED], current_release__isnull=False
    ):
        if env.pk in busy:
            continue
        repaired, routed = _repair(env, running.get(env.key, []))
        report["repaired"] += repaired
        report["routes_fixed"] += routed
    return report


def resume_lost_operations() -> int:
    stale = timezone.now() - timedelta(seconds=settings.STACKPORT_OPERATION_STALE_SECONDS)
    # A queued operation is lost once it waited too long: since it was made, or since its
    # retry was due (a retry sets heartbeat_at to when it is due).
    lost = Operation.objects.filter(
        status=OperationStatus.RUNNING, heartbeat_at__lt=stale
    ) | Operation.objects.filter(
        Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=stale),
        status=OperationStatus.QUEUED,
        created_at__lt=stale,
    )
    count = 0
    for op in lost:
        log.info("reconcile_resume_operation", operation=op.pk, kind=op.kind)
        lifecycle.requeue(op)
        count += 1
    return count


def _repair(env: Environment, replicas: list[ReplicaState]) -> tuple[int, int]:
    assert env.current_release is not None
    try:
        spec = build_spec(env, env.current_release)
    except SpecError as exc:
        log.warning("reconcile_spec_invalid", environment=env.pk, error=exc.message)
        return 0, 0
    wanted = sum(c.replicas for c in spec.components) if spec.running else 0
    alive = [r for r in replicas if r.status in ("running", "starting")]
    repaired = 0
    try:
        backend = backend_for(env)
        if len(alive) != wanted or len(replicas) != wanted:
            log.info("reconcile_repair", environment=env.pk, wanted=wanted, found=len(alive))
            with transaction.atomic():
                # An operation row makes the repair visible and serialises it with the customer's.
                op = Operation.objects.create(
                    environment=env,
                    kind=OperationKind.DEPLOY,
                    release=env.current_release,
                    previous_release=env.current_release,
                    params={"reason": "reconcile"},
                )
            from stacks.runtime.operations import run_operation

            run_operation(op.pk)
            repaired = 1
        routed = int(sync_routes(env, backend, spec))
    except (BackendError, EdgeError) as exc:
        log.warning("reconcile_repair_failed", environment=env.pk, error=getattr(exc, "message", str(exc)))
        return repaired, 0
    except IntegrityError:  # the customer started an operation meanwhile: it converges
        return 0, 0
    return repaired, routed


def record_samples() -> int:
    """One CPU/memory sample per running replica, for the charts; keeps a day."""
    count = 0
    for env in Environment.objects.select_related("project__region", "kernel").filter(
        status__in=[EnvironmentStatus.RUNNING, EnvironmentStatus.DEGRADED]
    ):
        try:
            samples = backend_for(env).samples(env.key, env.backend_state)
        except (BackendError, OperationFailed) as exc:  # one stack's engine: the others are sampled
            log.warning("samples_failed", environment=env.pk, error=str(getattr(exc, "message", exc)))
            continue
        ResourceSampleRow.objects.bulk_create(
            ResourceSampleRow(
                environment=env,
                component=s.component,
                replica=s.index,
                cpu_percent=s.cpu_percent,
                memory_bytes=s.memory_bytes,
            )
            for s in samples
        )
        count += len(samples)
    ResourceSampleRow.objects.filter(taken_at__lt=timezone.now() - timedelta(days=1)).delete()
    return count


def prune_images() -> list[str]:
    """Remove catalog images from the customer hosts that no container runs and no
    release of a live environment names (rollback needs those). The build engine keeps
    its images: they are the pipeline's cache."""
    from stacks.models import ComponentVersion, Release

    keep = set()
    pairs = set()
    for spec in Release.objects.exclude(environment__status=EnvironmentStatus.DESTROYED).values_list(
        "spec", flat=True
    ):
        pairs |= {(row.get("component"), row.get("version")) for row in spec.get("components", [])}
    for cv in ComponentVersion.objects.select_related("component"):
        if (cv.component.code, cv.version) in pairs:
            keep.add(cv.pinned_reference)
    removed = []
    for backend in inventory_backends(exclude_url=settings.STACKPORT_BUILD_DOCKER_URL):
        try:
            removed += backend.prune_images(keep)
        except BackendError as exc:
            log.warning("prune_images_failed", error=exc.message)
    if removed:
        log.info("pruned_images", images=removed)
    return removed
