"""What the hoster's support staff do to customers' stacks (Django admin actions call these).

Each function is keyword-only, takes the staff ``actor`` and an ``origin``, runs in one
transaction, writes a ``support.*`` audit row and queues at most the normal operations
through ``stacks.runtime.lifecycle.queue_operation`` (the customer's own code path), so what support starts
looks, runs and is recorded like anything else. The actor is not a member of the
customer's organization: the role checks of ``stacks.runtime.lifecycle`` are for customers, and
these functions check the staff permission instead (``projects.operate_stacks``).

An environment with data (stateful components) moves with it: the move stops its writers,
takes a last backup, restores it on the new host and switches the edge there before the old
copy goes (``stacks.runtime.operations``, docs/backends.md "Moving a stateful environment").
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from projects.models import Environment, EnvironmentStatus, Project, User
from projects.services import Origin, ServiceError, record_audit_event
from stacks import tasks
from stacks.models import DockerHost, Operation, OperationKind, OperationStatus, home_host, placed_hosts
from stacks.runtime import lifecycle, operations
from stacks.runtime.spec import CONTENT_VOLUME

OPERATE_PERMISSION = "projects.operate_stacks"
ACTIVE_STATUSES = (OperationStatus.QUEUED, OperationStatus.RUNNING)
GONE = (EnvironmentStatus.DESTROYING, EnvironmentStatus.DESTROYED)


def _require_staff(actor: User) -> None:
    if not (actor.is_active and actor.is_staff and actor.has_perm(OPERATE_PERMISSION)):
        raise ServiceError("This needs the support permission to operate customers' stacks.", status=403)


def _audit(
    action: str, actor: User, project: Project, target: str, origin: Origin | None, **data: Any
) -> None:
    record_audit_event(
        action=f"support.{action}",
        actor=actor,
        organization=project.organization,
        target=target,
        data={"project": project.pk, **data},
        origin=origin,
    )


def _lock(environment: Environment) -> Environment:
    locked = (
        Environment.objects.select_for_update(of=("self",))
        .select_related("project__organization")
        .get(pk=environment.pk)
    )
    return locked


def _live_environments(project: Project) -> list[Environment]:
    return list(
        Environment.objects.select_for_update(of=("self",))
        .select_related("project__organization", "current_release")
        .filter(project=project)
        .exclude(status__in=GONE)
    )


def _require_not_suspended(environment: Environment) -> None:
    if environment.project.suspended_at is not None:
        raise ServiceError("This project is suspended; resume it first.", status=409)


# --- suspension --------------------------------------------------------------------------------
@transaction.atomic
def suspend_project(
    *, project: Project, actor: User, reason: str, origin: Origin | None = None
) -> list[Operation]:
    """Stop the project's containers (volumes and rows stay) and block the customer's
    actions until support resumes it. What the customer wanted running stays recorded
    (``desired_running``), so resuming starts exactly that again."""
    _require_staff(actor)
    reason = " ".join(str(reason).split())[:300]
    if not reason:
        raise ServiceError("Give a reason: the customer sees it.", field="reason")
    project = (
        Project.objects.select_for_update(of=("self",)).select_related("organization").get(pk=project.pk)
    )
    if project.suspended_at is not None:
        raise ServiceError("This project is suspended already.", status=409)
    project.suspended_at, project.suspended_reason = timezone.now(), reason
    project.save(update_fields=["suspended_at", "suspended_reason"])
    queued = []
    for environment in _live_environments(project):
        if environment.current_release_id is None and not placed_hosts(environment):
            continue  # nothing ever ran
        queued.append(
            lifecycle.queue_operation(
                environment,
                OperationKind.STOP,
                actor,
                release=environment.current_release,
                params={"reason": "support.suspend"},
                origin=origin,
            )
        )
    _audit("project.suspend", actor, project, f"project {project.pk}", origin, reason=reason)
    return queued


@transaction.atomic
def resume_project(*, project: Project, actor: User, origin: Origin | None = None) -> list[Operation]:
    """Lift a suspension; start again what the customer had running."""
    _require_staff(actor)
    project = (
        Project.objects.select_for_update(of=("self",)).select_related("organization").get(pk=project.pk)
    )
    if project.suspended_at is None:
        raise ServiceError("This project is not suspended.", status=409)
    reason = project.suspended_reason
    project.suspended_at, project.suspended_reason = None, ""
    project.save(update_fields=["suspended_at", "suspended_reason"])
    queued = []
    for environment in _live_environments(project):
        if environment.desired_running and environment.current_release_id is not None:
            queued.append(
                lifecycle.queue_operation(
                    environment,
                    OperationKind.START,
                    actor,
                    release=environment.current_release,
                    params={"reason": "support.resume"},
                    origin=origin,
                )
            )
    _audit("project.resume", actor, project, f"project {project.pk}", origin, was=reason)
    return queued


# --- redeploy, reconcile, retry ----------------------------------------------------------------
@transaction.atomic
def redeploy_environment(*, environment: Environment, actor: User, origin: Origin | None = None) -> Operation:
    """Apply the environment's current release again (containers re-created where their
    spec or host changed, routes rewritten)."""
    _require_staff(actor)
    environment = _lock(environment)
    if environment.status in GONE:
        raise ServiceError("This environment has been destroyed.", status=409)
    _require_not_suspended(environment)
    release = environment.current_release or environment.releases.order_by("-number").first()
    if release is None:
        raise ServiceError("This environment has nothing to deploy yet.", status=409)
    operation = lifecycle.queue_operation(
        environment,
        OperationKind.DEPLOY,
        actor,
        release=release,
        params={"reason": "support.redeploy"},
        origin=origin,
    )
    _audit(
        "environment.redeploy",
        actor,
        environment.project,
        f"environment {environment.pk}",
        origin,
        operation=operation.pk,
    )
    return operation


@transaction.atomic
def reconcile_environment(*, environment: Environment, actor: User, origin: Origin | None = None) -> None:
    """Run a reconciler pass now (rather than in up to 30 s): missing replicas of this
    environment come back, lost routes are rewritten, lost operations resume."""

    _require_staff(actor)
    environment = _lock(environment)
    _audit("environment.reconcile", actor, environment.project, f"environment {environment.pk}", origin)
    transaction.on_commit(lambda: tasks.reconcile_task.delay())


@transaction.atomic
def retry_operation(*, operation: Operation, actor: User, origin: Origin | None = None) -> Operation:
    """A failed operation once more, as a new operation of the same kind, release and
    parameters (the failed one stays as it was, for the record)."""
    _require_staff(actor)
    operation = Operation.objects.select_related("environment__project__organization", "release").get(
        pk=operation.pk
    )
    if operation.status != OperationStatus.FAILED:
        raise ServiceError("Only a failed operation can be retried.", status=409)
    environment = _lock(operation.environment)
    if environment.status == EnvironmentStatus.DESTROYED:
        raise ServiceError("This environment has been destroyed.", status=409)
    if operation.kind not in (OperationKind.STOP, OperationKind.DESTROY):
        _require_not_suspended(environment)
        if environment.status == EnvironmentStatus.DESTROYING:
            raise ServiceError("This environment is being destroyed.", status=409)
    retry = lifecycle.queue_operation(
        environment,
        operation.kind,
        actor,
        release=operation.release,
        params={**operation.params, "retry_of": operation.pk},
        origin=origin,
    )
    if operation.kind == OperationKind.DESTROY:
        Environment.objects.filter(pk=environment.pk).update(status=EnvironmentStatus.DESTROYING)
    _audit(
        "operation.retry",
        actor,
        environment.project,
        f"operation {operation.pk}",
        origin,
        kind=operation.kind,
        operation=retry.pk,
    )
    return retry


# --- hosts and placement ----------------------------------------------------------------------
def stateful_components(environment: Environment) -> list[str]:
    """Components whose data lives in volumes on the environment's host."""
    names = []
    release = environment.current_release
    # Stack volumes (WordPress's uploads) ride on the release's rows, not on the catalog entry.
    mounting = {
        r.get("name") for r in (release.spec.get("components", []) if release else []) if r.get("mounts")
    }
    for sc in environment.components.select_related("component"):
        volumes = [v for v in sc.component.volumes if v.get("name") != CONTENT_VOLUME]
        if sc.component.stateful or volumes or sc.name in mounting:
            names.append(sc.name)
    return names


