"""Support's service functions: suspension, redeploy, reconcile, retry, moves and drains.
No engine: operations are queued (on commit, which these tests never reach) and finished by
hand where a test needs the next step."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from projects.models import AuditEvent, Environment, EnvironmentStatus, User
from projects.services import ServiceError
from stacks.models import (
    DockerHost,
    KernelVersion,
    Operation,
    OperationKind,
    OperationStatus,
    Region,
    Release,
    placed_hosts,
)
from stacks.runtime import lifecycle, support
from stacks.runtime.operations import hosts_for
from tests.conftest import place
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def staff(*groups: str, **fields: Any) -> User:
    user = UserFactory(is_staff=True, **fields)
    for name in groups:
        user.groups.add(Group.objects.get(name=name))
    return User.objects.get(pk=user.pk)  # fresh permission cache


@pytest.fixture
def supporter(team: Any) -> User:
    return staff("Support", email="support@hoster.test")


def running(env: Environment, host: str = "") -> Environment:
    """As if the queued deploy had run: its release current, the stack running on ``host``."""
    op = env.operations.get(status=OperationStatus.QUEUED)
    Operation.objects.filter(pk=op.pk).update(status=OperationStatus.SUCCEEDED)
    Release.objects.filter(pk=op.release_id).update(ran_at=timezone.now())
    Environment.objects.filter(pk=env.pk).update(
        current_release=op.release,
        status=EnvironmentStatus.RUNNING,
    )
    if host:
        place(env, host)
    env.refresh_from_db()
    return env


def finish(env: Environment) -> None:
    Operation.objects.filter(environment=env, status__in=["queued", "running"]).update(
        status=OperationStatus.SUCCEEDED
    )


@pytest.fixture
def shop(team: Any, offered_catalog: None) -> Environment:
    env = lifecycle.create_project(
        organization=team.org, actor=team.developer, name="Shop", region="eu-central", template="static-site"
    )
    return running(env)


def test_suspension_stops_the_stack_and_refuses_the_customer_with_the_reason(
    team: Any, shop: Environment, supporter: User
) -> None:
    (stop,) = support.suspend_project(project=shop.project, actor=supporter, reason="Unpaid invoice 2026-11")
    assert stop.kind == OperationKind.STOP and stop.requested_by == supporter
    shop.refresh_from_db()
    assert shop.project.suspended_at is not None
    assert shop.desired_running  # what the customer wants is kept for the resume
    assert AuditEvent.objects.filter(
        action="support.project.suspend", actor=supporter, organization=team.org
    ).exists()
    finish(shop)
    refusals = [
        lambda: lifecycle.scale(environment=shop, actor=team.developer, component="web", replicas=2),
        lambda: lifecycle.set_running(environment=shop, actor=team.owner, running=True),
        lambda: lifecycle.set_variable(environment=shop, actor=team.developer, name="A", value="b"),
        lambda: lifecycle.add_domain(environment=shop, actor=team.developer, hostname="shop.example.com"),
        lambda: lifecycle.destroy(environment=shop, actor=team.owner, confirmation="Shop"),
    ]
    for refused in refusals:
        with pytest.raises(ServiceError) as exc:
            refused()
        assert exc.value.status == 423
        assert exc.value.message == (
            "This project is suspended by support: Unpaid invoice 2026-11. Contact support to resume it."
        )
    assert not Operation.objects.filter(environment=shop, status="queued").exists()


def test_resume_starts_again_what_ran_and_the_customer_can_act(
    team: Any, shop: Environment, supporter: User
) -> None:
    support.suspend_project(project=shop.project, actor=supporter, reason="abuse report")
    finish(shop)
    (start,) = support.resume_project(project=shop.project, actor=supporter)
    assert start.kind == OperationKind.START
    assert AuditEvent.objects.filter(action="support.project.resume").exists()
    finish(shop)
    op = lifecycle.scale(environment=shop, actor=team.developer, component="web", replicas=2)
    assert op.kind == OperationKind.SCALE


def test_suspending_twice_or_without_a_reason_is_refused(shop: Environment, supporter: User) -> None:
    with pytest.raises(ServiceError, match="reason"):
        support.suspend_project(project=shop.project, actor=supporter, reason="  ")
    support.suspend_project(project=shop.project, actor=supporter, reason="x")
    with pytest.raises(ServiceError, match="already"):
        support.suspend_project(project=shop.project, actor=supporter, reason="x")


def test_support_actions_need_the_operate_permission(shop: Environment) -> None:
    for user in (staff(), staff("Catalog managers"), staff("Billing")):
        with pytest.raises(ServiceError) as exc:
            support.suspend_project(project=shop.project, actor=user, reason="x")
        assert exc.value.status == 403
        with pytest.raises(ServiceError):
            support.redeploy_environment(environment=shop, actor=user)
    assert support.redeploy_environment(environment=shop, actor=staff(is_superuser=True)).kind == "deploy"


def test_redeploy_queues_a_deploy_of_the_current_release(shop: Environment, supporter: User) -> None:
    op = support.redeploy_environment(environment=shop, actor=supporter)
    assert (op.kind, op.release_id, op.params["reason"]) == (
        "deploy",
        shop.current_release_id,
        "support.redeploy",
    )
    assert AuditEvent.objects.filter(action="support.environment.redeploy", data__operation=op.pk).exists()
    assert AuditEvent.objects.filter(action="environment.deploy", actor=supporter).exists()
    with pytest.raises(ServiceError, match="Another operation"):
        support.redeploy_environment(environment=shop, actor=supporter)


def test_reconcile_now_queues_a_reconciler_pass(
    shop: Environment, supporter: User, django_capture_on_commit_callbacks: Any, monkeypatch: Any
) -> None:
    calls = []
    monkeypatch.setattr("stacks.tasks.reconcile_task.delay", lambda: calls.append(1))
    with django_capture_on_commit_callbacks(execute=True):
        support.reconcile_environment(environment=shop, actor=supporter)
    assert calls == [1]
    assert AuditEvent.objects.filter(action="support.environment.reconcile").exists()


def test_retry_makes_a_new_operation_like_the_failed_one(shop: Environment, supporter: User) -> None:
    failed = Operation.objects.create(
        environment=shop,
        kind=OperationKind.SCALE,
        status=OperationStatus.FAILED,
        release=shop.current_release,
        params={"component": "web", "replicas": 2},
        error="not healthy: web-1",
    )
    retry = support.retry_operation(operation=failed, actor=supporter)
    assert retry.pk != failed.pk and retry.status == OperationStatus.QUEUED
    assert (retry.kind, retry.release_id) == (failed.kind, failed.release_id)
    assert retry.params == {"component": "web", "replicas": 2, "retry_of": failed.pk}
    assert AuditEvent.objects.filter(action="support.operation.retry", data__operation=retry.pk).exists()
    with pytest.raises(ServiceError, match="Only a failed"):
        support.retry_operation(operation=retry, actor=supporter)


# --- hosts ------------------------------------------------------------------------------------
def add_host(name: str, env: Environment, **fields: Any) -> DockerHost:
    return DockerHost.objects.create(
        name=name,
        url="unix:///nonexistent.sock",
        region=env.project.region,
        kernel=env.kernel,
        memory_mb=8192,
        **fields,
    )


def test_a_stateless_environment_moves_to_another_host_with_a_deploy(
    shop: Environment, supporter: User
) -> None:
    add_host("h1", shop)
    h2 = add_host("h2", shop)
    place(shop, "h1", state={"host": "h1", "subnet": "10.64.3.0/24"})
    op = support.move_environment(environment=shop, host=h2, actor=supporter)
    shop.refresh_from_db()
    assert shop.backend_state == {"host": "h2"} and placed_hosts(shop) == ["h2"]
    assert shop.placement.host == h2
    assert op.kind == "deploy" and op.params["from_host"] == "h1" and op.params["to_host"] == "h2"
    assert AuditEvent.objects.filter(action="support.environment.move", data__to_host="h2").exists()


def test_an_environment_with_data_moves_with_it_and_stays_placed_until_it_answers(
    team: Any, offered_catalog: None, supporter: User
) -> None:
    """The move itself (backup, restore, switch) is tests/stacks/test_stateful_move.py's."""
    env = running(
        lifecycle.create_project(
            organization=team.org, actor=team.developer, name="Blog", region="eu-central", template="lamp"
        ),
        host="h1",
    )
    add_host("h1", env)
    h2 = add_host("h2", env)
    op = support.move_environment(environment=env, host=h2, actor=supporter)
    assert op.kind == OperationKind.DEPLOY and op.params["move_data"] == ["db"]
    env.refresh_from_db()
    assert env.backend_state == {"host": "h1"}  # placed there until the new copy answers


