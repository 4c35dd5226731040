"""Converge what runs to what was asked for, periodically (Celery beat) and on demand.

Level-triggered: one pass compares, per environment, what should run (its current
release, running or stopped) with what the engines hold, and queues at most one repair
operation for it; repairs run like any operation (``run_operation_task``: attempts cap,
backoff), never inside the pass, and the database's one-active-operation-per-environment
constraint is the lock. One pass:

- operations whose worker died are run again;
- every host is listed on its own (one list call per engine, not per container): a host
  that does not answer fails only the environments that live on it, for this pass;
- containers of stacks that should not exist (orphans) and copies of a stack on a host
  it no longer lives on (stale copies) are removed, by the backend of that host;
- an environment living on a host that is down (``stacks.runtime.hosts``) is moved off it
  when it is stateless (``support.evacuate_environment``), or marked degraded "waiting for
  host" when its data is there, and restored from its latest backup onto another host once
  the host has been down for ``STACKPORT_RESTORE_AFTER_HOST_DOWN_SECONDS``
  (``restore_from_backup``); a host whose engine was reinstalled is handled the same way,
  at once (``engine_reinstalled``), and in every pass for an environment built on it
  before the reinstall (``reinstalled_home``: never rebuilt onto its empty volumes);
- a running environment that misses a replica gets its current release applied again by a
  queued repair; one whose automatic repair failed is marked ``degraded`` (with why) and
  tried again after ``STACKPORT_RECONCILE_RETRY_SECONDS``, doubling; a ``failed`` one is
  tried on that slower schedule too; a stopped one that still runs containers is stopped;
- routes the edge lost or that differ are put back: the edge's routes are read once per
  pass, and the routes of every environment whose routes differ are written together at
  the end of the pass, in one config write (one reload of the router).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Max, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from projects.models import Environment, EnvironmentStatus
from projects.services import ServiceError
from stacks.backends.base import Backend, BackendError, HostRecord, ReplicaState, StackSpec, get_backend
from stacks.backends.edge import EdgeError, Route
from stacks.models import (
    ACTIVE_OPERATION_STATUSES,
    ComponentVersion,
    DockerHost,
    Operation,
    OperationKind,
    OperationStatus,
    Release,
    ResourceSampleRow,
    home_host,
    placed_hosts,
)
from stacks.runtime import backups, content_store, hosts, lifecycle, operations, support
from stacks.runtime.spec import SpecError, build_spec

log = structlog.get_logger(__name__)

# Operations the system queues by itself (their ``params["reason"]``): their failures back off.
AUTOMATIC_REASONS = ("reconcile", "host.down")
ALIVE = ("running", "starting")
WAITING_PREFIX = "Waiting for host"
MISSING_PREFIX = "Replicas missing"
HOST_DOWN_PREFIX = "Host down"
BULK_WRITE_TIMEOUT = 120.0  # seconds for the pass's one route write (see write_routes)
# Details the reconciler writes: it clears them itself once the stack runs as it should.
DATA_LOST_PREFIX = "Data lost"
RESTORE_PENDING_PREFIX = "Restore pending"
# Operations that (re)build a stack on its host: one started after a reinstall built it anew.
BUILDING_KINDS = (
    OperationKind.DEPLOY,
    OperationKind.SCALE,
    OperationKind.UPGRADE,
    OperationKind.ROLLBACK,
    OperationKind.START,
    OperationKind.RESTORE,
)
OWN_DETAILS = (WAITING_PREFIX, MISSING_PREFIX, HOST_DOWN_PREFIX, RESTORE_PENDING_PREFIX)
MAX_BACKOFF_DOUBLINGS = 4  # the slowest retry: 16 x STACKPORT_RECONCILE_RETRY_SECONDS
SETTLED = (
    EnvironmentStatus.RUNNING,
    EnvironmentStatus.DEGRADED,
    EnvironmentStatus.FAILED,
    EnvironmentStatus.STOPPED,
)


def waiting_detail(host: str, restore_at: datetime | None = None) -> str:
    """What the customer and support read on a stateful stack whose host is down (and when
    it is restored from its backup elsewhere if the host is not back by then)."""
    detail = (
        f"{WAITING_PREFIX} {host} to come back: it does not answer, and this stack's data is "
        "on it. Nothing is lost; it runs again as soon as the host is back."
    )
    if restore_at is not None:
        detail += (
            f" If it is not back by {restore_at:%H:%M} UTC, it is restored from its latest backup "
            "on another host."
        )
    return detail


def _restore_at(environment: Environment, lost_host: str) -> datetime | None:
    """When ``restore_from_backup`` will restore it (None: it will not)."""
    delay = settings.STACKPORT_RESTORE_AFTER_HOST_DOWN_SECONDS
    host = DockerHost.objects.filter(name=lost_host).first()
    if delay <= 0 or host is None or host.down_since is None:
        return None
    if not backups.latest_complete_batch(environment):
        return None
    return host.down_since + timedelta(seconds=delay)


def restore_from_backup(environment: Environment, lost_host: str, *, wait: bool = True) -> Operation | None:
    """Restore a stateful environment whose host is down from its latest complete backup
    onto another host of its region and kernel line (``backups.restore_on_another_host``);
    the queued restore. Only once the host has been down for
    ``STACKPORT_RESTORE_AFTER_HOST_DOWN_SECONDS`` (0: never, it waits for its host) unless
    ``wait`` is False (an engine that was reinstalled holds nothing to wait for), and after
    a failed attempt on the reconciler's slower schedule. None: nothing queued (too early,
    disabled, no backup, no room elsewhere, an operation runs): it waits for its host."""
    if wait:
        delay = settings.STACKPORT_RESTORE_AFTER_HOST_DOWN_SECONDS
        host = DockerHost.objects.filter(name=lost_host).first()
        if delay <= 0 or host is None or host.down_since is None:
            return None
        if host.down_since > timezone.now() - timedelta(seconds=delay):
            return None
    if not _due(environment, failed_status=False)[0]:
        return None
    try:
        with transaction.atomic():
            operation = backups.restore_on_another_host(environment=environment, lost_host=lost_host)
    except ServiceError as exc:
        log.info("reconcile_restore_skipped", environment=environment.pk, host=lost_host, reason=exc.message)
        return None
    log.info(
        "reconcile_restore_from_backup", environment=environment.pk, host=lost_host, operation=operation.pk
    )
    return operation


def data_lost_detail(host: str) -> str:
    """A stateful stack whose host's engine was reinstalled and that has no backup."""
    return (
        f"{DATA_LOST_PREFIX}: the engine of host {host} was reinstalled, and this stack's data was "
        "on it. There is no backup to restore it from: deploy again to start with empty data, "
        "or ask support."
    )


