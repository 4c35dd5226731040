"""B-5: engine API calls and wall time of one reconcile pass at 10, 100 and 1,000 environments
across 3 hosts, in one run.

Three real engines: the local one and the two netns engines of ``scripts/docker-hosts.sh up 2``
(started if needed, left running as the tests leave them). Environments are static sites
(one nginx replica each), spread round-robin over the three hosts: one in ten runs, with one
cheap container of its own (``stackport/debian:bookworm`` sleeping, labelled as Stackport
labels a replica, so the reconciler finds exactly what it wants), the others are stopped
stacks (no container). The first environment is made by ``create_project``; the others are
bulk copies of its rows (release, components, placement). The running ones are routed
through a Caddy of the script's own.

Each engine API call is counted where the Docker SDK sends it (``docker.APIClient.send``).
At each size a first pass runs (it writes the routes of the new running environments), then
``--passes`` measured passes: calls and wall time of each (median). Last line: the calls
ratio 1,000 / 10 environments (goal <= 1.5: calls grow with hosts, not environments); the
goal for time is a pass under the reconcile interval (30 s) at 1,000.

    DJANGO_ENV=test DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/stackport_bench_reconcile \\
        CACHE_URL=redis://127.0.0.1:6379/5 .venv/bin/python bench/reconcile.py [--sizes 10,100,1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _setup import (
    DEFAULT_ENV,
    DOCKER_URL,
    REPO,
    STACK_LABEL,
    create_database,
    drop_database,
    machine,
    note,
    start_caddy,
    stop_caddy,
)

GOAL = 1.5
INTERVAL = 30.0  # the reconcile beat interval (portal/settings.py)
RUNNING_EVERY = 10  # one environment in ten runs a container
IMAGE = "stackport/debian:bookworm"
PREFIX = "benchrec"
REGION, KERNEL = "eu-west", "6.12"
CALLS = {"n": 0}


def count_engine_calls() -> None:
    """Every HTTP request any Docker SDK client sends is one engine API call."""
    from docker.api.client import APIClient

    original = APIClient.send

    def send(self: Any, request: Any, **kwargs: Any) -> Any:
        CALLS["n"] += 1
        return original(self, request, **kwargs)

    APIClient.send = send  # type: ignore[method-assign]


def engines() -> list[tuple[str, str]]:
    result = subprocess.run(  # noqa: S603 - our own script, fixed arguments
        [str(REPO / "scripts" / "docker-hosts.sh"), "up", "2"], capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        raise SystemExit(f"scripts/docker-hosts.sh up 2 failed:\n{result.stderr}")
    netns = [(line.split()[0], line.split()[1]) for line in result.stdout.splitlines()]
    return [("local", DOCKER_URL), *netns]


def ensure_image(url: str) -> None:
    """The sleeping replica's image on every engine (saved from the local one when missing)."""
    import docker

    client = docker.DockerClient(base_url=url)
    try:
        client.images.get(IMAGE)
        return
    except docker.errors.ImageNotFound:
        note(f"loading {IMAGE} into {url}")
        local = docker.DockerClient(base_url=DOCKER_URL)
        data = b"".join(local.images.get(IMAGE).save())
        client.images.load(data)
        local.close()
    finally:
        client.close()


def offer_catalog() -> None:
    import hashlib

    from stacks.catalog.loader import load_catalog
    from stacks.models import ComponentVersion, VersionStatus

    load_catalog()
    for cv in ComponentVersion.objects.select_related("component"):
        digest = "sha256:" + hashlib.sha256(f"{cv.component.code}:{cv.version}".encode()).hexdigest()
        status = cv.target_status if cv.target_status != VersionStatus.CANDIDATE else VersionStatus.CURRENT
        ComponentVersion.objects.filter(pk=cv.pk).update(
            status=status,
            digest=digest,
            image_ref=f"127.0.0.1:5000/stackport/{cv.component.code}:{cv.version}",
        )


