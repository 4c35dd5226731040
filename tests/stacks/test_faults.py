"""Fault injection on the real engine: whatever step a worker dies in, and whatever step
fails, the environment ends on a correct release that answers through the edge, with no
container of a failed attempt left behind, the rows a customer sees matching what runs and
metering billing what ran.

A worker is killed for real: the operation runs in a separate process that SIGKILLs itself
right after the work of the chosen step was done and before the step was recorded (the most
awkward moment: the engine changed, the database does not know). The operation is then
resumed, as the reconciler resumes it once its heartbeat is stale.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
from celery import current_app
from django.conf import settings
from django.db import connection
from django.utils import timezone

from billing.metering import interval_start, meter_interval
from billing.models import UsageRecord
from projects.models import Environment, EnvironmentStatus
from stacks.models import Operation, OperationStatus
from stacks.runtime import lifecycle
from stacks.runtime.operations import run_operation
from stacks.tasks import run_operation_task
from tests.portal.test_celery import _database_url
from tests.stacks import test_lifecycle
from tests.stacks.conftest import CADDY_ROUTER, REPO_ROOT, Caddy, fetch, unused_loopback_port, wait_until
from tests.stacks.test_lifecycle import STATIC, containers, get, run
from tests.stacks.test_operations import zip_archive

pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.timeout(900)]


@pytest.fixture
def stackport(settings: Any, caddy: Caddy, catalog: None) -> Caddy:
    """These tests run workers of their own against the Caddy edge, or take its admin API away."""
    return test_lifecycle.on_caddy(settings, caddy)


engine_client = test_lifecycle.engine_client
cleanup = test_lifecycle.cleanup

# Runs one operation in a process of its own and kills that process with SIGKILL right after
# the named step did its work (before the step is recorded as done).
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import django
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    django.setup()
    from stacks.runtime import operations

    step_to_kill = sys.argv[2]
    original = operations.Recorder.step

    def step(self, name, fn):
        if name != step_to_kill:
            return original(self, name, fn)

        def then_die():
            fn()
            os.kill(os.getpid(), signal.SIGKILL)

        return original(self, name, then_die)

    operations.Recorder.step = step
    if step_to_kill.startswith("create:"):  # right after a component's container is created
        from docker.models.containers import ContainerCollection

        create = ContainerCollection.create

        def create_then_die(self, *args, **kwargs):
            created = create(self, *args, **kwargs)
            labels = kwargs.get("labels") or {}
            if labels.get("org.stackport.component") == step_to_kill[7:] and "org.stackport.helper" not in labels:
                os.kill(os.getpid(), signal.SIGKILL)
            return created

        ContainerCollection.create = create_then_die
    operations.run_operation(int(sys.argv[1]))
    sys.exit(3)  # the step was never reached
    """
)