def restore_pending_detail(host: str) -> str:
    """A stateful stack whose host's engine was reinstalled, with a backup not restored yet."""
    return (
        f"{RESTORE_PENDING_PREFIX}: the engine of host {host} was reinstalled, and this stack's data "
        "was on it. It is restored from its latest backup on another host as soon as one has room."
    )


def engine_reinstalled(host: DockerHost) -> dict[str, int]:
    """``host`` answers with another engine ID than the one stored: a new, empty engine
    under the old name. Nothing placed on it is there any more, so every environment living
    on it is handled as after a host loss (``on_reinstalled_host``), each on its own: one's
    failure never stops the others. Environments busy now are left to the reconciler's
    passes, which handle the same way any environment whose home host was reinstalled since
    its last successful operation (``reinstalled_home``)."""

    report = {"moved": 0, "restored": 0, "lost": 0, "waiting": 0}
    for env in _placed_on_host(host).exclude(pk__in=_busy()):
        try:
            on_reinstalled_host(env, host.name, report)
        except (BackendError, EdgeError, SpecError, operations.OperationFailed, ServiceError) as exc:
            log.warning(
                "host_reinstalled_failed", environment=env.pk, error=getattr(exc, "message", str(exc))
            )
    log.warning("host_reinstalled_handled", host=host.name, **report)
    return report


