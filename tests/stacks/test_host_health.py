"""Host health and the level-triggered reconciler, with the in-memory backend (fast).

Hosts are probed (``stacks.runtime.hosts.probe_hosts``): misses move a host active ->
suspect -> down; a host that is down has its stateless stacks moved and its stateful ones
marked waiting; one that answers again is cleaned of stale copies before it is active.
The reconciler lists each host on its own, queues (never runs) at most one repair per
environment, backs off after failed repairs and retries failed environments slowly.
The real engines are in ``test_host_health_engine``-marked tests at the end of this file.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from projects.models import Environment, EnvironmentStatus
from stacks.backends.base import BackendError
from stacks.backends.memory import MemoryBackend, MemoryContainer
from stacks.models import DockerHost, Operation, OperationStatus, placed_hosts
from stacks.runtime import lifecycle
from stacks.runtime.hosts import probe_hosts
from stacks.runtime.operations import run_operation
from stacks.runtime.reconcile import needs_support, reconcile
from tests.conftest import Team, add_memory_host

pytestmark = pytest.mark.django_db


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Operation tasks queued for later, recorded instead of sent to a broker."""
    from stacks import tasks

    sent: list[tuple[Any, ...]] = []
    monkeypatch.setattr(tasks.run_operation_task, "apply_async", lambda args, countdown: sent.append(args))
    monkeypatch.setattr(tasks.run_operation_task, "delay", lambda *args: sent.append(args))
    return sent