def moves_with_data(environment: Environment, limit: int = 5) -> list[Operation]:
    """The environment's latest moves with its data (``_move``), newest first."""
    return list(
        Operation.objects.filter(environment=environment, params__has_key="move_data").order_by(
            "-created_at", "-id"
        )[:limit]
    )


def describe_move(operation: Operation) -> str:
    """One line for support: where from and to, how it ended, the downtime measured."""
    params = operation.params
    text = f"#{operation.pk} {params.get('from_host')} → {params.get('to_host')}"
    text += f", {operation.get_status_display().lower()}"
    if params.get("downtime_seconds") is not None:
        text += f", downtime {params['downtime_seconds']} s"
    return text


def _target_host(environment: Environment, exclude: str) -> DockerHost | None:
    hosts = list(
        DockerHost.objects.filter(
            region=environment.project.region, kernel=environment.kernel, state=DockerHost.State.ACTIVE
        ).exclude(name=exclude)
    )
    if not hosts:
        return None
    free = operations.free_memory_mb(hosts)
    return max(hosts, key=lambda h: (free[h.name], h.name))


def _move(
    environment: Environment, host: DockerHost, actor: User | None, origin: Origin | None, reason: str
) -> Operation:
    """A stateless environment: point its placement at ``host`` and converge there with a
    normal deploy (the backend starts the new replicas on it, then retires those elsewhere).
    One with data: a deploy operation that moves it with its data (``move_data``: backed up
    with the writers stopped, restored on ``host``, switched, then the old copy removed;
    ``stacks.runtime.operations``); its placement changes only once it answers there."""
    release = environment.current_release
    if release is None:
        raise ServiceError(f"{environment} has nothing deployed yet.", status=409)
    old = home_host(environment)
    data = stateful_components(environment)
    if data:
        if environment.project.suspended_at is not None or not environment.desired_running:
            raise ServiceError(
                f"{environment} keeps data ({', '.join(data)}) and is stopped: its data is backed "
                "up from the running databases, so start it before moving it.",
                status=409,
            )
        if not old:
            raise ServiceError(f"{environment} has no host yet: nothing to move.", status=409)
        return lifecycle.queue_operation(
            environment,
            OperationKind.DEPLOY,
            actor,
            release=release,
            params={"reason": reason, "from_host": old, "to_host": host.name, "move_data": data},
            origin=origin,
        )
    _rehome(environment, host)
    return lifecycle.queue_operation(
        environment,
        OperationKind.DEPLOY,
        actor,
        release=release,
        params={"reason": reason, "from_host": old, "to_host": host.name},
        origin=origin,
    )