class World:
    """The environments made so far and the containers of the running ones."""

    def __init__(self, hosts: list[tuple[str, str]]) -> None:
        from projects.models import Organization, User
        from stacks.models import DockerHost, KernelVersion, Operation, OperationStatus, Region
        from stacks.runtime import lifecycle

        region = Region.objects.get(code=REGION)
        kernel = KernelVersion.objects.get(line=KERNEL)
        self.hosts = [
            DockerHost.objects.create(
                name=name, url=url, region=region, kernel=kernel, memory_mb=1 << 20, cpus=64
            )
            for name, url in hosts
        ]
        owner = User.objects.create_user(username="owner", email="owner@bench.test", password="x" * 20)
        org = Organization.objects.create(name="Reconcile bench")
        from projects.models import Membership, Role

        Membership.objects.create(organization=org, user=owner, role=Role.OWNER)
        self.first = lifecycle.create_project(
            organization=org, actor=owner, name="Sites", region=REGION, kernel=KERNEL, template="static-site"
        )
        Operation.objects.filter(environment=self.first).update(status=OperationStatus.SUCCEEDED)
        self.first.current_release = self.first.releases.get()
        self.first.save(update_fields=["current_release"])
        self.count = 0
        self.containers: list[Any] = []
        self.clients: dict[str, Any] = {}

    def client(self, host: Any) -> Any:
        import docker

        if host.name not in self.clients:
            self.clients[host.name] = docker.DockerClient(base_url=host.url)
        return self.clients[host.name]

    def grow(self, size: int) -> None:
        """Environments up to ``size``: the first one re-used, the rest bulk copies."""
        from django.conf import settings

        from projects.models import Environment, EnvironmentStatus
        from stacks.models import Placement, Release, StackComponent

        first = self.first
        release = first.current_release
        components = list(StackComponent.objects.filter(environment=first))
        new = []
        for i in range(self.count, size):
            running = i % RUNNING_EVERY == 0
            host = self.hosts[i % len(self.hosts)]
            state = {"host": host.name, "subnet": f"10.{64 + i // 250}.{i % 250}.0/24"}
            if i == 0:
                env = first
                Environment.objects.filter(pk=env.pk).update(
                    status=EnvironmentStatus.RUNNING, desired_running=True, backend_state=state
                )
            else:
                env = Environment(
                    project=first.project,
                    name=f"e{i}",
                    kernel=first.kernel,
                    framework=first.framework,
                    template=first.template,
                    desired_running=running,
                    status=EnvironmentStatus.RUNNING if running else EnvironmentStatus.STOPPED,
                    backend_state=state,
                )
            new.append((env, host, running))
        Environment.objects.bulk_create([e for e, _, _ in new if e.pk is None])
        releases = []
        for env, _, _ in new:
            if env.pk != first.pk:
                releases.append(
                    Release(
                        environment=env,
                        number=1,
                        spec=release.spec,
                        source=release.source,
                        source_detail=release.source_detail,
                        content_sha256=release.content_sha256,
                        ran_at=release.ran_at,
                        images=release.images,
                    )
                )
        Release.objects.bulk_create(releases)
        by_env = {r.environment_id: r for r in releases}
        for env, _, _ in new:
            if env.pk in by_env:
                env.current_release = by_env[env.pk]
        Environment.objects.bulk_update([e for e, _, _ in new if e.pk in by_env], ["current_release"])
        StackComponent.objects.bulk_create(
            [
                StackComponent(
                    environment=env,
                    name=c.name,
                    component_id=c.component_id,
                    version_id=c.version_id,
                    size_id=c.size_id,
                    replicas=c.replicas,
                    public=c.public,
                    env=c.env,
                    position=c.position,
                )
                for env, _, _ in new
                if env.pk != first.pk
                for c in components
            ]
        )
        Placement.objects.bulk_create(
            [Placement(environment=env, host=host, hosts=[host.name]) for env, host, _ in new],
            update_conflicts=True,
            unique_fields=["environment"],
            update_fields=["host", "hosts"],
        )
        for env, host, running in new:
            if running:
                key = f"{settings.STACKPORT_STACK_PREFIX}-{env.pk}"
                container = self.client(host).containers.run(
                    IMAGE,
                    ["sleep", "infinity"],
                    name=f"sp-{key}-web-a0",
                    labels={
                        STACK_LABEL: key,
                        "org.stackport.component": "web",
                        "org.stackport.index": "0",
                        "org.stackport.color": "a",
                    },
                    network_mode="none",
                    detach=True,
                    mem_limit="16m",
                )
                self.containers.append(container)
        self.count = size

    def remove(self) -> None:
        for container in self.containers:
            try:
                container.remove(force=True)
            except Exception as exc:  # noqa: BLE001 - best effort
                note(f"could not remove {container.name}: {exc}")
        for client in self.clients.values():
            client.close()