def on_reinstalled_host(env: Environment, host: str, report: dict[str, int]) -> None:
    """``env`` lives on ``host``, whose engine was reinstalled (empty). Stateless (or its
    data elsewhere): moved, or with no room elsewhere deployed again where it was (the host
    works). Stateful: restored from its latest backup at once (there is nothing to wait
    for); with a backup it cannot restore yet (no room, a failed restore's backoff), marked
    so and tried again; without one, marked failed with its data lost. Never deployed onto
    the empty volumes by the reconciler."""
    if home_host(env) == host and support.stateful_components(env):
        if restore_from_backup(env, host, wait=False) is not None:
            report["restored"] += 1
        elif backups.latest_complete_batch(env):
            if env.status != EnvironmentStatus.FAILED:  # a failed restore keeps its own reason
                _set_status(env, EnvironmentStatus.DEGRADED, restore_pending_detail(host))
            report["waiting"] += 1
        else:
            _set_status(env, EnvironmentStatus.FAILED, data_lost_detail(host))
            report["lost"] += 1
        return
    if not _due(env, failed_status=False)[0]:
        return  # a failed automatic move: on the slower schedule
    try:
        with transaction.atomic():
            support.evacuate_environment(environment=env, lost_host=host)
    except ServiceError:  # no room elsewhere: the host works, build it there again
        _queue(env, OperationKind.DEPLOY, reason="host.down", from_host=host)
    report["moved"] += 1


def reinstalled_home(env: Environment, reinstalled: dict[str, datetime]) -> str:
    """The environment's home host when its engine was reinstalled (``reinstalled``: host
    name -> when) after the start of the environment's last successful operation that built
    its stack, so what it had there is gone; "" otherwise, and for one never built."""
    home = home_host(env)
    if home not in reinstalled:
        return ""
    built = Operation.objects.filter(
        environment=env, status=OperationStatus.SUCCEEDED, kind__in=BUILDING_KINDS
    ).aggregate(last=Max(Coalesce("started_at", "created_at")))["last"]
    return home if built is not None and built < reinstalled[home] else ""


def inventory_backends(exclude_url: str = "") -> list[Backend]:
    """One backend per kind named by the regions (``Region.backend``), over every engine of
    the regions using it that is not down; an engine listed under several inventory names
    (make run's local one) once."""
    engines: dict[str, dict[str, HostRecord]] = {}
    live = DockerHost.objects.exclude(state=DockerHost.State.DOWN).select_related("region").order_by("name")
    for h in live:
        if h.url != exclude_url:
            engines.setdefault(h.region.backend, {}).setdefault(h.url, hosts.host_record(h))
    return [
        get_backend(settings.STACKPORT_BACKENDS[kind], hosts=list(by_url.values()))
        for kind, by_url in engines.items()
    ]


@dataclass
class Listing:
    """What the engines hold, host by host. Host names are canonical: an engine listed under
    several inventory names (one URL) counts once, under the first of its names."""

    replicas: dict[str, list[ReplicaState]] = field(default_factory=dict)  # stack key -> replicas
    backends: dict[str, Backend] = field(default_factory=dict)  # canonical name -> its own backend
    unreachable: dict[str, str] = field(default_factory=dict)  # canonical name -> error
    down: set[str] = field(default_factory=set)  # inventory names of hosts that are down
    canonical: dict[str, str] = field(default_factory=dict)  # inventory name -> canonical name

    def name(self, host: str) -> str:
        return self.canonical.get(host, host)


def host_backend(host: DockerHost) -> Backend:
    """A backend that sees ``host`` alone (its region's kind)."""
    return get_backend(
        settings.STACKPORT_BACKENDS[host.region.backend],
        hosts=[hosts.host_record(host)],
    )


def list_hosts() -> Listing:
    """Every engine listed once, on its own: one that does not answer is noted, not fatal."""
    listing = Listing()
    first_by_url: dict[str, DockerHost] = {}
    for host in DockerHost.objects.select_related("region").order_by("name"):
        first = first_by_url.setdefault(host.url, host)
        listing.canonical[host.name] = first.name
        if host.state == DockerHost.State.DOWN:
            listing.down.add(host.name)
    listed = set()
    for host in (
        DockerHost.objects.exclude(state=DockerHost.State.DOWN).select_related("region").order_by("name")
    ):
        name = listing.name(host.name)
        if name in listed:
            continue
        listed.add(name)
        first = first_by_url[host.url]
        try:
            backend = host_backend(first)
            found = backend.stacks()
        except BackendError as exc:
            log.warning("reconcile_list_failed", host=name, error=exc.message)
            listing.unreachable[name] = exc.message
            continue
        listing.backends[name] = backend
        for key, replicas in found.items():
            listing.replicas.setdefault(key, []).extend(replicas)
    return listing


