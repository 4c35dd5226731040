"""Deploy of the python-web template (nginx + python + postgresql + redis): Stackport's real
path against a plain Docker SDK script that starts the same containers, in the same run.

Stackport: create_project(template="python-web") -> run_operation (content, containers,
edge route, site check) -> until the page answers 200 through the edge.

Plain SDK: the same pinned images with the same container options (env with the same
generated passwords, user, limits, read-only root, tmpfs, health checks; taken from the
spec Stackport builds for a scratch project of the same template, by the backend's pure
``run_options``), the same sample content in a volume, one user-defined network with the
service names as aliases, all four started at once; then it waits until every health
check passes, adds one route (one upstream: the nginx container) to the same Caddy and
waits for the same page. Only Docker SDK calls and one admin-API PUT, no Stackport code
with I/O.

Each side runs ``--runs`` times (default 3), alternating which goes first; medians.

    DJANGO_ENV=test DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/stackport_bench \\
        .venv/bin/python bench/deploy.py [--runs 3]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import requests
from _setup import (
    PLAIN_LABEL,
    STACK_LABEL,
    Bench,
    BenchError,
    container_timeline,
    describe_timeline,
    machine,
    median,
    note,
    stackport,
    step_durations,
    wait_for_page,
)

TEMPLATE = "python-web"
PAGE_TEXT = "Hello from Python on Stackport"
VERSIONS = [("postgresql", "17"), ("redis", "8.0"), ("python", "3.13"), ("nginx", "1.26")]
GOAL = 1.15
HEALTH_POLL = 0.1  # the plain script's poll interval (Stackport's own loop sleeps 0.5 s)


Result = tuple[float, dict[str, float], str]


def stackport_deploy(bench: Bench, run: int) -> Result:
    """Seconds from create_project to the page through the edge, where they went, and the
    containers' timeline."""
    wall = time.time()
    started = time.perf_counter()
    env = bench.create(f"Deploy {run}", template=TEMPLATE)
    created = time.perf_counter()
    operation = bench.run(env.operations.get())
    operated = time.perf_counter()
    wait_for_page(f"{bench.caddy.edge_url}/", env.hostname, PAGE_TEXT)
    done = time.perf_counter()
    parts = {"create_project": created - started}
    parts.update(step_durations(operation))
    parts["operation, outside steps"] = (operated - created) - sum(step_durations(operation).values())
    parts["page after the operation"] = done - operated
    timeline = container_timeline(f"{STACK_LABEL}={env.key}", wall, time.time())
    bench.destroy(env)
    return done - started, parts, describe_timeline(timeline, "    ")


def plain_spec(bench: Bench) -> tuple[Any, bytes]:
    """The StackSpec Stackport would run for the template, and its content archive (from a
    scratch project that is never deployed)."""
    from stacks.catalog.samples import sample_archive
    from stacks.models import StackTemplate
    from stacks.runtime.spec import build_spec

    env = bench.create("Plain spec", template=TEMPLATE)
    release = env.releases.get()
    # The operation makes the sample content in the worker; the plain deploy needs it here.
    archive = sample_archive(StackTemplate.objects.get(code=TEMPLATE).sample_app)
    return build_spec(env, release, running=True), archive