@transaction.atomic
def move_environment(
    *, environment: Environment, host: DockerHost, actor: User, origin: Origin | None = None
) -> Operation:
    """Move an environment to another active host of its region and kernel line: a stateless
    one with a deploy there, one with data (databases, volumes) with its data (``_move``;
    the site is down from the writers' stop until it answers on the new host, measured as
    the operation's ``downtime_seconds``)."""
    _require_staff(actor)
    environment = (
        Environment.objects.select_for_update(of=("self",))
        .select_related("project__organization", "project__region", "kernel", "current_release")
        .get(pk=environment.pk)
    )
    if environment.status in GONE:
        raise ServiceError("This environment has been destroyed.", status=409)
    _require_not_suspended(environment)
    host.refresh_from_db()
    if host.state != DockerHost.State.ACTIVE:
        raise ServiceError(f"{host} is not active.", field="host")
    if host.region_id != environment.project.region_id or host.kernel_id != environment.kernel_id:
        raise ServiceError(f"{host} does not serve this environment's region and kernel line.", field="host")
    old = home_host(environment)
    if old == host.name:
        raise ServiceError(f"{environment} is on {host} already.", field="host")
    operation = _move(environment, host, actor, origin, "support.move")
    _audit(
        "environment.move",
        actor,
        environment.project,
        f"environment {environment.pk}",
        origin,
        from_host=old,
        to_host=host.name,
        operation=operation.pk,
        with_data=operation.params.get("move_data", []),
    )
    return operation