def test_a_host_of_another_kernel_line_is_refused(shop: Environment, supporter: User) -> None:
    other = KernelVersion.objects.exclude(pk=shop.kernel_id).first() or KernelVersion.objects.create(
        line="9.9", name="9.9"
    )
    host = DockerHost.objects.create(
        name="odd", url="unix:///x.sock", region=Region.objects.get(code="eu-central"), kernel=other
    )
    with pytest.raises(ServiceError, match="region and kernel"):
        support.move_environment(environment=shop, host=host, actor=supporter)


def test_drain_marks_the_host_at_once_moves_stateless_stacks_then_those_with_data(
    team: Any, shop: Environment, supporter: User
) -> None:
    h1 = add_host("h1", shop)
    add_host("h2", shop)
    place(shop, "h1")
    blog = running(
        lifecycle.create_project(
            organization=team.org, actor=team.developer, name="Blog", region="eu-central", template="lamp"
        ),
        host="h1",
    )
    result = support.drain_host(host=h1, actor=supporter)
    assert result == {"moved": [shop.key], "stays": [], "respread": [], "busy": [], "with_data": [blog.key]}
    shop.refresh_from_db()
    assert shop.backend_state["host"] == "h2"
    h1.refresh_from_db()
    assert h1.state == DockerHost.State.DRAINING  # nothing new goes there from now on
    # The move's backend still sees h1 (to remove what ran there) but places nothing on it.
    hosts = hosts_for(shop)
    assert [(h.name, h.drain) for h in hosts] == [("h2", False), ("h1", True)]
    assert not support.finish_host_drain(host_id=h1.pk)
    finish(shop)
    assert not support.finish_host_drain(host_id=h1.pk)  # then the move of the one with data
    assert blog.operations.get(status=OperationStatus.QUEUED).params["move_data"] == ["db"]
    finish(blog)
    assert support.finish_host_drain(host_id=h1.pk)
    h1.refresh_from_db()
    assert h1.state == DockerHost.State.DRAINING and "drain_operations" not in h1.labels
    assert AuditEvent.objects.filter(action="support.host.drain", target="host h1").exists()
    # Draining again (once the busy ones are free) is allowed; a host that is down is refused.
    assert support.drain_host(host=h1, actor=supporter)["with_data"] == [blog.key]  # its move never ran
    DockerHost.objects.filter(pk=h1.pk).update(state=DockerHost.State.DOWN)
    with pytest.raises(ServiceError, match="down"):
        support.drain_host(host=h1, actor=supporter)