@pytest.fixture
def no_edge(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No router here: operations and the reconciler write routes to a list instead."""
    from stacks.backends.edge import route_config
    from stacks.runtime import operations
    from stacks.runtime import reconcile as reconcile_module

    written: list[str] = []

    def record(environment: Environment, *args: Any) -> bool:
        written.append(environment.key)
        return True

    monkeypatch.setattr(operations, "sync_routes", record)
    monkeypatch.setattr(operations, "_check_site", lambda *args: None)

    def record_bulk(routes: list[Any], remove: list[str]) -> bool:  # the reconciler's one write
        written.extend(route.route_id for route in routes)
        return True

    monkeypatch.setattr(reconcile_module, "write_routes", record_bulk)
    monkeypatch.setattr(reconcile_module, "edge_routes", lambda: ({}, route_config))  # Caddy's form
    return written


@pytest.fixture
def world(
    team: Team, offered_catalog: None, memory_backend: type[MemoryBackend], queued: Any, no_edge: Any
) -> dict[str, Any]:
    """Two hosts h1, h2 of one region and kernel line; a deployed static site on h1."""
    env = make(team, "Shop", "static-site")
    add_memory_host(env, "h1")
    add_memory_host(env, "h2", memory_mb=4096)  # h1 has more room: new stacks go there first
    deploy(env)
    return {"env": env}


def make(team: Team, name: str, template: str) -> Environment:
    return lifecycle.create_project(
        organization=team.org, actor=team.owner, name=name, region="eu-central", template=template
    )


def deploy(env: Environment) -> Environment:
    assert run_operation(env.operations.get().pk) == OperationStatus.SUCCEEDED
    env.refresh_from_db()
    return env


def run_queued(env: Environment) -> Operation:
    op = env.operations.get(status__in=[OperationStatus.QUEUED, OperationStatus.RUNNING])
    run_operation(op.pk)
    op.refresh_from_db()
    env.refresh_from_db()
    return op


def hosts_of_containers(env: Environment) -> set[str]:
    return {c.host for c in MemoryBackend.stack(env.key).containers.values()}


def stale_copy_on(host: str, env: Environment) -> None:
    """The copy a lost host still holds after its stack moved (the in-memory backend keeps
    containers by name, so the new replica of the same name replaced it: put it back)."""
    stack = MemoryBackend.stack(env.key)
    (moved,) = stack.containers.values()
    stack.containers[f"{host}/{moved.name}"] = replace(moved, host=host)
    assert hosts_of_containers(env) == {host, moved.host}


def probe_until(state: str, host: str = "h1", limit: int = 10) -> int:
    for probes in range(1, limit + 1):
        if probe_hosts()[host] == state:
            return probes
    raise AssertionError(f"{host} never became {state}")


# --- the state machine ---------------------------------------------------------------------------
def test_misses_move_a_host_active_suspect_down_and_an_answer_back(
    world: dict[str, Any], settings: Any
) -> None:
    settings.STACKPORT_HOST_DOWN_AFTER_MISSES = 3
    assert probe_hosts() == {"h1": "active", "h2": "active"}
    MemoryBackend.take_down("h1")
    assert probe_hosts()["h1"] == "suspect"
    host = DockerHost.objects.get(name="h1")
    assert host.missed_probes == 1 and "does not answer" in host.last_error and host.probed_at
    MemoryBackend.bring_up("h1")  # a blip: one answer and it is active again
    assert probe_hosts()["h1"] == "active"
    host.refresh_from_db()
    assert host.missed_probes == 0 and host.last_error == "" and host.down_since is None

    MemoryBackend.take_down("h1")
    assert [probe_hosts()["h1"] for _ in range(3)] == ["suspect", "suspect", "down"]
    host.refresh_from_db()
    assert host.down_since is not None and host.missed_probes == 3
    assert probe_hosts()["h2"] == "active"  # the other host is not touched


def test_a_probe_refreshes_the_capacity_placement_reads(world: dict[str, Any]) -> None:
    DockerHost.objects.filter(name="h2").update(memory_mb=1, cpus=0)
    probe_hosts()
    h2 = DockerHost.objects.get(name="h2")
    assert (h2.memory_mb, h2.cpus, h2.engine_id) == (8192, 4, "memory-h2") and h2.last_seen_at


def test_draining_hosts_are_not_probed(world: dict[str, Any]) -> None:
    DockerHost.objects.filter(name="h2").update(state=DockerHost.State.DRAINING)
    MemoryBackend.take_down("h2")
    assert "h2" not in probe_hosts()
    assert DockerHost.objects.get(name="h2").state == DockerHost.State.DRAINING


# --- losing a host ---------------------------------------------------------------------------------
def test_a_lost_hosts_stateless_stack_moves_and_the_host_comes_back_clean(
    world: dict[str, Any], queued: list[Any], no_edge: list[str], django_capture_on_commit_callbacks: Any
) -> None:
    env = world["env"]
    assert placed_hosts(env) == ["h1"] and hosts_of_containers(env) == {"h1"}
    MemoryBackend.take_down("h1")
    queued.clear()
    with django_capture_on_commit_callbacks(execute=True):
        probe_until("down")

    move = env.operations.get(status=OperationStatus.QUEUED)  # queued, not run inside the probe
    assert move.params["reason"] == "host.down" and move.params["to_host"] == "h2"
    assert queued == [(move.pk,)]
    assert run_queued(env).status == OperationStatus.SUCCEEDED
    assert env.status == EnvironmentStatus.RUNNING and placed_hosts(env) == ["h2"]
    assert env.key in no_edge  # routed to its new home
    assert hosts_of_containers(env) == {"h2"}
    stale_copy_on("h1", env)

    MemoryBackend.bring_up("h1")
    assert probe_hosts()["h1"] == "active"
    assert hosts_of_containers(env) == {"h2"}  # the stale copy went before h1 was active
    assert reconcile()["repaired"] == 0  # nothing left to do


def test_a_host_that_answers_but_keeps_stale_copies_stays_down(world: dict[str, Any]) -> None:
    env = world["env"]
    MemoryBackend.take_down("h1")
    probe_until("down")
    run_queued(env)
    stale_copy_on("h1", env)
    MemoryBackend.bring_up("h1")
    MemoryBackend.fail_next("destroy", BackendError("removal refused", permanent=False))
    assert probe_hosts()["h1"] == "down"
    host = DockerHost.objects.get(name="h1")
    assert "stale copies not removed yet" in host.last_error and host.missed_probes == 0
    assert "h1" in hosts_of_containers(env)
    assert probe_hosts()["h1"] == "active" and hosts_of_containers(env) == {"h2"}


def test_a_lost_hosts_stateful_stack_waits_for_it_and_runs_again_when_it_is_back(
    world: dict[str, Any], team: Team
) -> None:
    blog = make(team, "Blog", "lamp")
    deploy(blog)
    assert placed_hosts(blog) == ["h1"]
    MemoryBackend.take_down("h1")
    probe_until("down")
    blog.refresh_from_db()
    assert blog.status == EnvironmentStatus.DEGRADED
    assert blog.status_detail.startswith("Waiting for host h1 to come back")
    assert not blog.operations.filter(status=OperationStatus.QUEUED).exists()  # nothing to move
    assert blog in needs_support()
    reconcile()  # again: still waiting, nothing queued
    assert not blog.operations.filter(status=OperationStatus.QUEUED).exists()

    MemoryBackend.bring_up("h1")
    assert probe_hosts()["h1"] == "active"
    assert hosts_of_containers(blog) == {"h1"}  # its own copy stays: it lives there
    reconcile()
    blog.refresh_from_db()
    assert blog.status == EnvironmentStatus.RUNNING and blog.status_detail == ""


def test_no_room_elsewhere_says_so(world: dict[str, Any]) -> None:
    env = world["env"]
    DockerHost.objects.filter(name="h2").update(state=DockerHost.State.DRAINING)
    MemoryBackend.take_down("h1")
    DockerHost.objects.filter(name="h1").update(state=DockerHost.State.DOWN)
    reconcile()
    env.refresh_from_db()
    assert env.status == EnvironmentStatus.DEGRADED and env.status_detail.startswith("Host down: h1.")


# --- the reconciler ------------------------------------------------------------------------------------
def test_an_unreachable_host_fails_only_its_own_environments(world: dict[str, Any], team: Team) -> None:
    env = world["env"]
    other = make(team, "Other", "static-site")
    DockerHost.objects.filter(name="h1").update(state=DockerHost.State.DRAINING)  # new stacks go to h2
    deploy(other)
    DockerHost.objects.filter(name="h1").update(state=DockerHost.State.ACTIVE)
    assert placed_hosts(other) == ["h2"]
    MemoryBackend.stack(env.key).containers.clear()
    MemoryBackend.stack(other.key).containers.clear()
    MemoryBackend.take_down("h1")  # not probed yet: still active in the inventory

    report = reconcile()

    assert report["unknown"] == 1 and report["repaired"] == 1
    assert other.operations.filter(status=OperationStatus.QUEUED, params__reason="reconcile").exists()
    assert not env.operations.filter(status=OperationStatus.QUEUED).exists()


def test_a_repair_is_queued_once_and_never_run_inside_the_pass(
    world: dict[str, Any], queued: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    env = world["env"]
    MemoryBackend.stack(env.key).containers.clear()
    queued.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert reconcile()["repaired"] == 1
        assert reconcile()["repaired"] == 0  # the first one is still queued: that is the lock
    repair = env.operations.get(status=OperationStatus.QUEUED)
    assert queued == [(repair.pk,)] and repair.params == {"reason": "reconcile"}
    assert hosts_of_containers(env) == set()  # nothing ran in the pass
    assert run_queued(env).status == OperationStatus.SUCCEEDED
    assert hosts_of_containers(env) == {"h1"} and env.status == EnvironmentStatus.RUNNING
    assert reconcile()["repaired"] == 0


def test_a_failed_repair_degrades_the_environment_and_backs_off(world: dict[str, Any], settings: Any) -> None:
    settings.STACKPORT_RECONCILE_RETRY_SECONDS = 600
    env = world["env"]
    MemoryBackend.stack(env.key).containers.clear()
    reconcile()
    MemoryBackend.errors["apply"] = BackendError("not healthy: web-a0", permanent=True)
    repair = run_queued(env)
    assert repair.status == OperationStatus.FAILED

    assert reconcile()["repaired"] == 0  # not again at once
    env.refresh_from_db()
    assert env.status == EnvironmentStatus.DEGRADED
    assert env.status_detail.startswith("Replicas missing: 0 of 1 run; the automatic repair failed")
    assert "next try at" in env.status_detail
    assert env in needs_support()

    Operation.objects.filter(pk=repair.pk).update(finished_at=timezone.now() - timedelta(seconds=601))
    del MemoryBackend.errors["apply"]
    assert reconcile()["repaired"] == 1
    assert run_queued(env).status == OperationStatus.SUCCEEDED
    reconcile()
    env.refresh_from_db()
    assert env.status == EnvironmentStatus.RUNNING and env.status_detail == ""


def test_a_second_failed_repair_waits_twice_as_long(world: dict[str, Any], settings: Any) -> None:
    settings.STACKPORT_RECONCILE_RETRY_SECONDS = 600
    env = world["env"]
    MemoryBackend.stack(env.key).containers.clear()
    MemoryBackend.errors["apply"] = BackendError("not healthy: web-a0", permanent=True)
    for _ in range(2):
        reconcile()
        run_queued(env)
        env.operations.update(finished_at=timezone.now() - timedelta(seconds=700))
    assert env.operations.filter(status=OperationStatus.FAILED, params__reason="reconcile").count() == 2
    assert reconcile()["repaired"] == 0  # 700 s: due after one failure, not after two (1,200 s)
    env.operations.update(finished_at=timezone.now() - timedelta(seconds=1201))
    assert reconcile()["repaired"] == 1


def test_a_failed_environment_is_retried_on_the_slow_schedule(world: dict[str, Any], settings: Any) -> None:
    settings.STACKPORT_RECONCILE_RETRY_SECONDS = 600
    env = world["env"]
    Environment.objects.filter(pk=env.pk).update(
        status=EnvironmentStatus.FAILED, status_detail="Deploy failed"
    )
    env.operations.update(finished_at=timezone.now() - timedelta(seconds=60))
    assert reconcile()["repaired"] == 0
    env.refresh_from_db()
    assert env.status == EnvironmentStatus.FAILED and env in needs_support()
    env.operations.update(finished_at=timezone.now() - timedelta(seconds=601))
    assert reconcile()["repaired"] == 1
    assert run_queued(env).status == OperationStatus.SUCCEEDED
    assert env.status == EnvironmentStatus.RUNNING


def test_a_stopped_environment_whose_containers_run_is_stopped(world: dict[str, Any]) -> None:
    env = world["env"]
    Environment.objects.filter(pk=env.pk).update(status=EnvironmentStatus.STOPPED, desired_running=False)
    assert reconcile()["stopped"] == 1
    stop = env.operations.get(status=OperationStatus.QUEUED)
    assert stop.kind == "stop" and run_queued(env).status == OperationStatus.SUCCEEDED
    assert hosts_of_containers(env) == set()


def test_orphans_and_stale_copies_are_removed_from_the_host_they_are_on(
    world: dict[str, Any], settings: Any
) -> None:
    env = world["env"]
    orphan = f"{settings.STACKPORT_STACK_PREFIX}-999999"
    MemoryBackend.stack(orphan).containers["x"] = MemoryContainer("x", "web", 0, "a", "h2", "img", "1", "h")
    # A copy of the shop on h2, where it does not live (left by an interrupted move).
    MemoryBackend.stack(env.key).containers["stale"] = MemoryContainer(
        "stale", "web", 0, "b", "h2", "img", "1", "h"
    )
    report = reconcile()
    assert report["orphans_removed"] == 1 and report["stale_removed"] == 1
    assert MemoryBackend.stack(orphan).containers == {}
    assert hosts_of_containers(env) == {"h1"}
    assert ("destroy", orphan) in [(name, *args) for name, *args in MemoryBackend.calls()]


def test_a_lost_route_is_written_again_and_a_good_one_is_left_alone(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch, no_edge: list[str]
) -> None:
    from stacks.backends.edge import proxy_route, route_config
    from stacks.runtime import reconcile as reconcile_module
    from stacks.runtime.operations import backend_for
    from stacks.runtime.spec import build_spec

    env = world["env"]
    no_edge.clear()
    assert reconcile()["routes_fixed"] == 1 and no_edge == [env.key]  # the edge has no route

    upstreams = backend_for(env).upstreams(build_spec(env, env.current_release), env.backend_state)
    route = proxy_route(env.key, [env.hostname], upstreams, None, "/healthz")
    monkeypatch.setattr(reconcile_module, "edge_routes", lambda: ({env.key: route}, route_config))
    no_edge.clear()
    assert reconcile()["routes_fixed"] == 0 and no_edge == []


# --- the real engines: a netns host lost and back ----------------------------------------------------
def _multihost() -> Any:
    from tests.stacks import test_multihost

    return test_multihost


netns_hosts = _multihost().netns_hosts
two_hosts = _multihost().two_hosts
clients = _multihost().clients
engine_cleanup = _multihost().cleanup


def dockerd_pid(host: str) -> int:
    from pathlib import Path

    return int(Path(f"/run/stackport/h{host.removeprefix('sp')}/docker.pid").read_text())


@pytest.fixture
def hosts_back(netns_hosts: list[dict[str, str]]) -> Any:
    """Whatever happens, the netns hosts are up again at the end (as this test found them)."""
    import subprocess

    from tests.stacks.conftest import REPO_ROOT

    yield
    # Down and up again, not only up: a dockerd restarted under a running namespace left the
    # next module's fresh containers unreachable from the root namespace once (CI, 2026-12-07);
    # a full restart of the hosts leaves them as a fresh run finds them.
    script = str(REPO_ROOT / "scripts" / "docker-hosts.sh")
    subprocess.run([script, "down", str(len(netns_hosts))], capture_output=True, timeout=300, check=True)
    subprocess.run([script, "up", str(len(netns_hosts))], capture_output=True, timeout=300, check=True)


@pytest.mark.engine
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_lost_netns_host_stateless_stacks_answer_from_the_other_and_its_return_is_clean(
    team: Team,
    two_hosts: Any,
    engine_cleanup: list[Environment],
    clients: dict[str, Any],
    hosts_back: None,
    settings: Any,
) -> None:
    import os
    import signal
    import subprocess
    import time

    from stacks.models import home_host
    from tests.stacks.conftest import REPO_ROOT, wait_until
    from tests.stacks.test_lifecycle import deploy, get

    settings.STACKPORT_HOST_DOWN_AFTER_MISSES = 3
    settings.STACKPORT_HOST_PROBE_TIMEOUT = 2
    made = {
        "a": deploy(team, engine_cleanup, name="Site A", template="static-site", region="eu-west"),
        "b": deploy(team, engine_cleanup, name="Site B", template="static-site", region="eu-west"),
        "data": deploy(team, engine_cleanup, name="Node", template="nodejs", region="eu-west"),
    }
    lost = home_host(made["data"])
    other = next(h for h in clients if h != lost)
    moving = [e for k, e in made.items() if k != "data" and home_host(e) == lost]
    staying = [e for k, e in made.items() if k != "data" and home_host(e) != lost]
    assert moving, {k: placed_hosts(e) for k, e in made.items()}
    for env in (*moving, *staying):
        assert "Your static site is live" in get(two_hosts, env).text

    # The host is lost for real: its engine stops (and with it every container on it).
    os.kill(dockerd_pid(lost), signal.SIGTERM)
    wait_until(lambda: subprocess.run(["docker", "-H", f"unix:///run/stackport/h{lost[2:]}/docker.sock",
                                       "version"], capture_output=True).returncode != 0, 120, "dockerd to stop")  # fmt: skip
    states = []
    while not states or states[-1] != "down":
        states.append(probe_hosts()[lost])
        assert len(states) <= 10, states
    assert states == ["suspect", "suspect", "down"]
    marked_down = time.monotonic()
    assert reconcile()["unknown"] == 0  # a host that is down is not listed: nobody waits for it

    # The worker's part: run what the probe queued.
    for env in moving:
        op = env.operations.get(status=OperationStatus.QUEUED)
        assert op.params["reason"] == "host.down" and op.params["to_host"] == other
        assert run_operation(op.pk) == OperationStatus.SUCCEEDED, op.log
    for env in moving:
        wait_until(
            lambda env=env: "Your static site is live" in get(two_hosts, env).text,
            max(1.0, 60 - (time.monotonic() - marked_down)),
            f"{env.key} to answer from {other}",
        )
        env.refresh_from_db()
        assert placed_hosts(env) == [other] and env.status == EnvironmentStatus.RUNNING
    for env in staying:
        assert not env.operations.filter(status=OperationStatus.QUEUED).exists()
        assert "Your static site is live" in get(two_hosts, env).text
    data = made["data"]
    data.refresh_from_db()
    assert data.status == EnvironmentStatus.DEGRADED
    assert data.status_detail.startswith(f"Waiting for host {lost} to come back")
    assert not data.operations.filter(status=OperationStatus.QUEUED).exists()

    # The host comes back: its engine restarts the containers it had, the stale copies among
    # them are removed before it is active again; the stack whose data is there runs again.
    subprocess.run(
        [str(REPO_ROOT / "scripts" / "docker-hosts.sh"), "up", "2"], capture_output=True, check=True
    )
    clients[lost].close()
    import docker

    back = docker.DockerClient(base_url=f"unix:///run/stackport/h{lost[2:]}/docker.sock")
    try:
        assert probe_hosts()[lost] == "active"
        for env in moving:
            assert back.containers.list(all=True, filters={"label": f"org.stackport.stack={env.key}"}) == []
            assert "Your static site is live" in get(two_hosts, env).text
        assert back.containers.list(all=True, filters={"label": f"org.stackport.stack={data.key}"})
        wait_until(lambda: _reconciled(data) == EnvironmentStatus.RUNNING, 180, "Node to run again")
    finally:
        back.close()


def _reconciled(env: Environment) -> str:
    """A reconciler pass, and the worker's part: run the repair it queued, if any."""
    reconcile()
    for op in env.operations.filter(status=OperationStatus.QUEUED):
        run_operation(op.pk)
    env.refresh_from_db()
    return str(env.status)