@transaction.atomic
def drain_host(*, host: DockerHost, actor: User, origin: Origin | None = None) -> dict[str, list[str]]:
    """Mark ``host`` draining (nothing new is placed on it from now on) and move its work
    elsewhere with a normal deploy each: stateless environments living on it get a new home
    on another active host; on routed hosts (address pools) the stacks living elsewhere
    whose public replicas spread onto it are redeployed where they are, which takes those
    replicas off it. The backend still sees the draining host, so each deploy removes what
    ran there. Running environments with data ("with_data") move with it, the way
    ``move_environment`` moves them, one after another once the stateless moves have ended
    (``finish_host_drain`` starts each). Stopped or suspended ones with data, and any with
    no other host, stay and are listed; "busy" ones had an operation running: drain again."""
    _require_staff(actor)
    host = DockerHost.objects.select_for_update(of=("self",)).get(pk=host.pk)
    if host.state == DockerHost.State.DOWN:
        raise ServiceError(f"{host} is down: nothing of it can be moved.", status=409)
    # Draining again (after "busy" ones) moves what is still there.
    DockerHost.objects.filter(pk=host.pk).update(state=DockerHost.State.DRAINING)
    result: dict[str, list[str]] = {"moved": [], "stays": [], "respread": [], "busy": [], "with_data": []}
    waiting: list[int] = []
    queued = []
    environments = (
        Environment.objects.select_for_update(of=("self",))
        .select_related("project__organization", "project__region", "kernel", "current_release")
        .filter(project__region=host.region, kernel=host.kernel)
        .exclude(status__in=GONE)
    )
    for environment in environments:
        home = home_host(environment)
        if home != host.name:
            if not host.address_pool or not home or environment.current_release is None:
                continue
            if environment.project.suspended_at is not None or not environment.desired_running:
                continue  # nothing runs: it converges off the host when started again
            try:
                with transaction.atomic():
                    queued.append(_redeploy(environment, actor, origin).pk)
            except ServiceError:
                result["busy"].append(environment.key)
                continue
            result["respread"].append(environment.key)
            continue
        target = _target_host(environment, exclude=host.name)
        if target is None or environment.current_release is None:
            result["stays"].append(environment.key)
            continue
        if stateful_components(environment):
            if environment.project.suspended_at is not None or not environment.desired_running:
                result["stays"].append(environment.key)  # its data is dumped from running databases
            elif environment.operations.filter(status__in=ACTIVE_STATUSES).exists():
                result["busy"].append(environment.key)
            else:
                waiting.append(environment.pk)  # moved one after another: finish_host_drain
                result["with_data"].append(environment.key)
            continue
        if environment.project.suspended_at is not None:
            # Stopped by support: nothing runs; it converges on its new home when resumed.
            _rehome(environment, target)
            result["moved"].append(environment.key)
            continue
        try:
            with transaction.atomic():
                queued.append(_move(environment, target, actor, origin, "support.drain").pk)
        except ServiceError:
            result["busy"].append(environment.key)  # an operation runs: drain again later
            continue
        result["moved"].append(environment.key)
    labels = dict(host.labels)
    labels["drain_operations"] = queued
    labels["drain_with_data"] = waiting
    labels["drain_actor"] = actor.pk
    DockerHost.objects.filter(pk=host.pk).update(labels=labels)
    record_audit_event(
        action="support.host.drain",
        actor=actor,
        target=f"host {host.name}",
        data={"host": host.name, **result, "operations": queued},
        origin=origin,
    )
    if not queued and not waiting:
        finish_host_drain(host_id=host.pk)
    else:
        transaction.on_commit(lambda: tasks.finish_host_drain_task.apply_async((host.pk,), countdown=5))
    return result


def _redeploy(environment: Environment, actor: User, origin: Origin | None) -> Operation:
    return lifecycle.queue_operation(
        environment,
        OperationKind.DEPLOY,
        actor,
        release=environment.current_release,
        params={"reason": "support.drain"},
        origin=origin,
    )


