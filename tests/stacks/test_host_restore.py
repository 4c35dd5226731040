"""Stateful stacks after a host loss, with the in-memory backend (fast): restored from their
latest backup onto another host once the host has been down for
STACKPORT_RESTORE_AFTER_HOST_DOWN_SECONDS, else waiting for it; and a host whose engine was
reinstalled (another engine ID under the same name) handled as a new, empty host."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import docker
import pytest
from django.db import transaction
from django.utils import timezone

from projects.models import Environment, EnvironmentStatus
from stacks.backends import memory
from stacks.backends.base import BackendError, HostFacts
from stacks.backends.docker import describe_host
from stacks.backends.memory import MemoryBackend
from stacks.models import Backup, DockerHost, Operation, OperationKind, OperationStatus, placed_hosts
from stacks.runtime import backups, lifecycle, support
from stacks.runtime import reconcile as reconcile_module
from stacks.runtime.hosts import probe_hosts
from stacks.runtime.reconcile import reconcile
from tests.conftest import Team, client_for
from tests.stacks.test_host_health import (
    clients,
    deploy,
    engine_cleanup,
    hosts_back,
    make,
    netns_hosts,
    no_edge,
    probe_until,
    queued,
    run_queued,
    two_hosts,
    world,
)

# Fixtures used here.
__all__ = [
    "clients",
    "engine_cleanup",
    "hosts_back",
    "netns_hosts",
    "no_edge",
    "queued",
    "two_hosts",
    "world",
]

pytestmark = pytest.mark.django_db


@pytest.fixture
def restic(settings: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Backups in a real restic repository under tmp_path; backup and restore tasks recorded."""
    from stacks import tasks

    settings.VAR_DIR = tmp_path
    settings.STACKPORT_BACKUP_REPOSITORY = ""
    settings.STACKPORT_RESTORE_AFTER_HOST_DOWN_SECONDS = 600
    restores: list[int] = []
    monkeypatch.setattr(transaction, "on_commit", lambda func, using=None, robust=False: func())
    monkeypatch.setattr(tasks.run_backup_task, "delay", lambda *args: None)
    monkeypatch.setattr(tasks.restore_task, "delay", lambda pk: restores.append(pk))
    return restores


def backed_up(env: Environment, data: bytes) -> list[Backup]:
    """A complete backup of ``env``'s data, each piece holding ``data``."""
    rows = backups.request_backup(environment=env, actor=None)
    for row in rows:
        MemoryBackend.seed_data(env.key, row.component, row.kind, data, row.volume)
        assert backups.run_backup(row.pk) == Backup.Status.SUCCEEDED
    return rows


def data_of(env: Environment, row: Backup) -> bytes:
    return MemoryBackend.stack(env.key).data[(row.component, row.kind, row.volume)]


def down_for(seconds: int, host: str = "h1") -> None:
    DockerHost.objects.filter(name=host).update(down_since=timezone.now() - timedelta(seconds=seconds))


@pytest.fixture
def blog(world: dict[str, Any], team: Team, restic: list[int]) -> Environment:
    env = deploy(make(team, "Blog", "lamp"))
    assert placed_hosts(env) == ["h1"]
    return env


def test_a_stateful_stack_is_restored_on_another_host_once_its_host_stayed_down(
    blog: Environment, team: Team, restic: list[int]
) -> None:
    rows = backed_up(blog, b"backed up rows")
    for row in rows:  # written after the backup: lost with the host
        MemoryBackend.seed_data(blog.key, row.component, row.kind, b"newer rows", row.volume)
    MemoryBackend.take_down("h1")
    probe_until("down")
    blog.refresh_from_db()
    assert blog.status == EnvironmentStatus.DEGRADED and blog.status_detail.startswith("Waiting for host h1")
    assert "is restored from its latest backup on another host" in blog.status_detail
    assert restic == []  # not yet: the host may come back

    down_for(601)
    reconcile()
    op = Operation.objects.get(environment=blog, kind=OperationKind.RESTORE)
    assert restic == [op.pk]
    assert (op.params["lost_host"], op.params["to_host"], op.params["batch"]) == ("h1", "h2", rows[0].batch)
    blog.refresh_from_db()
    assert blog.status == EnvironmentStatus.DEPLOYING and "Restoring from the backup of" in blog.status_detail
    reconcile()  # busy: nothing more queued
    assert Operation.objects.filter(environment=blog, kind=OperationKind.RESTORE).count() == 1

    assert backups.run_restore(op.pk) == OperationStatus.SUCCEEDED
    assert all(data_of(blog, row) == b"backed up rows" for row in rows)
    deploy_op = run_queued(blog)
    assert deploy_op.kind == OperationKind.DEPLOY and deploy_op.status == OperationStatus.SUCCEEDED
    assert deploy_op.params["reason"] == "host.down"
    assert blog.status == EnvironmentStatus.RUNNING and placed_hosts(blog) == ["h2"]
    notice = backups.host_restore_notice(blog)
    assert "Restored from the backup of" in notice and "Data written after that backup is lost." in notice
    page = client_for(team.owner).get(f"/environments/{blog.pk}/")
    assert notice.encode() in page.content.replace(b"&#x27;", b"'")

    MemoryBackend.bring_up("h1")
    assert probe_hosts()["h1"] == "active"  # the old copy on h1 is removed: not served twice
    assert {c.host for c in MemoryBackend.stack(blog.key).containers.values()} == {"h2"}