RECONCILE_LOCK = "stackport:reconcile-lock"
RECONCILE_LOCK_SECONDS = 600  # a pass that died holding the lock frees it after this


def reconcile() -> dict[str, int]:
    """One pass, never two at once (beat every 30 s, support's "reconcile now", a slow pass):
    a pass that finds another one running does nothing (``{"skipped": 1}``)."""
    if not cache.add(RECONCILE_LOCK, timezone.now().isoformat(), timeout=RECONCILE_LOCK_SECONDS):
        log.info("reconcile_skipped", reason="another pass is running")
        return {"skipped": 1}
    try:
        return _reconcile()
    finally:
        cache.delete(RECONCILE_LOCK)


def _busy() -> set[int]:
    return set(
        Operation.objects.filter(status__in=ACTIVE_OPERATION_STATUSES).values_list(
            "environment_id", flat=True
        )
    )


def _is_busy(environment_id: int) -> bool:
    return Operation.objects.filter(
        environment_id=environment_id, status__in=ACTIVE_OPERATION_STATUSES
    ).exists()


@dataclass
class Pass:
    """One pass's shared reads: the listing, busy environments, the edge's routes (lazily)."""

    listing: Listing
    busy: set[int]
    report: dict[str, int]
    _routes: dict[str, Any] | None = None
    _routes_read: bool = False
    config_of: Callable[[Route], Any] | None = None  # the edge's form of a route (route_config)
    # Routes that differ from the edge's, of every environment, written at the end of the
    # pass in one config write (one reload, not one per environment).
    route_writes: list[Route] = field(default_factory=list)
    route_removals: list[str] = field(default_factory=list)
    routes_differ: int = 0
    reinstalled: dict[str, datetime] = field(default_factory=dict)  # host name -> reinstalled_at

    def routes(self) -> dict[str, Any] | None:
        """The edge's routes, read once per pass; None when the edge does not answer."""
        if not self._routes_read:
            self._routes_read = True
            read = edge_routes()
            if read is not None:
                self._routes, self.config_of = read
        return self._routes


def edge_routes() -> tuple[dict[str, Any], Callable[[Route], Any]] | None:
    """The edge's routes by id, and its form of a route (``route_config``: what ``routes()``
    holds for it); None when the edge does not answer."""
    try:
        with operations.edge() as router:
            return router.routes(), router.route_config
    except (EdgeError, OSError) as exc:
        log.warning("reconcile_edge_unreadable", error=getattr(exc, "message", str(exc)))
        return None


def _reconcile() -> dict[str, int]:
    report = dict.fromkeys(
        (
            "resumed",
            "orphans_removed",
            "stale_removed",
            "repaired",
            "routes_fixed",
            "moved",
            "waiting",
            "degraded",
            "recovered",
            "unknown",
            "stopped",
            "backups_failed",
            "restored",
            "lost",
        ),
        0,
    )
    report["resumed"] = resume_lost_operations()
    report["backups_failed"] = backups.fail_stale_backups()
    if not DockerHost.objects.exists():
        return report
    busy = _busy()  # read before the engines: an operation started since is caught by the lock
    listing = list_hosts()
    run = Pass(listing, busy, report)
    run.reinstalled = {
        name: at
        for name, at in DockerHost.objects.exclude(reinstalled_at=None).values_list("name", "reinstalled_at")
        if at is not None
    }
    prefix = f"{settings.STACKPORT_STACK_PREFIX}-"
    ours = {
        k: v for k, v in listing.replicas.items() if k.startswith(prefix)
    }  # other installations' are not ours
    ids = [int(k[len(prefix) :]) for k in ours if k[len(prefix) :].isdigit()]
    known = {
        env.key: env
        for env in Environment.objects.select_related("placement").filter(pk__in=ids)
        if env.status != EnvironmentStatus.DESTROYED
    }
    for key, replicas in ours.items():
        env = known.get(key)
        if env is None:
            _remove_copies(run, key, {r.host for r in replicas}, "reconcile_orphan", "orphans_removed")
        elif env.status in SETTLED and env.pk not in busy:
            placed = {listing.name(h) for h in _placed_on(env)}
            stale = {r.host for r in replicas} - placed
            if placed and stale and not _is_busy(env.pk):
                _remove_copies(run, key, stale, "reconcile_stale_copy", "stale_removed")
    environments = (
        Environment.objects.select_related("project__region", "kernel", "current_release", "placement")
        .filter(status__in=[*SETTLED, EnvironmentStatus.DEPLOYING], current_release__isnull=False)
        .exclude(pk__in=busy)
        .order_by("pk")
    )
    for env in environments:
        try:
            _converge_environment(env, run)
        except (BackendError, EdgeError, SpecError, operations.OperationFailed, ServiceError) as exc:
            # One environment's trouble: the others are still looked at.
            log.warning(
                "reconcile_environment_failed", environment=env.pk, error=getattr(exc, "message", str(exc))
            )
    _write_routes(run)
    return report


