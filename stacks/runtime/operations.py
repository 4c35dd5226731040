"""Running operations: what a Celery task does with an Operation id.

``run_operation`` claims the operation (a queued one, or a running one whose worker
stopped sending heartbeats), walks its steps against the backend and the edge router,
records every step and log line, and finishes it. Every step is idempotent, so an
operation interrupted anywhere (a killed worker) is simply run again by the reconciler.
A failed upgrade leaves, or puts back, the previous release: blue/green components never
stopped serving; anything replaced in place is rolled back automatically.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import requests
import structlog
from django.conf import settings
from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
    transaction,
)
from django.db.models import F, QuerySet, Sum
from django.template.loader import render_to_string
from django.utils import timezone
from kombu.exceptions import KombuError

from projects.crypto import decrypt
from projects.models import Environment, EnvironmentStatus
from projects.services import ServiceError, deploy_key_of, record_audit_event, record_ssh_host_keys
from stacks import tasks
from stacks.backends.base import Backend, BackendError, Drain, EdgeRouting, HostRecord, StackSpec, get_backend
from stacks.backends.edge import NOT_FOUND_BODY, EdgeError, Route
from stacks.catalog.samples import SampleError, sample_archive
from stacks.models import (
    DockerHost,
    Domain,
    Operation,
    OperationKind,
    OperationStatus,
    Placement,
    Release,
    StackComponent,
    home_host,
)
from stacks.runtime import backups, builds, content_store, edges, hosts
from stacks.runtime.content import ContentError, fetch_git
from stacks.runtime.spec import SpecError, build_spec, set_component_rows, variables_fingerprint

log = structlog.get_logger(__name__)
HEARTBEAT_SECONDS = 5
CHECK_SITE_SECONDS = 30  # the public page must answer through the edge within this
LOG_MAX_CHARS = 200_000
RESUME_ALLOWANCE = 3  # claims beyond the retry cap (killed workers) before an operation gives up
DATABASE_WAIT_SECONDS = 60  # a database that went away mid-operation (a restart): waited for this long
EDGE_RESYNC_SECONDS = 5  # the site check writes the routes again at most this often (a restarted edge)
DRAIN_TIMEOUT = 30.0  # seconds a stopping replica's requests in flight are waited for
ROUTE_PICKUP = 2.5  # seconds: more than two of the edge's 1 s active health checks of new slots


class OperationFailed(Exception):
    pass


# --- backend and edge -----------------------------------------------------------------------------
def free_memory_mb(hosts: list[DockerHost]) -> dict[str, int]:
    """Memory not yet promised to the stacks living on each host (their sizes x replicas)."""

    promised = dict.fromkeys((h.name for h in hosts), 0)
    rows = (
        StackComponent.objects.exclude(environment__status=EnvironmentStatus.DESTROYED)
        .values("environment__placement__host__name")
        .annotate(mb=Sum(F("size__memory_mb") * F("replicas")))
    )
    for row in rows:
        name = row["environment__placement__host__name"]
        if name in promised:
            promised[name] += int(row["mb"] or 0)
    return {h.name: h.memory_mb - promised[h.name] for h in hosts}


def hosts_for(environment: Environment) -> list[HostRecord]:
    """The hosts of the environment's region and kernel line the backend works on: active
    ones first (the stack's own host first, then by free memory: a new stack's home is the
    host with the most room), then draining ones marked ``drain`` — nothing new is placed
    there, but the backend still sees (and removes) what of the stack runs on them. A
    stack whose home is a draining host keeps it as its home (its volumes are there)."""
    in_region = DockerHost.objects.filter(region=environment.project.region, kernel=environment.kernel)
    active = list(in_region.filter(state=DockerHost.State.ACTIVE))
    free = free_memory_mb(active)
    listed = [hosts.host_record(h) for h in active]
    own = home_host(environment)
    listed.sort(key=lambda h: (h.name != own, -free[h.name], h.name))
    if not own and listed:
        needed = sum(c.size.memory_mb * c.replicas for c in environment.components.select_related("size"))
        if max(free.values()) < needed:
            raise OperationFailed(
                f"No host in {environment.project.region.name} has {needed} MB free for this stack; "
                "the hoster has been notified."
            )
    if own and not any(h.name == own for h in listed):
        # Its network and volumes are there: keep using it while it is draining.
        host = DockerHost.objects.filter(name=own).exclude(state=DockerHost.State.DOWN).first()
        if host:
            listed.insert(0, hosts.host_record(host))
    named = {h.name for h in listed}
    for host in in_region.filter(state=DockerHost.State.DRAINING).exclude(name__in=named).order_by("name"):
        listed.append(hosts.host_record(host, drain=True))
    return listed


def backend_for(environment: Environment) -> Backend:
    path = settings.STACKPORT_BACKENDS[environment.project.region.backend]
    return get_backend(path, hosts=hosts_for(environment))


def component_logs(environment: Environment, component: str, tail: int) -> list[str]:
    """The last ``tail`` lines of each replica of ``component``, as the backend gives them
    (``<replica> <timestamp> <text>``). Nothing when the stack never ran. Raises
    ``BackendError`` (with a message for the customer) when they cannot be read."""
    if not environment.backend_state:
        return []
    try:
        return list(
            backend_for(environment).logs(environment.key, environment.backend_state, component, tail=tail)
        )
    except OperationFailed as exc:
        raise BackendError(str(exc), permanent=False) from exc
    except OSError as exc:  # an engine that does not answer before the backend saw it
        raise BackendError("The host running this stack does not answer.", permanent=False) from exc


def edge() -> EdgeRouting:
    """A client of the configured edge router (``stacks.runtime.edges``)."""
    return edges.edge()


def drainer(
    environment: Environment, rec: Recorder, backend: Backend | None = None, spec: StackSpec | None = None
) -> Drain:
    """What a backend calls before public replicas of ``environment`` stop (``Backend.apply``):
    the edge drains their upstream addresses on every route of the environment (no new
    request; HAProxy, a no-op on Caddy) and this waits, at most ``DRAIN_TIMEOUT`` seconds,
    for the requests they serve to finish. An edge that does not answer does not hold the
    operation up: the replicas stop anyway (the edge's retries cover what it can).

    The replicas that serve on are routed first when a route lacks them (with ``backend``
    and ``spec``): a move's new replicas run on another host, at addresses the edge does not
    route yet. The routes then list the replicas that serve on and those that go, and this
    waits ``ROUTE_PICKUP`` seconds for the edge's checks to find the new ones; the
    operation's "Route traffic" step writes the full routes after. A blue/green swap's new
    replicas are routed already (both colours' slots): nothing is written."""

    def drain(leaving: list[str], serving: list[str]) -> None:
        try:
            with edge() as router:
                present = router.routes()
                ids = [route_id for route_id in route_ids(environment) if route_id in present]
                unrouted = any(not set(serving) <= set(router.route_upstreams(present[i])) for i in ids)
                if unrouted and serving and backend is not None and spec is not None:
                    rec.line(f"routing {len(serving)} new public replica(s) on the edge first")
                    sync_routes(environment, backend, spec, upstreams=sorted({*serving, *leaving}))
                    time.sleep(ROUTE_PICKUP)
                for route_id in ids:
                    router.drain(route_id, leaving)
                for route_id in ids:
                    if not router.wait_drained(route_id, leaving, timeout=DRAIN_TIMEOUT):
                        rec.line(f"requests still running after {DRAIN_TIMEOUT} s: stopping anyway")
        except (EdgeError, OSError) as exc:
            rec.line(f"the edge could not drain the old replicas: {getattr(exc, 'message', exc)}")

    return drain


def routed_domains(environment: Environment) -> QuerySet[Domain]:
    """The environment's domains that the edge serves: those whose claim is verified
    (docs/domains.md); pending ones are not routed."""
    return environment.domains.filter(claim__verified_at__isnull=False)


def route_ids(environment: Environment) -> list[str]:
    ids = [environment.key]
    ids += [
        f"{environment.key}-d{pk}"
        for pk in routed_domains(environment).exclude(path_prefix="").values_list("pk", flat=True)
    ]
    return ids


def site_page(environment: Environment) -> str:
    """The page the edge answers (503) for a site that does not run: "temporarily
    unavailable" while its project is suspended, "stopped" otherwise. No customer data in
    it: the same page for every site in that state."""
    suspended = environment.project.suspended_at is not None
    return render_to_string(
        "stacks/site_unavailable.html", {"suspended": suspended, "site_name": settings.STACKPORT_SITE_NAME}
    )


def route_changes(
    environment: Environment, upstreams: list[str], present: Iterable[str], *, running: bool = True
) -> tuple[list[Route], list[str]]:
    """The environment's routes (its default host name and plain domains in one route, each
    path-prefix domain in its own; none without upstreams) and, of the route ids
    ``present`` on the edge, those of the environment to remove. A site that is not
    ``running`` keeps its routes, answering its stopped page (``site_page``)."""
    on_edge = set(present)
    if not upstreams:
        return [], [r for r in route_ids(environment) if r in on_edge]
    page = None if running else site_page(environment)
    plain = [d.hostname for d in routed_domains(environment).filter(path_prefix="")]
    routes = [Route(environment.key, [environment.hostname, *plain], upstreams, page=page)]
    for domain in routed_domains(environment).exclude(path_prefix=""):
        routes.append(
            Route(
                f"{environment.key}-d{domain.pk}",
                [domain.hostname],
                upstreams,
                domain.path_prefix,
                strip_prefix=domain.strip_prefix,
                page=page,
            )
        )
    wanted = {route.route_id for route in routes}
    stray = [r for r in on_edge if r.startswith(f"{environment.key}-d") and r not in wanted]
    return routes, sorted(stray)


def sync_routes(
    environment: Environment, backend: Backend, spec: StackSpec, upstreams: list[str] | None = None
) -> bool:
    """The environment's routes on the edge (``route_changes``): proxied while ``spec``
    runs, the stopped page otherwise. Writes only what changed
    (a route at a time: one domain change is one route; the reconciler writes in bulk).
    ``upstreams``: these instead of the backend's (a move's, while it swaps hosts)."""
    if upstreams is None:
        upstreams = backend.upstreams(spec, environment.backend_state)
    changed = False
    with edge() as router:
        changed = router.ensure_https()  # a write only the first time (docs/domains.md)
        running = spec.running and environment.project.suspended_at is None
        routes, remove = route_changes(environment, upstreams, router.routes(), running=running)
        for route in routes:
            # Only what a route uses, so a plain route is the plain set_route call.
            options: dict[str, Any] = {
                "path_prefix": route.path_prefix,
                "strip_prefix": route.strip_prefix,
                "page": route.page,
            }
            given = {name: value for name, value in options.items() if value}
            changed |= router.set_route(route.route_id, list(route.hosts), list(route.upstreams), **given)
        for route_id in remove:
            changed |= router.remove_route(route_id)
    return changed


# --- the runner ---------------------------------------------------------------------------------
class Recorder:
    """Steps and log lines of one operation, saved as they happen (the UI polls them)."""

    def __init__(self, operation: Operation) -> None:
        self.operation = operation

    def line(self, text: str) -> None:
        stamp = timezone.now().strftime("%H:%M:%S")
        op = self.operation
        op.log = (op.log + f"{stamp} {text}\n")[-LOG_MAX_CHARS:]
        op.heartbeat_at = timezone.now()
        Operation.objects.filter(pk=op.pk).update(log=op.log, heartbeat_at=op.heartbeat_at)

    def plan(self, names: list[str]) -> None:
        done = {s["name"]: s for s in self.operation.steps if s.get("status") == "done"}
        self.operation.steps = [done.get(n) or {"name": n, "status": "pending"} for n in names]
        self._save_steps()

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        entry = next(s for s in self.operation.steps if s["name"] == name)
        entry.update(status="running", started=timezone.now().isoformat())
        self._save_steps()
        self.line(name)
        try:
            result = fn()
        except Exception:
            entry.update(status="failed", finished=timezone.now().isoformat())
            self._save_steps()
            raise
        entry.update(status="done", finished=timezone.now().isoformat())
        self._save_steps()
        return result

    def _save_steps(self) -> None:
        Operation.objects.filter(pk=self.operation.pk).update(steps=self.operation.steps)


def _claim(operation_id: int) -> Operation | None:
    stale = timezone.now() - timedelta(seconds=settings.STACKPORT_OPERATION_STALE_SECONDS)
    with transaction.atomic():
        op = Operation.objects.select_for_update().filter(pk=operation_id).first()
        if op is None or op.status not in (OperationStatus.QUEUED, OperationStatus.RUNNING):
            return None
        if op.status == OperationStatus.RUNNING and op.heartbeat_at and op.heartbeat_at > stale:
            return None  # another worker is on it
        op.status = OperationStatus.RUNNING
        op.started_at = op.started_at or timezone.now()
        op.heartbeat_at = timezone.now()
        op.attempts += 1
        op.save(update_fields=["status", "started_at", "heartbeat_at", "attempts"])
    return op


def _heartbeat(operation_id: int, stop: threading.Event) -> None:
    try:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                Operation.objects.filter(pk=operation_id, status=OperationStatus.RUNNING).update(
                    heartbeat_at=timezone.now()
                )
            except DatabaseError:  # a database restart: the next beat reconnects
                _drop_connection()
    finally:
        connection.close()


def _drop_connection() -> None:
    """Forget this thread's database connection (broken by a restart); the next query
    opens a new one."""
    with contextlib.suppress(DatabaseError):
        connection.close()
    connection.connection = None


def wait_for_database(seconds: float = DATABASE_WAIT_SECONDS) -> bool:
    """Reconnect to a database that went away (restarted); False when it did not come back
    within ``seconds``."""
    deadline = timezone.now() + timedelta(seconds=seconds)
    while True:
        _drop_connection()
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            return True
        except DatabaseError:
            if timezone.now() >= deadline:
                return False
        threading.Event().wait(1)


def run_operation(operation_id: int) -> str | None:
    """Run (or resume) one operation; returns its final status, None when not claimed."""
    if Operation.objects.filter(pk=operation_id, kind=OperationKind.RESTORE).exists():
        # Restores have their own runner; one whose worker died is failed, never redeployed.
        return backups.resume_restore(operation_id)
    op = _claim(operation_id)
    if op is None:
        return None
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(op.pk, stop), daemon=True)
    beat.start()
    recorder = Recorder(op)
    if op.attempts > 1:
        recorder.line(f"resuming (attempt {op.attempts})")
    environment = Environment.objects.select_related("project__region", "kernel").get(pk=op.environment_id)
    try:
        _run(op, environment, recorder)
    except (OperationalError, InterfaceError) as exc:
        _database_lost(op, recorder, exc)
    finally:
        stop.set()
        beat.join(timeout=HEARTBEAT_SECONDS + 1)
    return op.status


def _database_lost(op: Operation, recorder: Recorder, exc: Exception) -> None:
    """The database went away mid-operation (a restart): what the engines did stays, what
    the database knows may lag a step behind. Every step is idempotent, so once it is back
    the operation is queued again and resumes; when it does not come back in time, its
    heartbeat goes stale and the reconciler resumes it."""
    log.warning("operation_database_lost", operation=op.pk, kind=op.kind, error=str(exc)[:300])
    if not wait_for_database():
        log.warning("operation_database_gone", operation=op.pk)
        return
    try:
        recorder.line(f"the database connection was lost ({str(exc).strip()[:120]}); resuming")
        _retry_later(op, retry_delay(1))
    except (
        DatabaseError,
        OSError,
        KombuError,
    ) as again:  # lost again, or the broker: the reconciler resumes it
        log.warning("operation_requeue_failed", operation=op.pk, error=str(again)[:300])


def _run(op: Operation, environment: Environment, recorder: Recorder) -> None:
    try:
        if op.attempts > settings.STACKPORT_OPERATION_MAX_ATTEMPTS + RESUME_ALLOWANCE:
            # Claimed again and again without ever finishing (a worker killed every time):
            # stop here rather than loop.
            raise OperationFailed(f"interrupted {op.attempts - 1} times without finishing")
        if op.kind == OperationKind.DESTROY:
            _destroy(op, environment, recorder)
        elif op.params.get("move_data"):
            failure = _move_with_data(op, environment, recorder)
            if failure:  # put back on its old host, which serves as before
                _finish(op, OperationStatus.FAILED, failure)
                return
        else:
            _converge(op, environment, recorder)
        _finish(op, OperationStatus.SUCCEEDED)
    except (BackendError, EdgeError, SpecError, OperationFailed, OSError, ValueError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        if is_transient(exc) and op.attempts < settings.STACKPORT_OPERATION_MAX_ATTEMPTS:
            delay = retry_delay(op.attempts)
            recorder.line(f"attempt {op.attempts} failed: {message}; trying again in {delay} s")
            log.warning("operation_retry", operation=op.pk, kind=op.kind, error=message, delay=delay)
            _retry_later(op, delay)
        else:
            if is_transient(exc):
                message = f"{message}\nGave up after {op.attempts} attempts."
            _give_up(op, environment, recorder, message)
    except (OperationalError, InterfaceError):
        raise  # the database itself: run_operation waits for it and resumes
    except Exception as exc:  # a bug: never an operation that loops or an environment left deploying
        log.exception("operation_crashed", operation=op.pk, kind=op.kind)
        _give_up(op, environment, recorder, f"internal error ({type(exc).__name__}); support has been told")


def is_transient(exc: BaseException) -> bool:
    """May the same call succeed later? Backend and edge errors say so with ``permanent``;
    an engine or router that does not answer (OSError) is transient; anything else is not."""
    if isinstance(exc, (BackendError, EdgeError)):
        return not exc.permanent
    return isinstance(exc, OSError)


def retry_delay(attempt: int) -> int:
    """Seconds before the next attempt: 5, 10, 20, ... at most five minutes."""
    return int(min(5 * 2 ** max(attempt - 1, 0), 300))


def _retry_later(op: Operation, delay: int) -> None:
    """Back to the queue; the task runs it again after ``delay`` (the reconciler would too,
    once it looks stale: claiming is exclusive, so it runs once)."""

    op.status = OperationStatus.QUEUED
    # heartbeat_at in the future: the reconciler leaves it alone until the retry is due.
    Operation.objects.filter(pk=op.pk, status=OperationStatus.RUNNING).update(
        status=OperationStatus.QUEUED, heartbeat_at=timezone.now() + timedelta(seconds=delay)
    )
    tasks.run_operation_task.apply_async((op.pk,), countdown=delay)


def _give_up(op: Operation, environment: Environment, rec: Recorder, message: str) -> None:
    rec.line(f"failed: {message}")
    log.warning("operation_failed", operation=op.pk, kind=op.kind, error=message)
    try:
        message = settle_after_failure(op, environment, rec, message)
    except Exception:  # settling must not keep the operation from finishing
        log.exception("operation_settle_failed", operation=op.pk)
        _set_env(environment, status=EnvironmentStatus.FAILED, status_detail=_first_line(message)[:300])
    _finish(op, OperationStatus.FAILED, message)


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "unknown error"


def settle_after_failure(op: Operation, environment: Environment, rec: Recorder, message: str) -> str:
    """Leave the environment in a defined state after ``op`` gave up, whatever step failed,
    and return the operation's final message.

    The desired rows go back to the applied release (pages, quotas and metering show what
    runs, not a target that never ran). When the operation was moving to another release,
    the applied one is put back (blue/green components never stopped; anything replaced in
    place is applied again) and keeps serving: ``running``. Otherwise what runs is observed:
    ``degraded`` while some of it serves, ``failed`` (with the action that fixes it) when
    nothing does. Never ``deploying`` without an operation in flight."""
    environment.refresh_from_db()
    kind = op.get_kind_display()
    short = _first_line(message)[:200]
    if op.kind == OperationKind.DESTROY:
        _set_env(
            environment,
            status=EnvironmentStatus.FAILED,
            status_detail=f"Removing it failed: {short}. Destroy it again to retry.",
        )
        return message
    applied = environment.current_release
    if applied is not None:
        set_component_rows(environment, copy.deepcopy(applied.spec.get("components", [])))
    touched = environment.status == EnvironmentStatus.DEPLOYING or op.kind == OperationKind.STOP
    if not touched:  # failed before anything changed (a fetch, a sample): as it was
        if applied is None:
            _set_env(
                environment,
                status=EnvironmentStatus.FAILED,
                status_detail=f"{kind} failed: {short}. Fix the cause and deploy again.",
            )
        return message
    if applied is not None and op.release_id not in (None, applied.pk):
        rec.line(f"putting release {applied.number} back")
        try:
            spec = build_spec(environment, applied)
            backend = backend_for(environment)
            drain = drainer(environment, rec, backend, spec)
            save_state(environment, backend, backend.apply(spec, environment.backend_state, rec.line, drain))
            sync_routes(environment, backend, spec)
        except (BackendError, EdgeError, SpecError, OSError) as again:
            rec.line(f"putting it back failed too: {getattr(again, 'message', again)}")
        else:
            _set_env(
                environment,
                status=EnvironmentStatus.RUNNING if spec.running else EnvironmentStatus.STOPPED,
                status_detail=f"{kind} failed: {short}. Release {applied.number} is serving again.",
            )
            return f"{message}\nRelease {applied.number} is serving again."
    status, detail = _observed_status(environment, applied or op.release, op, short)
    _set_env(environment, status=status, status_detail=detail[:300])
    return message


def _observed_status(
    environment: Environment, release: Release | None, op: Operation, short: str
) -> tuple[str, str]:
    """What runs after a failed operation that had nothing to go back to."""
    kind = op.get_kind_display()
    retry = "Press Start to try again." if op.kind == OperationKind.START else "Deploy again to retry."
    if op.kind == OperationKind.STOP:
        retry = "Press Stop to try again."
    if release is None:
        return EnvironmentStatus.FAILED, f"{kind} failed: {short}. {retry}"
    try:
        spec = build_spec(environment, release)
        observed = backend_for(environment).observe(spec, environment.backend_state)
    except (BackendError, SpecError, OperationFailed, OSError) as exc:
        detail = getattr(exc, "message", str(exc))[:100]
        return EnvironmentStatus.FAILED, f"{kind} failed: {short}. Its host cannot be reached ({detail})."
    running = [r for r in observed.replicas if r.status == "running"]
    if op.kind == OperationKind.STOP:
        if not running:
            return EnvironmentStatus.STOPPED, ""
        return EnvironmentStatus.DEGRADED, f"{kind} failed: {short}. Some replicas still run. {retry}"
    wanted = sum(c.replicas for c in spec.components) if spec.running else 0
    if wanted and len(running) >= wanted:
        return EnvironmentStatus.DEGRADED, f"The containers run but the site does not answer: {short}."
    if running:
        return (
            EnvironmentStatus.DEGRADED,
            f"{kind} failed: {short}. {len(running)} of {wanted} replicas run. {retry}",
        )
    return EnvironmentStatus.FAILED, f"{kind} failed: {short}. Nothing runs. {retry}"


def _finish(op: Operation, status: str, error: str = "") -> None:
    op.status, op.error, op.finished_at = status, error[:5000], timezone.now()
    Operation.objects.filter(pk=op.pk).update(status=status, error=op.error, finished_at=op.finished_at)


def save_state(environment: Environment, backend: Backend, state: dict[str, Any]) -> None:
    """Keep the backend's bookkeeping (opaque) and record where the stack lives from what
    the backend says of it (its home host and the hosts its replicas use)."""
    _set_env(environment, backend_state=state)
    hosts = backend.hosts_of(state)
    home = DockerHost.objects.filter(name=hosts[0]).first() if hosts else None
    Placement.objects.update_or_create(environment=environment, defaults={"host": home, "hosts": hosts})


def _set_env(environment: Environment, **fields: Any) -> None:
    for key, value in fields.items():
        setattr(environment, key, value)
    Environment.objects.filter(pk=environment.pk).update(**fields)


def _converge(op: Operation, environment: Environment, rec: Recorder) -> None:
    release = op.release or environment.current_release
    if release is None:
        raise OperationFailed("nothing to deploy")
    running = op.kind != OperationKind.STOP and environment.desired_running
    if op.kind == OperationKind.START:
        running = True
    steps = []
    if op.params.get("git_url") and not release.content_sha256:
        steps.append("Fetch the repository")
    # A template's sample is named on the release and made here, once (then it has content).
    sample = bool(
        release.source == Release.Source.TEMPLATE and release.source_detail and not release.content_sha256
    )
    if sample:
        steps.append("Make the sample application")
    has_content = bool(release.content_sha256 or op.params.get("git_url") or sample)
    # Customer content only (the template samples install nothing).
    customer = release.source in (Release.Source.UPLOAD, Release.Source.GIT)
    build = has_content and running and customer and builds.wants_build(release)
    if build:
        steps.append(builds.STEP)
    if has_content:
        steps.append("Prepare the content")
    if op.params.get("migrate"):
        steps.append("Copy the data to the new version")
    steps += ["Start the containers" if running else "Stop the containers", "Route traffic"]
    if running:
        steps.append("Check the site")
    rec.plan(steps)
    # Fetched before the environment says "deploying": a branch that does not exist leaves
    # the running release as it was, status included.
    if "Fetch the repository" in steps:
        rec.step("Fetch the repository", lambda: _fetch_git(op, release))
    if "Make the sample application" in steps:
        rec.step("Make the sample application", lambda: _make_sample(release))
    # Built before the environment says "deploying", like the fetch: a build that fails
    # leaves the running release serving and the status as it was.
    if build:
        builder = backend_for(environment)
        rec.step(builds.STEP, lambda: _build(op, environment, release, builder, running, rec))
    if op.kind != OperationKind.STOP:
        _set_env(environment, status=EnvironmentStatus.DEPLOYING, status_detail=op.get_kind_display())
    backend = backend_for(environment)

    spec = build_spec(environment, release, running=running)
    if "Prepare the content" in steps:
        image = next((c.image for c in spec.components if c.content_path), None)
        rec.step(
            "Prepare the content",
            lambda: _put_content(backend, environment, release, image),
        )
    if "Copy the data to the new version" in steps:
        rec.step("Copy the data to the new version", lambda: _migrate(op, environment, backend, spec, rec))

    def apply() -> None:
        drain = drainer(environment, rec, backend, spec)
        save_state(environment, backend, backend.apply(spec, environment.backend_state, rec.line, drain))

    rec.step("Start the containers" if running else "Stop the containers", apply)
    rec.step("Route traffic", lambda: sync_routes(environment, backend, spec))
    if running:
        rec.step("Check the site", lambda: _check_site(environment, backend, spec, rec))
        _mark_ran(release, spec)
    if op.params.get("migrate") == "dump-restore":
        _measure_kept_data(op, environment, backend)
    # The variables the containers now have (the page says when they changed since).
    op.params = {**op.params, "variables": variables_fingerprint(environment)}
    Operation.objects.filter(pk=op.pk).update(params=op.params)
    _set_env(
        environment,
        current_release=release,
        status=EnvironmentStatus.RUNNING if running else EnvironmentStatus.STOPPED,
        status_detail="",
    )


# --- moving a stateful environment to another host ----------------------------------------------
def _move_failures() -> tuple[type[Exception], ...]:
    """What ends a stateful move's steps (read at run time: ``backups`` imports this module)."""
    return (
        BackendError,
        EdgeError,
        SpecError,
        OperationFailed,
        OSError,
        ValueError,
        ServiceError,
        DockerHost.DoesNotExist,
        backups.BackupFailed,
    )


def _move_with_data(op: Operation, environment: Environment, rec: Recorder) -> str:
    """A support move of an environment that keeps data (docs/backends.md, "Moving a stateful
    environment"): the writers (every stateless component) stop on the old host, a last
    backup of every piece of data is taken (``backups.take_now``), the stack is made on the
    new host and the backup restored into it (``backups.rebuild_on``, the path of a restore
    after a host loss), it starts there, the edge routes to it, and once it answers through
    the edge the old copy (containers, network, volumes) is removed from the old host.

    The new copy is built by a backend that sees the new host only, so nothing of the old
    copy is touched until the new one answers. A failure before that puts the environment
    back on its old host, running as before on its own volumes, and returns the operation's
    error; "" when it moved. Progress is kept in ``params["move"]`` (for this operation's
    id: a retry starts afresh, with a new backup), so a worker that died is resumed by the
    reconciler where it was: the same backup is restored, and after the switch only the
    old copy is left to remove. The downtime, from the writers' stop to the new copy's
    first answer through the edge, is ``params["downtime_seconds"]``."""
    release = environment.current_release
    if release is None:
        raise OperationFailed("nothing is deployed, so there is nothing to move")
    source, target = str(op.params["from_host"]), str(op.params["to_host"])
    progress = op.params.get("move") or {}
    if progress.get("operation") != op.pk:
        progress = {"operation": op.pk, "state_before": environment.backend_state}
        _move_progress(op, progress)
    before: dict[str, Any] = progress["state_before"]
    rec.plan(
        [
            f"Stop the writers on {source}",
            "Back up the data",
            f"Restore it on {target}",
            f"Start the stack on {target}",
            "Route traffic",
            "Check the site",
            f"Remove the old copy from {source}",
        ]
    )
    spec = build_spec(environment, release)
    if not progress.get("answered_at"):
        _set_env(environment, status=EnvironmentStatus.DEPLOYING, status_detail=f"Moving to {target}")
        try:
            _move_to(op, environment, rec, spec, before, progress)
        except _move_failures() as exc:
            message = getattr(exc, "message", None) or str(exc)
            return _move_back(op, environment, rec, spec, before, message)
    rec.step(f"Remove the old copy from {source}", lambda: _remove_old_copy(environment, source, before, rec))
    _set_env(environment, status=EnvironmentStatus.RUNNING, status_detail="")
    return ""


def _move_progress(op: Operation, progress: dict[str, Any], **params: Any) -> None:
    op.params = {**op.params, **params, "move": progress}
    Operation.objects.filter(pk=op.pk).update(params=op.params)


def _backend_on(environment: Environment, host: str) -> Backend:
    """A backend of the environment that sees ``host`` only."""
    record = hosts.host_record(DockerHost.objects.get(name=host))
    return get_backend(settings.STACKPORT_BACKENDS[environment.project.region.backend], hosts=[record])


def _move_to(
    op: Operation,
    environment: Environment,
    rec: Recorder,
    spec: StackSpec,
    before: dict[str, Any],
    progress: dict[str, Any],
) -> None:
    source, target = str(op.params["from_host"]), str(op.params["to_host"])
    release = environment.current_release
    assert release is not None
    there = _backend_on(environment, target)

    def stop_writers() -> None:
        quiet = dataclasses.replace(
            spec,
            components=tuple(
                c if c.stateful else dataclasses.replace(c, replicas=0) for c in spec.components
            ),
        )
        stopping = timezone.now().isoformat()
        backend_for(environment).apply(quiet, before, rec.line)  # the old copy's state, unchanged
        if not progress.get("writes_stopped_at"):
            progress["writes_stopped_at"] = stopping
            _move_progress(op, progress)
        rec.line("the writers are stopped: the site is down from here until it answers on " + target)

    def back_up() -> None:
        progress["batch"] = backups.take_now(
            environment, rec.line, batch=progress.get("batch", ""), actor=op.requested_by
        )
        _move_progress(op, progress)

    def restore() -> None:
        pieces = backups.rebuild_on(environment, before, target, progress["batch"], rec.line, backend=there)
        for piece in pieces:
            rec.line(f"restoring {piece.component} on {target}")
            kept = backups.restore(piece, environment, log_line=rec.line)
            if kept:  # a resumed move's earlier, partial restore there: nothing to keep
                there.drop_kept(environment.key, environment.backend_state, kept)

    if progress.get("routed"):
        # Resumed after the edge switched: the new copy may have taken writes; it stays.
        rec.line(f"resuming after the switch: the copy on {target} is the one kept")
    else:
        # Until the new copy answers, the environment lives where it was (a resumed move too).
        save_state(environment, backend_for(environment), before)
        rec.step(f"Stop the writers on {source}", stop_writers)
        rec.step("Back up the data", back_up)
        rec.step(f"Restore it on {target}", restore)

    def start() -> None:
        if release.content_sha256:
            image = next((c.image for c in spec.components if c.content_path), None)
            _put_content(there, environment, release, image)
        save_state(environment, there, there.apply(spec, environment.backend_state, rec.line))

    rec.step(f"Start the stack on {target}", start)

    def route() -> None:
        sync_routes(environment, there, spec)
        progress["routed"] = True
        _move_progress(op, progress)

    rec.step("Route traffic", route)
    rec.step("Check the site", lambda: _check_site(environment, there, spec, rec))
    answered = timezone.now()
    stopped = datetime.fromisoformat(progress.get("writes_stopped_at") or answered.isoformat())
    downtime = round((answered - stopped).total_seconds(), 1)
    progress["answered_at"] = answered.isoformat()
    _move_progress(op, progress, downtime_seconds=downtime)
    rec.line(f"{environment.hostname} answers from {target}: {downtime} s without service")
    record_audit_event(
        action="environment.moved",
        actor=op.requested_by,
        organization=environment.project.organization,
        target=f"environment {environment.pk}",
        data={
            "operation": op.pk,
            "from_host": source,
            "to_host": target,
            "batch": progress["batch"],
            "downtime_seconds": downtime,
        },
    )


def _move_back(
    op: Operation, environment: Environment, rec: Recorder, spec: StackSpec, before: dict[str, Any], why: str
) -> str:
    """A stateful move that failed before the new copy answered: what was made on the new
    host goes (the reconciler removes what could not be), the old copy starts again on its
    own volumes, untouched, and the edge routes to it. The operation's error."""
    source, target = str(op.params["from_host"]), str(op.params["to_host"])
    release = environment.current_release
    assert release is not None
    rec.line(f"the move failed: {why}; putting it back on {source}")
    try:
        _backend_on(environment, target).destroy(environment.key, environment.backend_state)
    except (BackendError, OSError, DockerHost.DoesNotExist) as exc:
        rec.line(f"what was made on {target} stays for the reconciler: {getattr(exc, 'message', exc)}")
    try:
        save_state(environment, backend_for(environment), before)
        backend = backend_for(environment)
        if release.content_sha256:
            image = next((c.image for c in spec.components if c.content_path), None)
            _put_content(backend, environment, release, image)
        save_state(environment, backend, backend.apply(spec, before, rec.line))
        sync_routes(environment, backend, spec)
    except _move_failures() as exc:
        detail = getattr(exc, "message", None) or str(exc)
        rec.line(f"starting it again on {source} failed too: {detail}")
        _set_env(
            environment,
            status=EnvironmentStatus.FAILED,
            status_detail=f"The move to {target} failed and it did not start again on {source} "
            f"(its data is there, untouched): {detail}"[:300],
        )
        return f"The move to {target} failed: {why}\nStarting it again on {source} failed too: {detail}"
    _set_env(
        environment,
        status=EnvironmentStatus.RUNNING,
        status_detail=f"The move to {target} failed; it runs on {source} as before."[:300],
    )
    rec.line(f"it runs on {source} again, on its own data")
    return f"The move to {target} failed: {why}\nNothing was lost: it runs on {source} as before."


def _remove_old_copy(environment: Environment, source: str, before: dict[str, Any], rec: Recorder) -> None:
    """The old copy's containers, network and volumes off ``source`` (the new copy answers).
    Best effort: what stays is removed by the reconciler (a copy on a host its placement
    does not name)."""
    try:
        _backend_on(environment, source).destroy(environment.key, before)
    except (BackendError, OSError, DockerHost.DoesNotExist) as exc:
        rec.line(f"the old copy on {source} stays for the reconciler: {getattr(exc, 'message', exc)}")
        return
    rec.line(f"removed the old copy (containers, network and volumes) from {source}")


def _measure_kept_data(op: Operation, environment: Environment, backend: Backend) -> None:
    """The size of the data a dump-and-restore upgrade kept (``stacks.runtime.old_data``),
    measured once: nothing runs on it any more. Best effort: unmeasured, it is listed
    without a size."""
    component = op.params.get("component", "")
    if op.previous_release is None:
        return
    try:
        old = build_spec(environment, op.previous_release)
        only = dataclasses.replace(old, components=tuple(c for c in old.components if c.name == component))
        used = backend.volume_usage(only, environment.backend_state)
    except (BackendError, SpecError) as exc:
        log.warning("old_data_not_measured", operation=op.pk, error=getattr(exc, "message", str(exc)))
        return
    op.params = {**op.params, "old_data_bytes": sum(u.used_bytes for u in used)}
    Operation.objects.filter(pk=op.pk).update(params=op.params)


def _mark_ran(release: Release, spec: StackSpec) -> None:
    """The release ran to the end: a rollback target from now on, with the images it ran."""
    fields: dict[str, Any] = {}
    if release.ran_at is None:
        fields["ran_at"] = release.ran_at = timezone.now()
    if not release.images:
        fields["images"] = release.images = {c.name: c.image for c in spec.components}
    if fields:
        Release.objects.filter(pk=release.pk).update(**fields)


def _fetch_git(op: Operation, release: Release) -> None:
    project = op.environment.project
    try:
        content = fetch_git(
            decrypt(op.params["git_url_encrypted"].encode()),
            op.params["branch"],
            max_unpacked_bytes=settings.STACKPORT_CONTENT_MAX_BYTES,
            max_files=settings.STACKPORT_CONTENT_MAX_FILES,
            timeout=settings.STACKPORT_GIT_TIMEOUT_SECONDS,
            max_download_bytes=settings.STACKPORT_GIT_MAX_DOWNLOAD_BYTES,
            trusted_hosts=settings.STACKPORT_GIT_TRUSTED_HOSTS,
            workdir=content_store.workdir(),
            ssh_key=deploy_key_of(project),
            known_hosts=project.ssh_known_hosts,
        )
    except ContentError as exc:
        raise OperationFailed(exc.message) from exc
    if content.known_hosts:
        record_ssh_host_keys(project_id=project.pk, known_hosts=content.known_hosts)
    stored = content_store.save(content.path)
    release.content_sha256, release.content_files, release.content_bytes = (
        stored.sha256,
        stored.files,
        stored.size,
    )
    release.commit = content.commit or ""
    release.save(update_fields=["content_sha256", "content_files", "content_bytes", "commit"])


def _put_content(backend: Backend, environment: Environment, release: Release, image: str | None) -> None:
    """The release's stored content onto the hosts, streamed from the store's file."""
    try:
        archive = content_store.open_archive(release.content_sha256)
    except FileNotFoundError:
        raise OperationFailed(
            f"The content of release {release.number} is no longer stored (the content of old "
            "releases is removed to save space). Deploy the content again."
        ) from None
    with contextlib.ExitStack() as opened:
        opened.enter_context(archive)
        extras = []
        if release.build_key:
            try:
                extras.append(opened.enter_context(builds.open_artifact(release.build_key)))
            except FileNotFoundError:
                raise OperationFailed(
                    f"The dependencies built for release {release.number} are no longer stored; deploy again."
                ) from None
        backend.put_content(
            environment.key, environment.backend_state, release.content_id, archive, image, extras
        )


def _build(
    op: Operation, environment: Environment, release: Release, backend: Backend, running: bool, rec: Recorder
) -> None:
    """The release's dependencies (stacks.runtime.builds); the outcome on the operation
    (the log, and ``params["build"]``: metered build time)."""
    spec = build_spec(environment, release, running=running)
    try:
        outcome = builds.build(release, spec, backend, rec.line)
    except builds.BuildFailed as exc:
        raise OperationFailed(exc.message) from exc
    if outcome is not None:
        op.params = {**op.params, "build": outcome.as_params()}
        Operation.objects.filter(pk=op.pk).update(params=op.params)


def _make_sample(release: Release) -> None:
    """The release's content from its template's sample application (WordPress is built
    by the Docker engine: in the worker, never in a web request). The same name gives the
    same bytes, so doing it again stores nothing new."""

    try:
        stored = content_store.save(sample_archive(release.source_detail))
    except SampleError as exc:
        raise OperationFailed(f"The sample application could not be made: {exc}") from exc
    release.content_sha256, release.content_files, release.content_bytes = (
        stored.sha256,
        stored.files,
        stored.size,
    )
    release.save(update_fields=["content_sha256", "content_files", "content_bytes"])


def _migrate(
    op: Operation, environment: Environment, backend: Backend, spec: StackSpec, rec: Recorder
) -> None:
    name = op.params["component"]
    if op.previous_release is None:
        raise OperationFailed("no previous release to copy data from")
    old_spec = build_spec(environment, op.previous_release)
    old = next(c for c in old_spec.components if c.name == name)
    new = next(c for c in spec.components if c.name == name)
    if new.data_generation <= old.data_generation:
        return
    observed = backend.observe(old_spec, environment.backend_state)
    if not any(r.component == name and r.status == "running" for r in observed.replicas):
        raise OperationFailed(f"{name} is not running, so its data cannot be copied")
    backend.migrate_data(old_spec, environment.backend_state, old, new, rec.line)


def _check_site(environment: Environment, backend: Backend, spec: StackSpec, rec: Recorder) -> None:
    """Every replica healthy; the public page answers through the edge (not 5xx)."""
    observed = backend.observe(spec, environment.backend_state)
    bad = [f"{r.component}-{r.index}: {r.status}" for r in observed.replicas if r.status != "running"]
    if bad:
        raise OperationFailed("not running: " + ", ".join(bad))
    if not any(c.public_port for c in spec.components):
        return

    host, _, port = settings.STACKPORT_EDGE_LISTEN.rpartition(":")
    url = f"http://{host}:{port}/"
    deadline = timezone.now() + timedelta(seconds=CHECK_SITE_SECONDS)
    answer = "nothing"
    resynced = timezone.now()
    while timezone.now() < deadline:
        try:
            response = requests.get(
                url, headers={"Host": environment.hostname}, timeout=10, allow_redirects=False
            )
            status, text = response.status_code, response.text
            if status == 308 and response.headers.get("Location", "").startswith("https://"):
                # The name has its certificate: the edge sends HTTP on to HTTPS, checked there.
                with edge() as router:
                    status, text = router.get_over_https(environment.hostname)
        except (requests.RequestException, EdgeError) as exc:
            answer = "nothing"
            rec.line(f"edge not answering yet: {type(exc).__name__}")
        else:
            # The edge's own "no site here" (no route for the name) is not the site answering.
            if status == 404 and text == NOT_FOUND_BODY:
                answer = "the edge's not-found page (no route)"
                if timezone.now() - resynced >= timedelta(seconds=EDGE_RESYNC_SECONDS):
                    # The route was written a step ago: the edge lost it (restarted without
                    # its saved config). Writing it again is idempotent.
                    resynced = timezone.now()
                    rec.line("the edge has no route for the site (restarted?): writing it again")
                    with contextlib.suppress(EdgeError, OSError):
                        sync_routes(environment, backend, spec)
            elif status < 500:
                rec.line(f"{environment.hostname} answers {status} through the edge")
                return
            else:
                answer = str(status)
        threading.Event().wait(1)
    raise OperationFailed(f"{environment.hostname} answers {answer} through the edge")


def _destroy(op: Operation, environment: Environment, rec: Recorder) -> None:
    rec.plan(["Remove the routes", "Remove containers, networks and volumes"])
    _set_env(environment, status=EnvironmentStatus.DESTROYING)

    def unroute() -> None:
        with edge() as router:
            for route_id in route_ids(environment):
                router.remove_route(route_id)

    rec.step("Remove the routes", unroute)
    if environment.backend_state or DockerHost.objects.filter(region=environment.project.region).exists():
        backend = backend_for(environment)
        rec.step(
            "Remove containers, networks and volumes",
            lambda: backend.destroy(environment.key, environment.backend_state),
        )
    Domain.objects.filter(environment=environment).delete()
    _set_env(
        environment, status=EnvironmentStatus.DESTROYED, destroyed_at=timezone.now(), desired_running=False
    )


def close_connections() -> None:
    close_old_connections()


def sync_routes_for(environment_id: int) -> bool:
    """Routes of one environment after a domain change (no operation needed)."""
    environment = Environment.objects.select_related("project__region", "kernel", "current_release").get(
        pk=environment_id
    )
    if environment.current_release is None or environment.status == EnvironmentStatus.DESTROYED:
        return False
    backend = backend_for(environment)
    return sync_routes(environment, backend, build_spec(environment, environment.current_release))
