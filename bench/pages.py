"""Dashboard and project page with 10,000 projects against the same with 100, in one run.

Two organizations ("grown" and "control") get 100 projects each: a production environment
of the python-web template with its four components, a release and an operation (every
50th failed, every 100th still queued, every 7th with nginx on its older version). The
dashboard (page 1) and one project's page (``stacks:project``) are fetched ``--requests``
times each, signed in as each organization's owner with Django's test client, the two
organizations' requests interleaved. Then "grown" grows to 10,000 projects (bulk inserts,
``ANALYZE``) and the same is measured again. Printed per page and organization: p50, p95,
queries of a warm request, and the first request's time and queries (the dashboard's
cached counts cleared). "control" stays at 100: after the growth it is measured at the same
moments, in the same database, which shows how much of a difference is the machine's noise.
Last line: the larger of the two p95 ratios "grown" after / before (goal <= 1.25).

No engine, no Caddy: pages never call a backend. Its own PostgreSQL database (the name must
contain ``bench``; created, migrated and dropped at the end) and Redis cache db.

    DJANGO_ENV=test DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/stackport_bench_pages \\
        CACHE_URL=redis://127.0.0.1:6379/5 .venv/bin/python bench/pages.py [--requests 200] [--large 10000]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from _setup import DEFAULT_ENV, REPO, BenchError, create_database, drop_database, machine, note

GOAL = 1.25
TEMPLATE = "python-web"
BATCH = 2000
PAGES = ("dashboard", "project")


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) > 1 else values[0]


def offer_catalog() -> None:
    """The shipped catalog, every version offered with a made-up digest (no images needed)."""
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


def seed(organization: Any, owner: Any) -> Any:
    """The first project, made by the real service; the others copy its rows."""
    from stacks.runtime import lifecycle

    return lifecycle.create_project(
        organization=organization, actor=owner, name="Project 00000", region="eu-central", template=TEMPLATE
    )


def grow(organization: Any, model: Any, start: int, stop: int) -> None:
    """Projects ``start``..``stop-1`` like ``model``'s environment, in bulk: every 50th
    with a failed last operation, every 100th with one still queued, every 7th with nginx
    on its older version."""
    from projects.models import Environment, EnvironmentStatus, Project
    from stacks.models import (
        ComponentVersion,
        Operation,
        OperationKind,
        OperationStatus,
        Release,
        StackComponent,
    )

    rows = list(model.components.all())
    release = model.releases.get()
    older_nginx = ComponentVersion.objects.filter(component__code="nginx").order_by("position").first()
    for first in range(start, stop, BATCH):
        numbers = range(first, min(first + BATCH, stop))
        projects = Project.objects.bulk_create(
            Project(organization=organization, name=f"Project {n:05d}", region=model.project.region)
            for n in numbers
        )
        environments = Environment.objects.bulk_create(
            Environment(
                project=p,
                kernel=model.kernel,
                template=model.template,
                framework=model.framework,
                status=EnvironmentStatus.FAILED if n % 50 == 0 else EnvironmentStatus.RUNNING,
                backend_state={"host": f"host-{n % 3}"},
            )
            for n, p in zip(numbers, projects, strict=True)
        )
        StackComponent.objects.bulk_create(
            StackComponent(
                environment=e,
                name=r.name,
                component=r.component,
                version=older_nginx
                if (n % 7 == 0 and r.component.code == "nginx" and older_nginx)
                else r.version,
                size=r.size,
                replicas=r.replicas,
                public=r.public,
                env=r.env,
                position=r.position,
            )
            for n, e in zip(numbers, environments, strict=True)
            for r in rows
        )
        releases = Release.objects.bulk_create(
            Release(environment=e, number=1, spec=release.spec, source=release.source) for e in environments
        )
        for e, r in zip(environments, releases, strict=True):
            e.current_release = r
        Environment.objects.bulk_update(environments, ["current_release"])

        def status(n: int) -> str:
            if n % 100 == 1:
                return OperationStatus.QUEUED
            return OperationStatus.FAILED if n % 50 == 0 else OperationStatus.SUCCEEDED

        Operation.objects.bulk_create(
            Operation(environment=e, kind=OperationKind.DEPLOY, status=status(n), release=r)
            for n, e, r in zip(numbers, environments, releases, strict=True)
        )
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


@dataclass
class Side:
    """One organization as its owner sees it: a signed-in client and the two pages."""

    label: str
    organization: Any
    model: Any  # the environment the other projects copy; its project's page is measured
    client: Any
    urls: dict[str, str]

    @classmethod
    def make(cls, label: str, count: int) -> Side:
        from django.test import Client
        from django.urls import reverse

        from projects.models import Membership, Organization, Role, User

        owner = User.objects.create_user(
            username=f"owner-{label}", email=f"{label}@bench.test", password="x" * 20
        )
        organization = Organization.objects.create(name=f"Benchmarks {label}")
        Membership.objects.create(organization=organization, user=owner, role=Role.OWNER)
        model = seed(organization, owner)
        grow(organization, model, 1, count)
        client = Client()
        client.force_login(owner, backend="django.contrib.auth.backends.ModelBackend")
        urls = {
            "dashboard": reverse("portal:dashboard"),
            "project": reverse("stacks:project", kwargs={"project_id": model.project_id}),
        }
        return cls(label, organization, model, client, urls)

    def get(self, page: str) -> float:
        started = time.perf_counter()
        response = self.client.get(self.urls[page])
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise BenchError(f"GET {self.urls[page]} answered {response.status_code}")
        return elapsed

    def counted(self, page: str) -> tuple[float, int]:
        """One request's time and number of queries."""
        from django.db import connection

        seen = []

        def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            seen.append(sql)
            return execute(sql, params, many, context)

        with connection.execute_wrapper(count):
            elapsed = self.get(page)
        return elapsed, len(seen)

    def cold(self, page: str) -> tuple[float, int]:
        """A first request: the dashboard's cached counts (quotas, attention) not there yet."""
        from django.core.cache import cache

        from portal.dashboard import cache_key

        cache.delete_many([cache_key(what, self.organization) for what in ("quotas", "attention")])
        return self.counted(page)


