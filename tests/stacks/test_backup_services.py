"""Backups with the in-memory backend and a real restic repository on local disk (fast):
the services, the pages and the API; roles, other organizations' ids, faults. The real
engine's part (dumps, restores, byte for byte) is in test_backups.py."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from projects.models import AuditEvent, Environment, EnvironmentStatus
from stacks.backends.base import BackendError
from stacks.backends.memory import MemoryBackend
from stacks.models import Backup, BackupKey, Operation, OperationKind, OperationStatus
from stacks.runtime import backups, lifecycle
from tests.conftest import Team, add_memory_host, client_for, place

pytestmark = pytest.mark.django_db


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    from stacks import tasks

    sent: list[tuple[str, Any]] = []
    # Tests run inside a transaction that never commits: queue at once.
    monkeypatch.setattr(transaction, "on_commit", lambda func, using=None, robust=False: func())
    for name in ("run_backup_task", "restore_task", "run_operation_task"):
        task = getattr(tasks, name)
        monkeypatch.setattr(task, "delay", lambda *args, name=name: sent.append((name, args)))
        monkeypatch.setattr(
            task, "apply_async", lambda args, countdown=0, name=name: sent.append((name, args))
        )
    return sent


@pytest.fixture
def env(
    team: Team,
    offered_catalog: None,
    memory_backend: type[MemoryBackend],
    queued: Any,
    settings: Any,
    tmp_path: Any,
) -> Environment:
    settings.VAR_DIR = tmp_path
    settings.STACKPORT_BACKUP_REPOSITORY = ""
    environment = lifecycle.create_project(
        organization=team.org, actor=team.developer, name="Shop", region="eu-central", template="python-web"
    )
    add_memory_host(environment)
    op = environment.operations.get()
    Operation.objects.filter(pk=op.pk).update(status=OperationStatus.SUCCEEDED, finished_at=timezone.now())
    Environment.objects.filter(pk=environment.pk).update(
        status=EnvironmentStatus.RUNNING, current_release_id=op.release_id
    )
    place(environment, "h1")
    environment.refresh_from_db()
    memory_backend.seed_data(environment.key, "db", "postgresql", b"PGDMP rows " * 5000)
    memory_backend.seed_data(environment.key, "cache", "redis", b"REDIS0011 keys")
    return environment


def run_queued(queued: list[tuple[str, Any]]) -> None:
    while queued:
        name, args = queued.pop(0)
        if name == "run_backup_task":
            backups.run_backup(*args)
        elif name == "restore_task":
            backups.run_restore(*args)


def test_back_up_now_stores_each_component_encrypted_with_the_organizations_key(
    env: Environment, team: Team, queued: list[tuple[str, Any]], tmp_path: Any
) -> None:
    rows = backups.request_backup(environment=env, actor=team.developer)
    assert {(r.component, r.kind) for r in rows} == {("db", "postgresql"), ("cache", "redis")}
    assert AuditEvent.objects.filter(action="environment.backup").exists()
    run_queued(queued)
    for row in Backup.objects.filter(environment=env):
        assert row.status == Backup.Status.SUCCEEDED, row.error
        assert row.snapshot_id and row.duration_seconds > 0
    db = Backup.objects.get(environment=env, component="db")
    assert db.size_bytes == len(b"PGDMP rows " * 5000)
    # The repository is encrypted: the dump's bytes are nowhere in it.
    repository = tmp_path / "backups" / f"org-{team.org.pk}"
    assert repository.is_dir()
    assert not any(b"PGDMP rows" in p.read_bytes() for p in repository.rglob("*") if p.is_file())
    assert BackupKey.objects.filter(organization=team.org).count() == 1
    # Unchanged data: the second backup stores (almost) nothing new.
    backups.request_backup(environment=env, actor=team.developer)
    run_queued(queued)
    second = Backup.objects.filter(environment=env, component="db").order_by("-id").first()
    assert second is not None and second.status == Backup.Status.SUCCEEDED
    assert second.added_bytes < db.added_bytes / 2
    # And it reads back byte for byte.
    name, stream = backups.download(backup=second, actor=team.admin)
    assert name.endswith("db.dump") and b"".join(stream) == b"PGDMP rows " * 5000


def test_roles_and_other_organizations(env: Environment, team: Team, queued: list[tuple[str, Any]]) -> None:
    viewer = client_for(team.viewer)
    assert viewer.post(f"/environments/{env.pk}/backup/").status_code == 403
    developer = client_for(team.developer)
    assert developer.post(f"/environments/{env.pk}/backup/").status_code == 302
    run_queued(queued)
    backup = Backup.objects.filter(environment=env, component="db").get()
    page = developer.get(f"/environments/{env.pk}/backups/")
    assert page.status_code == 200 and b"succeeded" in page.content
    # On phones each cell names its column (the table stacks below 576 px).
    assert b'table-stack" id="backups-table"' in page.content
    for label in (b"When (UTC)", b"Component", b"What", b"Status", b"Size", b"New data", b"Took"):
        assert b'data-label="' + label + b'"' in page.content
    # Restore and download are for admins; another organization gets 404 for the id.
    assert developer.get(f"/backups/{backup.pk}/restore/").status_code == 403
    assert developer.get(f"/backups/{backup.pk}/download/").status_code == 403
    outsider = client_for(team.outsider)
    assert outsider.get(f"/backups/{backup.pk}/restore/").status_code == 404
    assert outsider.get(f"/backups/{backup.pk}/download/").status_code == 404
    assert outsider.post(f"/backups/{backup.pk}/restore/", {"confirmation": "db"}).status_code == 404
    assert outsider.get(f"/environments/{env.pk}/backups/").status_code == 404
    admin = client_for(team.admin)
    response = admin.get(f"/backups/{backup.pk}/download/")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"PGDMP rows " * 5000  # type: ignore[attr-defined]
    assert AuditEvent.objects.filter(action="backup.download").exists()


def test_restore_in_place_keeps_the_replaced_data_until_the_customer_decides(
    env: Environment, team: Team, queued: list[tuple[str, Any]], memory_backend: type[MemoryBackend]
) -> None:
    backups.request_backup(environment=env, actor=team.developer)
    run_queued(queued)
    backup = Backup.objects.get(environment=env, component="db")
    memory_backend.seed_data(env.key, "db", "postgresql", b"changed since")
    admin = client_for(team.admin)
    page = admin.get(f"/backups/{backup.pk}/restore/")
    assert page.status_code == 200 and b"Type" in page.content
    wrong = admin.post(f"/backups/{backup.pk}/restore/", {"confirmation": "nope"})
    assert wrong.status_code == 400 and not Operation.objects.filter(kind=OperationKind.RESTORE).exists()
    assert admin.post(f"/backups/{backup.pk}/restore/", {"confirmation": "db"}).status_code == 302
    run_queued(queued)
    op = Operation.objects.get(kind=OperationKind.RESTORE)
    assert op.status == OperationStatus.SUCCEEDED, op.error
    assert memory_backend.stack(env.key).data[("db", "postgresql", "")] == b"PGDMP rows " * 5000
    assert AuditEvent.objects.filter(action="environment.restore").exists()
    assert backups.pending_restore(env) == op
    assert admin.post(f"/operations/{op.pk}/restore/", {"action": "undo"}).status_code == 302
    assert memory_backend.stack(env.key).data[("db", "postgresql", "")] == b"changed since"
    assert backups.pending_restore(env) is None


def test_a_failed_restore_leaves_the_previous_data(
    env: Environment, team: Team, queued: list[tuple[str, Any]], memory_backend: type[MemoryBackend]
) -> None:
    backups.request_backup(environment=env, actor=team.developer)
    run_queued(queued)
    backup = Backup.objects.get(environment=env, component="db")
    memory_backend.seed_data(env.key, "db", "postgresql", b"current")
    memory_backend.fail_next("restore", BackendError("loading the backup of db failed", permanent=True))
    backups.request_restore(backup=backup, actor=team.admin, confirmation="db")
    run_queued(queued)
    op = Operation.objects.get(kind=OperationKind.RESTORE)
    assert op.status == OperationStatus.FAILED and "loading the backup of db failed" in op.error
    assert "keeps its previous data" in op.log
    assert memory_backend.stack(env.key).data[("db", "postgresql", "")] == b"current"


def test_restore_into_a_new_environment_then_deploys_it(
    env: Environment, team: Team, queued: list[tuple[str, Any]], memory_backend: type[MemoryBackend]
) -> None:
    backups.request_backup(environment=env, actor=team.developer)
    run_queued(queued)
    backup = Backup.objects.get(environment=env, component="db")
    op = backups.request_restore(backup=backup, actor=team.admin, new_environment="staging")
    staging = op.environment
    assert staging.name == "staging" and staging.project_id == env.project_id
    run_queued(queued)
    op.refresh_from_db()
    assert op.status == OperationStatus.SUCCEEDED, op.error
    data = memory_backend.stack(staging.key).data
    assert data[("db", "postgresql", "")] == b"PGDMP rows " * 5000
    assert data[("cache", "redis", "")] == b"REDIS0011 keys"
    assert staging.operations.filter(kind=OperationKind.DEPLOY).exists()


def test_store_down_fails_the_backup_visibly_after_retries(
    env: Environment, team: Team, queued: list[tuple[str, Any]], settings: Any
) -> None:
    from tests.stacks.conftest import unused_loopback_port

    settings.STACKPORT_BACKUP_REPOSITORY = f"s3:http://127.0.0.1:{unused_loopback_port()}/backups"
    backups.request_backup(environment=env, actor=team.developer)
    run_queued(queued)
    for row in Backup.objects.filter(environment=env):
        assert row.status == Backup.Status.FAILED
        assert "does not answer" in row.error and row.attempts == settings.STACKPORT_BACKUP_MAX_ATTEMPTS
    env.refresh_from_db()
    assert env.status == EnvironmentStatus.RUNNING  # the stack is not touched
    page = client_for(team.developer).get(f"/environments/{env.pk}/backups/?summary=1")
    assert b"does not answer" in page.content


def test_a_dump_that_fails_midway_keeps_nothing(
    env: Environment, team: Team, queued: list[tuple[str, Any]], memory_backend: type[MemoryBackend]
) -> None:
    memory_backend.fail_next("dump", BackendError("the backup of db failed (exit 1)", permanent=True))
    backups.request_backup(environment=env, actor=team.developer)
    run_queued(queued)
    db = Backup.objects.get(environment=env, component="db")
    assert db.status == Backup.Status.FAILED and not db.snapshot_id


def test_a_backup_whose_worker_died_is_marked_failed(env: Environment, team: Team, queued: Any) -> None:
    rows = backups.request_backup(environment=env, actor=team.developer)
    long_ago = timezone.now() - timedelta(minutes=10)
    Backup.objects.filter(pk=rows[0].pk).update(status="running", heartbeat_at=long_ago)
    assert backups.fail_stale_backups() == 1
    rows[0].refresh_from_db()
    assert rows[0].status == Backup.Status.FAILED and "nothing of it was kept" in rows[0].error


def _uploaded(env: Environment, team: Team, batch: str, **fields: Any) -> tuple[Backup, Any]:
    path = backups._upload_path(batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PGDMP")
    row = Backup.objects.create(
        environment=env,
        batch=batch,
        component="db",
        kind="postgresql",
        trigger=Backup.Trigger.UPLOAD,
        requested_by=team.developer,
    )
    Backup.objects.filter(pk=row.pk).update(**fields)
    return row, path


def test_an_upload_failed_as_stale_loses_its_file(env: Environment, team: Team) -> None:
    long_ago = timezone.now() - timedelta(minutes=10)
    died, died_file = _uploaded(env, team, "died1", status="running", heartbeat_at=long_ago)
    lost, lost_file = _uploaded(env, team, "lost1", created_at=timezone.now() - timedelta(days=2))
    waiting, waiting_file = _uploaded(env, team, "wait1")  # queued a moment ago: its task may come
    assert backups.fail_stale_backups() == 2
    died.refresh_from_db()
    lost.refresh_from_db()
    waiting.refresh_from_db()
    assert died.status == Backup.Status.FAILED and not died_file.exists()
    assert lost.status == Backup.Status.FAILED and "upload it again" in lost.error and not lost_file.exists()
    assert waiting.status == Backup.Status.QUEUED and waiting_file.exists()


def test_stray_upload_files_are_swept_after_a_day(env: Environment, team: Team) -> None:
    folder = backups._upload_path("x").parent
    folder.mkdir(parents=True, exist_ok=True)
    old = timezone.now().timestamp() - 2 * 86400
    stray, fresh = folder / "stray1.dump", folder / "fresh1.dump"
    stray.write_bytes(b"PGDMP")
    fresh.write_bytes(b"PGDMP")
    os.utime(stray, (old, old))
    _, named = _uploaded(env, team, "named1")  # an old file a queued backup still names stays
    os.utime(named, (old, old))
    assert backups.fail_stale_backups() == 0
    assert not stray.exists() and fresh.exists() and named.exists()


def test_a_restore_whose_worker_died_is_failed_not_redeployed(
    env: Environment, team: Team, queued: list[tuple[str, Any]], memory_backend: type[MemoryBackend]
) -> None:
    """The reconciler resumes operations whose worker died through the operation runner: a
    restore is failed there with why, the environment says what to do, nothing is deployed."""
    from stacks.runtime.operations import run_operation
    from stacks.runtime.reconcile import resume_lost_operations

    backups.request_backup(environment=env, actor=team.developer)
    run_queued(queued)
    backup = Backup.objects.get(environment=env, component="db")
    op = backups.request_restore(backup=backup, actor=team.admin, confirmation="db")
    queued.clear()
    long_ago = timezone.now() - timedelta(minutes=10)
    Operation.objects.filter(pk=op.pk).update(status="running", heartbeat_at=long_ago, created_at=long_ago)
    assert resume_lost_operations() == 1
    assert queued == [("run_operation_task", (op.pk,))]
    calls = len(memory_backend.calls())
    assert run_operation(op.pk) == OperationStatus.FAILED
    op.refresh_from_db()
    env.refresh_from_db()
    assert op.status == OperationStatus.FAILED and "worker stopped during the restore" in op.error
    assert env.status == EnvironmentStatus.DEGRADED
    assert env.status_detail.startswith("Restore interrupted: the worker stopped while restoring db")
    assert "Restore the backup again" in env.status_detail
    assert not memory_backend.calls()[calls:], "a dead restore must not be redeployed"
    assert not env.operations.filter(status__in=["queued", "running"]).exists()
    assert run_operation(op.pk) is None  # finished: nothing more


def test_a_restore_of_a_copy_whose_worker_died_fails_the_copy(
    env: Environment, team: Team, queued: list[tuple[str, Any]]
) -> None:
    backups.request_backup(environment=env, actor=team.developer)
    run_queued(queued)
    backup = Backup.objects.get(environment=env, component="db")
    op = backups.request_restore(backup=backup, actor=team.admin, new_environment="staging")
    Operation.objects.filter(pk=op.pk).update(
        status="running", heartbeat_at=timezone.now() - timedelta(minutes=10)
    )
    assert backups.resume_restore(op.pk) == OperationStatus.FAILED
    staging = Environment.objects.get(pk=op.environment_id)
    assert staging.status == EnvironmentStatus.FAILED
    assert "Destroy this environment and restore the backup again" in staging.status_detail


def test_a_queued_restore_handed_to_the_operation_runner_runs_as_a_restore(
    env: Environment, team: Team, queued: list[tuple[str, Any]], memory_backend: type[MemoryBackend]
) -> None:
    from stacks.runtime.operations import run_operation

    backups.request_backup(environment=env, actor=team.developer)
    run_queued(queued)
    backup = Backup.objects.get(environment=env, component="db")
    memory_backend.seed_data(env.key, "db", "postgresql", b"changed since")
    op = backups.request_restore(backup=backup, actor=team.admin, confirmation="db")
    queued.clear()  # the message was lost (a broker restart): the reconciler requeues it
    assert run_operation(op.pk) == OperationStatus.SUCCEEDED
    assert memory_backend.stack(env.key).data[("db", "postgresql", "")] == b"PGDMP rows " * 5000


def test_the_reconcile_pass_fails_backups_whose_worker_died(
    env: Environment, team: Team, queued: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stacks.backends.edge import route_config
    from stacks.runtime import reconcile

    monkeypatch.setattr(reconcile, "edge_routes", lambda: ({}, route_config))
    monkeypatch.setattr(reconcile, "write_routes", lambda routes, remove: True)
    rows = backups.request_backup(environment=env, actor=team.developer)
    Backup.objects.filter(pk=rows[0].pk).update(
        status="running", heartbeat_at=timezone.now() - timedelta(minutes=10)
    )
    assert reconcile.reconcile()["backups_failed"] == 1
    rows[0].refresh_from_db()
    assert rows[0].status == Backup.Status.FAILED


def api_client(user: Any) -> Any:
    from django.test import Client

    from projects import services

    _token, secret = services.create_api_token(user=user, name="test")
    return Client(headers={"authorization": f"Bearer {secret}"})


def test_api_back_up_now_list_and_foreign_ids(
    env: Environment, team: Team, queued: list[tuple[str, Any]]
) -> None:
    developer = api_client(team.developer)
    response = developer.post(f"/api/environments/{env.pk}/backups", content_type="application/json")
    assert response.status_code == 202, response.content
    run_queued(queued)
    listed = developer.get(f"/api/environments/{env.pk}/backups").json()
    items = listed["items"] if isinstance(listed, dict) else listed
    assert {b["component"] for b in items} == {"db", "cache"}
    assert all(b["status"] == "succeeded" and b["size_bytes"] > 0 for b in items)
    backup_id = next(b["id"] for b in items if b["component"] == "db")
    outsider = api_client(team.outsider)
    assert (
        outsider.post(
            f"/api/backups/{backup_id}/restore", {"confirmation": "db"}, content_type="application/json"
        ).status_code
        == 404
    )
    assert outsider.get(f"/api/backups/{backup_id}/download").status_code == 404
    assert developer.get(f"/api/backups/{backup_id}/download").status_code == 403
    admin = api_client(team.admin)
    download = admin.get(f"/api/backups/{backup_id}/download")
    assert download.status_code == 200
    assert b"".join(download.streaming_content) == b"PGDMP rows " * 5000


def test_backups_are_metered_as_storage_and_held_to_the_plans_limit(
    env: Environment, team: Team, queued: list[tuple[str, Any]]
) -> None:
    from billing.metering import BACKUPS_COMPONENT, interval_start, meter_interval
    from billing.models import Plan, UsageRecord
    from projects.services import ServiceError

    backups.request_backup(environment=env, actor=team.developer)
    run_queued(queued)
    held = backups.stored_bytes(team.org)
    assert held > 0
    start = interval_start(timezone.now()) + timedelta(hours=1)
    meter_interval(start, environments=[env])
    record = UsageRecord.objects.get(
        environment_ref=env.pk, component=BACKUPS_COMPONENT, interval_start=start
    )
    assert record.storage_gb_hours > 0 and record.cpu_hours == 0
    if not Plan.objects.filter(is_default=True).exists():
        Plan.objects.create(code="tiny", name="Tiny", is_default=True)
    Plan.objects.update(max_backup_gb=0)
    with pytest.raises(ServiceError) as refused:
        backups.request_backup(environment=env, actor=team.developer)
    assert refused.value.status == 402


def test_retention_keeps_what_the_plan_says(
    env: Environment, team: Team, queued: list[tuple[str, Any]]
) -> None:
    for _ in range(3):
        backups.request_backup(environment=env, actor=None, trigger=Backup.Trigger.SCHEDULED)
        run_queued(queued)
    # Three backups today: the daily rule keeps the newest of the day (per component).
    kept = Backup.objects.filter(environment=env, status=Backup.Status.SUCCEEDED)
    assert sorted(kept.values_list("component", flat=True)) == ["cache", "db"]
    _name, stream = backups.download(backup=kept.get(component="db"), actor=None)
    assert b"".join(stream) == b"PGDMP rows " * 5000


def test_postgresql_is_dumped_compressed_in_a_format_its_own_pg_restore_reads() -> None:
    """LZ4 from PostgreSQL 16 on (pg_dump learned it then); gzip's fastest level before,
    and for a version it cannot tell."""
    from stacks.backends.docker import pg_dump_compression

    assert pg_dump_compression("17") == ["-Z", "lz4"]
    assert pg_dump_compression("16.4") == ["-Z", "lz4"]
    assert pg_dump_compression("15") == ["-Z", "1"]
    assert pg_dump_compression("") == ["-Z", "1"]