def test_drain_of_a_routed_host_redeploys_stacks_spread_onto_it(shop: Environment, supporter: User) -> None:
    h1 = add_host("h1", shop, address_pool="10.225.0.0/16")
    add_host("h2", shop, address_pool="10.226.0.0/16")
    place(shop, "h2", state={"host": "h2", "number": 7})
    result = support.drain_host(host=h1, actor=supporter)
    assert result["respread"] == [shop.key]
    op = shop.operations.get(status=OperationStatus.QUEUED)
    assert op.kind == OperationKind.DEPLOY and op.release_id == shop.current_release_id
    shop.refresh_from_db()
    assert shop.backend_state == {"host": "h2", "number": 7}  # same home, same network


def test_the_public_component_never_spreads_onto_a_draining_host(shop: Environment) -> None:
    from stacks.backends.base import HostRecord
    from stacks.backends.docker import DockerBackend

    hosts = [
        HostRecord("h1", "unix:///x", "10.225.0.0/16"),
        HostRecord("h2", "unix:///y", "10.226.0.0/16", drain=True),
        HostRecord("h3", "unix:///z", "10.227.0.0/16"),
    ]
    backend = DockerBackend(hosts=hosts)
    comp = SimpleNamespace(stateful=False, public_port=8080, volumes=())
    spread = {backend.host_of(None, {"host": "h1"}, comp, i) for i in range(6)}  # type: ignore[arg-type]
    assert spread == {"h1", "h3"}
    assert backend.place(None, {}) == "h1"  # type: ignore[arg-type]
    with pytest.raises(Exception, match="no active host"):
        DockerBackend(hosts=[hosts[1]]).place(None, {})  # type: ignore[arg-type]
