"""A blue/green replacement drains the old public replicas on the edge before they stop
(``operations.drainer``, ``Backend.apply(drain=...)``), against the in-memory backend and a
recording edge; the real HAProxy drain under GET and POST load is
tests/stacks/test_haproxy_portal.py's."""

from __future__ import annotations

from typing import Any

import pytest

from projects.models import Environment
from stacks.backends.edge import EdgeError
from stacks.backends.memory import MemoryBackend
from stacks.models import OperationStatus
from stacks.runtime import lifecycle, operations
from tests.conftest import Team
from tests.stacks.test_converge import env, run_pending, site

pytestmark = pytest.mark.django_db
__all__ = ["env", "site"]  # fixtures


class RecordingEdge:
    """The edge as the drain sees it: the environment's routes, and what was asked of it."""

    calls: list[tuple[str, str, list[str]]] = []
    present: dict[str, Any] = {}
    fail: EdgeError | None = None

    def __enter__(self) -> RecordingEdge:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def routes(self) -> dict[str, Any]:
        if self.fail:
            raise self.fail
        return dict(self.present)

    @staticmethod
    def route_upstreams(route: Any) -> list[str]:
        return list(route.get("upstreams", []))

    def drain(self, route_id: str, upstreams: list[str]) -> bool:
        self.calls.append(("drain", route_id, sorted(upstreams)))
        return True

    def wait_drained(self, route_id: str, upstreams: list[str], timeout: float = 30.0) -> bool:
        self.calls.append(("wait", route_id, sorted(upstreams)))
        return True


@pytest.fixture
def edge(monkeypatch: pytest.MonkeyPatch, env: Environment) -> type[RecordingEdge]:
    RecordingEdge.calls, RecordingEdge.fail = [], None
    RecordingEdge.present = {env.key: {}, "other-route": {}}
    monkeypatch.setattr(operations, "edge", RecordingEdge)
    return RecordingEdge


def public_addresses(environment: Environment, color: str | None = None) -> list[str]:
    """The edge upstreams (slot addresses) of the environment's public replicas (of ``color``)."""
    stack = MemoryBackend.stack(environment.key)
    assert stack.spec is not None
    backend = operations.backend_for(environment)
    public = {c.name: c for c in stack.spec.components if c.public_port}
    return sorted(
        f"{backend.slot_address(stack.spec, stack.state, public[c.component], c.color, c.index)}"
        f":{public[c.component].public_port}"
        for c in stack.containers.values()
        if c.component in public and color in (None, c.color)
    )


def test_an_upgrade_drains_the_old_public_replicas_on_each_route_before_they_go(
    team: Team, env: Environment, edge: type[RecordingEdge]
) -> None:
    old = public_addresses(env, "a")
    assert old
    lifecycle.set_variable(environment=env, actor=team.developer, name="GREETING", value="hi")
    lifecycle.redeploy(environment=env, actor=team.developer)
    assert run_pending(env) == OperationStatus.SUCCEEDED
    drained = [call for call in edge.calls if call[0] == "drain"]
    assert drained and all(route_id == env.key for _, route_id, _ in drained), edge.calls
    assert sorted(a for _, _, ups in drained for a in ups) == old
    assert ("wait", env.key, drained[0][2]) in edge.calls
    assert public_addresses(env, "a") == [] and public_addresses(env, "b")


def test_an_edge_that_cannot_drain_does_not_hold_the_upgrade_up(
    team: Team, env: Environment, edge: type[RecordingEdge]
) -> None:
    edge.fail = EdgeError("the edge does not answer", permanent=False)
    lifecycle.set_variable(environment=env, actor=team.developer, name="GREETING", value="hi")
    lifecycle.redeploy(environment=env, actor=team.developer)
    assert run_pending(env) == OperationStatus.SUCCEEDED
    op = env.operations.latest("created_at")
    assert "the edge could not drain the old replicas: the edge does not answer" in op.log


def test_a_scale_down_drains_the_replicas_that_go(
    team: Team, env: Environment, edge: type[RecordingEdge]
) -> None:
    public = next(sc for sc in env.components.all() if sc.public)
    lifecycle.scale(environment=env, actor=team.developer, component=public.name, replicas=2)
    assert run_pending(env) == OperationStatus.SUCCEEDED
    both = public_addresses(env)
    assert len(both) == 2
    edge.calls.clear()
    lifecycle.scale(environment=env, actor=team.developer, component=public.name, replicas=1)
    assert run_pending(env) == OperationStatus.SUCCEEDED
    (kept,) = public_addresses(env)
    # Every replica that went was drained first (none that stays).
    drained = [address for kind, _, ups in edge.calls if kind == "drain" for address in ups]
    assert sorted(drained) == sorted(set(both) - {kept}), edge.calls