def _placed_on(env: Environment) -> list[str]:
    """The hosts the environment's stack lives on, by its placement; [] when none was
    recorded (then nothing of it counts as stale: where it lives is not known here)."""
    return placed_hosts(env)


def _remove_copies(run: Pass, key: str, hosts: set[str], event: str, counter: str) -> None:
    """Remove the stack ``key`` from ``hosts`` (canonical names), each by its own backend."""
    for host in sorted(hosts):
        backend = run.listing.backends.get(host)
        if backend is None:
            continue
        log.info(event, key=key, host=host)
        try:
            backend.destroy(key, {"host": host})
            run.report[counter] += 1
        except BackendError as exc:
            log.warning(f"{event}_failed", key=key, host=host, error=exc.message)


def _converge_environment(env: Environment, run: Pass) -> None:
    listing = run.listing
    placed = _placed_on(env)
    lost = [h for h in placed if h in listing.down]
    if lost:
        home = home_host(env) or placed[0]
        on_lost_host(env, home if home in lost else lost[0], run.report)
        return
    if any(listing.name(h) in listing.unreachable for h in placed):
        run.report["unknown"] += 1  # its host did not answer this pass: nothing is known of it
        return
    if env.status == EnvironmentStatus.FAILED and env.status_detail.startswith(DATA_LOST_PREFIX):
        return  # a repair would start it on empty volumes: the customer decides
    if reinstalled := reinstalled_home(env, run.reinstalled):
        # Busy when the reinstall was found, or its handling failed: handled now, the same
        # way. Never repaired below: that would start a stateful stack on empty volumes.
        on_reinstalled_host(env, reinstalled, run.report)
        return
    replicas = listing.replicas.get(env.key, [])
    if env.status == EnvironmentStatus.STOPPED or not env.desired_running or env.project.suspended_at:
        if env.status == EnvironmentStatus.STOPPED and any(r.status in ALIVE for r in replicas):
            if _due(env, failed_status=False)[0] and _queue(env, OperationKind.STOP):
                run.report["stopped"] += 1
        elif env.status == EnvironmentStatus.STOPPED and env.current_release is not None:
            # Its routes answer the stopped page (written by the stop; kept so here).
            _sync_route(env, build_spec(env, env.current_release, running=False), run)
        return
    assert env.current_release is not None
    spec = build_spec(env, env.current_release)
    wanted = sum(c.replicas for c in spec.components) if spec.running else 0
    alive = [r for r in replicas if r.status in ALIVE]
    healthy = len(alive) == wanted and len(replicas) == wanted
    if not healthy or env.status in (EnvironmentStatus.FAILED, EnvironmentStatus.DEPLOYING):
        _repair(env, run, healthy, len(alive), wanted)
        return
    if env.status == EnvironmentStatus.DEGRADED and env.status_detail.startswith(OWN_DETAILS):
        _set_status(env, EnvironmentStatus.RUNNING, "")
        run.report["recovered"] += 1
    _sync_route(env, spec, run)


def _repair(env: Environment, run: Pass, healthy: bool, alive: int, wanted: int) -> None:
    """Queue the repair when it is due; after a failed automatic repair, say so (degraded)."""
    due, failures, last = _due(env, failed_status=env.status == EnvironmentStatus.FAILED)
    if due:
        if _queue(env, OperationKind.DEPLOY):
            log.info("reconcile_repair", environment=env.pk, wanted=wanted, found=alive, status=env.status)
            run.report["repaired"] += 1
        return
    if failures and not healthy and (env.status != EnvironmentStatus.DEGRADED or not env.status_detail):
        error = (last.error.splitlines() or [""])[0][:120] if last else ""
        retry_at = _retry_at(failures, last)
        detail = (
            f"{MISSING_PREFIX}: {alive} of {wanted} run; the automatic repair failed"
            + (f" ({error})" if error else "")
            + (f"; next try at {retry_at:%H:%M} UTC." if retry_at else ".")
        )
        _set_status(env, EnvironmentStatus.DEGRADED, detail[:300])
        run.report["degraded"] += 1


