"""Many deploys at once: 50 deploy operations queued through the HTTP API at the same moment,
run by real Celery worker processes; none lost, none run twice, and operations of different
environments run side by side.

Setup (``bench/_setup.py``): a Stackport of the benchmark's own, plus the portal served by
gunicorn on a free loopback port and a Celery worker started as ``scripts/run.sh`` starts it
(``--concurrency 2``: two worker processes; no beat, so the reconciler does not redeploy
anything behind the benchmark's back), both on a Redis broker (``CELERY_BROKER_URL``,
default redis db 5; results db 6). A user owning the organization gets an API token.

Baseline, in the same run: one static-site project created through ``POST /api/projects``
alone, timed until its operation succeeded (``--baseline-runs``, median). Then ``--count``
(50) ``POST /api/projects`` requests are sent at once from as many threads, and the clock
runs until every operation has finished (or ``--timeout``).

Printed: the baseline, the wall time of the batch, what the operations' own steps took, and
as the last line ``lost or duplicated operations`` (goal 0: every project got exactly one
deploy operation that succeeded on its first attempt and runs exactly one container) and
the ratio of the batch's wall time to ``count`` x one deploy (goal <= 0.5: deploys of
different environments run in parallel).

    DJANGO_ENV=test DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/stackport_bench \\
        CACHE_URL=redis://127.0.0.1:6379/0 CELERY_BROKER_URL=redis://127.0.0.1:6379/5 \\
        CELERY_RESULT_BACKEND=redis://127.0.0.1:6379/6 .venv/bin/python bench/concurrency.py [--count 50]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests
from _setup import (
    REPO,
    STACK_LABEL,
    Bench,
    BenchError,
    machine,
    median,
    note,
    stackport,
    unused_loopback_port,
)

TEMPLATE = "static-site"
VERSIONS = [("nginx", "1.26")]
GOAL = 0.5
DONE = ("succeeded", "failed", "cancelled")

os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/5")
os.environ.setdefault("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/6")


def start_processes(logs: Path) -> tuple[str, list[subprocess.Popen[bytes]]]:
    """gunicorn (the portal, the API) and one Celery worker with two processes; the API's
    base address and the processes to stop."""
    port = unused_loopback_port()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    worker = [str(bin_dir / "celery"), "-A", "portal", "worker", "--loglevel", "INFO", "--concurrency", "2"]
    worker += ["--hostname", f"bench-concurrency-{os.getpid()}@%h", "--without-gossip", "--without-mingle"]
    web = [str(bin_dir / "gunicorn"), "portal.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "3"]
    procs = []
    for command, name in ((worker, "worker.log"), (web, "web.log")):
        with (logs / name).open("wb") as out:
            procs.append(
                subprocess.Popen(  # noqa: S603 - fixed arguments
                    command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
    base = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with requests.Session() as session:
                session.trust_env = False
                if session.get(f"{base}/catalog/sizes", timeout=5).status_code < 500:
                    break
        except requests.RequestException:
            time.sleep(0.3)
    else:
        raise BenchError(f"gunicorn did not answer; see {logs / 'web.log'}")
    if not wait_for_worker(logs / "worker.log"):
        raise BenchError(f"the Celery worker did not start; see {logs / 'worker.log'}")
    return base, procs


def wait_for_worker(log: Path, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and b"ready." in log.read_bytes():
            return True
        time.sleep(0.3)
    return False


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop what this script started (by process group: gunicorn's and Celery's children)."""
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def api_token(bench: Bench) -> str:
    from projects.models import Membership, Role, User
    from projects.services import create_api_token

    user = User.objects.create_user(username="bench-owner", email="owner@bench.test", password=None)
    Membership.objects.create(organization=bench.organization, user=user, role=Role.OWNER)
    _, secret = create_api_token(user=user, name="concurrency benchmark", organization=bench.organization)
    return secret


def post_project(base: str, token: str, organization: int, name: str) -> dict[str, Any]:
    with requests.Session() as session:
        session.trust_env = False
        response = session.post(
            f"{base}/projects",
            json={"organization": organization, "name": name, "region": "eu-central", "template": TEMPLATE},
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
        )
    if response.status_code != 202:
        raise BenchError(f"POST /projects answered {response.status_code}: {response.text[:300]}")
    return dict(response.json())


def wait_done(operation_ids: list[int], timeout: float) -> float:
    """Until every operation has finished (reading the database); the time it happened."""
    from stacks.models import Operation

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = Operation.objects.filter(pk__in=operation_ids).exclude(status__in=DONE).count()
        if not pending:
            return time.perf_counter()
        time.sleep(0.2)
    return time.perf_counter()


def track(bench: Bench, created: list[dict[str, Any]]) -> None:
    """Remember the environments the API made, so the benchmark's cleanup destroys them."""
    from projects.models import Environment

    bench.environments.extend(Environment.objects.filter(pk__in=[c["environment"] for c in created]))


