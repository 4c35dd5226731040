"""Disk use of each environment's volumes: measured on the hosts, kept, shown and warned about.

``measure_volumes`` (the ``stacks.measure_volumes_task``, every few minutes from beat) asks the
backend for the used and total bytes of each running environment's volumes and keeps the
result in the cache by environment; ``volume_usage`` reads it back for the environment page,
the dashboard and billing's metering (which counts storage at the measured size when it is
known). A volume above ``STACKPORT_VOLUME_WARN_RATIO`` of its size is flagged: the customer
is warned before the database answers "No space left on device". Volumes made before disk
limits have no size (``size_bytes`` None): their use is shown with no limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from projects.models import Environment, EnvironmentStatus, Organization
from projects.services import ServiceError
from stacks.backends.base import BackendError
from stacks.models import Operation, OperationKind
from stacks.runtime import lifecycle, operations
from stacks.runtime.spec import SpecError, build_spec

log = structlog.get_logger(__name__)
KEEP_SECONDS = 24 * 3600  # a measurement older than this is not shown nor metered


@dataclass(frozen=True)
class VolumeUse:
    component: str
    volume: str
    used_bytes: int
    size_bytes: int | None  # None: no limit (a volume made before disk limits)
    measured_at: str  # ISO time

    @property
    def ratio(self) -> float | None:
        return self.used_bytes / self.size_bytes if self.size_bytes else None

    @property
    def percent(self) -> int | None:
        ratio = self.ratio
        return min(100, round(ratio * 100)) if ratio is not None else None

    @property
    def nearly_full(self) -> bool:
        ratio = self.ratio
        return ratio is not None and ratio >= float(settings.STACKPORT_VOLUME_WARN_RATIO)


def _key(environment_id: int) -> str:
    return f"stackport:volume-usage:{environment_id}"


def measure(environment: Environment) -> list[VolumeUse]:
    """Measure the environment's volumes now and keep the result; ``BackendError`` or
    ``SpecError`` when the engine or the stack cannot say."""

    release = environment.current_release
    if release is None:
        return []
    spec = build_spec(environment, release)
    if not any(c.volumes for c in spec.components):
        cache.delete(_key(environment.pk))
        return []
    measured = operations.backend_for(environment).volume_usage(spec, environment.backend_state)
    now = timezone.now().isoformat()
    rows = [
        {"component": u.component, "volume": u.volume, "used": u.used_bytes, "size": u.size_bytes, "at": now}
        for u in measured
    ]
    cache.set(_key(environment.pk), rows, KEEP_SECONDS)
    return [_use(row) for row in rows]


def measure_volumes() -> int:
    """Measure the volumes of every running environment; the number of volumes measured.
    One stack's engine failing does not stop the others."""
    count = 0
    for env in Environment.objects.select_related(
        "project__region", "project__organization", "kernel"
    ).filter(status__in=[EnvironmentStatus.RUNNING, EnvironmentStatus.DEGRADED]):
        try:
            count += len(measure(env))
        except (BackendError, SpecError) as exc:
            log.warning("volume_usage_failed", environment=env.pk, error=str(getattr(exc, "message", exc)))
    return count


def _use(row: dict[str, Any]) -> VolumeUse:
    return VolumeUse(
        component=str(row["component"]),
        volume=str(row["volume"]),
        used_bytes=int(row["used"]),
        size_bytes=int(row["size"]) if row.get("size") else None,
        measured_at=str(row.get("at", "")),
    )


def volume_usage(environment_id: int) -> list[VolumeUse]:
    """The last measurement of the environment's volumes ([] when none is known)."""
    rows = cache.get(_key(environment_id)) or []
    return [_use(row) for row in rows]


def usage_by_environment(environment_ids: list[int]) -> dict[int, list[VolumeUse]]:
    """``volume_usage`` of many environments in one cache round trip."""
    found = cache.get_many([_key(i) for i in environment_ids])
    return {i: [_use(row) for row in found.get(_key(i)) or []] for i in environment_ids}


def grow_volumes(*, organization: Organization) -> list[Operation]:
    """The organization's volume size grew (a bigger plan): queue a deploy of the running
    release of each running environment that has volumes. Applying it grows their
    filesystems online (``Backend.apply`` never shrinks one); the containers keep running, as
    a volume's size is not part of what a container is made from. An environment busy with
    another operation is left alone: that operation, or its next one, grows them. Stopped
    environments grow when they start."""

    queued = []
    for env in Environment.objects.select_related(
        "project__region", "project__organization", "kernel"
    ).filter(
        project__organization=organization,
        status__in=[EnvironmentStatus.RUNNING, EnvironmentStatus.DEGRADED],
        current_release__isnull=False,
    ):
        assert env.current_release is not None
        try:
            if not any(c.volumes for c in build_spec(env, env.current_release).components):
                continue
            queued.append(
                lifecycle.queue_operation(
                    env,
                    OperationKind.DEPLOY,
                    None,
                    release=env.current_release,
                    params={"reason": "volume size"},
                )
            )
        except (ServiceError, SpecError) as exc:
            log.info("grow_volumes_skipped", environment=env.pk, reason=str(getattr(exc, "message", exc)))
    return queued


def nearly_full(environment_id: int) -> list[VolumeUse]:
    """The environment's volumes above the warning ratio of their size."""
    return [u for u in volume_usage(environment_id) if u.nearly_full]