def _automatic_failures(env: Environment) -> tuple[int, Operation | None]:
    """Failed automatic operations in a row, newest first, and the newest operation."""
    recent = list(Operation.objects.filter(environment=env).order_by("-created_at", "-id")[:20])
    count = 0
    for op in recent:
        if op.status != OperationStatus.FAILED or op.params.get("reason") not in AUTOMATIC_REASONS:
            break
        count += 1
    return count, (recent[0] if recent else None)


def _retry_at(failures: int, last: Operation | None) -> Any:
    if last is None or last.finished_at is None:
        return None
    doublings = min(max(failures - 1, 0), MAX_BACKOFF_DOUBLINGS)
    return last.finished_at + timedelta(seconds=settings.STACKPORT_RECONCILE_RETRY_SECONDS * 2**doublings)


def _due(env: Environment, *, failed_status: bool) -> tuple[bool, int, Operation | None]:
    """May an automatic operation be queued now? At once the first time; after a failed
    automatic one (or on a ``failed`` environment) after STACKPORT_RECONCILE_RETRY_SECONDS,
    doubling with each failure in a row."""
    failures, last = _automatic_failures(env)
    if not failures and not failed_status:
        return True, 0, last
    retry_at = _retry_at(failures, last)
    return (retry_at is None or retry_at <= timezone.now()), failures, last


def _queue(env: Environment, kind: str, reason: str = "reconcile", **params: Any) -> bool:
    """The normal operation queue (``run_operation_task`` after commit); False when an
    operation of the environment is active (the constraint: the customer's converges)."""
    try:
        with transaction.atomic():
            lifecycle.queue_operation(
                env, kind, None, release=env.current_release, params={"reason": reason, **params}
            )
    except ServiceError:
        return False
    return True


def _set_status(env: Environment, status: str, detail: str) -> None:
    env.status, env.status_detail = status, detail
    Environment.objects.filter(pk=env.pk).update(status=status, status_detail=detail)


def _sync_route(env: Environment, spec: StackSpec, run: Pass) -> None:
    """Queue the environment's routes for the pass's one write when the edge's differ
    (read once per pass)."""
    routes = run.routes()
    if routes is None:
        return
    backend = operations.backend_for(env)
    upstreams = backend.upstreams(spec, env.backend_state)
    running = spec.running and env.project.suspended_at is None
    writes, removals = operations.route_changes(env, upstreams, routes, running=running)
    assert run.config_of is not None  # set with the routes
    if _routes_match(writes, removals, routes, run.config_of):
        return
    run.route_writes += writes
    run.route_removals += removals
    run.routes_differ += 1


def _write_routes(run: Pass) -> None:
    """All routes of the pass that differ from the edge's, in one config write."""
    if not run.route_writes and not run.route_removals:
        return
    try:
        changed = write_routes(run.route_writes, run.route_removals)
    except (EdgeError, OSError) as exc:
        log.warning("reconcile_routes_failed", error=getattr(exc, "message", str(exc)))
        return
    if changed:
        run.report["routes_fixed"] += run.routes_differ


def write_routes(routes: list[Route], remove: list[str]) -> bool:
    """Set ``routes`` and remove the route ids ``remove`` on the edge: one config write."""
    with operations.edge() as router:
        # Caddy answers a write once it has reloaded: measured 12 s for 1,000 new routes
        # on a loaded 2-CPU machine, more than the default read timeout.
        router.timeout = max(router.timeout, BULK_WRITE_TIMEOUT)
        return router.set_routes(routes, remove=remove)


def _routes_match(
    writes: list[Route], removals: list[str], routes: dict[str, Any], config_of: Callable[[Route], Any]
) -> bool:
    """The edge holds exactly the routes ``writes`` (validated here, by the router's
    ``route_config``: an invalid one fails this environment, not the pass's whole write) and
    none of ``removals``."""
    return not removals and all(routes.get(route.route_id) == config_of(route) for route in writes)


