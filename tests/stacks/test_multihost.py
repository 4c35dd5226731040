"""Several real Docker engines (scripts/docker-hosts.sh: one per network namespace):
placement spreads the public component's replicas over the hosts, the stack's services
reach each other across hosts, and the edge reaches every replica."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from projects.models import Environment
from stacks.runtime import lifecycle
from stacks.runtime.hosts import register_host
from tests.stacks.conftest import CADDY_ROUTER, REPO_ROOT, Caddy, wait_until
from tests.stacks.test_lifecycle import deploy, get, run

pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.django_db, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def netns_hosts(engine: None) -> list[dict[str, str]]:
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "docker-hosts.sh"), "up", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    hosts = []
    for line in result.stdout.splitlines():
        name, url, address, pool = line.split()
        hosts.append({"name": name, "url": url, "address": address, "pool": pool})
    return hosts


def register_netns_hosts(netns_hosts: list[dict[str, str]]) -> None:
    """The netns engines as the portal's Docker hosts of region eu-west (routed, a pool each)."""
    for host in netns_hosts:
        register_host(
            name=host["name"],
            url=host["url"],
            region="eu-west",
            kernel_line="6.12",
            address_pool=host["pool"],
        )


@pytest.fixture
def two_hosts(settings: Any, caddy: Caddy, catalog: None, netns_hosts: list[dict[str, str]]) -> Caddy:
    settings.STACKPORT_EDGE_ROUTER = CADDY_ROUTER
    settings.STACKPORT_EDGE_ADMIN_URL = caddy.admin_url
    settings.STACKPORT_EDGE_LISTEN = caddy.edge_addr
    register_netns_hosts(netns_hosts)
    return caddy


@pytest.fixture
def clients(netns_hosts: list[dict[str, str]]) -> Iterator[dict[str, docker.DockerClient]]:
    made = {h["name"]: docker.DockerClient(base_url=h["url"]) for h in netns_hosts}
    yield made
    for client in made.values():
        client.close()


@pytest.fixture
def cleanup() -> Iterator[list[Environment]]:
    made: list[Environment] = []
    yield made
    from stacks.runtime.operations import backend_for

    for env in made:
        env.refresh_from_db()
        backend_for(env).destroy(env.key, env.backend_state)


def on_hosts(clients: dict[str, docker.DockerClient], env: Environment) -> dict[str, list[Any]]:
    return {
        name: client.containers.list(filters={"label": f"org.stackport.stack={env.key}"})
        for name, client in clients.items()
    }


def test_replicas_spread_over_both_hosts_and_all_get_traffic(
    team: Any, two_hosts: Caddy, cleanup: list[Environment], clients: dict[str, docker.DockerClient]
) -> None:
    env = deploy(team, cleanup, name="Spread", template="python-web", region="eu-west")
    run(lifecycle.scale(environment=env, actor=team.developer, component="web", replicas=2))
    placed = on_hosts(clients, env)
    web = {
        host: [c for c in found if c.labels["org.stackport.component"] == "web"]
        for host, found in placed.items()
    }
    assert all(len(replicas) == 1 for replicas in web.values()), placed
    home = env.backend_state["host"]
    assert {c.labels["org.stackport.component"] for c in placed[home]} == {"web", "app", "db", "cache"}
    for _ in range(30):
        response = get(two_hosts, env)
        assert response.status_code == 200 and "Hello from Python on Stackport" in response.text
    # Both nginx replicas served pages; the remote one reached the app on the home host.
    for replicas in web.values():  # nginx writes its access log every second (buffered)
        wait_until(
            lambda replicas=replicas: b"GET / " in replicas[0].logs(), 10, "the replica's access lines"
        )
    run(lifecycle.scale(environment=env, actor=team.developer, component="web", replicas=1))
    assert sum(len(found) for found in on_hosts(clients, env).values()) == 4
    assert get(two_hosts, env).status_code == 200


def test_unused_images_are_pruned_from_the_hosts_but_rollback_images_stay(
    team: Any, two_hosts: Caddy, cleanup: list[Environment], clients: dict[str, docker.DockerClient]
) -> None:
    from stacks.models import ComponentVersion
    from stacks.runtime.reconcile import prune_images

    static = [
        {
            "name": "web",
            "component": "nginx",
            "version": "1.22",
            "size": "small",
            "replicas": 1,
            "public": True,
        }
    ]
    env = deploy(team, cleanup, name="Prune", components=static, region="eu-west")
    run(lifecycle.upgrade(environment=env, actor=team.developer, component="web", version="1.26"))
    old = ComponentVersion.objects.get(component__code="nginx", version="1.22").pinned_reference
    unused = ComponentVersion.objects.get(component__code="memcached", version="1.6.38").pinned_reference
    home = clients[env.backend_state["host"]]
    repo, _, digest = unused.partition("@")
    home.images.pull(repo, tag=digest)
    prune_images()
    refs = {r for image in home.images.list() for r in image.attrs.get("RepoDigests") or []}
    assert unused not in refs
    assert old in refs, "release 1 may be rolled back to: its image stays"