def test_without_a_backup_or_with_restores_off_it_waits_for_its_host(
    blog: Environment, settings: Any, restic: list[int]
) -> None:
    MemoryBackend.take_down("h1")
    probe_until("down")
    down_for(3600)
    reconcile()  # no backup
    assert not Operation.objects.filter(environment=blog, kind=OperationKind.RESTORE).exists()
    blog.refresh_from_db()
    assert (
        blog.status_detail.startswith("Waiting for host h1") and "If it is not back" not in blog.status_detail
    )

    MemoryBackend.bring_up("h1")
    probe_hosts()
    backed_up(blog, b"rows")
    MemoryBackend.take_down("h1")
    probe_until("down")
    down_for(3600)
    settings.STACKPORT_RESTORE_AFTER_HOST_DOWN_SECONDS = 0  # off
    reconcile()
    assert not Operation.objects.filter(environment=blog, kind=OperationKind.RESTORE).exists()


def test_a_failed_restore_leaves_it_on_its_lost_host_and_is_tried_again_later(
    blog: Environment, settings: Any, restic: list[int]
) -> None:
    backed_up(blog, b"rows")
    MemoryBackend.take_down("h1")
    probe_until("down")
    down_for(601)
    reconcile()
    op = Operation.objects.get(environment=blog, kind=OperationKind.RESTORE)
    MemoryBackend.fail_next("restore", BackendError("loading the backup failed", permanent=True))
    assert backups.run_restore(op.pk) == OperationStatus.FAILED
    blog.refresh_from_db()
    assert blog.status == EnvironmentStatus.FAILED and "loading the backup failed" in blog.status_detail
    assert placed_hosts(blog) == ["h1"]  # never started on the new host's empty volumes
    reconcile()  # not due yet (the slower schedule): it waits
    assert Operation.objects.filter(environment=blog, kind=OperationKind.RESTORE).count() == 1
    assert not blog.operations.filter(status=OperationStatus.QUEUED).exists()
    Operation.objects.filter(pk=op.pk).update(
        finished_at=timezone.now() - timedelta(seconds=settings.STACKPORT_RECONCILE_RETRY_SECONDS + 1)
    )
    reconcile()
    assert Operation.objects.filter(environment=blog, kind=OperationKind.RESTORE).count() == 2


def test_a_move_off_a_lost_host_whose_worker_died_goes_back_and_is_tried_again(
    blog: Environment, restic: list[int]
) -> None:
    backed_up(blog, b"rows")
    MemoryBackend.take_down("h1")
    probe_until("down")
    down_for(601)
    reconcile()
    op = Operation.objects.get(environment=blog, kind=OperationKind.RESTORE)
    Operation.objects.filter(pk=op.pk).update(
        status=OperationStatus.RUNNING, heartbeat_at=timezone.now() - timedelta(minutes=10)
    )
    assert backups.resume_restore(op.pk) == OperationStatus.FAILED
    blog.refresh_from_db()
    assert blog.status == EnvironmentStatus.FAILED and "restored again automatically" in blog.status_detail
    assert placed_hosts(blog) == ["h1"]