# --- a host that is down ---------------------------------------------------------------------------
def on_lost_host(env: Environment, lost: str, report: dict[str, int]) -> None:
    """``env`` lives (at least partly) on ``lost``, which is down. Stateless: moved off it
    (a new home and a deploy there, or a redeploy where its home is). Its data is there:
    restored from its latest backup once the host has been down long enough
    (``restore_from_backup``), else marked degraded, waiting for the host."""

    runs = env.desired_running and env.project.suspended_at is None
    if home_host(env) == lost and support.stateful_components(env):
        if restore_from_backup(env, lost) is not None:
            report["moved"] += 1
            return
        if runs and env.status != EnvironmentStatus.STOPPED:
            detail = waiting_detail(lost, _restore_at(env, lost))
            if env.status != EnvironmentStatus.DEGRADED or env.status_detail != detail:
                log.info("reconcile_waiting_for_host", environment=env.pk, host=lost)
                _set_status(env, EnvironmentStatus.DEGRADED, detail)
        report["waiting"] += 1
        return
    if not _due(env, failed_status=False)[0]:
        return
    try:
        with transaction.atomic():
            operation = support.evacuate_environment(environment=env, lost_host=lost)
    except ServiceError as exc:
        if exc.status == 409 and "operation" in exc.message.lower():
            return  # busy: the next pass
        log.warning("reconcile_move_failed", environment=env.pk, host=lost, error=exc.message)
        if runs:
            _set_status(env, EnvironmentStatus.DEGRADED, f"{HOST_DOWN_PREFIX}: {lost}. {exc.message}"[:300])
            report["degraded"] += 1
        return
    log.info(
        "reconcile_moved_off_lost_host",
        environment=env.pk,
        host=lost,
        operation=getattr(operation, "pk", None),
    )
    report["moved"] += 1


def evacuate_host(host: DockerHost) -> dict[str, int]:
    """Right when ``host`` is found down: every environment living on it is moved or marked
    waiting (the reconciler's passes do the same for any it could not do now)."""
    report = {"moved": 0, "waiting": 0, "degraded": 0}
    for env in _placed_on_host(host).exclude(pk__in=_busy()):
        try:
            on_lost_host(env, host.name, report)
        except (BackendError, EdgeError, SpecError, operations.OperationFailed) as exc:
            log.warning("evacuate_failed", environment=env.pk, error=getattr(exc, "message", str(exc)))
    return report


def _placed_on_host(host: DockerHost) -> Any:
    """The live environments whose placement names ``host``."""
    return (
        Environment.objects.select_related("project__region", "kernel", "current_release", "placement")
        .filter(Q(placement__hosts__contains=[host.name]) | Q(placement__host=host))
        .exclude(
            status__in=[EnvironmentStatus.DESTROYED, EnvironmentStatus.DESTROYING, EnvironmentStatus.NEW]
        )
        .distinct()
        .order_by("pk")
    )


def remove_stale_copies(host: DockerHost) -> list[str]:
    """A host that answers again after being down: remove every stack copy on it that does
    not live there any more (moved while it was down) or should not exist; keep those whose
    placement still names it (stateful stacks waiting for it). What could not be removed."""
    backend = host_backend(host)
    found = backend.stacks()  # BackendError: it does not answer after all
    prefix = f"{settings.STACKPORT_STACK_PREFIX}-"
    keys = [k for k in found if k.startswith(prefix)]
    ids = [int(k[len(prefix) :]) for k in keys if k[len(prefix) :].isdigit()]
    environments = {
        env.key: env
        for env in Environment.objects.select_related("placement").filter(pk__in=ids)
        if env.status != EnvironmentStatus.DESTROYED
    }
    same_engine = set(DockerHost.objects.filter(url=host.url).values_list("name", flat=True))
    problems = []
    for key in keys:
        env = environments.get(key)
        placed = set(_placed_on(env)) if env is not None else set()
        if env is not None and (not placed or same_engine & placed):
            continue
        log.info("host_return_stale_copy", key=key, host=host.name)
        try:
            backend.destroy(key, {"host": host.name})
        except BackendError as exc:
            problems.append(f"{key}: {exc.message}")
    return problems


