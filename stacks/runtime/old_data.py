"""The data a stateful upgrade left behind, until the customer deletes it.

A dump-and-restore upgrade (``lifecycle.upgrade``) copies a component's data into fresh
volumes (a new data generation) and keeps the old volumes: the safety copy. It stays, listed
on the environment page, in the API and in admin with its size and age, until an admin of
the organization confirms its deletion (``delete_old_data``: typed confirmation, role
checked, audited, the volumes removed by the backend). The upgrade operation carries the
bookkeeping in its ``params``: ``old_data_bytes`` (measured when it finished, by
``operations``) and, once
deleted, ``old_data_deleted_at``. A release that ran on deleted data is no rollback target
any more (``deleted_generations``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

import structlog
from django.db import transaction
from django.utils import timezone

from projects.models import Environment, Role
from projects.services import Origin, ServiceError, record_audit_event, require_role
from stacks.backends.base import BackendError, StackSpec
from stacks.models import ACTIVE_OPERATION_STATUSES, Operation, OperationKind, OperationStatus, Release
from stacks.runtime import operations
from stacks.runtime.spec import SpecError, build_spec

if TYPE_CHECKING:
    from projects.models import User

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class OldData:
    """One component's data of before an upgrade, still kept."""

    operation_id: int  # the upgrade that kept it
    component: str
    version: str  # the version that wrote it
    upgraded_to: str
    generation: int
    kept_since: datetime
    size_bytes: int | None  # None: not measured

    @property
    def age_days(self) -> int:
        return max(0, (timezone.now() - self.kept_since).days)


def _generation(release: Release | None, component: str) -> int | None:
    for row in (release.spec.get("components", []) if release else []) or []:
        if row.get("name") == component:
            return int(row.get("data_generation", 0))
    return None


def _upgrades(environment: Environment) -> list[Operation]:
    return [
        op
        for op in Operation.objects.filter(
            environment=environment, kind=OperationKind.UPGRADE, status=OperationStatus.SUCCEEDED
        )
        .select_related("previous_release")
        .order_by("-finished_at", "-pk")
        if op.params.get("migrate") == "dump-restore"
    ]


def _deleted(upgrades: list[Operation]) -> set[tuple[str, int]]:
    gone = set()
    for op in upgrades:
        generation = _generation(op.previous_release, op.params.get("component", ""))
        if op.params.get("old_data_deleted_at") and generation is not None:
            gone.add((op.params["component"], generation))
    return gone


def deleted_generations(environment: Environment) -> set[tuple[str, int]]:
    """(component, data generation) whose data the customer deleted."""
    return _deleted(_upgrades(environment))


def kept_old_data(environment: Environment) -> list[OldData]:
    """The data of before each dump-and-restore upgrade that is still kept, newest first
    (none for a generation ``environment``'s current release runs on again, after a
    rollback). One query."""
    upgrades = _upgrades(environment)
    found: list[OldData] = []
    seen = _deleted(upgrades)
    for op in upgrades:
        component = op.params.get("component", "")
        generation = _generation(op.previous_release, component)
        if generation is None or (component, generation) in seen:
            continue
        seen.add((component, generation))
        if _generation(environment.current_release, component) == generation:
            continue  # in use again
        size = op.params.get("old_data_bytes")
        found.append(
            OldData(
                operation_id=op.pk,
                component=component,
                version=str(op.params.get("from", "")),
                upgraded_to=str(op.params.get("to", "")),
                generation=generation,
                kept_since=op.finished_at or op.created_at,
                size_bytes=int(size) if size is not None else None,
            )
        )
    return found


def _only(spec: StackSpec, component: str) -> StackSpec:
    return replace(spec, components=tuple(c for c in spec.components if c.name == component))


@transaction.atomic
def delete_old_data(
    *,
    environment: Environment,
    actor: User | None,
    operation_id: int,
    confirmation: str,
    origin: Origin | None = None,
) -> OldData:
    """Delete the data ``operation_id`` (an upgrade) kept, for good. Admins only; the
    customer types the component's name to confirm; refused while an operation runs on the
    environment. Audited. A release that ran on it can no longer be rolled back to."""
    if actor is not None:
        require_role(actor, environment.project.organization, Role.ADMIN)
    environment = (
        Environment.objects.select_for_update(of=("self",))
        .select_related("project__organization", "project__region", "kernel", "current_release")
        .get(pk=environment.pk)
    )
    entry = next((d for d in kept_old_data(environment) if d.operation_id == operation_id), None)
    if entry is None:
        raise ServiceError("There is no such old data, or it was deleted already.", status=404)
    if confirmation.strip() != entry.component:
        raise ServiceError(f"Type the component's name ({entry.component}) to confirm.", field="confirmation")
    if Operation.objects.filter(environment=environment, status__in=ACTIVE_OPERATION_STATUSES).exists():
        raise ServiceError(
            "An operation is running on this environment; try again when it has finished.", status=409
        )
    op = (
        Operation.objects.select_for_update(of=("self",))
        .select_related("previous_release")
        .get(pk=operation_id)
    )
    assert op.previous_release is not None
    try:
        spec = _only(build_spec(environment, op.previous_release), entry.component)
        operations.backend_for(environment).remove_data(spec, environment.backend_state, entry.component)
    except SpecError as exc:
        raise ServiceError(exc.message, status=409) from exc
    except (BackendError, operations.OperationFailed) as exc:
        raise ServiceError(f"The engine refused: {getattr(exc, 'message', exc)}", status=503) from exc
    Operation.objects.filter(pk=op.pk).update(
        params={**op.params, "old_data_deleted_at": timezone.now().isoformat()}
    )
    record_audit_event(
        action="environment.old_data_delete",
        actor=actor,
        organization=environment.project.organization,
        target=f"environment {environment.pk}",
        data={
            "operation": op.pk,
            "component": entry.component,
            "version": entry.version,
            "bytes": entry.size_bytes,
        },
        origin=origin,
    )
    return entry