def run_and_kill(op: Operation, step: str, caddy: Caddy) -> int:
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "STACKPORT_STACK_PREFIX": settings.STACKPORT_STACK_PREFIX,
        "STACKPORT_EDGE_ROUTER": CADDY_ROUTER,
        "STACKPORT_EDGE_ADMIN_URL": caddy.admin_url,
        "STACKPORT_EDGE_LISTEN": caddy.edge_addr,
        "STACKPORT_VAR_DIR": str(settings.VAR_DIR),
    }
    done = subprocess.run(
        [sys.executable, "-c", KILLER, str(op.pk), step],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done.returncode


def resume(op: Operation) -> Operation:
    """What the reconciler does with an operation whose worker stopped sending heartbeats."""
    stale = timezone.now() - timedelta(seconds=settings.STACKPORT_OPERATION_STALE_SECONDS + 1)
    Operation.objects.filter(pk=op.pk).update(heartbeat_at=stale)
    run_operation(op.pk)
    op.refresh_from_db()
    return op


def assert_settled(
    env: Environment, client: docker.DockerClient, caddy: Caddy, *, release: int, nginx: str
) -> None:
    env.refresh_from_db()
    assert env.status == EnvironmentStatus.RUNNING, env.status_detail
    assert env.current_release is not None and env.current_release.number == release
    assert not env.operations.filter(status__in=["queued", "running"]).exists()
    found = containers(client, env)
    assert not [c.name for c in found if "org.stackport.helper" in c.labels], "a helper was left behind"
    web = [c for c in found if c.labels.get("org.stackport.component") == "web"]
    assert len(web) == 1 and web[0].status == "running", [(c.name, c.status) for c in found]
    assert web[0].labels.get("org.stackport.version") == nginx, web[0].labels
    response = get(caddy, env)
    assert response.status_code == 200, response.text[:200]
    rows = {sc.name: (sc.version.version, sc.replicas) for sc in env.components.select_related("version")}
    ran = {r["name"]: (r["version"], r["replicas"]) for r in env.current_release.spec["components"]}
    assert rows == ran
    UsageRecord.objects.filter(environment=env).delete()
    meter_interval(interval_start(timezone.now()), environments=[Environment.objects.get(pk=env.pk)])
    usage = UsageRecord.objects.get(environment=env, component="web")
    assert usage.replicas == ran["web"][1]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("change", "step"),
    [
        ("content", "Prepare the content"),
        ("upgrade", "Start the containers"),
        ("upgrade", "Route traffic"),
        ("upgrade", "Check the site"),
        # Between a container's create and its start: left "created", off its network.
        ("upgrade", "create:web"),
    ],
)
def test_a_worker_killed_at_any_step_ends_on_the_new_release(
    team: Any,
    stackport: Caddy,
    cleanup: list[Environment],
    engine_client: docker.DockerClient,
    change: str,
    step: str,
) -> None:
    env = test_lifecycle.create(
        organization=team.org, actor=team.developer, name="Killed", region="eu-central", components=STATIC
    )
    cleanup.append(env)
    run(env.operations.get())
    env.refresh_from_db()

    nginx = "1.22"
    if change == "upgrade":
        lifecycle.upgrade(environment=env, actor=team.developer, component="web", version="1.26")
        nginx = "1.26"
    else:
        lifecycle.deploy_content(
            environment=env,
            actor=team.developer,
            archive=zip_archive({"index.html": "<p>second release</p>"}),
            filename="site.zip",
        )
    op = env.operations.get(status=OperationStatus.QUEUED)
    assert run_and_kill(op, step, stackport) == -9
    op.refresh_from_db()
    assert op.status == OperationStatus.RUNNING
    running = "Start the containers" if step.startswith("create:") else step
    assert [s["status"] for s in op.steps if s["name"] == running] == ["running"]

    op = resume(op)
    assert op.status == OperationStatus.SUCCEEDED, f"{op.error}\n{op.log}"
    assert "resuming (attempt 2)" in op.log
    assert_settled(env, engine_client, stackport, release=2, nginx=nginx)
    assert env.current_release is not None and env.current_release.ran_at is not None
    if change == "content":
        assert "second release" in get(stackport, env).text