# --- operations and samples --------------------------------------------------------------------------
def resume_lost_operations() -> int:
    stale = timezone.now() - timedelta(seconds=settings.STACKPORT_OPERATION_STALE_SECONDS)
    # A queued operation is lost once it waited too long: since it was made, or since its
    # retry was due (a retry sets heartbeat_at to when it is due).
    lost = Operation.objects.filter(
        status=OperationStatus.RUNNING, heartbeat_at__lt=stale
    ) | Operation.objects.filter(
        Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=stale),
        status=OperationStatus.QUEUED,
        created_at__lt=stale,
    )
    count = 0
    for op in lost:
        log.info("reconcile_resume_operation", operation=op.pk, kind=op.kind)
        lifecycle.requeue(op)
        count += 1
    return count


def needs_support() -> Any:
    """Environments support should look at: failed, or degraded (waiting for a host, a
    repair that failed), newest change first."""
    return (
        Environment.objects.filter(status__in=[EnvironmentStatus.FAILED, EnvironmentStatus.DEGRADED])
        .select_related("project__organization")
        .order_by("-pk")
    )


def record_samples() -> int:
    """One CPU/memory sample per running replica, for the charts; keeps a day."""
    count = 0
    for env in Environment.objects.select_related("project__region", "kernel").filter(
        status__in=[EnvironmentStatus.RUNNING, EnvironmentStatus.DEGRADED]
    ):
        try:
            samples = operations.backend_for(env).samples(env.key, env.backend_state)
        except (
            BackendError,
            operations.OperationFailed,
        ) as exc:  # one stack's engine: the others are sampled
            log.warning("samples_failed", environment=env.pk, error=str(getattr(exc, "message", exc)))
            continue
        ResourceSampleRow.objects.bulk_create(
            ResourceSampleRow(
                environment=env,
                component=s.component,
                replica=s.index,
                cpu_percent=s.cpu_percent,
                memory_bytes=s.memory_bytes,
            )
            for s in samples
        )
        count += len(samples)
    ResourceSampleRow.objects.filter(taken_at__lt=timezone.now() - timedelta(days=1)).delete()
    return count


def prune_content_volumes() -> list[str]:
    """Remove from the hosts the content volumes of releases whose content the store no
    longer keeps (``content_store.needed``: they can be rolled back to no more), after the
    store's own prune. Environments being destroyed or destroyed are left to ``destroy``."""
    needed = content_store.needed()
    keep: dict[str, set[str]] = {}
    live = Environment.objects.exclude(status__in=[EnvironmentStatus.DESTROYING, EnvironmentStatus.DESTROYED])
    for environment in live.only("pk", "current_release_id"):
        keep[environment.key] = set()
    releases = Release.objects.filter(environment__in=live).exclude(content_sha256="")
    for release in releases.select_related("environment").only(
        "content_sha256", "build_key", "environment__id", "environment__current_release_id"
    ):
        if release.content_sha256 in needed or release.environment.current_release_id == release.pk:
            keep[release.environment.key].add(release.content_id)
    removed = []
    for backend in inventory_backends(exclude_url=settings.STACKPORT_BUILD_DOCKER_URL):
        try:
            removed += backend.prune_content(keep)
        except BackendError as exc:
            log.warning("prune_content_failed", error=exc.message)
    if removed:
        log.info("pruned_content_volumes", volumes=removed)
    return removed


def prune_images() -> list[str]:
    """Remove catalog images from the customer hosts that no container runs and no
    release of a live environment names (rollback needs those). The build engine keeps
    its images: they are the pipeline's cache."""

    keep = set()
    pairs = set()
    for spec, images in Release.objects.exclude(environment__status=EnvironmentStatus.DESTROYED).values_list(
        "spec", "images"
    ):
        pairs |= {(row.get("component"), row.get("version")) for row in spec.get("components", [])}
        keep |= set((images or {}).values())  # the exact bytes a release ran (rollback is byte-exact)
    for cv in ComponentVersion.objects.select_related("component"):
        if (cv.component.code, cv.version) in pairs:
            keep.add(cv.pinned_reference)
    removed = []
    for backend in inventory_backends(exclude_url=settings.STACKPORT_BUILD_DOCKER_URL):
        try:
            removed += backend.prune_images(keep)
        except BackendError as exc:
            log.warning("prune_images_failed", error=exc.message)
    if removed:
        log.info("pruned_images", images=removed)
    return removed
