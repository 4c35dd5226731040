"""What an operation does with a failure: a permanent one fails it at once with its message;
a transient one (an engine that does not answer) is tried again with backoff, up to a cap,
and then fails saying so. Run against the in-memory backend with injected faults (the real
engine's behaviour on a failed health check is in test_lifecycle)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from projects.models import Environment
from stacks.backends.base import BackendError
from stacks.backends.memory import MemoryBackend
from stacks.models import Operation, OperationStatus
from stacks.runtime import lifecycle
from stacks.runtime.operations import run_operation
from stacks.runtime.reconcile import resume_lost_operations
from tests.conftest import Team, add_memory_host
from tests.stacks.conftest import CADDY_ROUTER

pytestmark = pytest.mark.django_db


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Tasks the operation queues for later (recorded instead of sent to the broker)."""
    from stacks import tasks

    sent: list[tuple[Any, ...]] = []
    monkeypatch.setattr(
        tasks.run_operation_task, "apply_async", lambda args, countdown: sent.append((args, countdown))
    )
    monkeypatch.setattr(tasks.run_operation_task, "delay", lambda *args: sent.append((args, 0)))
    return sent


@pytest.fixture
def environment(
    team: Team, offered_catalog: None, memory_backend: type[MemoryBackend], queued: Any
) -> Environment:
    env = lifecycle.create_project(
        organization=team.org, actor=team.owner, name="Shop", region="eu-central", template="static-site"
    )
    add_memory_host(env)
    return env


def test_a_transient_failure_is_tried_again_with_backoff(
    environment: Environment, memory_backend: type[MemoryBackend], queued: list[tuple[Any, ...]]
) -> None:
    op = environment.operations.get()
    queued.clear()
    memory_backend.fail_next("apply", BackendError("Docker host h1 does not answer", permanent=False))

    assert run_operation(op.pk) == OperationStatus.QUEUED
    op.refresh_from_db()
    assert op.status == OperationStatus.QUEUED and op.attempts == 1 and not op.error
    assert "attempt 1 failed: Docker host h1 does not answer; trying again in 5 s" in op.log
    assert queued == [((op.pk,), 5)]

    # The retry runs the same steps again (stopped here before the edge, which needs Caddy).
    memory_backend.fail_next("apply", BackendError("the engine refused the image", permanent=True))
    assert run_operation(op.pk) == OperationStatus.FAILED
    op.refresh_from_db()
    assert op.attempts == 2 and "resuming (attempt 2)" in op.log
    assert len(memory_backend.calls("apply")) == 2


def test_a_permanent_failure_fails_at_once(
    environment: Environment, memory_backend: type[MemoryBackend], queued: list[tuple[Any, ...]]
) -> None:
    op = environment.operations.get()
    queued.clear()
    memory_backend.fail_next("apply", BackendError("the engine refused the image", permanent=True))

    assert run_operation(op.pk) == OperationStatus.FAILED
    op.refresh_from_db()
    assert op.attempts == 1 and op.error == "the engine refused the image"
    assert queued == []


def test_the_attempts_are_capped(
    environment: Environment,
    memory_backend: type[MemoryBackend],
    queued: list[tuple[Any, ...]],
    settings: Any,
) -> None:
    settings.STACKPORT_OPERATION_MAX_ATTEMPTS = 3
    op = environment.operations.get()
    queued.clear()
    memory_backend.errors["apply"] = BackendError("Docker host h1 does not answer", permanent=False)

    statuses = [run_operation(op.pk) for _ in range(3)]

    assert statuses == [OperationStatus.QUEUED, OperationStatus.QUEUED, OperationStatus.FAILED]
    op.refresh_from_db()
    assert op.error == "Docker host h1 does not answer\nGave up after 3 attempts."
    assert [countdown for _, countdown in queued] == [5, 10]
    assert run_operation(op.pk) is None  # failed is final


def test_the_reconciler_waits_until_a_retry_is_due(
    environment: Environment, memory_backend: type[MemoryBackend], queued: list[tuple[Any, ...]]
) -> None:
    op = environment.operations.get()
    memory_backend.fail_next("apply", BackendError("Docker host h1 does not answer", permanent=False))
    run_operation(op.pk)
    long_ago = timezone.now() - timedelta(hours=1)
    Operation.objects.filter(pk=op.pk).update(
        created_at=long_ago, heartbeat_at=timezone.now() + timedelta(seconds=5)
    )
    queued.clear()

    assert resume_lost_operations() == 0 and queued == []

    Operation.objects.filter(pk=op.pk).update(heartbeat_at=long_ago)  # the retry was due long ago
    assert resume_lost_operations() == 1 and queued == [((op.pk,), 0)]


def test_an_apply_records_where_the_stack_lives(
    environment: Environment,
    memory_backend: type[MemoryBackend],
    queued: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stacks.models import placed_hosts
    from stacks.runtime import operations

    monkeypatch.setattr(operations, "sync_routes", lambda *args: False)  # no router here
    monkeypatch.setattr(operations, "_check_site", lambda *args: None)
    assert placed_hosts(environment) == []
    assert run_operation(environment.operations.get().pk) == OperationStatus.SUCCEEDED
    environment.refresh_from_db()
    assert placed_hosts(environment) == ["h1"] and environment.placement.host.name == "h1"


def test_the_edges_own_not_found_page_is_not_a_healthy_site(
    environment: Environment, memory_backend: type[MemoryBackend], caddy: Any, settings: Any, monkeypatch: Any
) -> None:
    """Check the site against a real Caddy that has no route for the stack: its catch-all
    404 used to pass as "answers below 500"."""
    from stacks.runtime import operations
    from stacks.runtime.spec import build_spec

    settings.STACKPORT_EDGE_ROUTER = CADDY_ROUTER
    settings.STACKPORT_EDGE_ADMIN_URL, settings.STACKPORT_EDGE_LISTEN = caddy.admin_url, caddy.edge_addr
    operations.edge().ensure_server()  # the edge server with its catch-all, no route for this stack
    monkeypatch.setattr(operations, "CHECK_SITE_SECONDS", 2)
    backend = operations.backend_for(environment)
    spec = build_spec(environment, environment.releases.get())
    operations.save_state(environment, backend, backend.apply(spec, {}, print))
    op = environment.operations.get()

    with pytest.raises(operations.OperationFailed) as failed:
        operations._check_site(environment, backend, spec, operations.Recorder(op))
    assert (
        str(failed.value)
        == f"{environment.hostname} answers the edge's not-found page (no route) through the edge"
    )


def test_reconcile_passes_never_overlap(memory_backend: type[MemoryBackend]) -> None:
    from django.core.cache import cache

    from stacks.runtime.reconcile import RECONCILE_LOCK, reconcile

    cache.delete(RECONCILE_LOCK)
    cache.add(RECONCILE_LOCK, "another pass", timeout=60)  # a pass is running elsewhere
    try:
        assert reconcile() == {"skipped": 1}
    finally:
        cache.delete(RECONCILE_LOCK)
    assert "skipped" not in reconcile()  # free again: a real pass
    assert cache.get(RECONCILE_LOCK) is None  # and it let go of the lock
