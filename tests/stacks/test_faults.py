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

import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from typing import Any

import docker
import pytest
from django.conf import settings
from django.utils import timezone

from billing.metering import interval_start, meter_interval
from billing.models import UsageRecord
from projects.models import Environment, EnvironmentStatus
from stacks.models import Operation, OperationStatus
from stacks.runtime import lifecycle
from stacks.runtime.operations import run_operation
from tests.portal.test_celery import _database_url
from tests.stacks import test_lifecycle
from tests.stacks.conftest import REPO_ROOT, Caddy
from tests.stacks.test_lifecycle import STATIC, containers, get, run
from tests.stacks.test_operations import zip_archive

pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.timeout(900)]

stackport = test_lifecycle.stackport
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
    operations.run_operation(int(sys.argv[1]))
    sys.exit(3)  # the step was never reached
    """
)


def run_and_kill(op: Operation, step: str, caddy: Caddy) -> int:
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "STACKPORT_STACK_PREFIX": settings.STACKPORT_STACK_PREFIX,
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
    assert [s["status"] for s in op.steps if s["name"] == step] == ["running"]

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