def measure(sides: list[Side], requests: int) -> dict[tuple[str, str], dict[str, float]]:
    """Each page of each side ``requests`` times, interleaved (the machine's noise hits
    every side alike); p50, p95, a cold first request and queries per request."""
    results: dict[tuple[str, str], dict[str, float]] = {}
    for page in PAGES:
        colds = {side.label: side.cold(page) for side in sides}
        for side in sides:
            for _ in range(5):  # warm-up
                side.get(page)
        times: dict[str, list[float]] = {side.label: [] for side in sides}
        for _ in range(requests):
            for side in sides:
                times[side.label].append(side.get(page))
        for side in sides:
            results[(side.label, page)] = {
                "p50": statistics.median(times[side.label]) * 1000,
                "p95": p95(times[side.label]) * 1000,
                "cold": colds[side.label][0] * 1000,
                "cold_queries": colds[side.label][1],
                "queries": side.counted(page)[1],
            }
    return results


def report(side: Side, page: str, projects: int, result: dict[str, float]) -> None:
    print(
        f"{page:9s} {side.label:7s} {projects:>6,} projects  p50 {result['p50']:6.1f} ms  "
        f"p95 {result['p95']:6.1f} ms  queries {result['queries']:.0f}  "
        f"first request {result['cold']:7.1f} ms, {result['cold_queries']:.0f} queries",
        flush=True,
    )


def run(requests: int, small: int, large: int) -> float:
    from django.core.management import call_command
    from django.test.utils import setup_test_environment

    setup_test_environment()
    started = time.monotonic()
    create_database()
    call_command("migrate", verbosity=0, interactive=False)
    note(f"database migrated ({time.monotonic() - started:.1f} s)")
    offer_catalog()
    grown = Side.make("grown", small)
    control = Side.make("control", small)
    note(f"two organizations of {small} projects made; measuring")
    before = measure([grown, control], requests)
    for (label, page), result in before.items():
        report(grown if label == "grown" else control, page, small, result)
    started = time.monotonic()
    grow(grown.organization, grown.model, small, large)
    note(f"'grown' grown to {large:,} projects ({time.monotonic() - started:.1f} s); measuring")
    after = measure([grown, control], requests)
    for (label, page), result in after.items():
        report(grown if label == "grown" else control, page, large if label == "grown" else small, result)
    print(machine())
    ratios, controls = {}, {}
    for page in PAGES:
        ratios[page] = after[("grown", page)]["p95"] / before[("grown", page)]["p95"]
        controls[page] = after[("grown", page)]["p95"] / after[("control", page)]["p95"]
        # Both first requests of the same round (the very first request of a process does more).
        if after[("grown", page)]["cold_queries"] != after[("control", page)]["cold_queries"]:
            print(f"{page}: the number of queries changed with the number of projects")
    print(
        "same moment, same database: grown / control p95 "
        + ", ".join(f"{page} {ratio:.2f}" for page, ratio in controls.items())
    )
    worst = max(ratios.values())
    detail = ", ".join(f"{page} {ratio:.2f}" for page, ratio in ratios.items())
    print(f"pages p95 ratio ({large:,} / {small} projects): {worst:.2f} ({detail}; goal <= {GOAL})")
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200, help="timed requests per page and size")
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=10_000)
    parser.add_argument(
        "--exact-count",
        action="store_true",
        help="count what needs attention on every request (no half-minute cache in large organizations)",
    )
    args = parser.parse_args()
    for key, value in DEFAULT_ENV.items():
        os.environ.setdefault(key, value)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import logging

    import django

    django.setup()
    logging.disable(logging.INFO)  # the per-request log lines: noise on stderr, and time
    if args.exact_count:
        import portal.dashboard

        portal.dashboard.LARGE_ORGANIZATION = sys.maxsize
    try:
        run(args.requests, args.small, args.large)
    except KeyboardInterrupt:
        note("interrupted")
        return 130
    finally:
        note("dropping the database")
        drop_database()
    return 0


if __name__ == "__main__":
    sys.exit(main())