def one_pass() -> tuple[int, float, dict[str, int]]:
    from stacks.runtime.reconcile import reconcile

    before = CALLS["n"]
    started = time.perf_counter()
    report = reconcile()
    return CALLS["n"] - before, time.perf_counter() - started, report


def run(sizes: list[int], passes: int) -> None:
    import logging

    from django.core.management import call_command

    logging.disable(logging.WARNING)
    note(machine())
    hosts = engines()
    for _, url in hosts:
        ensure_image(url)
    create_database()
    call_command("migrate", verbosity=0, interactive=False)
    offer_catalog()
    world = World(hosts)
    calls_at: dict[int, float] = {}
    try:
        for size in sizes:
            note(f"growing to {size} environments")
            world.grow(size)
            first_calls, first_time, report = one_pass()
            print(
                f"{size:>5} environments: first pass {first_calls} calls, {first_time:.2f} s "
                f"({report.get('routes_fixed', 0)} routes written, {report.get('repaired', 0)} repairs)",
                flush=True,
            )
            measured = [one_pass() for _ in range(passes)]
            calls = statistics.median(c for c, _, _ in measured)
            seconds = statistics.median(t for _, t, _ in measured)
            last = measured[-1][2]
            calls_at[size] = calls
            print(
                f"{size:>5} environments ({len(world.containers)} running, on {len(hosts)} hosts): "
                f"median {calls:.0f} engine calls, {seconds:.2f} s a pass "
                f"(repairs {last['repaired']}, routes written {last['routes_fixed']}, "
                f"unknown {last['unknown']}); under the {INTERVAL:.0f} s interval: "
                f"{'yes' if seconds < INTERVAL else 'NO'}",
                flush=True,
            )
    finally:
        world.remove()
    note(machine())
    small, large = min(calls_at), max(calls_at)
    ratio = calls_at[large] / calls_at[small]
    print(f"calls ratio ({large:,} / {small:,} environments): {ratio:.2f} (goal <= {GOAL})")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--passes", type=int, default=3, help="measured passes at each size")
    args = parser.parse_args()
    os.environ.setdefault("DATABASE_URL", DEFAULT_ENV["DATABASE_URL"] + "_reconcile")
    for key, value in DEFAULT_ENV.items():
        os.environ.setdefault(key, value)
    # Not "bench": the reconciler removes containers of its prefix that its database does
    # not know, and other benchmarks may run at the same time under "bench".
    os.environ["STACKPORT_STACK_PREFIX"] = PREFIX
    var = tempfile.mkdtemp(prefix="bench-reconcile-")
    os.environ.setdefault("STACKPORT_VAR_DIR", var)
    caddy = start_caddy(Path(var) / "caddy")
    os.environ.update(caddy.settings())  # its router, admin address and listen address
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import django

    django.setup()
    count_engine_calls()
    try:
        run([int(s) for s in args.sizes.split(",")], args.passes)
    except KeyboardInterrupt:
        note("interrupted")
        return 130
    finally:
        note("dropping the database, stopping Caddy")
        drop_database()
        stop_caddy(caddy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
