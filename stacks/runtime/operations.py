"""Running operations: what a Celery task does with an Operation id.

``run_operation`` claims the operation (a queued one, or a running one whose worker
stopped sending heartbeats), walks its steps against the backend and the edge router,
records every step and log line, and finishes it. Every step is idempotent, so an
operation interrupted anywhere (a killed worker) is simply run again by the reconciler.
A failed upgrade leaves, or puts back, the previous release: blue/green components never
stopped serving; anything replaced in place is rolled back automatically.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import structlog
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from projects.crypto import decrypt
from projects.models import Environment, EnvironmentStatus
from stacks.backends.base import Backend, BackendError, HostRecord, StackSpec, get_backend
from stacks.backends.edge import NOT_FOUND_BODY, EdgeError, EdgeRouter, Route
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
from stacks.runtime import content_store
from stacks.runtime.spec import SpecError, build_spec, set_component_rows, variables_fingerprint

log = structlog.get_logger(__name__)
HEARTBEAT_SECONDS = 5
CHECK_SITE_SECONDS = 30  # the public page must answer through the edge within this
LOG_MAX_CHARS = 200_000
RESUME_ALLOWANCE = 3  # claims beyond the retry cap (killed workers) before an operation gives up


class OperationFailed(Exception):
    pass


# --- backend and edge -----------------------------------------------------------------------------
def free_memory_mb(hosts: list[DockerHost]) -> dict[str, int]:
    """Memory not yet promised to the stacks living on each host (their sizes x replicas)."""
    from django.db.models import F, Sum

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
    hosts = list(in_region.filter(state=DockerHost.State.ACTIVE))
    free = free_memory_mb(hosts)
    listed = [HostRecord(h.name, h.url, h.address_pool) for h in hosts]
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
            listed.insert(0, HostRecord(host.name, host.url, host.address_pool))
    named = {h.name for h in listed}
    for host in in_region.filter(state=DockerHost.State.DRAINING).exclude(name__in=named).order_by("name"):
        listed.append(HostRecord(host.name, host.url, host.address_pool, drain=True))
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


def edge() -> EdgeRouter:
    return EdgeRouter(settings.STACKPORT_EDGE_ADMIN_URL, listen=[settings.STACKPORT_EDGE_LISTEN])


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


def route_changes(
    environment: Environment, upstreams: list[str], present: Iterable[str]
) -> tuple[list[Route], list[str]]:
    """The environment's routes (its default host name and plain domains in one route, each
    path-prefix domain in its own; none without upstreams) and, of the route ids
    ``present`` on the edge, those of the environment to remove."""
    on_edge = set(present)
    if not upstreams:
        return [], [r for r in route_ids(environment) if r in on_edge]
    plain = [d.hostname for d in routed_domains(environment).filter(path_prefix="")]
    routes = [Route(environment.key, [environment.hostname, *plain], upstreams)]
    for domain in routed_domains(environment).exclude(path_prefix=""):
        routes.append(
            Route(f"{environment.key}-d{domain.pk}", [domain.hostname], upstreams, domain.path_prefix)
        )
    wanted = {route.route_id for route in routes}
    stray = [r for r in on_edge if r.startswith(f"{environment.key}-d") and r not in wanted]
    return routes, sorted(stray)


def sync_routes(environment: Environment, backend: Backend, spec: StackSpec) -> bool:
    """The environment's routes on the edge (``route_changes``). Writes only what changed
    (a route at a time: one domain change is one route; the reconciler writes in bulk)."""
    upstreams = backend.upstreams(spec, environment.backend_state)
    changed = False
    with edge() as router:
        routes, remove = route_changes(environment, upstreams, router.routes())
        for route in routes:
            prefix = {} if route.path_prefix is None else {"path_prefix": route.path_prefix}
            changed |= router.set_route(route.route_id, list(route.hosts), list(route.upstreams), **prefix)
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
            Operation.objects.filter(pk=operation_id, status=OperationStatus.RUNNING).update(
                heartbeat_at=timezone.now()
            )
    finally:
        connection.close()


def run_operation(operation_id: int) -> str | None:
    """Run (or resume) one operation; returns its final status, None when not claimed."""
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
        if op.attempts > settings.STACKPORT_OPERATION_MAX_ATTEMPTS + RESUME_ALLOWANCE:
            # Claimed again and again without ever finishing (a worker killed every time):
            # stop here rather than loop.
            raise OperationFailed(f"interrupted {op.attempts - 1} times without finishing")
        if op.kind == OperationKind.DESTROY:
            _destroy(op, environment, recorder)
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
    except Exception as exc:  # a bug: never an operation that loops or an environment left deploying
        log.exception("operation_crashed", operation=op.pk, kind=op.kind)
        _give_up(op, environment, recorder, f"internal error ({type(exc).__name__}); support has been told")
    finally:
        stop.set()
        beat.join(timeout=HEARTBEAT_SECONDS + 1)
    return op.status


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
    from stacks.tasks import run_operation_task

    op.status = OperationStatus.QUEUED
    # heartbeat_at in the future: the reconciler leaves it alone until the retry is due.
    Operation.objects.filter(pk=op.pk, status=OperationStatus.RUNNING).update(
        status=OperationStatus.QUEUED, heartbeat_at=timezone.now() + timedelta(seconds=delay)
    )
    run_operation_task.apply_async((op.pk,), countdown=delay)


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
            save_state(environment, backend, backend.apply(spec, environment.backend_state, rec.line))
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
    if release.content_sha256 or op.params.get("git_url") or sample:
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
        save_state(environment, backend, backend.apply(spec, environment.backend_state, rec.line))

    rec.step("Start the containers" if running else "Stop the containers", apply)
    rec.step("Route traffic", lambda: sync_routes(environment, backend, spec))
    if running:
        rec.step("Check the site", lambda: _check_site(environment, backend, spec, rec))
        _mark_ran(release, spec)
    # The variables the containers now have (the page says when they changed since).
    op.params = {**op.params, "variables": variables_fingerprint(environment)}
    Operation.objects.filter(pk=op.pk).update(params=op.params)
    _set_env(
        environment,
        current_release=release,
        status=EnvironmentStatus.RUNNING if running else EnvironmentStatus.STOPPED,
        status_detail="",
    )


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
    from stacks.runtime.content import ContentError, fetch_git

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
        )
    except ContentError as exc:
        raise OperationFailed(exc.message) from exc
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
    with archive:
        backend.put_content(environment.key, environment.backend_state, release.content_id, archive, image)


def _make_sample(release: Release) -> None:
    """The release's content from its template's sample application (WordPress is built
    by the Docker engine: in the worker, never in a web request). The same name gives the
    same bytes, so doing it again stores nothing new."""
    from stacks.catalog.samples import SampleError, sample_archive

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
    import requests

    host, _, port = settings.STACKPORT_EDGE_LISTEN.rpartition(":")
    url = f"http://{host}:{port}/"
    deadline = timezone.now() + timedelta(seconds=CHECK_SITE_SECONDS)
    answer = "nothing"
    while timezone.now() < deadline:
        try:
            response = requests.get(
                url, headers={"Host": environment.hostname}, timeout=10, allow_redirects=False
            )
        except requests.RequestException as exc:
            answer = "nothing"
            rec.line(f"edge not answering yet: {type(exc).__name__}")
        else:
            # The edge's own "no site here" (no route for the name) is not the site answering.
            if response.status_code == 404 and response.text == NOT_FOUND_BODY:
                answer = "the edge's not-found page (no route)"
            elif response.status_code < 500:
                rec.line(f"{environment.hostname} answers {response.status_code} through the edge")
                return
            else:
                answer = str(response.status_code)
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