@pytest.mark.django_db(transaction=True)
def test_an_upgrade_that_fails_its_site_check_on_the_engine_puts_the_old_release_back(
    team: Any,
    stackport: Caddy,
    cleanup: list[Environment],
    engine_client: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The new release's containers start, then the site check fails (injected: the real
    edge answers, the check is told it did not): release 1 is put back and serves, the
    component rows say what runs, release 2 never ran and is no rollback target."""
    from stacks.runtime import operations
    from stacks.runtime.operations import OperationFailed

    env = test_lifecycle.create(
        organization=team.org, actor=team.developer, name="Checked", region="eu-central", components=STATIC
    )
    cleanup.append(env)
    run(env.operations.get())
    env.refresh_from_db()
    real_check = operations._check_site
    calls: list[int] = []

    def failing_once(*args: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OperationFailed("shop answers 502 through the edge")
        real_check(*args)

    monkeypatch.setattr(operations, "_check_site", failing_once)
    lifecycle.upgrade(environment=env, actor=team.developer, component="web", version="1.26")
    op = env.operations.get(status=OperationStatus.QUEUED)
    assert run_operation(op.pk) == OperationStatus.FAILED
    op.refresh_from_db()
    assert "Release 1 is serving again." in op.error
    assert_settled(env, engine_client, stackport, release=1, nginx="1.22")
    assert env.status_detail.startswith("Upgrade failed: shop answers 502")
    assert env.releases.get(number=2).ran_at is None


# --- the services around a worker: PostgreSQL, Redis and the edge restarted mid-operation ------------
# Runs one operation in a process of its own and runs a command (a restart) right after the
# named step did its work, before the step is recorded; the operation then goes on.
FAULTER = textwrap.dedent(
    """
    import os, subprocess, sys
    import django
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    django.setup()
    from stacks.runtime import operations

    step_to_hit, command = sys.argv[2], sys.argv[3:]
    original = operations.Recorder.step

    def step(self, name, fn):
        if name != step_to_hit:
            return original(self, name, fn)

        def then_fault():
            result = fn()
            subprocess.run(command, check=True, timeout=120)
            return result

        return original(self, name, then_fault)

    operations.Recorder.step = step
    print("status:", operations.run_operation(int(sys.argv[1])))
    """
)


def run_with_fault(op: Operation, step: str, command: list[str], caddy: Caddy, **env: str) -> str:
    """The operation's output (its final status) after running it with ``command`` run
    right after ``step``'s work."""
    environ = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "STACKPORT_STACK_PREFIX": settings.STACKPORT_STACK_PREFIX,
        "STACKPORT_EDGE_ROUTER": CADDY_ROUTER,
        "STACKPORT_EDGE_ADMIN_URL": caddy.admin_url,
        "STACKPORT_EDGE_LISTEN": caddy.edge_addr,
        "STACKPORT_VAR_DIR": str(settings.VAR_DIR),
        **env,
    }
    done = subprocess.run(
        [sys.executable, "-c", FAULTER, str(op.pk), step, *command],
        cwd=REPO_ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def deployed_then_upgrade(team: Any, cleanup: list[Environment], name: str) -> tuple[Environment, Operation]:
    """A static stack on release 1 and its queued upgrade to nginx 1.26 (release 2)."""
    env = test_lifecycle.create(
        organization=team.org, actor=team.developer, name=name, region="eu-central", components=STATIC
    )
    cleanup.append(env)
    run(env.operations.get())
    env.refresh_from_db()
    lifecycle.upgrade(environment=env, actor=team.developer, component="web", version="1.26")
    return env, env.operations.get(status=OperationStatus.QUEUED)


@dataclass
class Postgres:
    """A PostgreSQL cluster of our own (Debian's pg_createcluster), to restart at will."""

    version: str
    name: str
    port: int

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def restart(self) -> list[str]:
        return [
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            self.version,
            self.name,
            "restart",
            "-m",
            "fast",
        ]


@pytest.fixture(scope="module")
def throwaway_postgres() -> Iterator[Postgres]:
    if not shutil.which("pg_createcluster"):
        pytest.skip("needs Debian's postgresql-common (pg_createcluster)")
    version = sorted(p.name for p in Path("/usr/lib/postgresql").iterdir())[-1]
    port = unused_loopback_port()
    cluster = Postgres(version, f"faults{port}", port)
    subprocess.run(
        ["pg_createcluster", version, cluster.name, "-p", str(port), "--start", "--", "--auth=trust"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        yield cluster
    finally:
        subprocess.run(["pg_dropcluster", "--stop", version, cluster.name], check=False, timeout=120)


@contextlib.contextmanager
def database_copy(cluster: Postgres) -> Iterator[str]:
    """The test database copied into ``cluster``, and this process's connection pointed at
    the copy while inside (restarting that cluster affects nobody else); its URL."""
    name = "stackport_faults"
    admin = cluster.url("postgres")
    subprocess.run(["psql", admin, "-c", f"DROP DATABASE IF EXISTS {name}"], check=True, capture_output=True)
    subprocess.run(["psql", admin, "-c", f"CREATE DATABASE {name}"], check=True, capture_output=True)
    dump = subprocess.run(["pg_dump", "-Fc", _database_url()], check=True, capture_output=True, timeout=300)
    subprocess.run(
        ["pg_restore", "--no-owner", "-d", cluster.url(name)], input=dump.stdout, check=True, timeout=300
    )
    saved = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict.update(NAME=name, HOST="127.0.0.1", PORT=str(cluster.port), USER="postgres")
    try:
        yield cluster.url(name)
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)


@pytest.mark.django_db(transaction=True)
def test_postgresql_restarted_while_an_upgrade_runs_resumes_and_finishes(
    team: Any,
    stackport: Caddy,
    cleanup: list[Environment],
    engine_client: docker.DockerClient,
    throwaway_postgres: Postgres,
) -> None:
    """The portal's database restarts right after the new containers started (the engine
    changed, the database does not know yet): the worker waits for it, queues the
    operation again, and the resumed operation ends on release 2, serving."""
    env, op = deployed_then_upgrade(team, cleanup, "Pg restart")
    with database_copy(throwaway_postgres) as url:
        out = run_with_fault(
            op, "Start the containers", throwaway_postgres.restart(), stackport, DATABASE_URL=url
        )
        assert "status: queued" in out, out
        op.refresh_from_db()
        assert op.status == OperationStatus.QUEUED
        assert "the database connection was lost" in op.log, op.log
        op = resume(op)
        assert op.status == OperationStatus.SUCCEEDED, f"{op.error}\n{op.log}"
        assert_settled(env, engine_client, stackport, release=2, nginx="1.26")


@pytest.fixture
def throwaway_redis(tmp_path: Path) -> Iterator[list[str]]:
    """A Redis of our own (no persistence, like a restart that loses what it held); yields
    the command that restarts it on the same port."""
    port = unused_loopback_port()
    script = tmp_path / "redis-restart.sh"
    pidfile = tmp_path / "redis.pid"
    start = f"redis-server --port {port} --bind 127.0.0.1 --save '' --daemonize yes --pidfile {pidfile}"
    script.write_text(
        "#!/bin/sh\nset -e\n"
        f'kill "$(cat {pidfile})"\n'
        f"while redis-cli -p {port} ping >/dev/null 2>&1; do sleep 0.1; done\n"
        f"{start}\n"
        f"until redis-cli -p {port} ping >/dev/null 2>&1; do sleep 0.1; done\n"
    )
    script.chmod(0o755)
    subprocess.run(start, shell=True, check=True)
    wait_until(
        lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).returncode == 0,
        10,
        "redis",
    )
    try:
        yield [str(port), str(script)]
    finally:
        if pidfile.exists():
            subprocess.run(["kill", pidfile.read_text().strip()], check=False)


@pytest.mark.django_db(transaction=True)
def test_redis_restarted_while_an_upgrade_runs_in_a_real_worker(
    team: Any,
    stackport: Caddy,
    cleanup: list[Environment],
    engine_client: docker.DockerClient,
    throwaway_redis: list[str],
    tmp_path: Path,
) -> None:
    """A real Celery worker on a Redis of its own (broker, results and cache) runs an
    upgrade; Redis restarts (losing everything it held) while the new containers start.
    The operation ends on release 2 and serves; the worker reconnects and runs the next
    operation sent through the restarted broker."""
    port, restart = throwaway_redis
    redis = f"redis://127.0.0.1:{port}"
    env, op = deployed_then_upgrade(team, cleanup, "Redis restart")
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "portal",
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "DATABASE_URL": _database_url(),
            "CACHE_URL": f"{redis}/0",
            "CELERY_BROKER_URL": f"{redis}/1",
            "CELERY_RESULT_BACKEND": f"{redis}/2",
            "STACKPORT_STACK_PREFIX": settings.STACKPORT_STACK_PREFIX,
            "STACKPORT_EDGE_ROUTER": CADDY_ROUTER,
            "STACKPORT_EDGE_ADMIN_URL": stackport.admin_url,
            "STACKPORT_EDGE_LISTEN": stackport.edge_addr,
            "STACKPORT_VAR_DIR": str(settings.VAR_DIR),
        },
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )

    def send(operation: Operation) -> None:
        with current_app.connection_for_write(f"{redis}/1") as broker:
            run_operation_task.apply_async((operation.pk,), connection=broker)

    def step_is(name: str, status: str) -> bool:
        op.refresh_from_db()
        return any(s["name"] == name and s["status"] == status for s in op.steps)

    def finished(operation: Operation) -> bool:
        operation.refresh_from_db()
        return operation.status not in (OperationStatus.QUEUED, OperationStatus.RUNNING)

    try:
        send(op)
        wait_until(lambda: step_is("Start the containers", "running"), 300, "the upgrade to start containers")
        subprocess.run([restart], check=True, timeout=60)
        wait_until(lambda: finished(op), 300, "the upgrade to finish")
        assert op.status == OperationStatus.SUCCEEDED, f"{op.error}\n{op.log}\n{log.read_text()}"
        assert_settled(env, engine_client, stackport, release=2, nginx="1.26")

        # The worker reconnected to the restarted broker: the next operation runs.
        scaled = lifecycle.scale(environment=env, actor=team.developer, component="web", replicas=2)
        send(scaled)
        wait_until(lambda: finished(scaled), 300, "the next operation to run")
        assert scaled.status == OperationStatus.SUCCEEDED, f"{scaled.error}\n{log.read_text()}"
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
        print(log.read_text())