def plain_deploy(bench: Bench, spec: Any, archive: bytes, run: int) -> Result:
    """The same containers by hand with the Docker SDK; seconds until the same page."""
    from django.conf import settings

    from stacks.backends.base import HostRecord
    from stacks.backends.docker import DockerBackend
    from stacks.backends.edge import proxy_route

    key = f"bench-plain-{run}"
    labels = {PLAIN_LABEL: key}
    host = f"{key}.{settings.STACKPORT_APPS_DOMAIN}"
    options_of = DockerBackend(hosts=[HostRecord("local", "unused")])  # run_options only: no I/O
    client = bench.docker()
    admin = requests.Session()
    admin.trust_env = False
    marks: dict[str, float] = {}
    try:
        wall = time.time()
        started = time.perf_counter()
        client.networks.create(key, driver="bridge", labels=labels)
        content = client.volumes.create(f"{key}-content", labels=labels)
        web = next(c for c in spec.components if c.public_port)
        helper = client.containers.create(
            web.image,
            command=["true"],
            volumes={content.name: {"bind": "/content", "mode": "rw"}},
            network_disabled=True,
            labels=labels,
            user="0",
        )
        helper.put_archive("/content", archive)
        helper.remove(force=True)
        marks["network + content"] = time.perf_counter() - started
        containers = []
        for comp in spec.components:
            options = options_of.run_options(spec, comp, "a", 0, f"{key}-{comp.name}")
            volumes = {}
            for volume in comp.volumes:
                name = client.volumes.create(f"{key}-{comp.name}-{volume.name}", labels=labels).name
                volumes[name] = {"bind": volume.path, "mode": "rw"}
            if comp.content_path:
                volumes[content.name] = {"bind": comp.content_path, "mode": "ro"}
            options.update(
                labels=labels,
                volumes=volumes,
                network=key,
                networking_config={key: client.api.create_endpoint_config(aliases=[comp.name])},
            )
            containers.append(client.containers.create(comp.image, **options))
        for container in containers:
            container.start()
        marks["create + start 4 containers"] = time.perf_counter() - started - sum(marks.values())
        pending = list(containers)
        deadline = time.monotonic() + 180
        while pending:
            for container in list(pending):
                container.reload()
                health = container.attrs["State"].get("Health", {}).get("Status")
                if health == "healthy":
                    pending.remove(container)
                elif health == "unhealthy" or container.status in ("exited", "dead"):
                    raise BenchError(f"{container.name} is {health or container.status}")
            if pending and time.monotonic() > deadline:
                raise BenchError(f"not healthy: {[c.name for c in pending]}")
            if pending:
                time.sleep(HEALTH_POLL)
        marks["all healthy"] = time.perf_counter() - started - sum(marks.values())
        nginx = next(c for c in containers if c.name.endswith(f"-{web.name}"))
        address = nginx.attrs["NetworkSettings"]["Networks"][key]["IPAddress"]
        route = proxy_route(key, [host], [f"{address}:{web.public_port}"], None, "/healthz")
        response = admin.put(
            f"{bench.caddy.admin_url}/config/apps/http/servers/edge/routes/0", json=route, timeout=10
        )
        if response.status_code != 200:
            raise BenchError(f"caddy refused the route: {response.status_code} {response.text}")
        marks["route"] = time.perf_counter() - started - sum(marks.values())
        wait_for_page(f"{bench.caddy.edge_url}/", host, PAGE_TEXT)
        elapsed = time.perf_counter() - started
        marks["page"] = elapsed - sum(marks.values())
        timeline = container_timeline(f"{PLAIN_LABEL}={key}", wall, time.time())
        return elapsed, marks, describe_timeline(timeline, "    ")
    finally:
        try:
            admin.delete(f"{bench.caddy.admin_url}/id/{key}", timeout=10)
        except requests.RequestException:
            pass
        admin.close()
        _remove_plain(client, key)
        client.close()


def _remove_plain(client: Any, key: str) -> None:
    from docker.errors import NotFound

    for container in client.containers.list(all=True, filters={"label": f"{PLAIN_LABEL}={key}"}):
        container.remove(force=True)
    for network in client.networks.list(filters={"label": f"{PLAIN_LABEL}={key}"}):
        try:
            network.remove()
        except NotFound:
            pass
    for volume in client.volumes.list(filters={"label": f"{PLAIN_LABEL}={key}"}):
        try:
            volume.remove(force=True)
        except NotFound:
            pass


def describe(parts: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.2f}" for name, seconds in parts.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="deploys per side (default 3)")
    parser.add_argument(
        "--timeline", action="store_true", help="print each container's create/start/healthy times"
    )
    args = parser.parse_args()
    with stackport(VERSIONS) as bench:
        spec, archive = plain_spec(bench)
        times: dict[str, list[float]] = {"stackport": [], "plain": []}
        components = ", ".join(f"{c.name} {c.version}" for c in spec.components)
        print(f"deploy of the {TEMPLATE} template ({components}), {args.runs} runs a side")
        print(f"before: {machine()}")
        for run in range(args.runs):
            order = ["stackport", "plain"] if run % 2 == 0 else ["plain", "stackport"]
            for side in order:
                note(f"run {run + 1}/{args.runs}: {side}")
                if side == "stackport":
                    seconds, parts, timeline = stackport_deploy(bench, run)
                else:
                    seconds, parts, timeline = plain_deploy(bench, spec, archive, run)
                times[side].append(seconds)
                print(f"run {run + 1} {side:9} {seconds:6.2f} s  ({describe(parts)})", flush=True)
                if args.timeline:
                    print(timeline, flush=True)
    stackport_median, plain_median = median(times["stackport"]), median(times["plain"])
    print(f"after: {machine()}")
    print(f"median: stackport {stackport_median:.2f} s, plain sdk {plain_median:.2f} s")
    ratio = stackport_median / plain_median
    print(f"deploy ratio (stackport / plain sdk): {ratio:.2f} (goal <= {GOAL})")


if __name__ == "__main__":
    main()
