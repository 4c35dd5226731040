"""Celery tasks for running stacks: thin wrappers that carry ids and call one function."""

from __future__ import annotations

from celery import shared_task

from stacks.runtime import (
    backups,
    certificates,
    content_store,
    disk,
    domains,
    hosts,
    operations,
    reconcile,
    support,
)


@shared_task(name="stacks.run_operation_task", acks_late=True, reject_on_worker_lost=True)
def run_operation_task(operation_id: int) -> str | None:
    return operations.run_operation(operation_id)


@shared_task(name="stacks.reconcile_task", ignore_result=True)
def reconcile_task() -> dict[str, int]:
    return reconcile.reconcile()


@shared_task(name="stacks.probe_hosts_task", ignore_result=True)
def probe_hosts_task() -> dict[str, str]:
    """Host health (beat, every STACKPORT_HOST_PROBE_SECONDS): each host's state after its probe."""
    return hosts.probe_hosts()


@shared_task(name="stacks.record_samples_task", ignore_result=True)
def record_samples_task() -> int:
    return reconcile.record_samples()


@shared_task(name="stacks.measure_volumes_task", ignore_result=True)
def measure_volumes_task() -> int:
    return disk.measure_volumes()


@shared_task(name="stacks.sync_routes_task", bind=True, max_retries=8)
def sync_routes_task(self, environment_id: int) -> bool:  # type: ignore[no-untyped-def]
    """Routes after a domain change; a router that is down or busy is tried again with backoff."""
    try:
        return operations.sync_routes_for(environment_id)
    except Exception as exc:
        if not operations.is_transient(exc):
            raise
        raise self.retry(exc=exc, countdown=operations.retry_delay(self.request.retries + 1)) from exc


@shared_task(name="stacks.sync_edge_task", bind=True, max_retries=8, ignore_result=True)
def sync_edge_task(self) -> bool:  # type: ignore[no-untyped-def]
    """The edge's HTTPS settings and platform routes after a domain change (docs/domains.md)."""
    try:
        return certificates.sync_edge()
    except Exception as exc:
        if not operations.is_transient(exc):
            raise
        raise self.retry(exc=exc, countdown=operations.retry_delay(self.request.retries + 1)) from exc


@shared_task(name="stacks.check_certificates_task", ignore_result=True)
def check_certificates_task() -> dict[str, int]:
    """What the edge serves over HTTPS for each routed name (docs/domains.md)."""
    return certificates.check_certificates()


@shared_task(name="stacks.check_domains_task", ignore_result=True)
def check_domains_task() -> dict[str, int]:
    """Pending custom domains: look their TXT records up (docs/domains.md)."""
    return domains.check_pending()


@shared_task(name="stacks.prune_images_task", ignore_result=True)
def prune_images_task() -> list[str]:
    return reconcile.prune_images()


@shared_task(name="stacks.prune_content_task", ignore_result=True)
def prune_content_task() -> list[str]:
    removed = content_store.prune()
    reconcile.prune_content_volumes()  # and the volumes on the hosts of what is gone
    return removed


@shared_task(name="stacks.finish_host_drain_task", bind=True, max_retries=360, ignore_result=True)
def finish_host_drain_task(self, host_id: int) -> None:  # type: ignore[no-untyped-def]
    """Marks a host draining once support's moves off it have ended (polls every 10 s)."""
    if not support.finish_host_drain(host_id=host_id):
        raise self.retry(countdown=10)


@shared_task(name="stacks.run_backup_task", acks_late=True, reject_on_worker_lost=False, ignore_result=True)
def run_backup_task(backup_id: int) -> str | None:
    return backups.run_backup(backup_id)


@shared_task(name="stacks.restore_task", acks_late=True, reject_on_worker_lost=False, ignore_result=True)
def restore_task(operation_id: int) -> str | None:
    return backups.run_restore(operation_id)


@shared_task(name="stacks.backup_schedule_task", ignore_result=True)
def backup_schedule_task() -> int:
    """Scheduled backups by plan; lost backups marked failed; retention applied daily."""
    return backups.run_schedules()
