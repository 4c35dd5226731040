"""Support moves a stateless environment to another Docker host while it is under load, on the
HAProxy edge and the two netns Docker hosts of scripts/docker-hosts.sh: the new replica
starts on the other host, the edge sends traffic there, the old one is drained on the edge
before it stops, and no GET or POST fails."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import docker
import pytest

from projects.models import Environment
from stacks.backends.docker import COLORS, MAX_REPLICAS
from stacks.models import DockerHost, placed_hosts
from stacks.runtime import lifecycle, support
from tests.stacks.conftest import use_haproxy
from tests.stacks.test_haproxy_edge import Edge, running_edge
from tests.stacks.test_lifecycle import deploy, run
from tests.stacks.test_multihost import cleanup, clients, netns_hosts, on_hosts, register_netns_hosts
from tests.stacks.test_operations import zip_archive
from tests.stacks.test_support import staff
from tests.stacks.test_variable_restart import APP, PYTHON, KeepAliveLoad

# Fixtures used here.
__all__ = ["cleanup", "clients", "netns_hosts"]

pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.django_db, pytest.mark.timeout(900)]


@pytest.fixture
def edge() -> Iterator[Edge]:
    with running_edge(backends=4, slots=len(COLORS) * MAX_REPLICAS) as running:
        yield running


@pytest.fixture
def two_hosts(settings: Any, edge: Edge, catalog: None, netns_hosts: list[dict[str, str]]) -> Edge:
    register_netns_hosts(netns_hosts)
    return use_haproxy(settings, edge)


def test_a_move_to_another_host_under_load_fails_no_get_or_post(
    team: Any, two_hosts: Edge, cleanup: list[Environment], clients: dict[str, docker.DockerClient]
) -> None:
    components = [{**PYTHON[0], "replicas": 1}]
    env = deploy(team, cleanup, name="Mover", region="eu-west", components=components)
    lifecycle.set_variable(environment=env, actor=team.developer, name="GREETING", value="hello")
    archive = zip_archive({"app.py": APP})
    run(lifecycle.deploy_content(environment=env, actor=team.developer, archive=archive, filename="app.zip"))
    env.refresh_from_db()
    (source,) = placed_hosts(env)
    target = next(h for h in DockerHost.objects.filter(region__code="eu-west") if h.name != source)
    status, text = two_hosts.get(env.hostname)
    assert status == 200 and text.startswith("greeting hello from "), (status, text)

    supporter = staff("Support", email="support@hoster.test")
    gets, posts = KeepAliveLoad(two_hosts, env), KeepAliveLoad(two_hosts, env, method="POST")  # type: ignore[arg-type]
    with gets, posts:
        op = run(support.move_environment(environment=env, host=target, actor=supporter))

    env.refresh_from_db()
    assert placed_hosts(env) == [target.name], op.log[-3000:]
    placed = on_hosts(clients, env)
    assert placed[source] == [] and len(placed[target.name]) == 1, placed
    assert "public replica(s) on the edge" in op.log, op.log[-3000:]
    assert gets.failures == [] and posts.failures == [], (
        gets.failures[:5],
        posts.failures[:5],
        op.log[-3000:],
    )
    for load in (gets, posts):
        assert len(load.answers) > 50, len(load.answers)
        assert all(text.startswith("greeting hello from ") for _, text in load.answers), load.answers[:3]
    assert "routing 1 new public replica(s) on the edge first" in op.log, op.log[-3000:]
    print(
        f"\nmoved {source} → {target.name}: {len(gets.answers)} GETs and {len(posts.answers)} POSTs, 0 failed"
    )