# --- a reinstalled engine -----------------------------------------------------------------------
def reinstall(host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``host``'s engine answers with a new ID and holds nothing any more."""
    real = MemoryBackend.describe_host

    def describe(url: str, *args: Any, **kwargs: Any) -> HostFacts:
        facts = real(url, *args, **kwargs)
        if url == f"memory://{host}":
            facts = HostFacts(f"reinstalled-{host}", facts.kernel_release, facts.cpus, facts.memory_mb)
        return facts

    monkeypatch.setattr(MemoryBackend, "describe_host", staticmethod(describe))
    for stack in list(memory.STACKS.values()):
        if not any(c.host == host for c in stack.containers.values()):
            continue
        stack.containers = {n: c for n, c in stack.containers.items() if c.host != host}
        stack.data.clear()


def test_a_reinstalled_engine_is_a_new_empty_host(
    world: dict[str, Any], team: Team, restic: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    shop = world["env"]  # stateless, on h1
    blog = deploy(make(team, "Blog", "lamp"))
    forum = deploy(make(team, "Forum", "lamp"))
    backed_up(blog, b"blog rows")
    probe_hosts()
    assert DockerHost.objects.get(name="h1").engine_id == "memory-h1"  # stored at first contact

    reinstall("h1", monkeypatch)
    assert probe_hosts()["h1"] == "active"  # it answers: a working, empty host
    h1 = DockerHost.objects.get(name="h1")
    assert h1.engine_id == "reinstalled-h1" and h1.reinstalled_at is not None
    # Stateless: moved (like after a host loss). Stateful with a backup: restored at once.
    assert shop.operations.get(status=OperationStatus.QUEUED).params["reason"] == "host.down"
    restore = Operation.objects.get(environment=blog, kind=OperationKind.RESTORE)
    assert restore.params["lost_host"] == "h1" and restic == [restore.pk]
    # Stateful without one: its data is gone; said so, and never repaired onto empty volumes.
    forum.refresh_from_db()
    assert forum.status == EnvironmentStatus.FAILED and forum.status_detail.startswith("Data lost")
    assert "was reinstalled" in forum.status_detail
    reconcile()
    assert not forum.operations.filter(status=OperationStatus.QUEUED).exists()

    assert probe_hosts()["h1"] == "active"  # the new ID is the one known now: handled once
    assert Operation.objects.filter(environment=blog, kind=OperationKind.RESTORE).count() == 1


def busy_with_a_stop(env: Environment) -> Operation:
    with transaction.atomic():
        return lifecycle.queue_operation(env, OperationKind.STOP, None, release=env.current_release)


def fail_after_the_reinstall(op: Operation) -> None:
    """It ran on the engine while it was reinstalled (started before, ended after)."""
    Operation.objects.filter(pk=op.pk).update(
        status=OperationStatus.FAILED,
        started_at=timezone.now() - timedelta(minutes=5),
        finished_at=timezone.now(),
    )


def test_environments_busy_when_the_engine_was_reinstalled_are_handled_by_a_later_pass(
    world: dict[str, Any], team: Team, restic: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    blog = deploy(make(team, "Blog", "lamp"))
    forum = deploy(make(team, "Forum", "lamp"))
    backed_up(blog, b"blog rows")
    probe_hosts()
    busy = [busy_with_a_stop(blog), busy_with_a_stop(forum)]
    reinstall("h1", monkeypatch)
    probe_hosts()
    assert not Operation.objects.filter(environment=blog, kind=OperationKind.RESTORE).exists()  # busy
    for op in busy:
        fail_after_the_reinstall(op)

    reconcile()
    restore = Operation.objects.get(environment=blog, kind=OperationKind.RESTORE)
    assert restore.params["lost_host"] == "h1" and restic == [restore.pk]
    forum.refresh_from_db()
    assert forum.status == EnvironmentStatus.FAILED and forum.status_detail.startswith("Data lost")
    # Never repaired onto the new engine's empty volumes, now or later.
    assert not forum.operations.filter(status=OperationStatus.QUEUED).exists()
    reconcile()
    assert not forum.operations.filter(status=OperationStatus.QUEUED).exists()
    assert Operation.objects.filter(environment=blog, kind=OperationKind.RESTORE).count() == 1


def test_a_stateful_stack_is_never_repaired_onto_a_reinstalled_engine(
    world: dict[str, Any], team: Team, restic: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    forum = deploy(make(team, "Forum", "lamp"))
    probe_hosts()
    reinstall("h1", monkeypatch)
    # As if its handling had been lost (a worker died between the probe's save and it).
    monkeypatch.setattr(reconcile_module, "engine_reinstalled", lambda host: {})
    probe_hosts()
    reconcile()
    forum.refresh_from_db()
    assert forum.status == EnvironmentStatus.FAILED and forum.status_detail.startswith("Data lost")
    assert not forum.operations.filter(status=OperationStatus.QUEUED).exists()

    with transaction.atomic():  # the customer deploys again, knowingly with empty data
        lifecycle.queue_operation(forum, OperationKind.DEPLOY, team.owner, release=forum.current_release)
    assert run_queued(forum).status == OperationStatus.SUCCEEDED
    reconcile()  # built on the new engine after the reinstall: nothing of it lost any more
    forum.refresh_from_db()
    assert forum.status == EnvironmentStatus.RUNNING and placed_hosts(forum) == ["h1"]
    assert not forum.operations.filter(status=OperationStatus.QUEUED).exists()


def test_one_environments_failure_does_not_stop_the_reinstall_handling_of_the_others(
    world: dict[str, Any], team: Team, restic: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    shop = world["env"]  # stateless, on h1, handled first
    forum = deploy(make(team, "Forum", "lamp"))
    probe_hosts()
    reinstall("h1", monkeypatch)
    real = support.evacuate_environment

    def broken(*, environment: Environment, lost_host: str) -> Operation | None:
        raise BackendError("the engine said no")

    monkeypatch.setattr(support, "evacuate_environment", broken)
    probe_hosts()
    forum.refresh_from_db()
    assert forum.status == EnvironmentStatus.FAILED and forum.status_detail.startswith("Data lost")
    assert not shop.operations.filter(status=OperationStatus.QUEUED).exists()

    monkeypatch.setattr(support, "evacuate_environment", real)
    reconcile()  # a later pass handles it the same way: moved
    assert shop.operations.get(status=OperationStatus.QUEUED).params["reason"] == "host.down"


def test_admin_shows_a_reinstalled_engine(
    world: dict[str, Any], admin_user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe_hosts()
    reinstall("h1", monkeypatch)
    probe_hosts()
    page = client_for(admin_user).get("/admin/stacks/dockerhost/")
    assert page.status_code == 200 and b"engine was reinstalled" in page.content


@pytest.mark.engine
def test_the_engine_id_a_probe_compares_is_docker_infos_id() -> None:
    """What a reinstall changes: the real engine's ``docker info`` ID is what the probe reads."""
    client = docker.DockerClient(base_url="unix:///var/run/docker.sock", version="auto")
    try:
        facts = describe_host("unix:///var/run/docker.sock")
        assert facts.engine_id and facts.engine_id == client.info()["ID"]
    finally:
        client.close()


# --- the real engines: a netns host holding a database is lost ---------------------------------------
@pytest.mark.engine
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_lost_netns_hosts_database_is_restored_from_its_backup_on_the_other_host(
    team: Team,
    two_hosts: Any,
    engine_cleanup: list[Environment],
    clients: dict[str, Any],
    hosts_back: None,
    settings: Any,
    tmp_path: Any,
) -> None:
    """PostgreSQL on a netns engine, backed up for real (pg_dump into restic); a row written
    after the backup. The engine stops: the host goes down, the stack waits, then (its host
    down for longer than the setting) it is restored from the backup on the other host and
    runs there with the backed-up rows, without the later one."""
    import os
    import signal
    import subprocess

    from stacks.models import home_host
    from stacks.runtime.operations import run_operation
    from tests.stacks.conftest import wait_until
    from tests.stacks.test_backups import psql
    from tests.stacks.test_host_health import dockerd_pid
    from tests.stacks.test_lifecycle import deploy

    settings.VAR_DIR = tmp_path
    settings.STACKPORT_BACKUP_REPOSITORY = ""
    settings.STACKPORT_HOST_DOWN_AFTER_MISSES = 3
    settings.STACKPORT_HOST_PROBE_TIMEOUT = 2
    settings.STACKPORT_RESTORE_AFTER_HOST_DOWN_SECONDS = 600
    rows = [{"name": "db", "component": "postgresql", "version": "17", "size": "small", "replicas": 1}]
    env = deploy(team, engine_cleanup, name="Ledger", region="eu-west", components=rows)
    lost = home_host(env)
    other = next(h for h in clients if h != lost)
    psql(clients[lost], env, "create table ledger (id int primary key, note text)")
    psql(clients[lost], env, "insert into ledger select g, 'kept ' || g from generate_series(1, 100) g")
    (backup,) = backups.request_backup(environment=env, actor=team.developer)
    assert backups.run_backup(backup.pk) == Backup.Status.SUCCEEDED
    psql(clients[lost], env, "insert into ledger values (1000, 'written after the backup')")

    os.kill(dockerd_pid(lost), signal.SIGTERM)
    sock = f"unix:///run/stackport/h{lost[2:]}/docker.sock"
    wait_until(
        lambda: subprocess.run(["docker", "-H", sock, "version"], capture_output=True).returncode != 0,
        120,
        "dockerd to stop",
    )
    probe_until("down", lost)
    env.refresh_from_db()
    assert env.status_detail.startswith(f"Waiting for host {lost}")
    assert not Operation.objects.filter(environment=env, kind=OperationKind.RESTORE).exists()

    down_for(601, lost)
    reconcile()
    restore = Operation.objects.get(environment=env, kind=OperationKind.RESTORE)
    assert restore.params["to_host"] == other
    status = backups.run_restore(restore.pk)
    restore.refresh_from_db()
    assert status == OperationStatus.SUCCEEDED, f"{restore.error}\n{restore.log}"
    deploy_op = env.operations.get(status=OperationStatus.QUEUED)
    assert run_operation(deploy_op.pk) == OperationStatus.SUCCEEDED
    env.refresh_from_db()
    assert env.status == EnvironmentStatus.RUNNING and placed_hosts(env) == [other]
    assert psql(clients[other], env, "select count(*), max(id) from ledger") == "100|100"
    assert "Data written after that backup is lost." in backups.host_restore_notice(env)