@transaction.atomic
def finish_host_drain(*, host_id: int) -> bool:
    """Once the moves ``drain_host`` queued have ended (whatever their outcome: a failed
    move is retried by support), start the next move of an environment with data (one at
    a time), else forget them; True when nothing is pending any more. An environment with
    data that no longer lives there, or is gone or stopped, is skipped; one busy with
    another operation is left for draining again (audited as ``support.host.drain_skip``)."""
    host = DockerHost.objects.select_for_update(of=("self",)).filter(pk=host_id).first()
    if host is None:
        return True
    pending = host.labels.get("drain_operations", [])
    if Operation.objects.filter(
        Q(pk__in=pending) & Q(status__in=[OperationStatus.QUEUED, OperationStatus.RUNNING])
    ).exists():
        return False
    waiting = list(host.labels.get("drain_with_data", []))
    actor = User.objects.filter(pk=host.labels.get("drain_actor") or 0).first()
    while waiting:
        environment = (
            Environment.objects.select_for_update(of=("self",))
            .select_related("project__organization", "project__region", "kernel", "current_release")
            .filter(pk=waiting.pop(0))
            .exclude(status__in=GONE)
            .first()
        )
        if environment is None or home_host(environment) != host.name:
            continue
        target = _target_host(environment, exclude=host.name)
        try:
            if target is None:
                raise ServiceError("no other active host", status=409)
            with transaction.atomic():
                operation = _move(environment, target, actor, None, "support.drain")
        except ServiceError as exc:
            record_audit_event(
                action="support.host.drain_skip",
                actor=actor,
                organization=environment.project.organization,
                target=f"environment {environment.pk}",
                data={"host": host.name, "reason": exc.message},
            )
            continue
        labels = {**host.labels, "drain_operations": [operation.pk], "drain_with_data": waiting}
        DockerHost.objects.filter(pk=host.pk).update(labels=labels)
        return False
    drain_keys = ("drain_operations", "drain_with_data", "drain_actor")
    labels = {k: v for k, v in host.labels.items() if k not in drain_keys}
    DockerHost.objects.filter(pk=host.pk).update(labels=labels)
    return True


def evacuate_environment(*, environment: Environment, lost_host: str) -> Operation | None:
    """The system's own move (no staff actor: the host health probe found ``lost_host``
    down): a stateless environment living on it gets a new home on the active host of its
    region and kernel line with the most free memory (enough for the stack), and a normal
    deploy there; one whose home is elsewhere is redeployed where it is, which takes its
    replicas off the lost host. A stopped one is only re-homed (it starts there). Returns
    the queued operation (None when nothing needs to run). ``ServiceError``: it keeps data
    on the lost host (409), no host has room (409), or an operation runs (409)."""

    environment = (
        Environment.objects.select_for_update(of=("self",))
        .select_related("project__organization", "project__region", "kernel", "current_release")
        .get(pk=environment.pk)
    )
    if environment.status in GONE:
        raise ServiceError("This environment has been destroyed.", status=409)
    release = environment.current_release
    home = home_host(environment)
    if home != lost_host:
        if release is None or environment.project.suspended_at is not None or not environment.desired_running:
            return None  # nothing of it runs: it converges off the host when started again
        return lifecycle.queue_operation(
            environment,
            OperationKind.DEPLOY,
            None,
            release=release,
            params={"reason": "host.down", "from_host": lost_host},
        )
    data = stateful_components(environment)
    if data:
        raise ServiceError(
            f"{environment} keeps data in volumes on {lost_host} ({', '.join(data)}).", status=409
        )
    hosts = list(
        DockerHost.objects.filter(
            region=environment.project.region, kernel=environment.kernel, state=DockerHost.State.ACTIVE
        ).exclude(name=lost_host)
    )
    needed = sum(c.size.memory_mb * c.replicas for c in environment.components.select_related("size"))
    free = operations.free_memory_mb(hosts)
    roomy = [h for h in hosts if free[h.name] >= needed]
    if not roomy:
        raise ServiceError(
            f"No other active host of {environment.project.region.name} has {needed} MB free "
            f"for {environment}.",
            status=409,
        )
    target = max(roomy, key=lambda h: (free[h.name], h.name))
    if release is None or environment.project.suspended_at is not None or not environment.desired_running:
        _rehome(environment, target)
        return None
    return _move(environment, target, None, None, "host.down")


def _rehome(environment: Environment, host: DockerHost) -> None:
    """The stack's next apply builds it on ``host`` (the backend says how, in its own state)."""

    backend = operations.backend_for(environment)
    operations.save_state(environment, backend, backend.rehome(environment.backend_state, host.name))