def one_deploy(bench: Bench, base: str, token: str, run: int, timeout: float) -> float:
    started = time.perf_counter()
    created = post_project(base, token, bench.organization.pk, f"Alone {run}")
    track(bench, [created])
    finished = wait_done([created["operation"]["id"]], timeout)
    check_succeeded([created["operation"]["id"]])
    return finished - started


def check_succeeded(operation_ids: list[int]) -> None:
    from stacks.models import Operation

    for op in Operation.objects.filter(pk__in=operation_ids):
        if op.status != "succeeded":
            raise BenchError(f"operation {op.pk} {op.status}: {op.error}\n{op.log[-2000:]}")


def audit(bench: Bench, created: list[dict[str, Any]], client: Any) -> tuple[int, int, list[str]]:
    """(lost, duplicated, details): a project whose deploy did not succeed, or that got no
    or several deploy operations, is lost; an operation that ran more than once (attempts,
    a resumed run in its log) or a stack with more containers than replicas is duplicated."""
    from stacks.backends.docker import list_containers
    from stacks.models import Operation

    lost = duplicated = 0
    details = []
    for item in created:
        ops = list(Operation.objects.filter(environment_id=item["environment"], kind="deploy"))
        if len(ops) != 1 or ops[0].status != "succeeded":
            lost += 1
            details.append(f"environment {item['environment']}: {[(o.pk, o.status, o.error) for o in ops]}")
            continue
        op = ops[0]
        key = op.environment.key
        containers = list_containers(client, all=True, filters={"label": f"{STACK_LABEL}={key}"})
        if op.attempts > 1 or "resuming" in op.log or len(containers) != 1:
            duplicated += 1
            details.append(f"operation {op.pk}: attempts {op.attempts}, {len(containers)} containers")
    return lost, duplicated, details


def step_totals(operation_ids: list[int]) -> dict[str, float]:
    from _setup import step_durations

    from stacks.models import Operation

    totals: dict[str, list[float]] = {}
    for op in Operation.objects.filter(pk__in=operation_ids):
        for name, seconds in step_durations(op).items():
            totals.setdefault(name, []).append(seconds)
    return {name: median(values) for name, values in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50, help="deploys queued at once")
    parser.add_argument("--baseline-runs", type=int, default=3, help="deploys run alone first")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the batch")
    args = parser.parse_args()
    os.environ.setdefault("DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/stackport_bench")
    with stackport(VERSIONS) as bench:
        logs = Path(os.environ["STACKPORT_VAR_DIR"]).parent / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        base, procs = start_processes(logs)
        bench.cleanups.append(lambda: stop_processes(procs))
        note(f"portal at {base}, worker up (2 processes); {machine()}")
        token = api_token(bench)
        client = bench.docker()
        bench.cleanups.append(client.close)

        alone = []
        for run in range(args.baseline_runs):
            alone.append(one_deploy(bench, base, token, run, args.timeout))
            note(f"one deploy alone: {alone[-1]:.2f} s")
        single = median(alone)

        note(f"queueing {args.count} deploys at once through POST /api/projects")
        created: list[dict[str, Any]] = []
        errors: list[str] = []
        lock = threading.Lock()
        barrier = threading.Barrier(args.count)

        def send(index: int) -> None:
            barrier.wait()
            try:
                result = post_project(base, token, bench.organization.pk, f"Batch {index}")
                with lock:
                    created.append(result)
            except (BenchError, requests.RequestException) as exc:
                with lock:
                    errors.append(str(exc))

        threads = [threading.Thread(target=send, args=(i,)) for i in range(args.count)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        queued = time.perf_counter()
        track(bench, created)
        ids = [c["operation"]["id"] for c in created]
        finished = wait_done(ids, args.timeout)
        wall = finished - started
        lost, duplicated, details = audit(bench, created, client)
        lost += len(errors) + (args.count - len(created) - len(errors))

        print(machine())
        each = ", ".join(f"{a:.2f}" for a in alone)
        print(f"one deploy alone (median of {len(alone)}): {single:.2f} s ({each})")
        print(f"{args.count} POST /api/projects at once: answered in {queued - started:.2f} s")
        print(f"batch wall time until every operation finished: {wall:.2f} s")
        steps = ", ".join(f"{k} {v:.2f} s" for k, v in step_totals(ids).items())
        print(f"median step times in the batch: {steps}")
        for line in (errors + details)[:10]:
            print(f"  {line}")
        ratio = wall / (args.count * single)
        print(
            f"lost or duplicated operations: {lost + duplicated} (lost {lost}, duplicated {duplicated}); "
            f"concurrency ratio (batch / {args.count} x one deploy): {ratio:.3f} (goal <= {GOAL})"
        )


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
