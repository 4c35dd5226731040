"""Support moves an environment that keeps data (databases, volumes) to another host: its
writers stop, a last backup is taken, restored on the new host, the edge switches there, and
the old copy goes once the new one answers; drains move them too, one after another.

The service rules and the operation's steps run with the in-memory backend (fast); the real
move of a PostgreSQL stack between the two netns Docker hosts is the engine test at the end."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from projects.models import AuditEvent, Environment, EnvironmentStatus, User
from projects.services import ServiceError
from stacks.backends import memory
from stacks.backends.base import BackendError
from stacks.backends.memory import MemoryBackend
from stacks.models import Backup, DockerHost, Operation, OperationKind, OperationStatus, placed_hosts
from stacks.runtime import backups, support
from stacks.runtime.operations import run_operation
from stacks.runtime.reconcile import reconcile
from tests.conftest import Team, client_for
from tests.stacks.test_host_health import (
    clients,
    deploy,
    engine_cleanup,
    make,
    netns_hosts,
    no_edge,
    queued,
    run_queued,
    two_hosts,
    world,
)
from tests.stacks.test_host_restore import restic
from tests.stacks.test_support import staff

# Fixtures used here.
__all__ = ["clients", "engine_cleanup", "netns_hosts", "no_edge", "queued", "restic", "two_hosts", "world"]

pytestmark = pytest.mark.django_db


@pytest.fixture
def supporter(team: Team) -> User:
    return staff("Support", email="support@hoster.test")


@pytest.fixture
def blog(world: dict[str, Any], team: Team, restic: list[int]) -> Environment:
    """A LAMP stack (MariaDB) on h1 with data in its database."""
    env = deploy(make(team, "Blog", "lamp"))
    assert placed_hosts(env) == ["h1"]
    for component, method, volume in backups.targets(*backups._spec_of(env)):
        MemoryBackend.seed_data(env.key, component, method, f"rows of {component}".encode(), volume)
    return env


def data(env: Environment) -> dict[tuple[str, str, str], bytes]:
    return dict(MemoryBackend.stack(env.key).data)


def h2() -> DockerHost:
    return DockerHost.objects.get(name="h2")


def test_a_stateful_environment_moves_with_its_data_and_the_downtime_is_measured(
    blog: Environment, supporter: User, team: Team
) -> None:
    before = data(blog)
    op = support.move_environment(environment=blog, host=h2(), actor=supporter)
    assert op.kind == OperationKind.DEPLOY and op.params["move_data"] == ["db"]
    assert (op.params["from_host"], op.params["to_host"]) == ("h1", "h2")
    blog.refresh_from_db()
    assert placed_hosts(blog) == ["h1"]  # it moves only once it answers there
    event = AuditEvent.objects.get(action="support.environment.move", actor=supporter)
    assert event.data["with_data"] == ["db"] and event.organization == team.org

    op = run_queued(blog)
    assert op.status == OperationStatus.SUCCEEDED, f"{op.error}\n{op.log}"
    assert [s["name"] for s in op.steps] == [
        "Stop the writers on h1",
        "Back up the data",
        "Restore it on h2",
        "Start the stack on h2",
        "Route traffic",
        "Check the site",
        "Remove the old copy from h1",
    ]
    assert all(s["status"] == "done" for s in op.steps)
    assert blog.status == EnvironmentStatus.RUNNING and placed_hosts(blog) == ["h2"]
    stack = MemoryBackend.stack(blog.key)
    assert {c.host for c in stack.containers.values()} == {"h2"}
    assert {c.component for c in stack.containers.values()} == {"web", "php", "db"}
    assert "h1" not in stack.networks and not stack.volumes.get("h1")  # the old copy is gone
    assert data(blog) == before
    downtime = op.params["downtime_seconds"]
    assert 0 <= downtime < 60 and op.params["move"]["writes_stopped_at"] <= op.params["move"]["answered_at"]
    (moved,) = AuditEvent.objects.filter(action="environment.moved", target=f"environment {blog.pk}")
    assert moved.data["downtime_seconds"] == downtime and moved.data["to_host"] == "h2"
    batch = Backup.objects.filter(environment=blog, batch=op.params["move"]["batch"])
    assert batch.count() == 1 and batch.get().status == Backup.Status.SUCCEEDED
    # Support reads it where moves are started and on the operation.
    admin = staff(is_superuser=True)
    page = client_for(admin).get(f"/admin/projects/environment/{blog.pk}/change/")
    assert page.status_code == 200 and f"{downtime} s".encode() in page.content
    page = client_for(admin).get(f"/admin/stacks/operation/{op.pk}/change/")
    assert page.status_code == 200 and f"{downtime} s".encode() in page.content
    page = client_for(team.owner).get(reverse("stacks:operation", args=[op.pk]))
    assert page.status_code == 200 and f"{downtime} s".encode() in page.content


def test_a_move_that_fails_before_the_switch_leaves_it_serving_on_its_old_host(
    blog: Environment, supporter: User
) -> None:
    before = data(blog)
    support.move_environment(environment=blog, host=h2(), actor=supporter)
    MemoryBackend.fail_next("restore", BackendError("loading the backup failed", permanent=True))
    op = run_queued(blog)
    assert op.status == OperationStatus.FAILED
    assert "The move to h2 failed: loading the backup failed" in op.error
    assert "Nothing was lost: it runs on h1 as before." in op.error
    assert blog.status == EnvironmentStatus.RUNNING and "runs on h1 as before" in blog.status_detail
    assert placed_hosts(blog) == ["h1"]
    stack = MemoryBackend.stack(blog.key)
    assert {(c.component, c.host) for c in stack.containers.values()} == {
        ("web", "h1"),
        ("php", "h1"),
        ("db", "h1"),
    }
    assert "h2" not in stack.networks and data(blog) == before
    assert not AuditEvent.objects.filter(action="environment.moved").exists()

    # Retried by support: a new operation that starts afresh (a new backup) and moves it.
    retry = support.retry_operation(operation=op, actor=supporter)
    assert retry.params["move_data"] == ["db"]
    assert run_queued(blog).status == OperationStatus.SUCCEEDED
    assert placed_hosts(blog) == ["h2"] and data(blog) == before
    assert Backup.objects.filter(environment=blog).values("batch").distinct().count() == 2


def test_a_new_copy_that_does_not_answer_through_the_edge_is_dropped_for_the_old_one(
    blog: Environment, supporter: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stacks.runtime import operations

    def no_answer(*args: Any) -> None:
        raise operations.OperationFailed(f"{blog.hostname} answers 502 through the edge")

    monkeypatch.setattr(operations, "_check_site", no_answer)
    support.move_environment(environment=blog, host=h2(), actor=supporter)
    op = run_queued(blog)
    assert op.status == OperationStatus.FAILED and "answers 502" in op.error
    assert op.params["move"]["routed"] and "downtime_seconds" not in op.params
    assert placed_hosts(blog) == ["h1"] and blog.status == EnvironmentStatus.RUNNING
    # (The in-memory backend holds one container per name, so the old copy's, replaced by the
    # new one's, is made again: its data is the engine test's to show.)
    assert {c.host for c in MemoryBackend.stack(blog.key).containers.values()} == {"h1"}


class WorkerDied(BaseException):
    """The worker process killed mid-step (nothing of the runner catches it)."""


def test_a_move_whose_worker_died_is_resumed_by_the_reconciler_with_the_same_backup(
    blog: Environment, supporter: User, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    support.move_environment(environment=blog, host=h2(), actor=supporter)
    real = backups.rebuild_on

    def dies(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise WorkerDied

    monkeypatch.setattr(backups, "rebuild_on", dies)
    op = blog.operations.get(status=OperationStatus.QUEUED)
    with pytest.raises(WorkerDied):
        run_operation(op.pk)
    monkeypatch.setattr(backups, "rebuild_on", real)
    op.refresh_from_db()
    assert op.status == OperationStatus.RUNNING and op.params["move"]["batch"]
    stale = timezone.now() - timedelta(seconds=settings.STACKPORT_OPERATION_STALE_SECONDS + 1)
    Operation.objects.filter(pk=op.pk).update(heartbeat_at=stale)

    assert reconcile()["resumed"] == 1
    op = run_queued(blog)
    assert op.status == OperationStatus.SUCCEEDED, f"{op.error}\n{op.log}"
    assert op.attempts == 2 and placed_hosts(blog) == ["h2"]
    assert Backup.objects.filter(environment=blog).count() == 1  # the same last backup, restored
    assert "is complete" in op.log and op.params["downtime_seconds"] >= 0


def test_who_may_move_and_what_is_refused(blog: Environment, supporter: User, team: Team) -> None:
    for user in (staff(), staff("Billing"), team.owner):
        with pytest.raises(ServiceError) as exc:
            support.move_environment(environment=blog, host=h2(), actor=user)
        assert exc.value.status == 403
    with pytest.raises(ServiceError, match="is on h1 already"):
        support.move_environment(environment=blog, host=DockerHost.objects.get(name="h1"), actor=supporter)
    DockerHost.objects.filter(name="h2").update(state=DockerHost.State.DRAINING)
    with pytest.raises(ServiceError, match="is not active"):
        support.move_environment(environment=blog, host=h2(), actor=supporter)
    DockerHost.objects.filter(name="h2").update(state=DockerHost.State.ACTIVE)
    Environment.objects.filter(pk=blog.pk).update(desired_running=False, status=EnvironmentStatus.STOPPED)
    with pytest.raises(ServiceError, match="start it before moving it") as exc:
        support.move_environment(environment=blog, host=h2(), actor=supporter)
    assert exc.value.status == 409
    Environment.objects.filter(pk=blog.pk).update(desired_running=True, status=EnvironmentStatus.RUNNING)
    support.move_environment(environment=blog, host=h2(), actor=supporter)
    with pytest.raises(ServiceError, match="Another operation"):
        support.move_environment(environment=blog, host=h2(), actor=supporter)
    assert AuditEvent.objects.filter(action="support.environment.move").count() == 1


def test_drain_moves_environments_with_data_one_after_another(
    restic: list[int], world: dict[str, Any], blog: Environment, team: Team, supporter: User
) -> None:
    """(``restic`` first: the static site's content is stored where the moves look for it.)"""
    shop = world["env"]
    forum = deploy(make(team, "Forum", "lamp"))
    h1 = DockerHost.objects.get(name="h1")
    result = support.drain_host(host=h1, actor=supporter)
    assert result["moved"] == [shop.key] and result["with_data"] == [blog.key, forum.key]
    assert result["stays"] == [] and result["busy"] == []
    assert not blog.operations.filter(status=OperationStatus.QUEUED).exists()  # after the stateless ones
    assert not support.finish_host_drain(host_id=h1.pk)
    assert run_queued(shop).status == OperationStatus.SUCCEEDED

    assert not support.finish_host_drain(host_id=h1.pk)  # starts the first move with data
    assert not forum.operations.filter(status=OperationStatus.QUEUED).exists()  # one at a time
    first = run_queued(blog)
    assert first.status == OperationStatus.SUCCEEDED and first.params["reason"] == "support.drain"
    assert not support.finish_host_drain(host_id=h1.pk)  # then the next
    assert run_queued(forum).status == OperationStatus.SUCCEEDED
    assert support.finish_host_drain(host_id=h1.pk)
    h1.refresh_from_db()
    assert not any(k.startswith("drain_") for k in h1.labels)
    for env in (shop, blog, forum):
        assert placed_hosts(env) == ["h2"]
    assert not any(c.host == "h1" for s in memory.STACKS.values() for c in s.containers.values())


def test_drain_leaves_a_stopped_environment_with_data_where_it_is(
    world: dict[str, Any], blog: Environment, supporter: User
) -> None:
    Environment.objects.filter(pk=blog.pk).update(desired_running=False, status=EnvironmentStatus.STOPPED)
    result = support.drain_host(host=DockerHost.objects.get(name="h1"), actor=supporter)
    assert result["stays"] == [blog.key] and result["with_data"] == []


def test_a_lost_hosts_environment_with_data_is_still_not_moved_by_evacuation(
    blog: Environment, supporter: User
) -> None:
    """Only support's move (the old host answers) copies data; a lost host's stateful stack
    waits for it or is restored from its backup (test_host_restore)."""
    with pytest.raises(ServiceError, match="keeps data in volumes on h1"):
        support.evacuate_environment(environment=blog, lost_host="h1")


# --- the real engines: a PostgreSQL stack moves between the netns hosts ---------------------------
@pytest.mark.engine
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_stateful_stack_moves_between_netns_hosts_with_its_rows(
    team: Team,
    two_hosts: Any,
    engine_cleanup: list[Environment],
    clients: dict[str, Any],
    settings: Any,
    tmp_path: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The python-web stack (nginx, gunicorn, PostgreSQL, Redis) on one netns engine, rows
    written; support moves it to the other: the rows are there byte for byte, the site
    answers through the edge from the new host, nothing of it is left on the old one, and
    the downtime (writers stopped to the first answer through the edge) is printed."""
    from stacks.models import home_host
    from tests.stacks.test_backups import psql
    from tests.stacks.test_lifecycle import deploy as engine_deploy
    from tests.stacks.test_lifecycle import get, run
    from tests.stacks.test_multihost import on_hosts

    settings.VAR_DIR = tmp_path
    settings.STACKPORT_BACKUP_REPOSITORY = ""
    env = engine_deploy(team, engine_cleanup, name="Ledger", template="python-web", region="eu-west")
    source = home_host(env)
    target = next(h for h in clients if h != source)
    psql(clients[source], env, "create table ledger (id int primary key, note text, blob bytea)")
    psql(
        clients[source],
        env,
        "insert into ledger select g, 'row ' || g || ' é€', decode(md5(g::text), 'hex') "
        "from generate_series(1, 500) g",
    )
    digest_sql = "select count(*), md5(string_agg(id || ':' || note || ':' || encode(blob, 'hex'), ',' order by id)) from ledger"
    rows_before = psql(clients[source], env, digest_sql)
    assert get(two_hosts, env).status_code == 200

    supporter = staff("Support", email="support@hoster.test")
    op = support.move_environment(environment=env, host=DockerHost.objects.get(name=target), actor=supporter)
    op = run(op)
    env.refresh_from_db()
    assert env.status == EnvironmentStatus.RUNNING and placed_hosts(env) == [target]
    assert psql(clients[target], env, digest_sql) == rows_before
    response = get(two_hosts, env)
    assert response.status_code == 200 and "Hello from Python on Stackport" in response.text
    left = on_hosts(clients, env)
    assert left[source] == [], left
    assert {c.labels["org.stackport.component"] for c in left[target]} == {"web", "app", "db", "cache"}
    volumes = clients[source].volumes.list(filters={"label": f"org.stackport.stack={env.key}"})
    assert volumes == [], "the old copy's volumes are removed once the new copy answers"
    downtime = op.params["downtime_seconds"]
    with capsys.disabled():
        print(
            f"\nstateful move {source} -> {target}: downtime {downtime} s "
            f"(writers stopped {op.params['move']['writes_stopped_at']}, "
            f"answered {op.params['move']['answered_at']}); operation took "
            f"{(op.finished_at - op.started_at).total_seconds():.1f} s"
        )
        for step in op.steps:
            took = datetime.fromisoformat(step["finished"]) - datetime.fromisoformat(step["started"])
            print(f"  {step['name']}: {took.total_seconds():.1f} s")
    assert 0 < downtime < 300