@pytest.fixture
def own_caddy(tmp_path: Path) -> Iterator[tuple[Caddy, list[str]]]:
    """A Caddy of this test alone (scripts/caddy.sh on ports of its own) and the command that
    restarts it the worst way: killed, its saved config gone, started empty."""
    state = tmp_path / "caddy"
    admin = f"127.0.0.1:{unused_loopback_port()}"
    listen = f"127.0.0.1:{unused_loopback_port()}"
    env = f"STACKPORT_CADDY_ADMIN={admin} STACKPORT_EDGE_LISTEN={listen} STACKPORT_CADDY_DIR={state} STACKPORT_CADDY_LOG={state}/caddy.log"
    start = f"env {env} {REPO_ROOT / 'scripts' / 'caddy.sh'}"
    script = tmp_path / "caddy-restart.sh"
    script.write_text(
        "#!/bin/sh\nset -e\n"
        f'kill -9 "$(cat {state}/caddy-*.pid)"\n'
        f"rm -f {state}/config-*/caddy/autosave.json\n"
        f"while curl -s -o /dev/null http://{admin}/config/; do sleep 0.1; done\n"
        f"{start}\n"
    )
    script.chmod(0o755)
    subprocess.run(start, shell=True, check=True, timeout=300)
    try:
        yield Caddy(admin_url=f"http://{admin}", edge_url=f"http://{listen}", edge_addr=listen), [str(script)]
    finally:
        with contextlib.suppress(requests.RequestException):
            fetch("POST", f"http://{admin}/stop")


@pytest.mark.django_db(transaction=True)
def test_caddy_restarted_empty_in_the_middle_of_an_upgrade_routes_again_and_finishes(
    team: Any,
    stackport: Caddy,
    cleanup: list[Environment],
    engine_client: docker.DockerClient,
    own_caddy: tuple[Caddy, list[str]],
    settings: Any,
) -> None:
    """The edge restarts without its config right after the new routes were written: the
    site check finds the edge's not-found page, writes the routes again, and the upgrade
    ends on release 2, answering through the restarted edge."""
    caddy, restart = own_caddy
    settings.STACKPORT_EDGE_ROUTER = CADDY_ROUTER
    settings.STACKPORT_EDGE_ADMIN_URL, settings.STACKPORT_EDGE_LISTEN = caddy.admin_url, caddy.edge_addr
    env, op = deployed_then_upgrade(team, cleanup, "Caddy restart")
    out = run_with_fault(op, "Route traffic", restart, caddy)
    assert "status: succeeded" in out, out
    op.refresh_from_db()
    assert "writing it again" in op.log, op.log
    assert_settled(env, engine_client, caddy, release=2, nginx="1.26")
